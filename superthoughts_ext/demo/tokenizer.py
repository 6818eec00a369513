"""A tiny word-level tokenizer for the demo task, shaped like a Qwen2.5 chat tokenizer.

Pieces follow Qwen2's split rules in miniature: a word with its optional leading space is
one token (``" carry"``), every digit is its own token with no space attached (a space in
front of a number is the token ``" "``), punctuation is one character with an optional
leading space, ``\\n`` is a token. The vocabulary is closed and built deterministically from
`task.vocabulary_texts` (no corpus, no training): each word and punctuation mark with and
without a leading space, the ten digits, space, newline and the ChatML specials. The
decoder concatenates pieces as they are, so ``decode(encode(text)) == text`` for any text
made of those pieces; anything else maps to ``<unk>``.

Specials are Qwen's: ``<|endoftext|>`` pads, ``<|im_end|>`` ends a turn (eos),
``<|im_start|>`` opens one. The chat template is Qwen2.5-Math's ChatML without tools: a
missing system turn gets the CoT system prompt, and ``add_generation_prompt`` opens the
assistant turn.
"""
from __future__ import annotations

import re

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from superthoughts_ext.demo.task import vocabulary_texts
from superthoughts_ext.eval_data import SYSTEM_PROMPT

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, UNK_TOKEN)
ROLES = ("system", "user", "assistant")

# Order matters: a word (``\\boxed`` counts as one) wins over its leading space or backslash
# standing alone; the last branch catches any other character so nothing is dropped.
SPLIT_PATTERN = r" ?\\?[A-Za-z]+| ?[^\sA-Za-z0-9]|[0-9]|\n| |[\s\S]"
_WORD = re.compile(r"\\?[A-Za-z]+")

CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + SYSTEM_PROMPT.replace("\\", "\\\\") + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def vocabulary() -> list[str]:
    """The closed vocabulary in id order: specials, space/newline, digits, punctuation, words."""
    texts = list(vocabulary_texts()) + list(ROLES)
    words = sorted({w for t in texts for w in _WORD.findall(t)})
    punctuation = sorted({c for t in texts for c in _WORD.sub("", t) if not (c.isspace() or c.isalnum())})
    pieces = list(SPECIAL_TOKENS) + [" ", "\n"] + [str(d) for d in range(10)]
    for unit in punctuation + words:
        pieces += [unit, " " + unit]
    return pieces


def build_tokenizer(model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """The demo tokenizer (same vocabulary and ids on every call), ready for chat templates."""
    vocab = {piece: i for i, piece in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")
    core.decoder = decoders.Fuse()
    # Specials are matched before pre-tokenisation, so "<|im_start|>" is never split.
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        # transformers' clean-up would turn " ," into ",": it must not touch exact pieces.
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
