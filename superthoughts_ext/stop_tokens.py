"""The token ids decoding stops on and pads with, read from a model's configs and its tokenizer
(`generate`, `superthoughts generate` and `superthoughts eval` share them)."""
from __future__ import annotations

from numbers import Integral
from typing import Any


def is_superthoughts(model: Any) -> bool:
    """True for a SuperThoughtsForCausalLM (duck-typed on the decoding contract it offers)."""
    return all(hasattr(model, name) for name in ("backbone", "hidden_states", "head_logits", "new_cache"))


def token_ids(value: Any) -> list[int]:
    """Token ids of an int, a list of them (or a tensor) or None, in order, without repeats."""
    if hasattr(value, "tolist"):  # a tensor of ids
        value = value.tolist()
    values = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
    return list(dict.fromkeys(int(v) for v in values))


def vocab_size(model: Any) -> int:
    """The width of the model's logits: the ids the step op can emit, pad with and stop on."""
    return model.get_output_embeddings().weight.shape[0]


def resolve_eos_ids(model: Any, eos_token_id: int | list[int] | None) -> list[int]:
    """The EOS ids decoding stops on (any of them ends a row): the argument, else the generation
    config of the model (or of a SuperThoughts model's backbone), else its config. The first is the
    step op's own (a Qwen chat turn end; generate checks it is a token of the vocabulary); the
    others are only compared with the output. Generation configs come first: they list every stop
    id (Llama-3: <|end_of_text|> and <|eot_id|>), while a config names one, and a SuperThoughts
    model's own config holds one after training (train_utils.record_special_tokens) but not once
    reloaded (it is not saved): the model trained in this process stops as its checkpoint does."""
    given = eos_token_id.tolist() if hasattr(eos_token_id, "tolist") else eos_token_id
    given = list(given) if isinstance(given, (list, tuple)) else [] if given is None else [given]
    if eos_token_id is not None and not given:  # an empty tensor too (it fell back to the model's EOS)
        raise ValueError("generate: eos_token_id is empty; pass None for the model's EOS "
                         "(ignore_eos=True decodes past it)")
    if bad := [value for value in given if isinstance(value, bool) or not isinstance(value, Integral)]:
        # int() took 5.7 as 5 and "151645" as 151645.
        raise ValueError(f"generate: eos_token_id must be token ids (ints), got {bad!r}")
    candidates = [eos_token_id]
    for attr in ("generation_config", "config"):
        for owner in (model, getattr(model, "backbone", None)):
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
    generation config / config pad (the first of a list; one outside the vocabulary, such as
    Llama 1's "no pad" -1, does not count: transformers decodes such models too), else the EOS `eos`."""
    if is_superthoughts(model):
        return int(model.pad_token_id)
    vocab = vocab_size(model)
    for attr in ("generation_config", "config"):
        pads = token_ids(getattr(getattr(model, attr, None), "pad_token_id", None))
        if pads := [pad for pad in pads if 0 <= pad < vocab]:
            return pads[0]
    return eos
