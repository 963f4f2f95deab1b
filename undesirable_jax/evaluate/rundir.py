"""What an evaluation run folder holds, read defensively, and one process per share of it.

- :func:`read_config` / :func:`read_result`: ``config.json`` and ``results/<image>.json`` as dicts,
  or :class:`~undesirable_jax.checks.BadFileError` naming the file and what to do (a truncated or
  hand-edited file, ``{}``, ``[]``, ``null``, missing keys, a stray JSON file).
- :func:`restore_config`: when ``config.json`` was deleted but results remain, write it back from
  the current settings if every result was computed with exactly those settings (their stored hash
  says so); otherwise say which folder to move away.
- :class:`RunLock`: a lock file per share of the work (``.lock-<index>-of-<count>``), taken with
  ``O_CREAT | O_EXCL``. Two processes given the same share of one folder would compute the same
  images: the second is refused, naming the first's pid and host. Processes with different shares
  (``--process-index``/``--process-count``, ``--distributed``) split the work and run side by side.
  A lock left by a process that no longer runs on this host is stale and taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .. import io
from ..checks import BadFileError

#: Keys every result file holds (written by the runner for each finished image).
RESULT_KEYS = ("id", "index", "cluster", "group", "config_sha256", "label", "target", "competitor", "prediction", "p_target",
               "p_competitor", "percents", "fractions", "skipped", "seeds")


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


class RunLock:
    """``with RunLock(out_dir, index, count):`` holds ``<out>/.lock-<index>-of-<count>`` (see module doc)."""

    def __init__(self, out_dir: str | os.PathLike, process_index: int = 0, process_count: int = 1):
        self.path = Path(out_dir) / f".lock-{int(process_index)}-of-{int(process_count)}"
        self.held = False

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and not _stale(owner):
                    raise ValueError(self._busy(owner)) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, f)
            self.held = True
            return self
        raise ValueError(f"out_dir: could not take the lock {str(self.path)!r} (another process keeps taking it)")

    def __exit__(self, *exc: Any) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _owner(self) -> dict | None:
        """The lock's content, or None when it is unreadable (a crash between create and write)."""
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None

    def _busy(self, owner: dict) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("since", 0))))
        return (f"out_dir: {str(self.path.parent)!r} is being evaluated by process {owner['pid']} on "
                f"{owner.get('host')!r} (since {since}) with this share of the work; wait for it to finish, or "
                f"split the work with --process-index/--process-count. If that process no longer runs, delete "
                f"{str(self.path)!r}")


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
