"""The token ids decoding stops on and pads with, read from a model's configs and its tokenizer
(`generate`, `superthoughts generate` and `superthoughts eval` share them)."""
from __future__ import annotations

from typing import Any


def is_superthoughts(model: Any) -> bool:
    """True for a SuperThoughtsForCausalLM (duck-typed on the decoding contract it offers)."""
    return all(hasattr(model, name) for name in ("backbone", "hidden_states", "head_logits", "new_cache"))


def token_ids(value: Any) -> list[int]:
    """Token ids of an int, a list of them or None, in order, without repeats."""
    values = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
    return list(dict.fromkeys(int(v) for v in values))


def resolve_eos_ids(model: Any, eos_token_id: int | list[int] | None) -> list[int]:
    """The EOS ids decoding stops on (any of them ends a row): the argument, else the model's
    generation config, else its config. The first is the step op's own (a Qwen chat turn end)."""
    candidates = [eos_token_id]
    for owner in (model, getattr(model, "backbone", None)):
        for attr in ("generation_config", "config"):
            candidates.append(getattr(getattr(owner, attr, None), "eos_token_id", None))
    for candidate in candidates:
        if ids := token_ids(candidate):
            return ids
    raise ValueError("generate: the model has no eos_token_id; pass eos_token_id=")


# Tokens that end an assistant turn in Qwen chat templates (also when the model's configs do not
# list them); text after one is not the answer.
CHAT_TURN_ENDS = ("<|im_end|>", "<|endoftext|>")


def stop_token_ids(model: Any, tokenizer: Any = None) -> list[int]:
    """Every id that ends an assistant turn, for `generate(eos_token_id=...)`: the model's
    (`resolve_eos_ids`, its primary EOS first: the step op's own), then the tokenizer's EOS,
    then the ChatML turn ends in the tokenizer's vocabulary; without repeats. A checkpoint may
    list several (Qwen instruct: <|im_end|> and <|endoftext|>; Llama-3: <|end_of_text|> and
    <|eot_id|>), and a SuperThoughts model keeps them in its backbone's generation_config: one
    id alone lets decoding run past the real turn end. `superthoughts generate` and `evaluate`
    both stop on these ids. ValueError when neither the model nor the tokenizer has an EOS."""
    try:
        ids = resolve_eos_ids(model, None)
    except ValueError:  # no EOS in the model's configs: the tokenizer's lead
        ids = []
    if tokenizer is not None:
        ids += token_ids(tokenizer.eos_token_id)
        vocab = tokenizer.get_vocab()
        ids += [vocab[token] for token in CHAT_TURN_ENDS if token in vocab]
    if not ids:
        raise ValueError("neither the model's generation_config / config nor the tokenizer defines an EOS token")
    return list(dict.fromkeys(ids))


def pad_id(model: Any, eos: int) -> int:
    """The id finished rows are filled with: a SuperThoughts model's own pad, else a plain model's
    generation config / config pad (the first of a list; a negative one, Llama 1's "no pad" -1,
    does not count), else the EOS `eos`."""
    if is_superthoughts(model):
        return int(model.pad_token_id)
    for attr in ("generation_config", "config"):
        pads = token_ids(getattr(getattr(model, attr, None), "pad_token_id", None))
        if pads := [pad for pad in pads if pad >= 0]:
            return pads[0]
    return eos
