"""Hugging Face repo ids (org/name, org/name@revision) read from the local hub cache, with no
network: `superthoughts_ext.hub_cache` and the commands and loaders that take a model directory.

The cache is built by hand in tmp_path as huggingface_hub lays it out (hub_layout.py) and
HF_HUB_CACHE points at it. A tiny random Qwen2 model and test_train.py's word-level tokenizer;
every test runs with sockets refused, so a lookup that went online would fail here. The cache's
layouts without a model to load (revisions, refs, the cache folder): test_hub_cache_layouts.py.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from hub_layout import COMMIT, OTHER_COMMIT, add_snapshot, cache, no_network  # noqa: E402,F401 (fixtures)
from test_train import FAST, ROWS, make_model, make_tokenizer  # noqa: E402

from superthoughts_ext import cli, hub_cache  # noqa: E402
from superthoughts_ext.checkpoint import is_superthoughts_checkpoint, load_plain, load_tokenizer  # noqa: E402
from superthoughts_ext.modeling import SuperThoughtsForCausalLM, load_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_cpu_thread", "no_network")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> Path:
    """A tiny plain Qwen2 model and its tokenizer, as save_pretrained writes them."""
    folder = tmp_path_factory.mktemp("tiny_qwen2")
    tokenizer = make_tokenizer()
    make_model("qwen2", len(tokenizer) + 3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("links", [True, False], ids=["blob-links", "plain-files"])
def test_every_loader_takes_a_cached_repo_id(cache, model_files, tmp_path, links) -> None:
    # refs/pr/1: a pull request's ref, as `hf download --revision refs/pr/1` keeps it (refs/refs/pr/1).
    snapshot = add_snapshot(cache, "org/tiny", model_files, links=links, refs=("main", "v1", "refs/pr/1"))
    saved = load_plain(model_files, None, "test")
    wrapped = SuperThoughtsForCausalLM.from_base("org/tiny", pad_token_id=0)
    assert same_weights(wrapped.backbone, saved)
    for spec in ("org/tiny", "org/tiny@v1", "org/tiny@refs/pr/1", f"org/tiny@{COMMIT}"):
        assert same_weights(load_model(spec), saved), spec
        assert same_weights(load_plain(spec, None, "test"), saved), spec
    assert load_tokenizer("org/tiny").get_vocab() == make_tokenizer().get_vocab()
    # A SuperThoughts checkpoint in the cache loads by its id as well (from_pretrained, load_model).
    wrapped.save_pretrained(tmp_path / "st")
    add_snapshot(cache, "org/tiny-st", tmp_path / "st", links=links)
    assert same_weights(SuperThoughtsForCausalLM.from_pretrained("org/tiny-st"), wrapped)
    assert isinstance(load_model("org/tiny-st"), SuperThoughtsForCausalLM)
    assert is_superthoughts_checkpoint("org/tiny-st") and not is_superthoughts_checkpoint("org/tiny")
    assert not is_superthoughts_checkpoint("org/absent")
    # Records name the weights as org/name@<commit>, given the id or its snapshot folder.
    assert hub_cache.snapshot_name("org/tiny") == hub_cache.snapshot_name(snapshot) == f"org/tiny@{COMMIT}"
    assert hub_cache.snapshot_name(model_files) is None and hub_cache.snapshot_name("org/absent") is None


def test_a_local_folder_of_the_same_name_wins(cache, model_files, tmp_path, monkeypatch) -> None:
    add_snapshot(cache, "org/tiny", model_files)
    local = tmp_path / "work" / "org" / "tiny"
    tokenizer = make_tokenizer()
    torch.manual_seed(1)
    other = make_model("qwen2", len(tokenizer) + 3)
    other.save_pretrained(local)
    monkeypatch.chdir(tmp_path / "work")
    assert same_weights(load_model("org/tiny"), other)
    assert hub_cache.snapshot_name("org/tiny") is None  # a local path: recorded as its real path


def test_an_id_the_cache_lacks_names_the_id_the_cache_and_the_download(cache, model_files) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        SuperThoughtsForCausalLM.from_base("org/absent")
    message = str(missing.value)
    assert "from_base: 'org/absent' is not a local directory, nor a Hugging Face repo in the local hub cache" in message
    assert f"{cache} (chosen by HF_HUB_CACHE)" in message
    assert "`hf download org/absent`" in message and "`huggingface-cli download org/absent`" in message
    add_snapshot(cache, "org/tiny", model_files)
    with pytest.raises(FileNotFoundError, match=r"it holds the repo, but not its revision 'v9'.*"
                                                r"`hf download org/tiny --revision v9`"):
        load_model("org/tiny@v9")
    # Not spelled as an id: the local-directory error, as before.
    with pytest.raises(FileNotFoundError, match=r"load_model: model directory '/no/such/dir' does not exist"):
        load_model("/no/such/dir")


def test_a_partial_snapshot_names_what_it_lacks(cache, model_files, tmp_path) -> None:
    add_snapshot(cache, "org/config-only", model_files, only=("config.json",))
    with pytest.raises(FileNotFoundError, match=r"from_base: the cached snapshot of 'org/config-only' \(.*"
                                                rf"snapshots/{COMMIT}\) lacks weights \(model\.safetensors or .*"
                                                r"cut short.*`hf download org/config-only`"):
        SuperThoughtsForCausalLM.from_base("org/config-only")
    # A blob removed under its link (a cleanup cut short) is as absent as a link never made.
    snapshot = add_snapshot(cache, "org/lost-blob", model_files)
    (snapshot / "model.safetensors").resolve().unlink()
    with pytest.raises(FileNotFoundError, match=r"'org/lost-blob' .* lacks weights"):
        load_model("org/lost-blob")
    # Shards: the ones the index names and the snapshot lacks.
    sharded = tmp_path / "sharded"
    load_plain(model_files, None, "test").save_pretrained(sharded, max_shard_size="100KB")
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    add_snapshot(cache, "org/sharded", sharded, only=("config.json", "model.safetensors.index.json", shards[0]))
    with pytest.raises(FileNotFoundError, match=rf"lacks {shards[1]}"):
        load_model("org/sharded")
    # A tokenizer needs no weights: the snapshot as it is.
    add_snapshot(cache, "org/tokenizer-only", model_files, only=("tokenizer.json", "tokenizer_config.json"))
    assert load_tokenizer("org/tokenizer-only").get_vocab() == make_tokenizer().get_vocab()


def test_a_snapshot_short_of_files_a_model_does_not_need_loads(cache, model_files) -> None:
    # huggingface_hub (1.x) keeps the repo's file listing beside the cache and refuses, offline, a
    # snapshot that lacks any file of it: a README.md left out by `hf download --include` too.
    tree_cache = pytest.importorskip("huggingface_hub._tree_cache")
    if not hasattr(tree_cache, "write_tree_cache"):
        pytest.skip("this huggingface_hub keeps no listing of a repo's files")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    snapshot = add_snapshot(cache, "org/no-readme", model_files)
    listed = [*sorted(p.name for p in snapshot.iterdir()), "README.md"]
    entries = {name: tree_cache.TreeCacheEntry(size=1, blob_id=f"{i:040x}") for i, name in enumerate(listed)}
    tree_cache.write_tree_cache(os.fspath(snapshot.parent.parent), COMMIT, entries)
    with pytest.raises(LocalEntryNotFoundError, match="README.md"):
        snapshot_download("org/no-readme", cache_dir=cache, local_files_only=True)
    assert same_weights(load_model("org/no-readme"), load_plain(model_files, None, "test"))
    # The model's own files missing: named as for any partial snapshot.
    (snapshot / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"'org/no-readme' .* lacks weights"):
        load_model("org/no-readme")


def train_argv(model: str, data: Path, out: Path) -> list[str]:
    return ["--model", model, "--data", str(data), "--output", str(out), "--max-steps", "1", "--batch-size", "4",
            "--save-steps", "0", "--learning-rate", "1e-3", "--no-progress", "--resume", "auto"]


def test_train_generate_and_eval_records_take_the_id(cache, model_files, tmp_path, capsys) -> None:
    from superthoughts_ext.eval_cli import run_metadata
    from superthoughts_ext.evaluation import summary_path

    snapshot = add_snapshot(cache, "org/tiny", model_files)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    out = tmp_path / "out"
    assert cli.main(["train", *train_argv("org/tiny", data, out)]) == 0
    assert isinstance(load_model(out), SuperThoughtsForCausalLM)
    record = json.loads((out / "finished_run.json").read_text())["run"]
    assert record["--model"] == f"org/tiny@{COMMIT}"
    # The requeued command, given the id, its snapshot folder or the id at the commit's 7 digits that
    # `eval --table` shows, finds its run finished: the record keeps the whole commit.
    for model in ("org/tiny", os.fspath(snapshot), f"org/tiny@{COMMIT[:7]}"):
        capsys.readouterr()
        assert cli.main(["train", *train_argv(model, data, out)]) == 0
        assert "the run is already finished" in capsys.readouterr().out, model
    argv = ["generate", "what is 3 + 4", "--max-new-tokens", "2", "--device", "cpu"]
    assert cli.main([*argv, "--model", f"org/tiny@{COMMIT}"]) == 0
    assert "[standard] tokens=" in capsys.readouterr().out
    assert cli.main([*argv, "--model", "org/absent"]) == 2
    assert "--model: 'org/absent' is not a local directory" in capsys.readouterr().err

    # eval records the id at its commit, and a rerun with --resume given the id is the same run.
    problems, records = tmp_path / "amc.jsonl", tmp_path / "run.jsonl"
    problems.write_text("".join(json.dumps({"id": i, "problem": f"what is {i} + 1", "answer": i + 1}) + "\n"
                                for i in range(2)))
    argv = ["eval", "--model", "org/tiny", "--bench", "amc23", "--data", str(problems), "--mode", "standard",
            "--max-new-tokens", "2", "--device", "cpu", "--output", str(records), "--no-progress"]
    assert cli.main(argv) == 0
    assert json.loads(summary_path(records).read_text())["model"] == f"org/tiny@{COMMIT}"
    assert cli.main([*argv, "--resume"]) == 0, capsys.readouterr().err
    argv[2] = f"org/tiny@{COMMIT[:7]}"
    assert cli.main([*argv, "--overwrite"]) == 0, capsys.readouterr().err
    assert json.loads(summary_path(records).read_text())["model"] == f"org/tiny@{COMMIT}"

    # Another download of the repo (refs/main moved): other weights, not the finished run; the
    # refusal names both commits and the id that finds the run (not only "holds a trained model").
    add_snapshot(cache, "org/tiny", model_files, commit=OTHER_COMMIT)
    capsys.readouterr()
    assert cli.main(["train", *train_argv("org/tiny", data, out)]) == 2
    assert (f"holds this command's run, finished, but trained from other weights: --model org/tiny@{COMMIT} there, "
            f"org/tiny@{OTHER_COMMIT} here" in capsys.readouterr().err)
    assert cli.main(["train", *train_argv(f"org/tiny@{COMMIT}", data, out)]) == 0
    assert "the run is already finished" in capsys.readouterr().out
    # Another difference besides the commit: the refusal as before.
    assert cli.main(["train", *train_argv("org/tiny", data, out), "--rho-max", "0.1"]) == 2
    assert "holds a trained model" in capsys.readouterr().err
    assert cli.main(["train", *train_argv("org/absent", data, tmp_path / "o2")]) == 2
    assert "train: --model: 'org/absent' is not a local directory" in capsys.readouterr().err
    # 7 digits that start two snapshots' commits: one line naming both, before anything loads.
    add_snapshot(cache, "org/tiny", model_files, commit=COMMIT[:7] + "f" * 33, refs=())
    assert cli.main(["train", *train_argv(f"org/tiny@{COMMIT[:7]}", data, tmp_path / "o3")]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "names no single snapshot" in error and f"the commits {COMMIT}, {COMMIT[:7]}{'f' * 33}" in error
    args = argparse.Namespace(model="org/tiny", data=None)
    assert run_metadata(args, load_model("org/tiny"), "cpu")["model"] == f"org/tiny@{OTHER_COMMIT}"


def test_a_lora_run_records_its_base_as_the_id_and_exports_from_the_cache(cache, model_files, tmp_path) -> None:
    pytest.importorskip("peft")
    from superthoughts_ext.export import EXPORT_FILE
    from superthoughts_ext.train import TrainOptions, train

    add_snapshot(cache, "org/tiny", model_files)
    out = tmp_path / "lora"
    train(TrainOptions(model="org/tiny", data=ROWS, output_dir=out, **{**FAST, "max_steps": 1, "save_steps": 1},
                       lora_r=4))
    record = json.loads((out / "checkpoint-1" / EXPORT_FILE).read_text())
    assert record["base_model"] == f"org/tiny@{COMMIT}"
    # A newer download since (refs/main moved) does not change the base the run adapted.
    add_snapshot(cache, "org/tiny", model_files, commit=OTHER_COMMIT)
    assert cli.main(["export", "--checkpoint", str(out / "checkpoint-1"), "--output", str(tmp_path / "merged")]) == 0
    assert same_weights(load_model(tmp_path / "merged"), load_model(out))
    # A resume given the id once main names other weights: refused, naming the id at the run's own commit.
    changed = load_plain(model_files, None, "test")
    with torch.no_grad():
        changed.model.layers[0].mlp.up_proj.weight.mul_(-1)
    changed.save_pretrained(tmp_path / "changed")
    make_tokenizer().save_pretrained(tmp_path / "changed")
    add_snapshot(cache, "org/tiny", tmp_path / "changed", commit="1" * 40)
    with pytest.raises(ValueError, match=rf"another base model .*the run that wrote it \(org/tiny@{COMMIT}\)"):
        train(TrainOptions(model="org/tiny", data=ROWS, output_dir=out, resume_from_checkpoint=True, lora_r=4,
                           **{**FAST, "max_steps": 2, "save_steps": 1}))


def test_eval_refuses_a_plain_cached_model_in_a_superthoughts_mode_before_it_loads(
        cache, model_files, tmp_path, monkeypatch, capsys) -> None:
    # The check read <id>/config.json, which is no file: a 7B id's weights loaded before the refusal.
    from superthoughts_ext import generate_cli

    monkeypatch.setattr(generate_cli, "load_checkpoint", lambda *a: pytest.fail("the model was loaded"))
    add_snapshot(cache, "org/tiny", model_files)
    problems = tmp_path / "amc.jsonl"
    problems.write_text(json.dumps({"id": 0, "problem": "what is 1 + 1", "answer": 2}) + "\n")
    argv = ["eval", "--bench", "amc23", "--data", str(problems), "--output", str(tmp_path / "run.jsonl")]
    assert cli.main([*argv, "--model", "org/tiny", "--mode", "pairs"]) == 2
    assert "org/tiny is a plain model; use --mode standard" in capsys.readouterr().err
    assert cli.main([*argv, "--model", "org/absent", "--mode", "superthoughts"]) == 2
    assert "--model: 'org/absent' is not a local directory" in capsys.readouterr().err


def test_eval_records_the_commit_it_loaded_when_a_download_moves_main_meanwhile(
        cache, model_files, tmp_path, monkeypatch) -> None:
    from superthoughts_ext import generate_cli
    from superthoughts_ext.evaluation import summary_path

    add_snapshot(cache, "org/tiny", model_files)
    load_checkpoint = generate_cli.load_checkpoint

    def load_then_download(*args):  # `hf download` on the login node, during the load
        loaded = load_checkpoint(*args)
        add_snapshot(cache, "org/tiny", model_files, commit=OTHER_COMMIT)
        return loaded

    monkeypatch.setattr(generate_cli, "load_checkpoint", load_then_download)
    problems, records = tmp_path / "amc.jsonl", tmp_path / "run.jsonl"
    problems.write_text(json.dumps({"id": 0, "problem": "what is 1 + 1", "answer": 2}) + "\n")
    assert cli.main(["eval", "--model", "org/tiny", "--bench", "amc23", "--data", str(problems), "--mode", "standard",
                     "--max-new-tokens", "2", "--device", "cpu", "--output", str(records), "--no-progress"]) == 0
    assert json.loads(summary_path(records).read_text())["model"] == f"org/tiny@{COMMIT}"
