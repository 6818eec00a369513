"""Hugging Face repo ids (``org/name``, ``org/name@revision``) read from the local hub cache.

Compute nodes of most GPU clusters have no network: a model is downloaded on a login node
(``hf download Qwen/Qwen2.5-Math-1.5B-Instruct``) into the hub cache, and every command then
takes the repo id where it takes a model directory. The id resolves to its snapshot folder
(``<cache>/models--org--name/snapshots/<commit>``) read from the cache's own layout, as
huggingface_hub writes it: ``refs/<branch or tag>`` holds a commit, ``snapshots/<commit>`` the
files (links into ``blobs/``). Nothing here opens a connection or downloads. An existing local
path of the same name always wins: ``out/st`` is a run's output folder when there is one.

The layout is read here rather than through huggingface_hub's offline `snapshot_download`, which
fails on layouts real caches have: a ref file ending in a newline (written by hand or by a
script), a revision that names a folder of refs (``@feature`` beside the branch ``feature/x``:
IsADirectoryError), and a commit abbreviated to the 7 digits `eval --table` shows.

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
# an optional @revision. A bare name ("gpt2") is left out: far more often it is a mistyped local
# folder than one of the few old ids without an organisation.
_REPO_PART = r"\w(?:[\w.-]*\w)?"
# A revision: a commit, or a branch or tag as git names refs ("/"-separated parts, e.g. refs/pr/1 or
# feature/x, none starting with "." or "-": no "." or ".." part reaching outside refs/, and none
# that `hf download --revision` would read as an option).
_REVISION = r"\w[\w.-]*(?:/\w[\w.-]*)*"
_REPO_SPEC = re.compile(rf"(?P<repo>{_REPO_PART}/{_REPO_PART})(?:@(?P<revision>{_REVISION}))?", re.ASCII)
_REPO_PART_MAX = 96  # the Hub's limit on the length of the namespace and of the name, each
_COMMIT = re.compile(r"[0-9a-f]{40}")  # a snapshot folder's name, as huggingface_hub writes it
# An abbreviated commit, as git and `eval --table` show one (7 digits), or a whole one in capitals.
_COMMIT_PREFIX = re.compile(r"[0-9a-f]{7,40}", re.IGNORECASE)

# What makes a snapshot loadable as a model besides config.json: one of these weight files (an
# index with every shard it names).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_NO_WEIGHTS = f"weights ({' or '.join(WEIGHT_FILES)})"  # what a folder with none of them lacks
# Files of weights, whichever format: a link among them whose blob was deleted matters only where
# loading needs it (`missing_model_files`): a repo's pytorch_model.bin, freed to save space beside
# its model.safetensors, is never read.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf",
                    ".index.json")
# The variables huggingface_hub.constants reads to place the cache, in its order of precedence.
_CACHE_VARIABLES = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


def repo_spec(text: str | os.PathLike) -> tuple[str, str] | None:
    """(repo id, revision; "main" when none is given) that `text` spells, e.g.
    ``"Qwen/Qwen2.5-Math-1.5B-Instruct@v1"`` -> ``("Qwen/Qwen2.5-Math-1.5B-Instruct", "v1")``;
    None for anything else (an absolute path, ``./x``, a bare name, ``a/b/c``)."""
    match = _REPO_SPEC.fullmatch(os.fspath(text))
    if match is None:
        return None
    repo, revision = match["repo"], match["revision"] or "main"
    if "--" in repo or ".." in repo or repo.endswith(".git") or \
            any(len(part) > _REPO_PART_MAX for part in repo.split("/")) or ".." in revision:
        return None
    return repo, revision


def hub_cache_dir() -> tuple[Path, str]:
    """(the hub cache folder, the setting that chose it), by huggingface_hub.constants' own rule,
    read from the environment now: HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else HF_HOME/hub,
    else XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub; a variable set to ""
    counts as set, as there (the cache `hf download` filled, however odd). huggingface_hub reads
    them once, at import: a variable set later, by a test or a launcher, would go unseen."""
    env = os.environ
    default_home = os.path.join(env.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
                                "huggingface")
    home = os.path.expandvars(os.path.expanduser(env.get("HF_HOME", default_home)))
    cache = env.get("HF_HUB_CACHE", env.get("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub")))
    chosen_by = next((variable for variable in _CACHE_VARIABLES if variable in env), "the default")
    return Path(os.path.expandvars(os.path.expanduser(cache))), chosen_by


@dataclass(frozen=True)
class CachedSnapshot:
    """One downloaded revision of a Hub model repo, as asked for (`revision`: a branch, tag or
    commit, whole or abbreviated) and as found: `commit` (all 40 digits) and `folder`,
    ``<cache>/models--org--name/snapshots/<commit>``."""

    repo_id: str
    revision: str
    commit: str
    folder: Path

    @property
    def name(self) -> str:
        """``org/name@<commit>``: the exact weights, wherever the cache is, loadable as an id."""
        return f"{self.repo_id}@{self.commit}"


def _download_command(repo_id: str, revision: str) -> str:
    if _COMMIT_PREFIX.fullmatch(revision) and not _COMMIT.fullmatch(revision):
        revision = "<the whole 40-digit commit>"  # a prefix may start several of the Hub's commits
    option = "" if revision == "main" else f" --revision {revision}"
    return f"`hf download {repo_id}{option}` (older huggingface_hub: `huggingface-cli download {repo_id}{option}`)"


def _snapshot_commits(repo: Path) -> list[str]:
    """The commits `repo` (``<cache>/models--org--name``) holds a snapshot folder of, sorted."""
    try:
        return sorted(p.name for p in (repo / "snapshots").iterdir() if _COMMIT.fullmatch(p.name) and p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _read_ref(repo: Path, ref: str) -> str | None:
    """The commit in ``refs/<ref>``, stripped: a ref written by hand or by a script often ends in a
    newline, which huggingface_hub would take as part of the folder's name. None where no file
    is there (a folder is not a ref: ``refs/feature`` holds the branch ``feature/x``)."""
    path = repo / "refs" / ref
    return path.read_text(encoding="utf-8", errors="replace").strip() if path.is_file() else None


def _snapshots_held(repo: Path, commits: list[str]) -> str:
    """The snapshots `repo` holds, for an error: each commit with the refs naming it."""
    if not commits:
        return "it has no snapshot"
    named: dict[str, list[str]] = {commit: [] for commit in commits}
    refs = repo / "refs"
    for path in sorted(refs.rglob("*")) if refs.is_dir() else ():
        ref = path.relative_to(refs).as_posix()  # refs/pr/1 as `@refs/pr/1` names it
        if (commit := _read_ref(repo, ref)) in named:
            named[commit].append(ref)
    return "its snapshots are " + ", ".join(f"{commit} ({', '.join(names)})" if names else commit
                                            for commit, names in named.items())


def _other_spelling(cache: Path, repo_id: str) -> str | None:
    """A repo the cache holds whose id differs from `repo_id` in case only: the Hub takes either
    spelling, the cache keeps the one downloaded, and a filesystem tells them apart."""
    wanted = f"models--{repo_id.replace('/', '--')}".lower()
    try:
        return next((p.name[len("models--"):].replace("--", "/", 1) for p in cache.iterdir()
                     if p.name.lower() == wanted), None)
    except OSError:
        return None


def find_snapshot(path: str | os.PathLike, where: str) -> CachedSnapshot | None:
    """The cached snapshot that `path` names as a repo id; None where `path` exists locally (a
    local folder of the same name wins) or is not spelled as one (`repo_spec`).

    The revision is a ref (``refs/<revision>``: a branch, a tag, ``refs/pr/1``), a whole commit,
    or an abbreviated one (7 hex digits or more) when a ref of that name is absent, as git takes it.
    FileNotFoundError starting with `where`, naming the id, the cache searched, the snapshots it
    holds of the repo and the download command, when the cache holds no such snapshot, or none
    single: an abbreviated commit that starts several."""
    spec = repo_spec(path)
    if spec is None or os.path.exists(path):
        return None
    repo_id, revision = spec
    cache, chosen_by = hub_cache_dir()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commits = _snapshot_commits(repo)
    ref = None if _COMMIT.fullmatch(revision) else _read_ref(repo, revision)
    if _COMMIT.fullmatch(revision) or ref is not None:
        found = [commit for commit in commits if commit == (ref or revision)]
    elif _COMMIT_PREFIX.fullmatch(revision):
        found = [commit for commit in commits if commit.startswith(revision.lower())]
    else:
        found = []
    if len(found) == 1:
        return CachedSnapshot(repo_id, revision, found[0], repo / "snapshots" / found[0])
    searched = f"the local hub cache {os.fspath(cache)} (chosen by {chosen_by}"  # ")" after a note
    if found:
        raise FileNotFoundError(
            f"{where}: {os.fspath(path)!r} names no single snapshot in {searched}): the commits "
            f"{', '.join(found)} of {repo_id} all start with {revision!r}; give more of its digits")
    if repo.is_dir():
        gone = f" (refs/{revision} names {ref}, whose snapshot is not there)" if ref else ""
        note = f"; it holds the repo, but not its revision {revision!r}{gone}: {_snapshots_held(repo, commits)}"
    elif spelled := _other_spelling(cache, repo_id):
        note = f"; it holds {spelled!r}, spelled otherwise: an id is looked up as it is spelled"
    else:
        note = ""
    raise FileNotFoundError(
        f"{where}: {os.fspath(path)!r} is not a local directory, nor a Hugging Face repo in {searched}{note}); "
        f"nothing is downloaded here: on a machine with network, into that cache (the same HF_HOME or "
        f"HF_HUB_CACHE), run {_download_command(repo_id, revision)}")


def missing_model_files(folder: Path) -> list[str]:
    """What a model folder lacks to load: config.json, any weights (`WEIGHT_FILES`), or shards
    its index names. A snapshot's files are links into the cache's blobs: one whose download was
    cut short has no link (or one to a removed blob), which `is_file` reports as absent."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    present = [name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        missing.append(_NO_WEIGHTS)
    for index in (name for name in present if name.endswith(".index.json")):
        try:
            shards = set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not an index: the loader's own error names the file
        missing.extend(sorted(name for name in shards if not (folder / name).is_file()))
    return missing


def dangling_links(folder: Path) -> list[str]:
    """The files of `folder` (its top level: what transformers reads) that are links to nothing:
    their blobs were deleted from the cache since the download (by hand, to free space)."""
    return sorted(p.name for p in folder.iterdir() if p.is_symlink() and not p.exists())


def resolve_model_path(path: str | os.PathLike, where: str, weights: bool = True) -> str | os.PathLike:
    """`path` itself, or the snapshot folder of the cached repo id it names (`find_snapshot`,
    whose FileNotFoundError it raises).

    FileNotFoundError naming what is missing, rather than a confusing error of transformers' or
    none at all, for a snapshot that lacks (`missing_model_files`, with `weights`; without, for a
    tokenizer, the folder as it is) config.json or weights (a download cut short, or of some files
    only), or holds any other file as a link to a deleted blob: transformers loads on without a
    generation_config.json (an Instruct model's stop tokens) or chat template it does not find."""
    snapshot = find_snapshot(path, where)
    if snapshot is None:
        return path
    gone = dangling_links(snapshot.folder)
    missing = missing_model_files(snapshot.folder) if weights else []
    missing += [name for name in gone if name not in missing and not name.endswith(_WEIGHT_SUFFIXES)]
    if missing:
        # Deleted weights are named where no format is left to load, not beside weights that load.
        deleted = [name for name in gone
                   if name in missing or (_NO_WEIGHTS in missing and name.endswith(_WEIGHT_SUFFIXES))]
        links = (f" ({', '.join(deleted)}: links to blobs deleted from {os.fspath(snapshot.folder.parent.parent)}"
                 "/blobs)") if deleted else ""
        raise FileNotFoundError(
            f"{where}: the cached snapshot of {snapshot.repo_id!r} ({os.fspath(snapshot.folder)}) lacks "
            f"{', '.join(missing)}{links}: its download was cut short, fetched some files only, or lost blobs "
            f"since; complete it on a machine with network: {_download_command(snapshot.repo_id, snapshot.revision)}")
    return snapshot.folder


def snapshot_name(path: str | os.PathLike) -> str | None:
    """``org/name@<commit>`` (all 40 digits, however the revision was given) for a cached repo id
    or for a folder that is one of the hub cache's snapshots (``.../models--org--name/snapshots/
    <commit>``), so that records name the weights the same way however they were given; None for
    any other path, or an id not cached."""
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
