"""`superthoughts export`: a LoRA run's checkpoint-N merged into a model directory. The last
checkpoint exports to the run's own final model (every tensor, config and file alike), an earlier
one to a model that loads and generates; and the refusals. Tiny random models on CPU
(test_train.py's fixtures).
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
import test_train  # noqa: E402
from test_train import FAST, ROWS  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from superthoughts_ext import cli  # noqa: E402
from superthoughts_ext.export import EXPORT_FILE, export  # noqa: E402
from superthoughts_ext.generate import generate  # noqa: E402
from superthoughts_ext.modeling import SuperThoughtsForCausalLM, load_model, load_tokenizer  # noqa: E402
from superthoughts_ext.train import TrainOptions, train  # noqa: E402
from superthoughts_ext.train_finished import FINISHED_RUN_FILE  # noqa: E402

base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)
# Two checkpoints: an intermediate one and the last step's.
TWO_STEPS = {**FAST, "max_steps": 2, "save_steps": 1, "lora_r": 4}
RUNS = {
    "superthoughts": {},
    "baseline": {"baseline": True},
    # The tied lm_head is untied before its adapter merges, in the run and in the export alike.
    "lm-head": {"lora_target_modules": ("q_proj", "lm_head")},
}


@pytest.fixture(scope="module")
def runs(base_dirs, tmp_path_factory) -> dict[str, Path]:
    """The output folders of one short LoRA run per kind in RUNS."""
    root = tmp_path_factory.mktemp("export_runs")
    outputs = {}
    for name, kind in RUNS.items():
        with pytest.warns(UserWarning, match="untied") if name == "lm-head" else contextlib.nullcontext():
            train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=root / name, **TWO_STEPS, **kind))
        outputs[name] = root / name
    return outputs


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("name", list(RUNS))
def test_the_last_checkpoint_exports_to_the_runs_final_model(runs, tmp_path, name):
    out = runs[name]
    record = json.loads((out / "checkpoint-2" / EXPORT_FILE).read_text())
    assert Path(record["base_model"]).is_absolute() and record["dtype"] == "float32"
    assert record["superthoughts"] == (name != "baseline")
    exported = tmp_path / "exported"
    if name == "lm-head":
        with pytest.warns(UserWarning, match="LoRA adapts lm_head, tied to .*embed_tokens: untied them"):
            export(out / "checkpoint-2", exported)
    else:
        export(out / "checkpoint-2", exported)
    # The finished run's record (what `--resume auto` ends at) is the run's, not the model's: an
    # export is no run, so it has none.
    final = {k: v for k, v in files(out).items() if not k.startswith("checkpoint-") and k != FINISHED_RUN_FILE}
    assert FINISHED_RUN_FILE in files(out)
    written = files(exported)
    assert sorted(written) == sorted(final)
    assert [k for k in final if written[k] != final[k]] == []  # byte for byte
    left, right = load_model(exported).state_dict(), load_model(out).state_dict()
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


@pytest.mark.parametrize("name", ["superthoughts", "baseline"])
def test_an_intermediate_checkpoint_exports_to_a_model_that_generates(runs, tmp_path, name):
    exported = tmp_path / "step1"
    export(runs[name] / "checkpoint-1", exported)
    model = load_model(exported)
    assert isinstance(model, SuperThoughtsForCausalLM) == (name == "superthoughts")
    tokenizer = load_tokenizer(exported)
    ids = torch.tensor([tokenizer("what is 1 + 2")["input_ids"]])
    output = generate(model, ids, max_new_tokens=4, mode="superthoughts" if name == "superthoughts" else "standard",
                      ignore_eos=True)
    assert output.num_tokens == [4]
    # It differs from the final model: the step's adapter, not the last one.
    final = load_model(runs[name]).state_dict()
    assert any(not torch.equal(value, final[key]) for key, value in model.state_dict().items())


def test_the_base_defaults_to_the_recorded_one_and_may_be_given(runs, base_dirs, tmp_path):
    checkpoint = tmp_path / "checkpoint-2"
    shutil.copytree(runs["superthoughts"] / "checkpoint-2", checkpoint)
    record = json.loads((checkpoint / EXPORT_FILE).read_text())
    (checkpoint / EXPORT_FILE).write_text(json.dumps({**record, "base_model": str(tmp_path / "moved")}))
    with pytest.raises(FileNotFoundError, match=r"the run's base model '.*moved' \(recorded in .*\) is not there any "
                                                r"more; pass its directory \(the same weights\) as --model"):
        export(checkpoint, tmp_path / "a")
    copy = tmp_path / "base-copy"
    shutil.copytree(base_dirs["qwen2"], copy)
    export(checkpoint, tmp_path / "b", model=copy)
    assert load_model(tmp_path / "b").state_dict().keys() == load_model(runs["superthoughts"]).state_dict().keys()
    with pytest.raises(FileNotFoundError, match=r"export: --model: model directory '.*nowhere' does not exist"):
        export(checkpoint, tmp_path / "c", model=tmp_path / "nowhere")


def test_another_base_is_refused(runs, base_dirs, tmp_path):
    other = AutoModelForCausalLM.from_pretrained(base_dirs["qwen2"])
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(2)
    other.save_pretrained(tmp_path / "other")
    shutil.copy(base_dirs["qwen2"] / "tokenizer.json", tmp_path / "other")
    with pytest.raises(ValueError, match=r"'.*other' holds other weights than the base model the run of "
                                         r"'.*checkpoint-2' adapted \(weights digest sha256 \w{12}\.\.\.\); pass that "
                                         "run's --model"):
        export(runs["superthoughts"] / "checkpoint-2", tmp_path / "out", model=tmp_path / "other")
    assert not (tmp_path / "out").exists()


def test_what_is_not_an_exportable_checkpoint_is_refused(runs, base_dirs, tmp_path):
    old = tmp_path / "old" / "checkpoint-2"
    shutil.copytree(runs["superthoughts"] / "checkpoint-2", old)
    (old / EXPORT_FILE).unlink()
    with pytest.raises(ValueError, match=r"written by an older release, which did not record how its model was built "
                                         r".*rerun the training with this release"):
        export(old, tmp_path / "a")
    with pytest.raises(ValueError, match=r"'.*' is a model directory \(a full checkpoint or a run's output\) and "
                                         "already loads as a model"):
        export(base_dirs["qwen2"], tmp_path / "a")
    with pytest.raises(FileNotFoundError, match=r"is not a LoRA training checkpoint \(no adapter_config.json\); it "
                                                r"holds a run's checkpoints, e.g. '.*checkpoint-2'"):
        export(tmp_path / "old", tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"'.*empty' is not a LoRA training checkpoint \(no "
                                                r"adapter_config.json\)$"):
        export(tmp_path / "empty", tmp_path / "a")
    with pytest.raises(FileNotFoundError, match=r"is not a directory"):
        export(tmp_path / "missing", tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match=r"--output '.*full' exists and is not an empty directory"):
        export(runs["superthoughts"] / "checkpoint-1", tmp_path / "full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full", "old"]  # nothing written


def test_the_command(runs, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"is a LoRA adapter checkpoint .*`superthoughts export --checkpoint "
                                                r".*checkpoint-1 --output DIR` merges it into a model"):
        load_model(runs["baseline"] / "checkpoint-1")
    out = tmp_path / "exported"
    assert cli.main(["export", "--checkpoint", str(runs["baseline"] / "checkpoint-1"), "--output", str(out)]) == 0
    err = capsys.readouterr().err  # no terminal: transformers' loading bar comes out as whole lines
    assert "\r" not in err and any(line.startswith("Loading weights: 100% ") for line in err.splitlines()), err
    assert load_model(out) is not None
    assert cli.main(["export", "--checkpoint", str(runs["baseline"] / "checkpoint-1"), "--output", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: export: --output")
    assert cli.main(["export", "--checkpoint", str(runs["baseline"]), "--output", str(tmp_path / "b")]) == 2
    assert "already loads as a model" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_one_line_and_leaves_nothing(runs, tmp_path, capsys, file_size_limit):
    # Each ended in a traceback (NotADirectoryError, SafetensorError...), the first three only once
    # the model had been merged; a symlink to an empty folder failed at the last step (os.replace).
    checkpoint = str(runs["baseline"] / "checkpoint-1")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "empty")
    refusals = {"a_file/model": "a_file is a file, not a folder", "dangling": "is a symlink to nothing (or a loop)"}
    for output, message in refusals.items():
        assert cli.main(["export", "--checkpoint", checkpoint, "--output", str(tmp_path / output)]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: export: --output") and message in error and "Traceback" not in error
    with file_size_limit(100_000):  # the weights (~0.3 MB) do not fit
        assert cli.main(["export", "--checkpoint", checkpoint, "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "error: cannot write " in error and "File too large" in error and "Traceback" not in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "dangling", "empty", "linked"]  # no staging
    assert cli.main(["export", "--checkpoint", checkpoint, "--output", str(tmp_path / "linked")]) == 0
    assert load_model(tmp_path / "empty") is not None


# Refusals of read_record / _base_dir / export that need no training run: hand-made checkpoint folders.
def fake_checkpoint(folder: Path, record=None, state=True) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    if state:
        (folder / "trainer_state.json").write_text("{}")
    if record is not None:
        (folder / EXPORT_FILE).write_text(record if isinstance(record, str) else json.dumps(record))
    return folder


def test_read_record_refusals_of_hand_made_folders(tmp_path):
    from superthoughts_ext.export import read_record

    with pytest.raises(FileNotFoundError, match=r"is not a complete checkpoint \(no trainer_state.json"):
        read_record(fake_checkpoint(tmp_path / "a", {"superthoughts": True}, state=False))
    with pytest.raises(ValueError, match=r"superthoughts_export.json: not valid JSON"):
        read_record(fake_checkpoint(tmp_path / "b", "{"))
    for i, text in enumerate(["[]", '{"base_model": null}']):
        with pytest.raises(ValueError, match=r"superthoughts_export.json: not an export record$"):
            read_record(fake_checkpoint(tmp_path / f"c{i}", text))
    run = tmp_path / "run"
    for step in (9, 10, 2):  # the hint names the last step, by number
        (run / f"checkpoint-{step}").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"e.g. '.*checkpoint-10'$"):
        read_record(run)


def test_the_recorded_base_must_be_a_model_directory(base_dirs, tmp_path):
    record = {"superthoughts": True, "base_model": None, "dtype": "float32"}
    with pytest.raises(ValueError, match=r"was given its base model as an object, not a directory: pass that "):
        export(fake_checkpoint(tmp_path / "a", record), tmp_path / "out")
    (tmp_path / "not-a-model").mkdir()  # there, but holds no config.json
    with pytest.raises(FileNotFoundError, match=r"the run's base model '.*not-a-model' .* is not there any more"):
        export(fake_checkpoint(tmp_path / "b", {**record, "base_model": str(tmp_path / "not-a-model")}),
               tmp_path / "out")
    base = str(base_dirs["qwen2"])
    with pytest.raises(ValueError, match=r"export: dtype 'float99' is not one of "):
        export(fake_checkpoint(tmp_path / "c", {**record, "base_model": base, "dtype": "float99"}), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"holds no tokenizer files \(Trainer saves the run's there\)"):
        export(fake_checkpoint(tmp_path / "d", {**record, "base_model": base}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_recorded_pad_is_the_exported_tokenizers(runs, tmp_path):
    # A run whose tokenizer had no pad token trained with one set (train_utils.with_pad_token): the export sets it too.
    checkpoint = tmp_path / "checkpoint-2"
    shutil.copytree(runs["baseline"] / "checkpoint-2", checkpoint)
    record = json.loads((checkpoint / EXPORT_FILE).read_text())
    tokenizer = load_tokenizer(checkpoint)
    other = next(i for i in (tokenizer.eos_token_id, 3, 4) if i is not None and i != tokenizer.pad_token_id)
    (checkpoint / EXPORT_FILE).write_text(json.dumps({**record, "pad_token_id": other}))
    export(checkpoint, tmp_path / "out")
    assert load_tokenizer(tmp_path / "out").pad_token_id == other


def test_an_output_that_is_a_file_is_named_so(runs, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"export: --output '.*file' is a file; give a new directory"):
        export(runs["superthoughts"] / "checkpoint-2", tmp_path / "file")


def test_a_link_planted_at_the_staging_name_is_not_written_through(runs, tmp_path):
    # The merged model is written beside --output first, in .NAME.export: a symlink of that name
    # (planted in a folder unpacked from elsewhere) survived rmtree, which refuses links, and the
    # model's files went into the folder it names, over its own config.json.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("theirs")
    (tmp_path / ".merged.export").symlink_to(elsewhere)
    export(runs["superthoughts"] / "checkpoint-2", tmp_path / "merged")
    assert files(elsewhere) == {"config.json": b"theirs"}
    assert not (tmp_path / "merged").is_symlink() and (tmp_path / "merged" / "config.json").is_file()
