"""run_info: what benchmark and demo results record about the code that produced them."""
from __future__ import annotations

import os
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


def test_a_symlink_at_the_lock_name_is_refused_not_written_through(tmp_path: Path) -> None:
    # A records folder from elsewhere with .st.jsonl.lock planted as a link: taking the lock
    # (eval, --regrade, train, demo, bench) truncated the file it named and wrote a pid into it.
    victim = tmp_path / "home" / ".bashrc"
    victim.parent.mkdir()
    victim.write_text("export PATH=...\n")
    runs = tmp_path / "colleague"
    runs.mkdir()
    (runs / ".st.jsonl.lock").symlink_to(victim)
    with pytest.raises(ValueError, match=r"regrade: .*\.st\.jsonl\.lock, the lock file of '.*st\.jsonl', is a symlink"):
        with run_info.output_lock(runs / "st.jsonl", "regrade"):
            pass
    assert victim.read_text() == "export PATH=...\n"


def test_a_lock_symlink_planted_after_the_check_is_refused_not_run_without_a_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The link appears between the check and the open: O_NOFOLLOW's ELOOP was taken for an
    # unwritable output, and the command ran holding no lock (a second one ran beside it).
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    lock = tmp_path / ".st.jsonl.lock"
    real_open = os.open

    def open_after_the_link_appears(path, flags, *args):
        if Path(path) == lock and not lock.is_symlink():
            lock.symlink_to(victim)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_after_the_link_appears)
    with pytest.raises(ValueError, match=r"eval: .*\.st\.jsonl\.lock, the lock file of '.*st\.jsonl', is a symlink"):
        with run_info.output_lock(tmp_path / "st.jsonl", "eval"):
            pass
    assert victim.read_text() == "keep\n"


def test_a_records_folder_that_is_a_symlink_is_locked_where_it_lies(tmp_path: Path) -> None:
    # Only the lock's own name is refused as a link: a folder linked elsewhere on purpose is not.
    (tmp_path / "disk").mkdir()
    (tmp_path / "records").symlink_to(tmp_path / "disk")
    with run_info.output_lock(tmp_path / "records" / "st.jsonl", "eval"):
        assert (tmp_path / "disk" / ".st.jsonl.lock").is_file()
        with pytest.raises(ValueError, match="is being written by pid"):
            with run_info.output_lock(tmp_path / "disk" / "st.jsonl", "eval"):
                pass


def test_processes_probing_one_output_at_once_leave_no_file_and_see_no_other_kind(tmp_path: Path) -> None:
    # The ranks of a torchrun job check at once that the output can be written. A probe that saw
    # no file, then opened one another probe had made and removed again, left an empty file (8
    # of 200 races of 4 threads); one that saw a file and found it gone when it looked at its kind
    # said the output "is not a regular file".
    import threading

    problems, left = [], 0
    for trial in range(100):
        path = tmp_path / f"run{trial}" / "st.jsonl"
        start = threading.Barrier(4)

        def probe() -> None:
            start.wait()
            problems.append(run_info.write_problem(path, replaced=True))

        threads = [threading.Thread(target=probe) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        left += path.exists()
    assert (left, [problem for problem in problems if problem is not None]) == (0, [])


def test_a_probe_leaves_a_file_that_was_there_and_refuses_what_is_not_a_file(tmp_path: Path) -> None:
    records = tmp_path / "st.jsonl"
    records.write_text("kept\n")
    assert run_info.write_problem(records) is None and records.read_text() == "kept\n"
    assert run_info.write_problem(tmp_path) == f"{tmp_path} is not a regular file"
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    assert run_info.write_problem(fifo) == f"{fifo} is not a regular file"
    new = tmp_path / "new" / "st.jsonl"
    assert run_info.write_problem(new) is None and not new.exists()
