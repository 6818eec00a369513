"""Where the processes of a torchrun evaluation wait for each other (`superthoughts_ext.eval_meetings`):
a signal sent to one rank that waits for a slower one ends it at once (a real 2-process torchrun
run on the CPU), one killed outright in a run started without torchrun stops the one waiting for it
once its heartbeat is silent, a plain `superthoughts eval` in a shell with another job's WORLD_SIZE
exported says what it waits for and gives up, and the meeting's timeout, a peer that left, the
silence judged on the waiter's own clock and a heartbeat whose store goes, in one process.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import pytest

pytest.importorskip("math_verify")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_eval_distributed import checkpoint, eval_argv, tokenizer, torchrun_command  # noqa: E402, F401
from test_train import free_port  # noqa: E402

from superthoughts_ext import eval_meetings  # noqa: E402
from superthoughts_ext.eval_ranks import OtherRankFailed  # noqa: E402

# Rank 0 is still decoding (a minute) when rank 1, its share done, waits for it where the ranks
# meet; rank 1 writes its pid as it starts waiting, and the time it exits.
SLOW_RANK_0 = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from superthoughts_ext import eval_cli, evaluation
    from superthoughts_ext.generate import generate
    rank, marks = int(os.environ["RANK"]), Path(sys.argv[1])
    slept = []
    def slow_on_rank_0(*args, **kwargs):
        if rank == 0 and not slept:
            slept.append(time.sleep(60))
        return generate(*args, **kwargs)
    meet = evaluation.gather
    def waiting(ranks, value):
        if rank == 1:
            (marks / "waiting").write_text(str(os.getpid()))
        return meet(ranks, value)
    evaluation._default_generate = lambda: slow_on_rank_0
    evaluation.gather = waiting
    try:
        status = eval_cli.main(sys.argv[2:])
    finally:
        if rank == 1:
            (marks / "exited").write_text(repr(time.time()))
    sys.exit(status)
""")


@pytest.mark.parametrize("signum, said", [(signal.SIGTERM, "terminated (SIGTERM)"), (signal.SIGINT, "interrupted")],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_a_rank_waiting_for_the_others_ends_it_at_once(checkpoint, tmp_path, signum, said):
    script, marks = tmp_path / "slow_rank_0.py", tmp_path / "marks"
    script.write_text(SLOW_RANK_0)
    marks.mkdir()
    cmd, env = torchrun_command(eval_argv(checkpoint, tmp_path / "st.jsonl"), [str(script), str(marks)])
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (marks / "waiting").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (marks / "waiting").exists(), proc.communicate()[1][-4000:]
        time.sleep(1.0)  # rank 1 is inside the wait by now
        sent = time.time()
        os.kill(int((marks / "waiting").read_text()), signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    # Before: rank 1 ran its handler only once rank 0 came, about a minute later.
    assert float((marks / "exited").read_text()) - sent < 5, stderr[-4000:]
    assert f"superthoughts eval: {said}" in stderr and proc.returncode != 0


# A shell with another job's variables exported: no torchrun, nobody else comes.
STRAY = textwrap.dedent("""
    import sys
    from datetime import timedelta
    from superthoughts_ext import eval_cli, eval_meetings
    eval_meetings.FIRST_MEET_TIMEOUT = timedelta(seconds=3)
    eval_meetings.NOTICE_AFTER = 0.5
    sys.exit(eval_cli.main(sys.argv[1:]))
""")


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_plain_eval_with_a_stray_world_size_says_what_it_waits_for(checkpoint, tmp_path, rank):
    script = tmp_path / "stray.py"
    script.write_text(STRAY)
    port = free_port()
    env = {name: value for name, value in torchrun_command([], [])[1].items() if not name.startswith("TORCHELASTIC")}
    env.update(WORLD_SIZE="2", RANK=rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(script), *eval_argv(checkpoint, tmp_path / "st.jsonl")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 2 and time.monotonic() - started < 60, proc.stderr[-4000:]
    said = "superthoughts eval" + (" (rank 1)" if rank == "1" else "")
    lines = [line for line in proc.stderr.splitlines() if line.startswith(said)]
    assert lines[0].startswith(f"{said}: waiting for the 1 other process of WORLD_SIZE=2 at 127.0.0.1:{port} (not "
                               "started by torchrun) for at most 3 seconds; Ctrl-C stops it; to run one process "
                               "alone: unset WORLD_SIZE RANK MASTER_ADDR MASTER_PORT"), proc.stderr[-4000:]
    assert lines[1:] == [(f"{said}: error: WORLD_SIZE=2, not started by torchrun: rank(s) [{1 - int(rank)}] did not "
                          f"come within 3 seconds to 127.0.0.1:{port}; to run one process alone: unset WORLD_SIZE "
                          "RANK MASTER_ADDR MASTER_PORT")]
    assert not (tmp_path / "st.jsonl").exists()


# Started by hand (no torchrun to stop the others): rank 1 is still decoding when it is killed
# outright, rank 0 (the store's host) waits for it where the ranks meet, with a bound of 3 s
# (heartbeats every 0.5 s) in place of a minute.
KILLED_RANK_1 = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from superthoughts_ext import eval_cli, eval_meetings, evaluation
    from superthoughts_ext.generate import generate
    eval_meetings.SILENT_FOR, eval_meetings.BEAT_EVERY = 3.0, 0.5
    rank, marks = int(os.environ["RANK"]), Path(sys.argv[1])
    def stuck_on_rank_1(*args, **kwargs):
        if rank == 1:
            (marks / "decoding").write_text(str(os.getpid()))
            time.sleep(600)
        return generate(*args, **kwargs)
    meet = evaluation.gather
    def waiting(ranks, value):
        if rank == 0:
            (marks / "waiting").write_text("")
        return meet(ranks, value)
    evaluation._default_generate = lambda: stuck_on_rank_1
    evaluation.gather = waiting
    sys.exit(eval_cli.main(sys.argv[2:]))
""")


def test_a_rank_killed_outright_without_torchrun_stops_the_one_waiting_for_it(checkpoint, tmp_path):
    script, marks = tmp_path / "killed_rank_1.py", tmp_path / "marks"
    script.write_text(KILLED_RANK_1)
    marks.mkdir()
    env = {name: value for name, value in torchrun_command([], [])[1].items() if not name.startswith("TORCHELASTIC")}
    env.update(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    argv = [sys.executable, str(script), str(marks), *eval_argv(checkpoint, tmp_path / "st.jsonl")]
    rank_0, rank_1 = (subprocess.Popen(argv, env={**env, "RANK": rank}, cwd=tmp_path, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True) for rank in "01")
    try:
        deadline = time.monotonic() + 180
        while not ((marks / "waiting").exists() and (marks / "decoding").exists()) and time.monotonic() < deadline:
            assert rank_0.poll() is None and rank_1.poll() is None, rank_0.communicate()[1][-4000:]
            time.sleep(0.1)
        time.sleep(1.0)  # rank 0 is inside the wait by now, and has seen rank 1's heartbeats
        os.kill(int((marks / "decoding").read_text()), signal.SIGKILL)
        killed = time.monotonic()
        # Before: rank 0 waited for MEET_TIMEOUT (24 hours); gloo is not reached while it waits.
        _, stderr = rank_0.communicate(timeout=60)
        waited = time.monotonic() - killed
    finally:
        rank_0.kill()
        rank_1.kill()
    assert 3.0 <= waited < 20, stderr[-4000:]
    assert rank_0.returncode == 2 and stderr.splitlines()[-1].startswith(
        "superthoughts eval: error: rank(s) [1] stopped answering: no sign of life for 3 seconds"), stderr[-4000:]
    assert "Traceback" not in stderr and "Exception in thread" not in stderr


# ---------------------------------------------------------------- one meeting, one process


def test_a_meeting_waits_for_every_rank_until_its_timeout(monkeypatch):
    store = torch.distributed.HashStore()
    monkeypatch.setattr(eval_meetings, "MEET_TIMEOUT", timedelta(seconds=0.3))
    rank_0, rank_1 = eval_meetings.Meetings(store, 0, 2), eval_meetings.Meetings(store, 1, 2)
    rank_1.store.set("meeting1/rank1", "")  # rank 1 came first to the first meeting
    rank_0.meet()
    started = time.monotonic()
    with pytest.raises(OtherRankFailed, match=r"rank\(s\) \[1\] did not come within 0.3 seconds"):
        rank_0.meet()
    assert 0.3 <= time.monotonic() - started < 2
    # A rank that stopped (an error of its own, a signal) and left: the others stop at once.
    rank_1.leave()
    started = time.monotonic()
    with pytest.raises(OtherRankFailed, match=r"rank\(s\) \[1\] stopped"):
        rank_0.meet()
    assert time.monotonic() - started < 0.3
    rank_0.leave()  # its heartbeat stops
    rank_0.heartbeat.join(timeout=5)
    assert not rank_0.heartbeat.is_alive()


def test_a_waiting_rank_takes_a_silent_one_for_dead_by_its_own_clock():
    store, now = torch.distributed.HashStore(), [1000.0]
    heartbeats = eval_meetings.Heartbeats(store, clock=lambda: now[0])
    assert heartbeats.due() and heartbeats.silent([1, 2]) == []  # the counts as they are now
    assert not heartbeats.due()
    for _ in range(23):  # 57.5 s: rank 2 beats, rank 1 not
        now[0] += 2.5
        store.add("alive/rank2", 1)
        assert heartbeats.due() and heartbeats.silent([1, 2]) == []
    now[0] += 2.5
    assert heartbeats.silent([1, 2]) == [1]
    # This process did not run for 10 minutes itself (a suspended job): nor maybe did rank 1, whose
    # silence counts from now.
    now[0] += 600
    assert heartbeats.silent([1]) == []
    now[0] += 2.5
    assert heartbeats.silent([1]) == []


def test_the_heartbeat_ends_quietly_where_the_store_host_goes(monkeypatch, capfd):
    monkeypatch.setattr(eval_meetings, "BEAT_EVERY", 0.05)
    host = torch.distributed.TCPStore("127.0.0.1", free_port(), 1, is_master=True, wait_for_workers=False,
                                      timeout=timedelta(seconds=10))
    meetings = eval_meetings.Meetings(torch.distributed.TCPStore(host.host, host.port, 1, is_master=False,
                                                                 timeout=timedelta(seconds=10)), 0, 1)
    meetings.meet()
    beats = meetings.store.add("alive/rank0", 0)
    time.sleep(0.5)
    assert meetings.store.add("alive/rank0", 0) > beats and meetings.heartbeat.is_alive()
    del host  # the host's process is gone: the thread's next beat fails
    meetings.heartbeat.join(timeout=10)
    assert not meetings.heartbeat.is_alive()
    assert "Exception in thread" not in capfd.readouterr().err
