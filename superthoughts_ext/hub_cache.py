"""Hugging Face repo ids (``org/name``, ``org/name@revision``) read from the local hub cache.

Compute nodes of most GPU clusters have no network: a model is downloaded on a login node
(``hf download Qwen/Qwen2.5-Math-1.5B-Instruct``) into the hub cache, and every command then
takes the repo id where it takes a model directory. The id resolves to its snapshot folder
(``<cache>/models--org--name/snapshots/<commit>``) through huggingface_hub's own offline lookup
(`snapshot_download` with ``local_files_only``), which never opens a connection; nothing here
downloads. An existing local path of the same name always wins: ``out/st`` is a run's output
folder when there is one.

A revision rides on the id (``org/name@v1.0``, ``org/name@<commit>``) rather than on a
``--revision`` flag of each command: one string then names the weights in every command and in
the Python API alike, and the name a record keeps (`snapshot_name`, ``org/name@<commit>``)
loads back as it is.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

# org/name as the Hub spells repo ids (huggingface_hub's validate_repo_id: each part ASCII letters,
# digits, "-", "_", "." neither starting nor ending with "-" or ".", and no "--" or ".."), then
# an optional @revision (a branch, tag or commit). A bare name ("gpt2") is left out: far more
# often it is a mistyped local folder than one of the few old ids without an organisation.
_REPO_PART = r"\w(?:[\w.-]*\w)?"
_REPO_SPEC = re.compile(rf"(?P<repo>{_REPO_PART}/{_REPO_PART})(?:@(?P<revision>[\w.][\w./-]*))?", re.ASCII)
_REPO_PART_MAX = 96  # the Hub's limit on the length of the namespace and of the name, each

# What makes a snapshot loadable as a model besides config.json: one of these weight files (an
# index with every shard it names).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def repo_spec(text: str | os.PathLike) -> tuple[str, str] | None:
    """(repo id, revision; "main" when none is given) that `text` spells, e.g.
    ``"Qwen/Qwen2.5-Math-1.5B-Instruct@v1"`` -> ``("Qwen/Qwen2.5-Math-1.5B-Instruct", "v1")``;
    None for anything else (an absolute path, ``./x``, a bare name, ``a/b/c``)."""
    match = _REPO_SPEC.fullmatch(os.fspath(text))
    if match is None:
        return None
    repo, revision = match["repo"], match["revision"] or "main"
    # ".." in a revision would name a file outside refs/ (huggingface_hub reads refs/<revision>).
    if "--" in repo or ".." in repo or repo.endswith(".git") or \
            any(len(part) > _REPO_PART_MAX for part in repo.split("/")) or ".." in revision:
        return None
    return repo, revision


def hub_cache_dir() -> tuple[Path, str]:
    """(the hub cache folder, the setting that chose it), read from the environment now, in
    huggingface_hub's order: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub,
    XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub. (huggingface_hub.constants reads
    them once, at import: a variable set later, by a test or a launcher, would go unseen.)"""
    for variable, suffix in (("HF_HUB_CACHE", ()), ("HUGGINGFACE_HUB_CACHE", ()), ("HF_HOME", ("hub",)),
                             ("XDG_CACHE_HOME", ("huggingface", "hub"))):
        if value := os.environ.get(variable):
            return Path(os.path.expandvars(os.path.expanduser(value)), *suffix), variable
    return Path.home() / ".cache" / "huggingface" / "hub", "the default"


@dataclass(frozen=True)
class CachedSnapshot:
    """One downloaded revision of a Hub model repo, as asked for (`revision`: a branch, tag or
    commit) and as found: `folder` is ``<cache>/models--org--name/snapshots/<commit>``."""

    repo_id: str
    revision: str
    commit: str
    folder: Path

    @property
    def name(self) -> str:
        """``org/name@<commit>``: the exact weights, wherever the cache is, loadable as an id."""
        return f"{self.repo_id}@{self.commit}"


def _download_command(repo_id: str, revision: str) -> str:
    option = "" if revision == "main" else f" --revision {revision}"
    return f"`hf download {repo_id}{option}` (older huggingface_hub: `huggingface-cli download {repo_id}{option}`)"


def find_snapshot(path: str | os.PathLike, where: str) -> CachedSnapshot | None:
    """The cached snapshot that `path` names as a repo id; None where `path` exists locally (a
    local folder of the same name wins) or is not spelled as one (`repo_spec`).
    FileNotFoundError starting with `where`, naming the id, the cache searched and the download
    command, when the cache does not hold it."""
    spec = repo_spec(path)
    if spec is None or os.path.exists(path):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, revision = spec
    cache, chosen_by = hub_cache_dir()
    try:
        # local_files_only: refs/<revision> and snapshots/<commit> read from the disk, no request.
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError as error:
        # IncompleteSnapshotError (huggingface_hub >= 1.x): a cached listing of the repo names files
        # the snapshot lacks, any file (a README left out by `--include`). `missing_model_files`
        # judges what loading a model needs.
        if incomplete := getattr(error, "snapshot_path", None):
            folder = Path(incomplete)
            return CachedSnapshot(repo_id, revision, folder.name, folder)
        held = (cache / f"models--{repo_id.replace('/', '--')}").is_dir()
        revision_note = f"; it holds the repo, but not its revision {revision!r}" if held else ""
        raise FileNotFoundError(
            f"{where}: {os.fspath(path)!r} is not a local directory, nor a Hugging Face repo in the local hub cache "
            f"{os.fspath(cache)} (chosen by {chosen_by}{revision_note}); nothing is downloaded here: on a machine "
            f"with network, into that cache (the same HF_HOME or HF_HUB_CACHE), run "
            f"{_download_command(repo_id, revision)}") from None
    return CachedSnapshot(repo_id, revision, folder.name, folder)


def missing_model_files(folder: Path) -> list[str]:
    """What a model folder lacks to load: config.json, any weights (`WEIGHT_FILES`), or shards
    its index names. A snapshot's files are links into the cache's blobs: one whose download was
    cut short has no link (or one to a removed blob), which `is_file` reports as absent."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    present = [name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        missing.append(f"weights ({' or '.join(WEIGHT_FILES)})")
    for index in (name for name in present if name.endswith(".index.json")):
        try:
            shards = set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not an index: the loader's own error names the file
        missing.extend(sorted(name for name in shards if not (folder / name).is_file()))
    return missing


def resolve_model_path(path: str | os.PathLike, where: str, weights: bool = True) -> str | os.PathLike:
    """`path` itself, or the snapshot folder of the cached repo id it names (`find_snapshot`,
    whose FileNotFoundError it raises). With `weights`, a snapshot without config.json or
    weights (a download cut short, or of some files only) is a FileNotFoundError naming what is
    missing, not a confusing error of transformers'; without (a tokenizer), the folder as it is."""
    snapshot = find_snapshot(path, where)
    if snapshot is None:
        return path
    if weights and (missing := missing_model_files(snapshot.folder)):
        raise FileNotFoundError(
            f"{where}: the cached snapshot of {snapshot.repo_id!r} ({os.fspath(snapshot.folder)}) lacks "
            f"{', '.join(missing)}: its download was cut short or fetched some files only; complete it on a machine "
            f"with network: {_download_command(snapshot.repo_id, snapshot.revision)}")
    return snapshot.folder


def snapshot_name(path: str | os.PathLike) -> str | None:
    """``org/name@<commit>`` for a cached repo id or for a folder that is one of the hub cache's
    snapshots (``.../models--org--name/snapshots/<commit>``), so that records name the weights
    the same way however they were given; None for any other path, or an id not cached."""
    try:
        snapshot = find_snapshot(path, "")
    except FileNotFoundError:
        return None
    if snapshot is not None:
        return snapshot.name
    folder = Path(os.path.realpath(path))
    repo_folder = folder.parent.parent
    if folder.parent.name != "snapshots" or repo_folder.parent != Path(os.path.realpath(hub_cache_dir()[0])):
        return None
    kind, _, repo = repo_folder.name.partition("--")
    spec = repo_spec(repo.replace("--", "/", 1)) if kind == "models" else None
    return None if spec is None else f"{spec[0]}@{folder.name}"
