"""run_info: what benchmark and demo results record about the code that produced them."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from superthoughts_ext import run_info


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_git_commit_says_when_the_tree_differs_from_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_info, "_CHECKOUT", tmp_path)
    assert run_info.git_commit() == "unknown"  # not a checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "kernel.py").write_text("x = 1\n")
    git(tmp_path, "add", "kernel.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert run_info.git_commit() == head
    (tmp_path / "notes.txt").write_text("untracked files are not the code that ran\n")
    assert run_info.git_commit() == head
    (tmp_path / "kernel.py").write_text("x = 2\n")  # measured code that is not the commit
    assert run_info.git_commit() == f"{head}-dirty"


def test_git_commit_of_an_install_inside_another_checkout_is_unknown(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A venv inside the user's own project: git would walk up and report that project's HEAD.
    git(tmp_path, "init", "-q")
    (tmp_path / "app.py").write_text("x = 1\n")
    git(tmp_path, "add", "app.py")
    git(tmp_path, "commit", "-q", "-m", "the user's project")
    site = tmp_path / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    monkeypatch.setattr(run_info, "_CHECKOUT", site)
    assert run_info.git_commit() == "unknown"
