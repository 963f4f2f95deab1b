"""What an evaluation run folder holds, read defensively, and one process per share of it.

- :func:`read_config` / :func:`read_result`: ``config.json`` and ``results/<image>.json`` as dicts,
  or :class:`~undesirable_jax.checks.BadFileError` naming the file and what to do (a truncated or
  hand-edited file, ``{}``, ``[]``, ``null``, missing keys, a stray JSON file).
- :func:`restore_config`: when ``config.json`` was deleted but results remain, write it back from
  the current settings if every result was computed with exactly those settings (their stored hash
  says so); otherwise say which folder to move away.
- :class:`RunLock`: a lock file per share of the work (``.lock-<index>-of-<count>``), taken with
  ``O_CREAT | O_EXCL``. Two processes whose shares hold a common image would compute it twice: once
  its own lock is written, a process looks at every other live lock of the folder and is refused
  when a share overlaps its own (the same share, or e.g. 1 of 1 and 1 of 2), naming the other's pid,
  host and share. Disjoint shares (``--process-index``/``--process-count`` with one count,
  ``--distributed``) run side by side. A lock left by a process that no longer runs on this host is
  stale and removed. Temporary files of writes killed half-way (``.<name>.*.tmp``) are removed too:
  all of them when no other process holds the folder, else those older than ten minutes.
- :func:`bad_results` / :func:`set_aside`: result files that cannot be this run's result for the id
  their name stands for (unreadable, another image's result, another configuration, numbers out of
  range such as ``p_target`` outside [0, 1]). At a start (``--resume``) they are moved to
  ``<out>/rejected/`` with the reason in ``rejected/reasons.txt``, named on stderr, and computed again;
  the merge refuses them, naming each file.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .. import io
from ..checks import BadFileError

#: Keys every result file holds (written by the runner for each finished image).
RESULT_KEYS = ("id", "index", "cluster", "group", "config_sha256", "label", "target", "competitor", "prediction", "p_target",
               "p_competitor", "percents", "fractions", "skipped", "seeds", "passes")


def _read_json_object(path: Path, what: str, fix: str) -> dict:
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadFileError(path, f"is not a readable {what} ({type(e).__name__}: {e})", fix) from e
    if not isinstance(obj, dict):
        raise BadFileError(path, f"is not a {what}: it holds {type(obj).__name__} {json.dumps(obj)[:40]}", fix)
    return obj


def read_config(path: str | os.PathLike) -> dict:
    """A run's ``config.json`` as a dict (a JSON object), else BadFileError saying how to recover."""
    fix = ("delete it and run the same command with --resume: it is written again from the settings and "
           "checked against the stored results")
    return _read_json_object(Path(path), "run configuration", fix)


def read_result(path: str | os.PathLike, keys: tuple[str, ...] = RESULT_KEYS) -> dict:
    """One ``results/<image>.json`` as a dict with every key in ``keys``, else BadFileError."""
    fix = ("delete it and run the same command with --resume: that image is computed again (a file that is "
           "not a result of this run does not belong in results/)")
    obj = _read_json_object(Path(path), "result file of this run", fix)
    missing = [k for k in keys if k not in obj]
    if missing:
        raise BadFileError(path, f"is not a complete result file: it lacks {missing}", fix)
    return obj


def restore_config(out_dir: str | os.PathLike, record: dict) -> bool:
    """Write a missing ``config.json`` back when every stored result was computed under ``record``.

    Returns True when it wrote the file, False when there was nothing to restore (the file exists,
    or no results). Results made under other settings (or unreadable ones) raise ValueError naming
    the folder to move away, since nothing can tell which settings they belong to.
    """
    out_dir = Path(out_dir)
    results = sorted((out_dir / "results").glob("*.json"))
    if (out_dir / "config.json").exists() or not results:
        return False
    digest = io.json_digest(record)
    foreign = [p for p in results if read_result(p).get("config_sha256") != digest]
    if foreign:
        raise ValueError(f"out_dir: {str(out_dir)!r} has no config.json, and {len(foreign)} of its {len(results)} "
                         f"results (e.g. {foreign[0].name}) were computed with other settings than these; rerun "
                         f"with the settings of that run, or move {str(out_dir / 'results')!r} away to start anew")
    io.write_json(out_dir / "config.json", record)
    return True


def result_problem(path: Path, record: dict, path_of: Callable[[str], Path]) -> str | None:
    """Why ``path`` cannot be this run's result for the id its name stands for, or None when it can.

    ``record``: the run's configuration (``config.json``); ``path_of``: image id → its result path.
    """
    try:
        obj = read_result(path)
    except BadFileError as e:
        return e.problem
    rid = obj["id"]
    if not isinstance(rid, str) or not rid:
        return f"has id {rid!r}, not an image id"
    if Path(path_of(rid)).name != Path(path).name:
        return f"holds the result of image {rid!r}, whose file is {Path(path_of(rid)).name}"
    if obj["config_sha256"] != io.json_digest(record):
        return "was computed under another configuration than config.json"
    return _out_of_range(obj, record)


def _out_of_range(obj: dict, record: dict) -> str | None:
    """The first number of a result outside what a run can produce, as a phrase; None when all fit."""
    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def prob(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1

    for key in ("index", "label", "target", "competitor", "prediction"):
        if not count(obj[key]):
            return f"has {key} = {obj[key]!r}, not a class id or position (an int >= 0)"
    for key in ("p_target", "p_competitor"):
        if not prob(obj[key]):
            return f"has {key} = {obj[key]!r}, outside [0, 1]"
    if obj["target"] != obj["label"] or obj["competitor"] == obj["target"]:
        return "has a competitor equal to its target, or a target other than its label"
    if "percents" in record and [float(q) for q in record["percents"]] != obj["percents"]:
        return f"has percents {obj['percents']!r}, not the run's {record['percents']!r}"
    fractions = obj["fractions"]
    if not isinstance(fractions, list) or not all(map(prob, fractions)):
        return "has removal fractions outside [0, 1]"
    seeds = obj["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(r, dict) for r in seeds) \
            or ("num_seeds" in record and len(seeds) != record["num_seeds"]):
        found = len(seeds) if isinstance(seeds, list) else "no"
        return f"has {found} repeats (a list of records), not the run's {record.get('num_seeds')}"
    return None


def bad_results(out_dir: str | os.PathLike, record: dict, path_of: Callable[[str], Path]) -> list[tuple[Path, str]]:
    """Every result file of ``out_dir`` that :func:`result_problem` refuses, with the reason."""
    found = []
    for path in sorted((Path(out_dir) / "results").glob("*.json")):
        why = result_problem(path, record, path_of)
        if why is not None:
            found.append((path, why))
    return found


def set_aside(out_dir: str | os.PathLike, record: dict, path_of: Callable[[str], Path],
              say: Callable[[str], None] | None = None) -> list[Path]:
    """Move every bad result (:func:`bad_results`) to ``<out>/rejected/``, noting why in
    ``rejected/reasons.txt`` and saying so (one line each, on stderr by default), so that the run
    computes those images again. Returns the new paths."""
    say = say if say is not None else (lambda m: print(m, file=sys.stderr, flush=True))
    moved = []
    for path, why in bad_results(out_dir, record, path_of):
        rejected = Path(out_dir) / "rejected"
        rejected.mkdir(exist_ok=True)
        target = rejected / f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}.json"
        try:
            os.replace(path, target)
        except FileNotFoundError:   # another process of the run moved it first
            continue
        with open(rejected / "reasons.txt", "a", encoding="utf-8") as f:
            f.write(f"{path.name} -> {target.name}: {why}\n")
        say(f"evaluate: {str(path)!r} {why}; moved to {str(target)!r}, its image is computed again")
        moved.append(target)
    return moved


_LOCK = re.compile(r"\.lock-(\d+)-of-(\d+)")


def overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether shares ``(index, count)`` a and b hold a common image position x (x ≡ a₀ mod a₁ and
    x ≡ b₀ mod b₁ has a solution exactly when a₀ ≡ b₀ modulo gcd(a₁, b₁))."""
    return (a[0] - b[0]) % math.gcd(a[1], b[1]) == 0


class RunLock:
    """``with RunLock(out_dir, index, count):`` holds ``<out>/.lock-<index>-of-<count>`` (see module doc)."""

    def __init__(self, out_dir: str | os.PathLike, process_index: int = 0, process_count: int = 1):
        self.share = (int(process_index), int(process_count))
        self.path = Path(out_dir) / f".lock-{self.share[0]}-of-{self.share[1]}"
        self.held = False

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _owner(self.path)
                if owner is not None and not _stale(owner):
                    raise ValueError(self._busy(owner, self.path)) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, f)
            self.held = True
            try:
                others = self._others()
            except ValueError:
                self.__exit__()
                raise
            # Alone, a temporary file older than a minute is a killed write's; a younger one may be another
            # process's write in progress (config.json is written before the lock is taken).
            remove_temporary(self.path.parent, min_age_s=60.0 if not others else 600.0)
            return self
        raise ValueError(f"out_dir: could not take the lock {str(self.path)!r} (another process keeps taking it)")

    def check(self) -> None:
        """Refuse now (ValueError) when a live process holds this share or one overlapping it, without taking
        the lock: an early look, before a model is loaded (taking the lock looks again)."""
        if self.path.parent.is_dir():
            owner = _owner(self.path) if self.path.exists() else None
            if owner is not None and not _stale(owner):
                raise ValueError(self._busy(owner, self.path))
            self._others()

    def __exit__(self, *exc: Any) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _others(self) -> int:
        """How many other live processes hold the folder; ValueError when one's share overlaps this one.
        (Each process looks after writing its own lock, so of two starting together at least one sees
        the other.) Stale locks are removed; an unreadable one is skipped (it may be being written)."""
        live = 0
        for path in sorted(self.path.parent.glob(".lock-*-of-*")):
            m = _LOCK.fullmatch(path.name)
            if m is None or path == self.path:
                continue
            owner = _owner(path)
            if owner is None:
                continue
            if _stale(owner):
                path.unlink(missing_ok=True)
                continue
            live += 1
            if overlap(self.share, (int(m[1]), int(m[2]))):
                raise ValueError(self._busy(owner, path))
        return live

    def _busy(self, owner: dict, path: Path) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("since", 0))))
        m = _LOCK.fullmatch(path.name)
        theirs = "this share of the work" if path == self.path else (
            f"share {m[1]} of {m[2]}, which has images in common with this process's share {self.share[0]} of "
            f"{self.share[1]}")
        return (f"out_dir: {str(self.path.parent)!r} is being evaluated by process {owner['pid']} on "
                f"{owner.get('host')!r} (since {since}) with {theirs}; wait for it to finish, or "
                f"split the work with --process-index/--process-count (one count for all). If that process no "
                f"longer runs, delete {str(path)!r}")


def _owner(path: Path) -> dict | None:
    """A lock's content, or None when it is unreadable (a crash between create and write)."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def remove_temporary(out_dir: str | os.PathLike, min_age_s: float = 0.0) -> list[Path]:
    """Remove the temporary files of atomic writes (``.<name>.*.tmp``, :func:`undesirable_jax.io.atomic_path`)
    in ``out_dir`` and its ``results/`` older than ``min_age_s``: a killed write leaves one behind."""
    removed = []
    now = time.time()
    for folder in (Path(out_dir), Path(out_dir) / "results"):
        for path in folder.glob(".*.tmp"):
            try:
                if now - path.stat().st_mtime >= min_age_s:
                    path.unlink()
                    removed.append(path)
            except OSError:
                continue
    return removed


def _stale(owner: dict) -> bool:
    """True when the lock's process ran on this host and is gone (another host's pid cannot be checked)."""
    if owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False
