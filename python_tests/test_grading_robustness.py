"""Grading under hostile conditions: bad arguments, an interrupted grade, degenerate model
outputs (thousands of boxes, deeply nested font commands) and LaTeX digit grouping.
"""
from __future__ import annotations

import math
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("math_verify")

from superthoughts_ext import grading, grading_numbers, grading_worker  # noqa: E402
from superthoughts_ext.eval_data import Problem  # noqa: E402
from superthoughts_ext.eval_records import grade_output  # noqa: E402
from superthoughts_ext.grading import extract_answer, extract_choice, is_correct  # noqa: E402


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("58\\,500", "58,500", True),  # MATH500 test/counting_and_probability/737
        ("10\\,080", "10,\\!080", True),  # test/counting_and_probability/508
        ("32\\,348", "\\$32,\\!348", True),
        ("1\\;000", "1,000", True),
        ("1~000", "1,000", True),
        ("1\\ 000", "1000", True),
        ("58\\,500", "558", False),  # was read as the sum 58 + 500
        ("1\\,000\\,000", "10^6", True),
        ("(2,\\,3)", "(2, 3)", True),  # a space after a comma separates, it does not group
    ],
)
def test_latex_space_between_digits_groups_them(prediction: str, reference: str, expected: bool) -> None:
    assert is_correct(prediction, reference) is expected


@pytest.mark.parametrize("answer", ["2^3\\,5", "\\frac12\\,3", "10^3\\,5", "2\\ 1/2", "x_1\\,000", "1.5\\,000",
                                    "1234\\,567", "(1,\\,2)"])
def test_spaces_that_group_no_thousands_are_left_to_math_verify(answer: str) -> None:
    # Only one to three digits then groups of exactly three, outside another token, are joined:
    # "2^3\\,5" (40) read as 2^35 when every space between digits went.
    assert grading_worker._as_latex(answer) == "\\boxed{" + answer + "}"


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"bench": "gpqa"}, ValueError, "unknown bench 'gpqa'; known: amc23, gpqa_diamond"),
        ({"bench": None}, ValueError, "unknown bench None"),
        ({"timeout": math.nan}, ValueError, "timeout must be a finite number of seconds > 0, got nan"),
        ({"timeout": math.inf}, ValueError, "got inf"),
        ({"timeout": "5"}, ValueError, "got '5'"),
        ({"timeout": True}, ValueError, "got True"),
        ({"options": ["1", None, "3", "4"]}, TypeError, r"options must be strs, got \['str', 'NoneType'"),
    ],
)
def test_bad_grading_arguments_are_named(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        is_correct("1", "1", **kwargs)


def test_a_prediction_that_is_no_text_is_named() -> None:
    with pytest.raises(TypeError, match="prediction must be a str or None, got int"):
        is_correct(5, "5")  # type: ignore[arg-type]


def test_an_interrupted_worker_start_does_not_shift_later_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = grading_worker._WORKER
    worker.close()
    real_read_line = worker._read_line

    def interrupted(timeout_s: float) -> object:
        raise KeyboardInterrupt  # Ctrl-C while the worker imports math-verify: its "ready" stays unread

    monkeypatch.setattr(worker, "_read_line", interrupted)
    with pytest.raises(KeyboardInterrupt):
        grading_worker.math_equal("1", "1", 5.0)
    monkeypatch.setattr(worker, "_read_line", real_read_line)
    assert grading_worker.math_equal("1", "2", 5.0) is False  # read "ready" (True) before
    assert grading_worker.math_equal("3", "3", 5.0) is True


def test_a_numpy_timeout_is_taken() -> None:
    np = pytest.importorskip("numpy")
    assert is_correct("1/2", "0.5", timeout=np.float32(5)) is True  # json could not send it to the worker


def test_an_interrupted_grade_does_not_shift_later_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = grading_worker._WORKER
    assert grading_worker.math_equal("1", "1", 5.0)  # the worker is up

    def interrupted(timeout_s: float) -> object:
        raise KeyboardInterrupt  # Ctrl-C while the worker computes its answer

    monkeypatch.setattr(worker, "_read_line", interrupted)
    with pytest.raises(KeyboardInterrupt):
        grading_worker.math_equal("\\frac{1}{2}", "0.5", 5.0)  # its answer, True, would stay unread
    monkeypatch.undo()
    # Each answer is this call's own, not the one before it.
    assert grading_worker.math_equal("2", "3", 5.0) is False
    assert grading_worker.math_equal("\\frac{1}{3}", "\\frac{2}{6}", 5.0) is True
    assert grading_worker.math_equal("1/3", "0.5", 5.0) is False


def start_worker() -> subprocess.Popen[bytes]:
    """A grading worker started as `math_equal` starts it, stderr captured; once it is ready."""
    worker = subprocess.Popen(grading_worker.worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert worker.stdout.readline() == b'"ready"\n'
    return worker


def test_a_worker_whose_caller_died_mid_grade_exits_quietly() -> None:
    # The caller killed (SIGTERM, OOM) while its worker grades: the worker's answer hits a closed
    # pipe. It printed a BrokenPipeError traceback onto the terminal the two share, and exited 1.
    worker = start_worker()
    worker.stdout.close()  # the caller is gone: nobody reads the answer
    worker.stdin.write(b'["2", "2", 5.0, true]\n')
    worker.stdin.close()
    errors = worker.stderr.read().decode()
    assert worker.wait(timeout=60) == 0 and "Traceback" not in errors, errors


def test_ctrl_c_leaves_the_worker_to_its_caller() -> None:
    # Ctrl-C in a terminal reaches the worker too (the caller's process group): it printed a
    # KeyboardInterrupt traceback under `superthoughts eval`'s one-line "interrupted".
    worker = start_worker()
    worker.send_signal(signal.SIGINT)
    worker.stdin.write(b'["2", "2", 5.0, true]\n')
    worker.stdin.flush()
    assert worker.stdout.readline() == b"true\n"  # still serving
    worker.stdin.close()
    errors = worker.stderr.read().decode()
    assert worker.wait(timeout=60) == 0 and "Traceback" not in errors, errors


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed5.", "5."),  # TeX's one-token argument
        ("\\boxed12 apples", "12"),
        ("\\boxedx", None),  # another command, no box
    ],
)
def test_unbraced_box_right_after_the_command(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the answer is option C.", "C"),
        ("Answer: Option B", "B"),
        ("The answer is choice (d)", "D"),
        ("the answer is optional", None),
        ("the answer is option A or B", None),
    ],
)
def test_answer_is_option_phrases(text: str, expected: str | None) -> None:
    assert extract_choice(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\text{\\textbf{D}}", "D"),
        ("\\text {x}\\mathrm{y}", "xy"),
        ("\\text{a{b}}", "\\text{a{b}}"),  # a brace stays inside: no plain word
        ("\\text{\\text{a{b}}}", "\\text{\\text{a{b}}}"),
        ("{\\text{B}}", "{B}"),
        ("\\textcolor{red}{A}", "\\textcolor{red}{A}"),
        ("\\text{A} } \\text{B", "A } \\text{B"),  # unbalanced: a stray "}" and an open wrapper stay
    ],
)
def test_font_wrappers_unwrap_innermost_out(text: str, expected: str) -> None:
    assert grading._drop_font_wrappers(text) == expected


def test_degenerate_outputs_extract_in_linear_time() -> None:
    # A looping generation: 20k boxes took 7.6 s, font commands nested 30k deep 235 s.
    started = time.perf_counter()
    assert extract_answer("\\boxed{1} " * 20_000 + "\\boxed{2}") == "2"
    assert extract_choice("\\text{" * 30_000 + "B" + "}" * 30_000) is None
    # Runs of spaces or Markdown stars after a letter (a looping output): the lowercase-letter rule
    # once took 15 s on 40k spaces.
    assert extract_choice("Answer: b" + " " * 40_000 + "x") is None
    assert extract_choice("The answer is b" + " " * 40_000 + ".") == "B"
    assert extract_choice("Answer:" + " *" * 20_000 + "x") is None
    # ... and in a power of ten (two whitespace runs side by side backtracked: 11 s on 20k).
    for spaces in ("3 \\times 10^" + " " * 40_000 + "x", "3 \\times 10^{" + " " * 40_000 + "x"):
        assert grading_numbers.scientific_as_decimal(spaces) == spaces
    assert extract_choice("Answer: " + "\\textbf{" * 30_000 + "B" + "}" * 30_000) == "B"
    assert time.perf_counter() - started < 10.0


@pytest.mark.parametrize(
    "prediction",
    [
        "1" * 5000 + " + 27",  # past Python's 4300-digit int limit: sympy raised a ValueError
        "\\gcd(" + "1" * 5000 + ", 27)",
        "\\sqrt{" * 400 + "2" + "}" * 400 + " + 27",  # a RecursionError
    ],
)
def test_an_answer_sympy_fails_on_is_not_read_as_its_last_number(prediction: str) -> None:
    # math-verify's "any_match" fell back from the failed box to the last plain number in it: 27.
    assert is_correct(prediction, "27") is False



@pytest.mark.parametrize("prediction", ["= 27", "\\therefore 27", "\\begin{aligned} x &= 3^3 \\\\ &= 27 \\end{aligned}",
                                        " = ".join(map(str, range(1000))) + " = 27"])  # too deep whole: its last side
def test_latex_math_verify_cannot_parse_is_still_read_as_its_last_number(prediction: str) -> None:
    # Only running out of room is final: a stricter parse (no fallback at all) lost these.
    assert is_correct(prediction, "27") is True

def test_the_worker_memory_is_capped() -> None:
    resource = pytest.importorskip("resource")
    is_correct("1", "1.0")  # the worker is up
    process = grading_worker._WORKER._process
    soft = resource.prlimit(process.pid, resource.RLIMIT_AS)[0]
    assert soft != resource.RLIM_INFINITY and soft <= grading_worker._MEMORY_LIMIT_BYTES
    # 28 characters that sympy builds into a 2 GiB integer at once (4.4 GB of worker memory before
    # the cap): a MemoryError now, graded wrong, and the worker serves on.
    assert is_correct("\\gcd(2^{2^{34}}, 27)", "27") is False
    status = Path(f"/proc/{process.pid}/status")
    if status.is_file():
        peak_kb = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmPeak"))
        assert peak_kb * 1024 <= grading_worker._MEMORY_LIMIT_BYTES
    assert grading_worker._WORKER._process is process and is_correct("\\frac{1}{2}", "0.5")


def test_the_worker_keeps_a_lower_memory_cap_of_its_caller() -> None:
    # A soft cap below ours (`ulimit -S -v`, a batch system's) was raised to 2 GiB: only the hard
    # one was kept.
    resource = pytest.importorskip("resource")
    lower = grading_worker._MEMORY_LIMIT_BYTES // 2
    worker = subprocess.Popen(grading_worker.worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (lower, resource.RLIM_INFINITY)))
    try:
        assert worker.stdout.readline() == b'"ready"\n'
        assert resource.prlimit(worker.pid, resource.RLIMIT_AS)[0] == lower
    finally:
        worker.kill()
        worker.communicate()


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="the worker's size is read from /proc")
def test_a_worker_grown_large_is_replaced_after_its_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    # sympy memoizes without bound (~10 MB more per "\\sum_{k=1}^{10^{12}} \\frac{1}{k^2}" that hit the
    # deadline): a worker grown to its memory cap failed every later answer with a MemoryError.
    is_correct("1", "1.0")
    grown = grading_worker._WORKER._process
    monkeypatch.setattr(grading_worker, "_RECYCLE_BYTES", 1)  # every worker is too large
    assert grading_worker.math_equal("\\frac{1}{2}", "0.5", 5.0) is True  # its answer still counts
    assert grading_worker._WORKER._process is None and grown.poll() is not None
    monkeypatch.undo()
    assert grading_worker.math_equal("\\frac{1}{3}", "0.5", 5.0) is False
    assert grading_worker.math_equal("\\frac{2}{4}", "0.5", 5.0) is True


@pytest.mark.parametrize("reference", ["x=5", "m=1, n=2"])
def test_one_deadline_covers_every_comparison(monkeypatch: pytest.MonkeyPatch, reference: str) -> None:
    # A reference that names its values compares an answer as written and then by its values (or
    # value by value): an answer that kept math-verify busy took the timeout once per comparison.
    given: list[float] = []

    def busy(prediction: str, wanted: str, timeout_s: float, as_sets: bool = True) -> bool:
        given.append(timeout_s)
        time.sleep(timeout_s)
        return wanted == "1"  # m's value is right; n's is then never compared

    monkeypatch.setattr(grading, "math_equal", busy)
    started = time.perf_counter()
    assert is_correct("n=2, m=1" if "," in reference else "y", reference, timeout=0.5) is False
    assert sum(given) <= 0.5 and time.perf_counter() - started < 0.9


def test_waiting_for_another_threads_grade_does_not_count_against_the_deadline() -> None:
    # The worker is shared: a thread whose answer needs two comparisons ("m=1, n=2" compared name
    # by name) waited for another thread's grade with its deadline running, and its second
    # comparison found no time left: a right answer graded wrong under load.
    is_correct("1", "1.0")  # the worker is up
    graded: list[bool] = []
    with grading_worker._WORKER._lock:  # another thread's grade, 1.5 s long
        thread = threading.Thread(target=lambda: graded.append(is_correct("n=2, m=1", "m=1, n=2", timeout=1.0)))
        thread.start()
        time.sleep(1.5)
    thread.join()
    assert graded == [True]


@pytest.mark.parametrize(
    "output, bench, expected",
    [
        ("so \\boxed{2\u200b7}", "math500", "27"),  # a zero-width space
        ("\\boxed{\ufeff27\u200e}", "math500", "27"),  # a byte order mark, a left-to-right mark
        ("\\boxed{\u202e72\u202c}", "math500", "72"),  # a right-to-left override shows 27: 72 is written
        ("The answer is \u200b(A)", "gpqa_diamond", "A"),
        ("\\boxed{\u2060B\u200d}", "gpqa_diamond", "B"),
    ],
)
def test_invisible_format_characters_are_not_part_of_the_answer(output: str, bench: str, expected: str) -> None:
    # They render as nothing (Unicode category Cf), yet math-verify and the letter rules saw no 27 or A.
    options = ("1", "2", "3", "4") if bench == "gpqa_diamond" else ()
    problem = Problem("q", "question", "A" if bench == "gpqa_diamond" else "27", options=options)
    graded = grade_output(output, problem, bench)
    assert graded["extracted"] == expected and graded["correct"] is (expected in ("27", "A"))


def test_the_worker_runs_its_callers_package_whatever_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "python -c" put the working directory ahead of PYTHONPATH: run from another checkout's root,
    # the worker graded with that checkout's code. Here a decoy package there calls every answer right.
    decoy = tmp_path / "superthoughts_ext"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("")
    (decoy / "grading_worker.py").write_text(
        "import sys\n\ndef serve_worker():\n    print('\"ready\"', flush=True)\n"
        "    for line in sys.stdin:\n        print('true', flush=True)\n")
    grading_worker._WORKER.close()
    monkeypatch.chdir(tmp_path)
    try:
        assert grading_worker.math_equal("1", "2", 5.0) is False
    finally:
        grading_worker._WORKER.close()  # later tests start a worker from their own directory


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork is POSIX")
def test_a_forked_child_grades_with_its_own_worker() -> None:
    # A forked child (a DataLoader worker) shared the parent's worker pipes, so answers could
    # cross between the two, and its exit (atexit) killed the parent's worker.
    import io
    import os

    is_correct("1", "1.0")
    parent_worker = grading_worker._WORKER._process
    # Unbuffered: the child's closing its copy cannot flush half a request of the parent's.
    assert isinstance(parent_worker.stdin, io.FileIO)
    assert grading_worker.math_equal("x" * 300_000 + "1", "1", 5.0) is False  # past a pipe's buffer
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if it graded with a worker of its own
        try:
            right = grading_worker.math_equal("\\frac{1}{2}", "0.5", 5.0)
            own = grading_worker._WORKER._process is not parent_worker
            grading_worker._WORKER.close()
            os._exit(0 if right and own else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert grading_worker._WORKER._process is parent_worker and parent_worker.poll() is None
    assert grading_worker.math_equal("\\frac{1}{3}", "0.5", 5.0) is False


def test_the_worker_loads_no_numpy_or_torch() -> None:
    # Under its address-space cap, numpy's OpenBLAS (~40 MiB reserved per thread, up to 64) or
    # torch (~625 MiB at import) would leave grading little or no room on a large machine.
    probe = ("import sys; from superthoughts_ext.grading_worker import _verify_math; "
             "assert _verify_math('\\\\frac{1}{2}', '0.5', 5.0); "
             "print(sorted({'numpy', 'torch'} & set(sys.modules)))")
    done = subprocess.run([grading_worker.worker_command()[0], "-c", probe], capture_output=True, text=True,
                          cwd=Path(grading_worker.__file__).resolve().parents[1], timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
