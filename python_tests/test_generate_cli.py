"""The `superthoughts generate` command: prompts, stop ids, streaming and the statistics line.

Tiny random models and the word-level chat tokenizer of test_generate_io (no downloads).
"""
from __future__ import annotations

import copy
import re
from types import SimpleNamespace

import pytest
import torch

from superthoughts_ext import cli
from superthoughts_ext.generate import generate
from superthoughts_ext.stop_tokens import stop_token_ids
import test_generate_io
from test_generate_io import TOKENIZER, prompt_batch

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


backbone = test_generate_io.backbone  # the tiny plain model (a fixture)
model = test_generate_io.model  # its SuperThoughts wrapper (a fixture)


def test_cli_generate_plain_checkpoint(backbone, tmp_path, capsys) -> None:
    backbone.save_pretrained(tmp_path)
    TOKENIZER.save_pretrained(tmp_path)
    argv = ["generate", "--model", str(tmp_path), "what is 3 + 4", "--max-new-tokens", "6", "--device", "cpu"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("[standard] tokens=") and "steps=" in lines[-1] and "tokens/s=" in lines[-1]
    assert "compiling" not in lines[-1]  # eager steps by default on a CPU
    assert cli.main([*argv, "--compile"]) == 0  # one call per process: its time includes the compile
    assert "(time includes compiling the decode step)" in capsys.readouterr().out
    assert cli.main([*argv, "--mode", "pairs"]) == 2  # a plain model cannot pair
    assert "needs a SuperThoughts model" in capsys.readouterr().err
    assert cli.main([*argv, "--threshold", "0.9"]) == 2  # standard decoding would ignore it
    assert "--threshold / --threshold-main apply to superthoughts mode, not standard" in capsys.readouterr().err
    # The stats line says when --max-new-tokens, not EOS, ended the output: this random model
    # never emits its EOS; with its first token declared the EOS, the output ends there.
    ids, mask = prompt_batch(["what is 3 + 4"])
    first = generate(backbone, ids, mask, max_new_tokens=1, mode="standard").sequences[0][0]
    ends_early = copy.deepcopy(backbone)
    ends_early.generation_config.eos_token_id = first
    ends_early.save_pretrained(tmp_path / "ends_early")
    TOKENIZER.save_pretrained(tmp_path / "ends_early")
    for path, cut in ((tmp_path, True), (tmp_path / "ends_early", False)):
        assert cli.main(["generate", "--model", str(path), "what is 3 + 4", "--max-new-tokens", "12",
                         "--device", "cpu", "--no-chat-template"]) == 0
        assert ("stopped by --max-new-tokens 12" in capsys.readouterr().out) == cut, path


def record_prompts(monkeypatch, backbone, tokenizer, path) -> tuple[list[list[int]], list[str]]:
    """Saves backbone and tokenizer to `path` and makes the CLI's generate record each prompt's
    ids; returns that list and the argv of a short `superthoughts generate` of "what is 3"."""
    from superthoughts_ext import generate_cli

    backbone.save_pretrained(path)
    tokenizer.save_pretrained(path)
    prompts = []
    monkeypatch.setattr(generate_cli, "generate", lambda model, ids, **kwargs: prompts.append(ids[0].tolist()) or
                        generate(model, ids, **kwargs))
    return prompts, ["generate", "--model", str(path), "what is 3", "--max-new-tokens", "2", "--device", "cpu"]


def test_cli_generate_raw_prompt_gets_the_tokenizers_bos(backbone, tmp_path, monkeypatch) -> None:
    from tokenizers import processors

    with_bos = copy.deepcopy(TOKENIZER)
    bos = with_bos.convert_tokens_to_ids("<|im_start|>")
    with_bos._tokenizer.post_processor = processors.TemplateProcessing(single="<|im_start|> $A",
                                                                       special_tokens=[("<|im_start|>", bos)])
    prompts, argv = record_prompts(monkeypatch, backbone, with_bos, tmp_path)
    assert cli.main(argv + ["--no-chat-template"]) == 0 and cli.main(argv) == 0
    assert prompts[0] == [bos] + TOKENIZER("what is 3", add_special_tokens=False)["input_ids"]
    templated = with_bos.apply_chat_template([{"role": "user", "content": "what is 3"}], tokenize=False,
                                             add_generation_prompt=True)
    assert prompts[1] == with_bos(templated, add_special_tokens=False)["input_ids"]  # the template's own


def test_cli_generate_sends_the_system_message_eval_sends(backbone, tmp_path, monkeypatch) -> None:
    from superthoughts_ext.eval_data import build_prompt

    plain_chatml = copy.deepcopy(TOKENIZER)  # no default system turn: the prompts differ without ours
    plain_chatml.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                                  "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    prompts, argv = record_prompts(monkeypatch, backbone, plain_chatml, tmp_path)
    assert cli.main(argv) == 0 and cli.main(argv + ["--template-system-prompt"]) == 0
    assert prompts[0] == plain_chatml(build_prompt(plain_chatml, "what is 3"), add_special_tokens=False)["input_ids"]
    user_only = plain_chatml.apply_chat_template([{"role": "user", "content": "what is 3"}], tokenize=False,
                                                 add_generation_prompt=True)
    assert prompts[1] == plain_chatml(user_only, add_special_tokens=False)["input_ids"] != prompts[0]


def test_cli_generate_names_a_template_without_a_system_turn(backbone, tmp_path, capsys) -> None:
    no_system = copy.deepcopy(TOKENIZER)  # Gemma-style: the template raises on a system message
    no_system.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                               "{{ raise_exception('System role not supported') }}{% endif %}"
                               "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    backbone.save_pretrained(tmp_path)
    no_system.save_pretrained(tmp_path)
    capsys.readouterr()  # save_pretrained's progress bar
    argv = ["generate", "--model", str(tmp_path), "what is 3", "--max-new-tokens", "2", "--device", "cpu"]
    assert cli.main(argv) == 2  # was a jinja2 traceback
    err = capsys.readouterr().err
    assert "superthoughts generate: error: the chat template refuses" in err and "Traceback" not in err, err
    assert "needs --template-system-prompt" in err
    assert cli.main(argv + ["--template-system-prompt"]) == 0


@pytest.mark.parametrize("command", [["generate", "what is 3"], ["eval", "--bench", "amc23"]])
def test_cli_generate_and_eval_take_one_system_prompt_option(command, capsys) -> None:
    # Both set system_prompt: the one given last won, silently.
    with pytest.raises(SystemExit) as stopped:
        cli.main([*command, "--model", "unused", "--system-prompt", "Be brief.", "--template-system-prompt"])
    assert stopped.value.code == 2
    assert "argument --template-system-prompt: not allowed with argument --system-prompt" in capsys.readouterr().err


def test_cli_generate_rejects_an_empty_prompt(backbone, tmp_path, capsys) -> None:
    backbone.save_pretrained(tmp_path)
    TOKENIZER.save_pretrained(tmp_path)
    assert cli.main(["generate", "--model", str(tmp_path), "", "--no-chat-template", "--device", "cpu"]) == 2
    assert "empty prompt" in capsys.readouterr().err


def test_cli_generate_says_when_the_context_stopped_it(backbone, tmp_path, capsys) -> None:
    # The prompt leaves 6 positions of a 20-position context: 6 tokens, far below the budget.
    short_context = copy.deepcopy(backbone)
    short_context.config.max_position_embeddings = 20
    short_context.save_pretrained(tmp_path)
    TOKENIZER.save_pretrained(tmp_path)
    prompt = " ".join(["one"] * 15)
    assert len(TOKENIZER(prompt, add_special_tokens=False)["input_ids"]) == 15
    assert cli.main(["generate", "--model", str(tmp_path), prompt, "--max-new-tokens", "12", "--device", "cpu",
                     "--no-chat-template"]) == 0
    stats = capsys.readouterr().out.strip().splitlines()[-1]
    assert "tokens=6 " in stats and stats.endswith("(stopped by the model's context, max_position_embeddings=20)")


def test_cli_generate_streams_the_text_it_prints(backbone, tmp_path, capsys) -> None:
    # A model that ends on its (special) EOS token after a few words: --stream prints what the
    # non-streamed output prints, without the EOS token's text.
    ids, mask = prompt_batch(["what is 3 + 4"])
    free = generate(backbone, ids, mask, max_new_tokens=12, mode="standard").sequences[0]
    third = next(t for i, t in enumerate(free) if i >= 2 and t not in free[:i])
    eos = TOKENIZER.eos_token_id
    ends = copy.deepcopy(backbone)
    with torch.no_grad():  # EOS takes the head row of the first new token from the third on
        ends.lm_head.weight[[third, eos]] = ends.lm_head.weight[[eos, third]]
    ends.save_pretrained(tmp_path)
    TOKENIZER.save_pretrained(tmp_path)
    argv = ["generate", "--model", str(tmp_path), "what is 3 + 4", "--max-new-tokens", "12", "--device", "cpu",
            "--no-chat-template"]
    outputs = []
    for stream in ([], ["--stream"]):
        assert cli.main(argv + stream) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[-1].startswith("[standard] tokens=") and "stopped by" not in lines[-1]
        outputs.append(lines[:-1])
    assert outputs[0] == outputs[1] and TOKENIZER.eos_token not in "".join(outputs[1])


def test_stop_token_ids_model_first_then_the_tokenizer_and_chat_turn_ends(backbone) -> None:
    im_end, endoftext = TOKENIZER.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert stop_token_ids(backbone) == [im_end]  # the model's own alone
    assert stop_token_ids(backbone, TOKENIZER) == [im_end, endoftext]
    listed = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[endoftext, 5]))
    assert stop_token_ids(listed, TOKENIZER) == [endoftext, 5, im_end]  # the model's primary EOS stays first
    assert stop_token_ids(SimpleNamespace(), TOKENIZER) == [im_end, endoftext]  # no EOS in any model config
    with pytest.raises(ValueError, match="defines an EOS token"):
        stop_token_ids(SimpleNamespace())


def test_a_model_trained_in_this_process_stops_on_its_checkpoints_ids(model, tmp_path) -> None:
    from superthoughts_ext.modeling import load_model
    from superthoughts_ext.stop_tokens import resolve_eos_ids
    from superthoughts_ext.train_utils import record_special_tokens

    im_end, endoftext = TOKENIZER.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model.backbone.generation_config.eos_token_id = [endoftext, im_end]  # two turn ends, as Llama-3 lists
    record_special_tokens(model, TOKENIZER)  # train does this: one EOS on the wrapper's own config
    assert model.config.eos_token_id == im_end
    model.save_pretrained(tmp_path)
    assert resolve_eos_ids(load_model(tmp_path), None) == [im_end, endoftext]
    # The in-process model read the wrapper config's single id first and ran past <|endoftext|>.
    assert resolve_eos_ids(model, None) == [im_end, endoftext]


def test_cli_generate_stops_at_a_chat_turn_end_its_config_does_not_list(backbone, tmp_path, capsys) -> None:
    # The config lists <|im_end|> only; the model ends its turn with <|endoftext|>, which
    # `superthoughts eval` stops on: so does `superthoughts generate`.
    ids, mask = prompt_batch(["what is 3 + 4"])
    free = generate(backbone, ids, mask, max_new_tokens=12, mode="standard").sequences[0]
    endoftext = TOKENIZER.convert_tokens_to_ids("<|endoftext|>")
    assert endoftext not in free and TOKENIZER.eos_token_id not in free
    third = next(t for i, t in enumerate(free) if i >= 2 and t not in free[:i])
    ends = copy.deepcopy(backbone)
    with torch.no_grad():  # <|endoftext|> takes the head row of the first new token from the third on
        ends.lm_head.weight[[third, endoftext]] = ends.lm_head.weight[[endoftext, third]]
    ends.save_pretrained(tmp_path)
    TOKENIZER.save_pretrained(tmp_path)
    assert ends.generation_config.eos_token_id == TOKENIZER.eos_token_id
    assert cli.main(["generate", "--model", str(tmp_path), "what is 3 + 4", "--max-new-tokens", "12",
                     "--device", "cpu", "--no-chat-template"]) == 0
    stats = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"tokens={free.index(third) + 1} " in stats and "stopped by" not in stats


def test_cli_generate_and_eval_stop_on_the_same_ids(backbone, tmp_path, monkeypatch) -> None:
    pytest.importorskip("math_verify")
    from superthoughts_ext import generate_cli
    from superthoughts_ext.eval_data import Problem
    from superthoughts_ext.evaluation import evaluate

    class Recorded(Exception):
        pass

    seen = []

    def record(*args, eos_token_id, **kwargs):
        seen.append(eos_token_id)
        raise Recorded

    backbone.save_pretrained(tmp_path)
    TOKENIZER.save_pretrained(tmp_path)
    monkeypatch.setattr(generate_cli, "generate", record)
    with pytest.raises(Recorded):
        cli.main(["generate", "--model", str(tmp_path), "what is 3 + 4", "--device", "cpu"])
    with pytest.raises(Recorded):
        evaluate(backbone, TOKENIZER, "math500", [Problem("p", "what is 3 + 4", "7")], mode="standard",
                 progress=False, generate_fn=record)
    assert seen[0] == seen[1] == stop_token_ids(backbone, TOKENIZER)


def test_cli_generate_superthoughts_checkpoint(model, tmp_path, capsys) -> None:
    model.save_pretrained(tmp_path)
    TOKENIZER.save_pretrained(tmp_path)
    argv = ["generate", "--model", str(tmp_path), "what is 3 + 4", "--max-new-tokens", "8", "--device", "cpu",
            "--no-compile", "--mode", "pairs", "--no-kernels"]
    assert cli.main(argv) == 0
    stats = capsys.readouterr().out.strip().splitlines()[-1]
    assert stats.startswith("[pairs] tokens=")
    assert cli.main(argv[:-3] + ["--stream", "--threshold", "0.5"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("[superthoughts] tokens=")
    assert cli.main(argv[:4] + ["--compile", "--temperature", "0.7"]) == 2
    assert "--compile needs greedy decoding (--temperature below 1e-05, got 0.7)" in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["--temperature", "-1"], "--temperature must be finite and >= 0, got -1.0"),
    (["--threshold", "nan"], r"--threshold must lie in \[0, 1\], got nan"),
    (["--threshold-main", "1.5"], r"--threshold-main must lie in \[0, 1\], got 1.5"),
    (["--mode", "pairs", "--threshold", "0.9"], "--threshold / --threshold-main apply to superthoughts mode, not pairs"),
    (["--compile", "--temperature", "0.7"], "--compile needs greedy decoding"),
])
def test_cli_generate_refuses_bad_options_before_loading_the_model(monkeypatch, capsys, options, message) -> None:
    from superthoughts_ext import generate_cli

    # Loading a 7B checkpoint takes minutes: a typo must not wait for it.
    monkeypatch.setattr(generate_cli, "load_checkpoint", lambda *a: pytest.fail("the model was loaded"))
    assert cli.main(["generate", "--model", "unused", "what is 3", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("superthoughts generate: error: ") and re.search(message, err), err


def test_cli_generate_and_eval_name_a_bad_checkpoint_or_device_in_one_line(backbone, tmp_path, capsys) -> None:
    backbone.save_pretrained(tmp_path)
    TOKENIZER.save_pretrained(tmp_path)
    data = tmp_path / "amc.jsonl"
    data.write_text('{"id": 0, "problem": "what is 3 + 4", "answer": 7.0}\n')
    capsys.readouterr()  # save_pretrained's progress bar
    cases = [(["--model", str(tmp_path / "missing")], "model directory .*missing' does not exist"),
             (["--model", str(tmp_path), "--device", "gpu"], "--device 'gpu': "),
             # Only CUDA was checked before loading: the others failed with a traceback after it.
             (["--model", str(tmp_path), "--device", "mps"], r"--device mps: not available in this torch \("),
             (["--model", ""], "--model '': no such directory|--model and --bench are required"),
             (["--model", str(data)], "amc.jsonl': not a directory"),
             (["--model", str(tmp_path), "--tokenizer", str(data)], "--tokenizer '.*amc.jsonl': not a directory")]
    if not torch.cuda.is_available():
        cases.append((["--model", str(tmp_path), "--device", "cuda"], "--device cuda: this torch has no CUDA device"))
    for options, message in cases:
        for argv in (["generate", "what is 3", *options],
                     ["eval", "--bench", "amc23", "--data", str(data), "--no-progress", *options]):
            assert cli.main(argv) == 2, argv  # not a traceback
            err = capsys.readouterr().err
            assert err.startswith(f"superthoughts {argv[0]}: error: ") and re.search(message, err), err
            assert "Traceback" not in err


def test_cli_generate_and_eval_without_tokenizer_files_say_so_and_take_tokenizer(backbone, tmp_path, capsys) -> None:
    # Weights and configs only: transformers would build an empty tokenizer from the config, and
    # every prompt would encode to no tokens ("empty prompt", "no chat template").
    backbone.save_pretrained(tmp_path / "weights")
    TOKENIZER.save_pretrained(tmp_path / "tokenizer")
    data = tmp_path / "amc.jsonl"
    data.write_text('{"id": 0, "problem": "what is 3 + 4", "answer": 7.0}\n')
    capsys.readouterr()
    commands = (["generate", "what is 3", "--max-new-tokens", "2"],
                ["eval", "--bench", "amc23", "--data", str(data), "--no-progress", "--max-new-tokens", "2",
                 "--output", str(tmp_path / "run.jsonl")])
    for argv in commands:
        assert cli.main([*argv, "--model", str(tmp_path / "weights"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "no tokenizer files in" in err and "weights" in err and "pass --tokenizer DIR" in err, err
        assert cli.main([*argv, "--model", str(tmp_path / "weights"), "--tokenizer", str(tmp_path / "weights"),
                         "--device", "cpu"]) == 2
        assert "pass --tokenizer" not in capsys.readouterr().err  # it was passed: no advice in circles
        assert cli.main([*argv, "--model", str(tmp_path / "weights"), "--tokenizer", str(tmp_path / "nowhere"),
                         "--device", "cpu"]) == 2
        assert "--tokenizer '" in (err := capsys.readouterr().err) and "nowhere': no such directory" in err, err
        assert cli.main([*argv, "--model", str(tmp_path / "weights"), "--tokenizer", str(tmp_path / "tokenizer"),
                         "--device", "cpu"]) == 0, capsys.readouterr().err


def test_cli_generate_into_a_log_writes_the_loading_bar_as_lines(backbone, tmp_path, capsys) -> None:
    # capsys' stderr is no terminal, as a nohup or SLURM log is not: transformers' loading bar must
    # come out as whole lines (superthoughts_ext.progress), never carriage-return redraws.
    backbone.save_pretrained(tmp_path)
    TOKENIZER.save_pretrained(tmp_path)
    capsys.readouterr()  # the test's own save drew transformers' bar outside the command
    assert cli.main(["generate", "--model", str(tmp_path), "what is 3 + 4", "--max-new-tokens", "2",
                     "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err, err
    assert any(line.startswith("Loading weights: 100% ") for line in err.splitlines()), err
