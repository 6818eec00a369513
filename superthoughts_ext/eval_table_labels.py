"""The default method labels of `superthoughts eval --table`: a run's checkpoint name and how it decoded.

Records name their checkpoint by the ``model`` path the run was given. Since `eval_cli.run_metadata`
that is an absolute path; records of older versions kept it as typed, relative to the directory the
run was started in, which no record holds. So that one checkpoint does not show under two names in
a table mixing both (``out/st`` beside ``/proj/out/st``), `checkpoint_of` reads a relative path
against what is at hand: the directory the table is made in and the folders above the records file
(where a run usually writes its output), then the absolute paths of the other records.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path, PurePath
from typing import Any

from superthoughts_ext.eval_compare import run_name, settings_label


def model_names(models: Sequence[str]) -> dict[str, str]:
    """Each checkpoint path's name in labels: its last folder, or as many trailing parts as tell
    it apart from the other paths (``/a/run1/final`` and ``/a/run2/final`` -> ``run1/final``,
    ``run2/final``). Paths with the same parts (``/a/st``, ``/a/st/``) are one checkpoint."""
    parts = {model: PurePath(model).parts for model in dict.fromkeys(models)}
    names = {}
    for model, own in parts.items():
        tail = own
        for depth in range(1, len(own) + 1):
            tail = own[-depth:]
            if not any(theirs != own and theirs[-depth:] == tail for theirs in parts.values()):
                break
        # PurePath, not "/".join: a whole absolute path's first part is "/" itself.
        names[model] = _short_commit(PurePath(*tail).as_posix()) if own else model
    return names


# A checkpoint loaded from the Hugging Face cache is recorded as org/name@<40-hex commit>.
_FULL_COMMIT = re.compile(r"@([0-9a-f]{40})$")


def _short_commit(name: str) -> str:
    """``name`` with a whole commit hash after its "@" cut to 7 digits, as git shows one:
    ``Qwen2.5-Math-1.5B-Instruct@8a9b0c1``, not 40 digits in every row."""
    return _FULL_COMMIT.sub(lambda match: "@" + match.group(1)[:7], name)


def _ambiguous(model: str, records_path: str | Path, candidates: Collection[str]) -> str:
    warnings.warn(f"table: {records_path} names its checkpoint {model!r}, a path relative to where an older "
                  f"version's run was started (not recorded); it may be {' or '.join(sorted(candidates))}, so it "
                  "is named as recorded; --table-labels gives each file its row",
                  stacklevel=2)
    return PurePath(model).as_posix()


def checkpoint_of(model: str, records_path: str | Path, absolute_models: Collection[str]) -> str:
    """The path that names the checkpoint a records file records as ``model``: ``model`` itself
    when it is absolute. A relative ``model`` (records of a version before absolute paths) is
    the one existing directory it names from the current directory or a folder above
    ``records_path``, else the one of ``absolute_models`` (the other records' checkpoints) that
    ends with its parts (``out/st`` -> ``/proj/out/st``), else ``model`` as recorded, with a
    warning where several directories or several of ``absolute_models`` fit it."""
    relative = PurePath(model)
    if relative.is_absolute():
        return model
    if all(part == ".." for part in relative.parts):  # "." or "..": the start directory itself, unknown
        return relative.as_posix()
    bases = dict.fromkeys([Path.cwd(), *Path(records_path).resolve().parents])
    # realpath: new records hold Path.resolve() of the checkpoint, links followed.
    found = {os.path.realpath(base / relative) for base in bases if (base / relative).is_dir()}
    if len(found) == 1:
        return found.pop()
    if found:
        return _ambiguous(model, records_path, found)
    if ".." in relative.parts:  # no tail of an absolute path to match
        return relative.as_posix()
    depth = len(relative.parts)
    ends_with = {PurePath(other).as_posix() for other in absolute_models
                 if PurePath(other).parts[-depth:] == relative.parts}
    if len(ends_with) == 1:
        return ends_with.pop()
    return _ambiguous(model, records_path, ends_with) if ends_with else relative.as_posix()


def method_labels(paths: Sequence[str | Path], runs: Sequence[dict[str, dict[str, Any]]]) -> list[str]:
    """The default label of each run: its checkpoint's name (`model_names` of `checkpoint_of` the
    ``model`` its records keep) with its mode and threshold (`settings_label`), e.g.
    ``st [superthoughts 0.999]``; a run whose records name no model goes by its file's name. Not
    its sampling: a method is often sampled on the small benches (AMC23 avg@8) and greedy on the
    others, in one row."""
    firsts = [next(iter(records.values()), {}) for records in runs]
    recorded = [str(first["model"]) if first.get("model") else None for first in firsts]
    absolute = [model for model in recorded if model is not None and PurePath(model).is_absolute()]
    checkpoints = [None if model is None else checkpoint_of(model, path, absolute)
                   for model, path in zip(recorded, paths)]
    names = model_names([checkpoint for checkpoint in checkpoints if checkpoint is not None])
    return [(names[checkpoint] if checkpoint is not None else run_name(path))
            + settings_label({"mode": first.get("mode"), "threshold": first.get("threshold")})
            for path, first, checkpoint in zip(paths, firsts, checkpoints)]
