"""The hub cache layouts real users have, read by `superthoughts_ext.hub_cache` with no model to
load and no network: repo ids as the Hub spells them, revisions (refs with slashes, abbreviated
commits, a ref ending in a newline), snapshots whose blobs were deleted, the cache folder's
environment variables, and a local folder named like an id. Where huggingface_hub's own offline
lookup agrees, it is the oracle; where it fails on a real layout, the test says how.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hub_layout import COMMIT, OTHER_COMMIT, add_snapshot, cache, no_network  # noqa: F401 (fixtures)

from superthoughts_ext import hub_cache

huggingface_hub = pytest.importorskip("huggingface_hub")

pytestmark = pytest.mark.usefixtures("no_network")

# Shares its first 7 digits with COMMIT: "org/tiny@0123456" names no single snapshot beside it.
NEIGHBOUR_COMMIT = "0123456" + "f" * 33


@pytest.fixture
def model_folder(tmp_path) -> Path:
    """A model folder's files whose contents nothing here reads: the layout is what is tested. Each
    file its own contents: blobs are named by their hash, so equal files would share one."""
    folder = tmp_path / "files"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "pytorch_model.bin"):
        (folder / name).write_text(name)
    return folder


def found(spec: str) -> str:
    """The commit of the snapshot `spec` names."""
    snapshot = hub_cache.find_snapshot(spec, "test")
    assert snapshot is not None, spec
    assert snapshot.folder.name == snapshot.commit and snapshot.name == f"{spec.split('@')[0]}@{snapshot.commit}"
    return snapshot.commit


def refused(spec: str) -> str:
    with pytest.raises(FileNotFoundError) as error:
        hub_cache.find_snapshot(spec, "--model")
    return str(error.value)


@pytest.mark.parametrize("repo_id", [
    "Qwen/Qwen2.5-Math-1.5B-Instruct", "01-ai/Yi-1.5-6B", "meta-llama/Llama-3.1-8B", "my_org/my_model.v2",
    "a.b/c_d-e", "org/_name", "org/name-", "org/-name", "org/.name", "org/name.", "org/na--me", "org/na..me",
    "org/name.git", "org/caf\u00e9", "o/" + "n" * 96, "o/" + "n" * 97, "n" * 96 + "/o", "name", "a/b/c",
    "org/na me", "/abs/org/name", "./org/name", "org--x/name", "org/..", ""])
def test_repo_ids_as_the_hub_spells_them(repo_id) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
        valid = "/" in repo_id  # a bare name is a local folder here, as documented
    except HFValidationError:
        valid = False
    assert hub_cache.repo_spec(repo_id) == ((repo_id, "main") if valid else None)
    assert hub_cache.repo_spec(f"{repo_id}@v1.0") == ((repo_id, "v1.0") if valid else None)


def test_revisions_spelled_as_git_names_refs() -> None:
    for revision in ("refs/pr/1", "feature/x", "v1.0", "release_2024-01", COMMIT, "0123456"):
        assert hub_cache.repo_spec(f"org/name@{revision}") == ("org/name", revision)
    # A part starting with "." or "-" (outside refs/, or an option to `hf download --revision`), an
    # empty part: not an id, so a local path.
    for revision in ("", ".", "..", "../../x", "a/../b", "feature/x/", "a//b", "feature/.x", "-x", "x/-y"):
        assert hub_cache.repo_spec(f"org/name@{revision}") is None, revision


def test_refs_with_slashes_are_found_as_huggingface_hub_finds_them(cache, model_folder) -> None:
    from huggingface_hub import snapshot_download

    add_snapshot(cache, "org/tiny", model_folder, refs=("main", "refs/pr/1"))
    add_snapshot(cache, "org/tiny", model_folder, commit=OTHER_COMMIT, refs=("feature/x", "v1.0"))
    for revision, commit in (("main", COMMIT), ("refs/pr/1", COMMIT), ("feature/x", OTHER_COMMIT),
                             ("v1.0", OTHER_COMMIT), (COMMIT, COMMIT)):
        assert found(f"org/tiny@{revision}") == commit
        assert Path(snapshot_download("org/tiny", revision=revision, cache_dir=cache, local_files_only=True)) == \
            cache / "models--org--tiny" / "snapshots" / commit
    # A folder of refs is no ref (huggingface_hub 1.33's snapshot_download: IsADirectoryError); the
    # refusal lists what is held.
    for revision in ("feature", "refs/pr", "refs"):
        message = refused(f"org/tiny@{revision}")
        assert f"it holds the repo, but not its revision {revision!r}: its snapshots are {COMMIT} (main, refs/pr/1), " \
               f"{OTHER_COMMIT} (feature/x, v1.0)" in message
        assert f"`hf download org/tiny --revision {revision}`" in message and "\n" not in message


def test_a_ref_ending_in_a_newline(cache, model_folder) -> None:
    # Written by hand or by a script (`echo $commit > refs/main`); huggingface_hub 1.33 reads the
    # newline as part of the commit and finds no snapshot (scan_cache_dir: "missing commit hashes").
    snapshot = add_snapshot(cache, "org/tiny", model_folder, refs=())
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(COMMIT + "\n")
    assert found("org/tiny") == COMMIT and hub_cache.snapshot_name("org/tiny") == f"org/tiny@{COMMIT}"


def test_an_abbreviated_commit(cache, model_folder) -> None:
    add_snapshot(cache, "org/tiny", model_folder)
    add_snapshot(cache, "org/tiny", model_folder, commit=OTHER_COMMIT, refs=("v1",))
    # The 7 digits `eval --table` shows, more of them, in capitals: the whole commit found, and kept.
    for revision in (COMMIT[:7], COMMIT[:12], COMMIT.upper(), OTHER_COMMIT[:7]):
        assert found(f"org/tiny@{revision}") == (COMMIT if revision.lower() in COMMIT else OTHER_COMMIT)
    assert hub_cache.snapshot_name(f"org/tiny@{COMMIT[:7]}") == f"org/tiny@{COMMIT}"
    # Ambiguous: one line naming the commits it starts, which a longer prefix tells apart.
    add_snapshot(cache, "org/tiny", model_folder, commit=NEIGHBOUR_COMMIT, refs=())
    message = refused(f"org/tiny@{COMMIT[:7]}")
    assert message == (f"--model: 'org/tiny@{COMMIT[:7]}' names no single snapshot in the local hub cache {cache} "
                       f"(chosen by HF_HUB_CACHE): the commits {COMMIT}, {NEIGHBOUR_COMMIT} of org/tiny all start "
                       f"with {COMMIT[:7]!r}; give more of its digits")
    assert found(f"org/tiny@{COMMIT[:8]}") == COMMIT and hub_cache.snapshot_name(f"org/tiny@{COMMIT[:7]}") is None
    # None: the snapshots held are named; the Hub is asked for a whole commit, not the prefix.
    message = refused("org/tiny@abcdef0")
    assert f"not its revision 'abcdef0': its snapshots are {COMMIT} (main), {NEIGHBOUR_COMMIT}, {OTHER_COMMIT} (v1)" \
        in message
    assert "`hf download org/tiny --revision <the whole 40-digit commit>`" in message
    # Fewer than 7 digits: a branch or tag name only. A ref of a prefix's name wins, as in git.
    assert "not its revision '012345'" in refused("org/tiny@012345")
    add_snapshot(cache, "org/tagged", model_folder, refs=("main",))
    add_snapshot(cache, "org/tagged", model_folder, commit=OTHER_COMMIT, refs=(COMMIT[:7],))
    assert found(f"org/tagged@{COMMIT[:7]}") == OTHER_COMMIT


def test_a_ref_whose_snapshot_is_gone_and_an_id_spelled_otherwise(cache, model_folder) -> None:
    snapshot = add_snapshot(cache, "Org/Tiny", model_folder, refs=("main", "v1"))
    (snapshot.parent.parent / "refs" / "v1").write_text(OTHER_COMMIT)
    assert f"not its revision 'v1' (refs/v1 names {OTHER_COMMIT}, whose snapshot is not there): its snapshots " \
           f"are {COMMIT} (main)" in refused("Org/Tiny@v1")
    # The Hub takes either case; the cache keeps the spelling downloaded.
    assert "it holds 'Org/Tiny', spelled otherwise" in refused("org/tiny")
    assert "holds" not in refused("org/other")


def test_links_to_deleted_blobs(cache, model_folder) -> None:
    snapshot = add_snapshot(cache, "org/tiny", model_folder)
    assert hub_cache.resolve_model_path("org/tiny", "test") == snapshot
    # A repo's weights in another format, deleted to free space beside those that load: never read.
    (snapshot / "pytorch_model.bin").resolve().unlink()
    assert hub_cache.resolve_model_path("org/tiny", "test") == snapshot
    # A file transformers would load on without (silently its defaults) or fail on obscurely: named.
    (snapshot / "generation_config.json").resolve().unlink()
    for weights in (True, False):
        with pytest.raises(FileNotFoundError, match=r"^test: the cached snapshot of 'org/tiny' \(.*\) lacks "
                                                    r"generation_config.json \(generation_config.json: links to "
                                                    rf"blobs deleted from {cache}/models--org--tiny/blobs\): .*"
                                                    r"lost blobs since.*`hf download org/tiny`"):
            hub_cache.resolve_model_path("org/tiny", "test", weights=weights)
    # The weights that load deleted: named beside what they are.
    (snapshot / "model.safetensors").resolve().unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks weights \(.*\), generation_config.json \("
                                                r"generation_config.json, model.safetensors, pytorch_model.bin: "
                                                r"links to blobs deleted"):
        hub_cache.resolve_model_path("org/tiny", "test")
    assert hub_cache.dangling_links(snapshot) == ["generation_config.json", "model.safetensors", "pytorch_model.bin"]


def test_a_local_folder_named_like_an_id_wins(cache, model_folder, tmp_path, monkeypatch) -> None:
    add_snapshot(cache, "org/tiny", model_folder)
    monkeypatch.chdir(tmp_path)
    for local in ("org/tiny", f"org/tiny@{COMMIT[:7]}"):
        assert hub_cache.find_snapshot(local, "test") is not None
        (tmp_path / local).mkdir(parents=True)
        assert hub_cache.find_snapshot(local, "test") is None
        assert hub_cache.resolve_model_path(local, "test") == local and hub_cache.snapshot_name(local) is None


# The cache folder under each setting: HOME always, then the variables huggingface_hub reads.
CACHE_SETTINGS = [
    {}, {"XDG_CACHE_HOME": "/xdg"}, {"HF_HOME": "/hf", "XDG_CACHE_HOME": "/xdg"},
    {"HUGGINGFACE_HUB_CACHE": "/legacy", "HF_HOME": "/hf"}, {"HF_HUB_CACHE": "/c", "HUGGINGFACE_HUB_CACHE": "/legacy"},
    {"HF_HOME": "~/hf"}, {"HF_HUB_CACHE": "$SCRATCH/hub", "SCRATCH": "/scratch"}, {"XDG_CACHE_HOME": "~/xdg"},
    # Set but empty counts as set there (a relative folder), not as unset.
    {"HF_HUB_CACHE": "", "HF_HOME": "/hf"}, {"HF_HOME": ""}, {"XDG_CACHE_HOME": ""},
]


def test_the_cache_folder_follows_huggingface_hub(tmp_path, monkeypatch) -> None:
    # huggingface_hub.constants reads the environment at import: one process reloads it per setting.
    script = ("import importlib, json, os, sys; import huggingface_hub.constants as c; out = []\n"
              "for env in json.load(sys.stdin):\n"
              "    os.environ.clear(); os.environ.update(env); out.append(importlib.reload(c).HF_HUB_CACHE)\n"
              "print(json.dumps(out))")
    settings = [{"HOME": str(tmp_path), **setting} for setting in CACHE_SETTINGS]
    theirs = json.loads(subprocess.run([sys.executable, "-c", script], input=json.dumps(settings), text=True,
                                       capture_output=True, check=True).stdout)
    for setting, their_folder in zip(settings, theirs, strict=True):
        for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "SCRATCH"):
            monkeypatch.delenv(variable, raising=False)
        for variable, value in setting.items():
            monkeypatch.setenv(variable, value)
        folder, chosen_by = hub_cache.hub_cache_dir()
        assert folder == Path(their_folder), setting
        named = [v for v in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME") if v in setting]
        assert chosen_by == (named[0] if named else "the default"), setting
    assert Path(theirs[0]) == tmp_path / ".cache" / "huggingface" / "hub"
    assert theirs[2:5] == ["/hf/hub", "/legacy", "/c"] and theirs[6] == "/scratch/hub"
