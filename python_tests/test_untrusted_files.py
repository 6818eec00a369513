"""Model directories the user did not make: Python code shipped in one never runs.

transformers loads an architecture it lacks from the folder's own .py files when config.json (or
tokenizer_config.json) names them in `auto_map`, after asking on the terminal (input(), "[y/N]")
unless trust_remote_code is given. superthoughts passes it as False, so no answer can make a
downloaded folder run its code; the directory is refused with an error that says why.
"""
from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_modeling import make_backbone  # noqa: E402

from superthoughts_ext.checkpoint import load_plain, load_tokenizer  # noqa: E402
from superthoughts_ext.demo.tokenizer import build_tokenizer  # noqa: E402
from superthoughts_ext.modeling import SuperThoughtsForCausalLM, load_model  # noqa: E402
from superthoughts_ext.train_utils import attach_teacher, build_model  # noqa: E402


def custom_code_dir(root: Path, sentinel: Path) -> Path:
    """A tiny plain checkpoint whose configs name an architecture and a tokenizer transformers
    lacks, with the module that would define them: importing that module writes `sentinel`."""
    directory = root / "downloaded"
    make_backbone("qwen2").save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    (directory / "custom.py").write_text(f"import pathlib\npathlib.Path({str(sentinel)!r}).write_text('ran')\n")
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "custom_lm"
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel",
                          "AutoTokenizer": [None, "custom.CustomTokenizer"]}
    (directory / "config.json").write_text(json.dumps(config))
    # No class of transformers' own to fall back on: the tokenizer too is the folder's code.
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer_config.pop("tokenizer_class", None)
    tokenizer_config["auto_map"] = config["auto_map"]
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return directory


@pytest.fixture
def user_says_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user at a terminal who answers transformers' "run the custom code? [y/N]" with y."""
    monkeypatch.setattr(builtins, "input", lambda prompt="": "y")


LOADERS = {
    "load_model": lambda path: load_model(path),
    "from_base": lambda path: SuperThoughtsForCausalLM.from_base(str(path)),
    "train": lambda path: build_model(str(path), baseline=True, dtype=torch.float32, overrides={}),
    "train teacher": lambda path: attach_teacher(None, str(path), torch.float32),  # type: ignore[arg-type]
    "load_tokenizer": lambda path: load_tokenizer(path),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_directory_that_needs_its_own_code_is_refused_not_run(tmp_path: Path, user_says_yes: None,
                                                                 loader: str) -> None:
    sentinel = tmp_path / "code_ran"
    directory = custom_code_dir(tmp_path, sentinel)
    with pytest.raises(ValueError, match="runs no Python code from model directories"):
        LOADERS[loader](directory)
    assert not sentinel.exists()


class _RunsCode:
    """Unpickled, writes the file it names: what a malicious pytorch_model.bin holds."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return exec, (f"open({str(self.path)!r}, 'w').close()",)


def test_a_pickled_weights_file_holding_code_is_refused_in_one_line(tmp_path: Path) -> None:
    # transformers loads a .bin with torch.load(weights_only=True), which refuses the object
    # (already safe); its page-long UnpicklingError, offering weights_only=False, was a traceback.
    sentinel, directory = tmp_path / "code_ran", tmp_path / "downloaded"
    backbone = make_backbone("qwen2")
    backbone.save_pretrained(directory)
    (directory / "model.safetensors").unlink()
    torch.save({**backbone.state_dict(), "payload": _RunsCode(sentinel)}, directory / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pickled weights .* hold more than tensors.*Unsupported global: GLOBAL "
                                         r"exec was not an allowed global") as raised:
        load_model(directory)
    assert "\n" not in str(raised.value) and "weights_only" not in str(raised.value)
    assert "safe_globals" not in str(raised.value)
    assert not sentinel.exists()


def test_a_folder_named_after_trust_remote_code_keeps_its_own_error(tmp_path: Path) -> None:
    # Any ValueError that mentioned the word (here through the folder's name) was reported as a
    # refusal of the folder's Python code, hiding what was wrong: no model_type in config.json.
    directory = tmp_path / "qwen_no_trust_remote_code"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="Unrecognized model") as raised:
        load_plain(directory, None, "eval")
    assert "runs no Python code" not in str(raised.value)


def _weights_file_of_bytes(root: Path, data: bytes) -> Path:
    """A tiny plain checkpoint whose weights are a pytorch_model.bin holding `data`."""
    directory = root / "downloaded"
    make_backbone("qwen2").save_pretrained(directory)
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(data)
    return directory


def test_a_git_lfs_pointer_in_place_of_the_weights_is_named(tmp_path: Path) -> None:
    # A folder cloned without git-lfs: torch reads the pointer's text as pickle opcodes, and the
    # message said the weights held more than tensors.
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 1234\n"
    with pytest.raises(ValueError, match=r"pytorch_model\.bin is a Git LFS pointer, not the weights") as raised:
        load_model(_weights_file_of_bytes(tmp_path, pointer))
    assert "hold more than tensors" not in str(raised.value)


def test_what_the_unpickler_found_is_named_when_torch_puts_it_on_a_line_of_its_own(tmp_path: Path) -> None:
    # torch writes "WeightsUnpickler error: \n\nUnsupported operand 103\n\n": the line of the
    # marker was read alone, and the message said "not weights alone" for every such file.
    with pytest.raises(ValueError, match=r"hold more than tensors.*refused \(Unsupported operand 103\)"):
        load_model(_weights_file_of_bytes(tmp_path, b"\x80\x02garbage" * 10))
