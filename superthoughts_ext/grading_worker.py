"""math-verify in a separate worker process, under a deadline.

math-verify runs sympy on untrusted model output, and some inputs never finish
(``9^{9^{9^{9}}}`` spends minutes inside a single C-level big-int power, where no
signal handler can interrupt it). Grading therefore runs in a separate worker process:
inside it a SIGALRM deadline stops Python-level work cheaply, and the caller kills and
respawns the worker if even that does not answer in time. This works from any thread,
which math-verify's own signal-based timeouts do not. Its memory is capped too
(`_MEMORY_LIMIT_BYTES`): an allocation past it fails, and the answer is graded wrong.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import re
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from superthoughts_ext.grading_sets import inequalities_as_sets

# Extra time the caller grants the worker over the in-worker deadline before killing it.
_KILL_GRACE_S = 2.0
# Starting the worker imports sympy, antlr and math-verify: slow on a cold machine.
_STARTUP_TIMEOUT_S = 120.0
# The worker's address space cap. sympy builds some integers whole before any deadline can stop
# it: "\\gcd(2^{2^{34}}, 27)", 28 characters, took 4.4 GB within a 5 s deadline, and each +1 on
# the inner exponent doubles that, so one answer could take all the machine's memory (and the OOM
# killer the largest process: the model being evaluated). Past the cap the allocation fails with
# a MemoryError, graded wrong; real answers need under 100 MB (a 1 MB adversarial one ~700 MB).
_MEMORY_LIMIT_BYTES = 2 << 30
# A worker grown past this size is replaced after its answer. sympy memoizes without bound (its
# harmonic numbers: each "\\sum_{k=1}^{10^{12}} \\frac{1}{k^2}" stopped by the deadline left ~10 MB
# more, 60 of them 900 MB), and a worker that had grown to its cap failed every later answer.
_RECYCLE_BYTES = _MEMORY_LIMIT_BYTES // 2


# A number in thousands groups split by LaTeX spaces: "58\\,500", "1\\;000\\;000", "1~000": one to three
# digits, then groups of exactly three, not inside another token ("2^3\\,5", "\\frac12\\,3", "x_1\\,000").
_SPACE = r"\s*(?:\\[,;:! ]|~)\s*"
_DIGIT_GROUPS = re.compile(rf"(?<![\w^_.\\])\d{{1,3}}(?:{_SPACE}\d{{3}})+(?![\d.])")


def _as_latex(answer: str) -> str:
    # Wrapping in \boxed{} makes math-verify read the whole string as the answer instead
    # of searching it for an anchor.
    # A Unicode degree sign is no LaTeX: math-verify drops ^\circ but cannot read 90°. A full
    # stop after a number ends the sentence ("\\boxed{27.}"); math-verify cannot read "27.".
    answer = re.sub(r"(?<=\d)\.$", "", answer.strip().strip("$").strip())
    # LaTeX spaces that group thousands ("58\\,500") go: math-verify read that one as the sum 558,
    # so it equalled 558 and not "58,500". Other spaces between digits are left to math-verify.
    answer = _DIGIT_GROUPS.sub(lambda match: re.sub(_SPACE, "", match.group(0)), answer)
    return "\\boxed{" + answer.replace("°", "^{\\circ}") + "}"


# A written number: its mantissa (digits after the point in a group) and, in scientific
# notation, its power of ten ("6.72 \\times 10^{-5}", "6.72e-5").
_WRITTEN_NUMBER = re.compile(
    r"(\d*\.?(\d*))(?:\s*(?:\\times|\\cdot|\*)\s*10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?|[eE]([+-]?\d+))?")
# math-verify's default: floats compare rounded to 6 decimal places.
_MIN_DECIMALS = 6
# Past float64's ~15 significant digits the rounding compares noise.
_SIGNIFICANT_DIGITS = 15


def written_decimals(answer: str) -> int:
    """The finest decimal place a number in ``answer`` is written to (0 for none): ``.0000672``
    gives 7, ``6.72 \\times 10^{-5}`` gives 7, ``1.5`` gives 1, ``12`` and ``\\frac{1}{3}`` give 0.

    A number counts to its 15th significant digit at most (float64 noise lies past it), wherever
    that is: ``1.5 \\times 10^{-20}`` gives 21, as a place cap fixed at 15 rounded it (and every
    other number below 1e-15) to 0.
    """
    places = 0
    for match in _WRITTEN_NUMBER.finditer(answer):
        mantissa = match.group(1)
        if not any(c.isdigit() for c in mantissa):
            continue
        exponent = int(match.group(3) or match.group(4) or 0)
        number_places = len(match.group(2)) - exponent
        whole, _, fraction = mantissa.partition(".")
        whole = whole.lstrip("0")
        if whole or fraction.strip("0"):  # zero has no leading digit (and no noise)
            # The power of ten of the leading digit: 2 for 123.4, -5 for .0000672, -20 for 1.5e-20.
            lead = (len(whole) - 1 if whole else len(fraction.lstrip("0")) - len(fraction) - 1) + exponent
            number_places = min(number_places, _SIGNIFICANT_DIGITS - 1 - lead)
        places = max(places, number_places)
    return places


def float_rounding(prediction: str, reference: str) -> int:
    """Decimal places to compare floats at: math-verify's 6, or finer where either answer is
    written finer. At a fixed 6, every small decimal equals its neighbours: MATH500's
    ``.0000672`` (test/number_theory/598) equalled a predicted ``0.0000673`` or ``0.000067``."""
    return max(_MIN_DECIMALS, written_decimals(prediction), written_decimals(reference))


# math-verify compares a number it keeps unevaluated ("1.5 \\times 10^{-20}" parses as 1.5/10**20)
# by (a - b).evalf(chop=True) == 0, and chop zeroes any difference below about 1e-15: every
# two such numbers were equal. Both answers this small are compared here instead.
_CHOPPED_MAGNITUDE = 1e-6


def _small_numbers_differ(gold: list, guess: list, rounding: int) -> bool:
    """Whether two parsed answers are both nonzero real numbers below `_CHOPPED_MAGNITUDE` in
    size that differ once rounded to ``rounding`` decimal places (docs/evaluation.md's rule)."""
    import sympy

    values = []
    for parsed in (gold, guess):
        expr = parsed[0] if parsed else None
        if not isinstance(expr, sympy.Expr) or not expr.is_number:
            return False
        value = expr.evalf(30)
        if not value.is_real or value == 0 or abs(value) >= _CHOPPED_MAGNITUDE:
            return False
        values.append(value)
    return values[0].round(rounding) != values[1].round(rounding)


class _Deadline(BaseException):
    # A BaseException so that math-verify's and sympy's `except Exception` blocks cannot
    # swallow it and carry on.
    pass


def _raise_deadline(signum: int, frame: object) -> None:
    raise _Deadline


class _Unreadable(BaseException):
    """sympy ran out of room reading an answer: recursion depth, memory (`_MEMORY_LIMIT_BYTES`)
    or Python's 4300-digit limit on integers. A BaseException like `_Deadline`: math-verify's
    `except Exception` around its LaTeX parse then read the last plain number in the answer
    instead, so "1111...1 + 27" (5000 ones) or "\\sqrt{\\sqrt{...}} + 27" equalled 27. (LaTeX it
    cannot parse, "= 27" or "\\therefore 27", still falls back to that number, as it always did.)"""


def _unreadable_is_final(parse_latex: Callable[..., Any]) -> Callable[..., Any]:
    """math-verify's parse of one LaTeX answer, raising `_Unreadable` where sympy ran out of room.
    Wraps its whole parse, which first retries the last side of an equation chain itself (a
    chain "0 = 1 = ... = 27" too long to parse whole is still 27)."""
    @functools.wraps(parse_latex)
    def parse_or_unreadable(*args: Any, **kwargs: Any) -> Any:
        try:
            return parse_latex(*args, **kwargs)
        except (RecursionError, MemoryError) as error:
            raise _Unreadable from error
        except ValueError as error:
            if "integer string conversion" in str(error):  # the int digit limit
                raise _Unreadable from error
            raise

    parse_or_unreadable.unreadable_is_final = True  # type: ignore[attr-defined]
    return parse_or_unreadable


class _MathVerifyTimeoutNote(logging.Filter):
    # We pass timeout=None to math-verify because the deadline is ours; drop its warning.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


def _verify_math(prediction: str, reference: str, timeout_s: float, as_sets: bool = True) -> bool:
    """math-verify under a SIGALRM deadline; must run on the main thread (the worker's).

    ``as_sets=False`` (the question asks for a point) compares inequalities as relations only.
    """
    import math_verify.parser
    from math_verify import parse, verify

    if not getattr(math_verify.parser.parse_latex_cached, "unreadable_is_final", False):
        math_verify.parser.parse_latex_cached = _unreadable_is_final(math_verify.parser.parse_latex_cached)
    # Re-arming every 50 ms keeps interrupting code that catches even BaseException.
    signal.signal(signal.SIGALRM, _raise_deadline)
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s, 0.05)
        # math-verify reads "x < 2 or x > 3" as a set of two inequalities (and "\\lor" as its
        # last number): such answers are first spelled as the union they describe.
        if as_sets:
            reference, prediction = inequalities_as_sets(reference), inequalities_as_sets(prediction)
        gold = parse(_as_latex(reference), parsing_timeout=None)
        guess = parse(_as_latex(prediction), parsing_timeout=None)
        # By default math-verify turns only a reference inequality into the set it describes
        # ("x > 2" equals a predicted "(2, \\infty)"); the flag does the same for a predicted one
        # ("x > 2" for a reference "(2, \\infty)"). sympy solves it for its single unknown, so
        # open and closed ends still differ, and one with several unknowns stays unequal.
        # math-verify reads any "(a, b)" with a < b as an open interval, so a point reference
        # "(-1, 6)" (MATH500's midpoint, test/algebra/864) would equal a predicted "-1 < x < 6"
        # (and "x > -1 \\text{ and } x < 6", which inequalities_as_sets spells "(-1, 6)"). The
        # answers cannot tell a point from an interval ("(-\\sqrt{3}, \\sqrt{3})", test/algebra/1078,
        # is one); the question can, and `is_correct` turns as_sets off for a point question.
        rounding = float_rounding(prediction, reference)
        if not (gold and guess) or _small_numbers_differ(gold, guess, rounding):
            return False
        return bool(verify(gold, guess, float_rounding=rounding, timeout_seconds=None, allow_set_relation_comp=as_sets))
    except (_Deadline, _Unreadable):
        return False
    finally:
        _disarm_deadline()


def _disarm_deadline() -> None:
    # The re-armed alarm can fire once more on the way out (in this finally, even); retry
    # until it is off, so that no deadline escapes into the protocol loop.
    while True:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
            return
        except _Deadline:
            continue


def _cap_memory(limit: int) -> None:
    """Cap this process's address space at ``limit`` bytes (never above a cap it already has,
    soft or hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    caps = [cap for cap in (limit, soft, hard) if cap != resource.RLIM_INFINITY]
    resource.setrlimit(resource.RLIMIT_AS, (min(caps), hard))


def serve_worker() -> None:
    """Grading worker loop (``python -c ...serve_worker()``): JSON lines in, JSON lines out.

    Each request is ``[prediction, reference, timeout_s, as_sets]``; each answer is ``true``/``false``.
    Ctrl-C is ignored: a terminal sends it to the caller's whole process group, and the caller,
    which stops this worker itself, says it was interrupted (a KeyboardInterrupt traceback from
    here landed on the stderr the two share).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _cap_memory(_MEMORY_LIMIT_BYTES)
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    # Anything a library prints must not corrupt the protocol stream.
    sys.stdout = sys.stderr
    note_filter = _MathVerifyTimeoutNote()
    for name in ("math_verify.parser", "math_verify.grader", "math_verify.utils"):
        logging.getLogger(name).addFilter(note_filter)
    import math_verify  # noqa: F401  (pay the import before announcing readiness)

    protocol.write("\"ready\"\n")
    for line in sys.stdin:
        prediction, reference, timeout_s, as_sets = json.loads(line)
        try:
            result = _verify_math(prediction, reference, float(timeout_s), bool(as_sets))
        except (Exception, _Deadline):
            # Anything math-verify cannot handle counts as a wrong answer (a deadline that
            # fired outside _verify_math's own handler too).
            _disarm_deadline()
            result = False
        try:
            protocol.write(json.dumps(result) + "\n")
        except BrokenPipeError:
            # The caller is gone (killed while this answer was being worked out): nobody reads
            # it, and a BrokenPipeError traceback would land on the stderr the two share.
            # os._exit: a normal exit would flush `protocol` again and report that failure too.
            os._exit(0)


def _process_size(pid: int) -> int:
    """The address space of process ``pid`` in bytes, what RLIMIT_AS caps (0 without /proc)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def worker_command() -> list[str]:
    """The command line of a grading worker that runs this very copy of the package.

    Its folder goes first on the worker's sys.path: "python -c" puts the working directory there
    ahead of PYTHONPATH, so started from a folder holding another copy of the package (another
    checkout's root) the worker ran that copy's grading code, not its caller's.
    """
    package_parent = str(Path(__file__).resolve().parents[1])
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {package_parent!r}); "
            "from superthoughts_ext.grading_worker import serve_worker; serve_worker()"]


def _write_all(fd: int, data: bytes) -> None:
    """Writes all of ``data`` to ``fd`` (a write to a pipe may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _GradingWorker:
    """One lazily started grading process shared by all threads of the caller.

    A plain subprocess rather than multiprocessing: spawn re-imports the caller's
    ``__main__``, which would rerun an unguarded user script (model loading included).
    """

    def __init__(self) -> None:
        # Reentrant: `worker_held` keeps the worker for one thread's several grades.
        self._lock = threading.RLock()
        self._process: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    def forget_after_fork(self) -> None:
        """In a forked child (a DataLoader worker, multiprocessing's fork): the parent's worker
        is the parent's. Sharing its pipes let answers cross between the processes, and the
        child's exit (atexit `close`) killed it under the parent; a lock another thread held at
        the fork would never be released. The child starts its own worker when it grades."""
        self._lock = threading.RLock()
        if self._process is not None:
            for stream in (self._process.stdin, self._process.stdout):
                if stream is not None:
                    stream.close()  # the child's copies only
        self._process, self._buffer = None, b""

    def _start(self) -> subprocess.Popen[bytes]:
        # One thread is all the worker needs: a BLAS that a future import brought in would
        # otherwise reserve address space per core, past `_MEMORY_LIMIT_BYTES` on a large machine.
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        # Unbuffered (bufsize=0): a request is never half in a Python buffer that a process forked
        # meanwhile would flush to the worker when `forget_after_fork` closes its copy.
        process = subprocess.Popen(worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                   bufsize=0)
        self._process, self._buffer = process, b""
        if self._read_line(_STARTUP_TIMEOUT_S) != "ready":
            self._kill()
            raise RuntimeError("the math-verify grading worker did not start")
        return process

    def _read_line(self, timeout_s: float) -> object:
        """The next JSON answer from the worker; None on timeout or when it died."""
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            for stream in (self._process.stdin, self._process.stdout):
                if stream is not None:
                    stream.close()
        self._process, self._buffer = None, b""

    def grade(self, prediction: str, reference: str, timeout_s: float, as_sets: bool) -> bool:
        with self._lock:
            process = self._process
            if process is None or process.poll() is not None:
                self._kill()
                try:
                    process = self._start()
                except BaseException:
                    self._kill()  # interrupted before reading "ready": the next call would read it
                    raise
            assert process.stdin is not None
            try:
                request = json.dumps([prediction, reference, timeout_s, as_sets]) + "\n"
                _write_all(process.stdin.fileno(), request.encode())
                answer = self._read_line(timeout_s + _KILL_GRACE_S)
            except OSError:
                answer = None
            except BaseException:
                # Interrupted (Ctrl-C, an alarm) while the worker holds an unread answer: the next
                # call would read that answer as its own. A fresh worker starts clean.
                self._kill()
                raise
            if answer is None or _process_size(process.pid) > _RECYCLE_BYTES:
                # Stuck in C code (or dead), or grown too large: a fresh worker is started on the
                # next call.
                self._kill()
            return bool(answer)

    def close(self) -> None:
        with self._lock:
            self._kill()


_WORKER = _GradingWorker()
# The worker would otherwise outlive a finished caller until the OS reaps it (and Python
# warns at exit that it is still running).
atexit.register(_WORKER.close)
os.register_at_fork(after_in_child=_WORKER.forget_after_fork)


@contextlib.contextmanager
def worker_held() -> Iterator[None]:
    """The shared worker kept for this thread's `math_equal` calls within (other threads wait):
    a deadline started inside counts their time, not the wait for other threads' grades."""
    with _WORKER._lock:
        yield


def math_equal(prediction: str, reference: str, timeout_s: float, as_sets: bool = True) -> bool:
    """Whether math-verify finds two answers equal, within ``timeout_s`` seconds (False past it).

    ``as_sets``: an inequality in one unknown also equals the set it describes (``x > 2`` and
    ``(2, \\infty)``); off where the answer is a point, whose ``(a, b)`` is no interval.
    Runs in the shared worker process; safe to call from any thread.
    """
    return _WORKER.grade(prediction, reference, timeout_s, as_sets)
