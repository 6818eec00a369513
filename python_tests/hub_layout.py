"""A Hugging Face hub cache built by hand in a test's folder, as huggingface_hub lays it out
(models--org--name/refs/<ref> holding a commit, snapshots/<commit>/ with the files, as links into
blobs/ or as plain files), and fixtures that point HF_HUB_CACHE at it and refuse the network."""
from __future__ import annotations

import hashlib
import shutil
import socket
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture
def no_network(monkeypatch):
    """Every connection refused: a lookup that went online fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was opened: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache that HF_HUB_CACHE names."""
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    return folder


def add_snapshot(cache: Path, repo_id: str, files: Path, commit: str = COMMIT, refs: tuple[str, ...] = ("main",),
                 links: bool = True, only: tuple[str, ...] | None = None) -> Path:
    """`files` (or the names in `only`) as snapshot `commit` of `repo_id`, which `refs` point at;
    with `links`, as huggingface_hub writes them: blobs named by their hash and relative links."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    for source in sorted(files.iterdir()):
        if only is not None and source.name not in only:
            continue
        if links:
            blob = repo / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
            blob.parent.mkdir(exist_ok=True)
            shutil.copyfile(source, blob)
            (snapshot / source.name).symlink_to(Path("..", "..", "blobs", blob.name))
        else:
            shutil.copyfile(source, snapshot / source.name)
    return snapshot
