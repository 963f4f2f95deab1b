"""JAX's persistent compilation cache for command-line runs: compile a model's step once per machine,
and never load an entry that is not the one its key names.

An EfficientNet-Lite0 step takes minutes to compile on a small CPU, and every new process compiled it
again. JAX can keep compiled executables on disk, keyed by the program, the backend and the JAX
version, so a second run with the same shapes loads instead of compiling. The folder is
``$UNDESIRABLE_JAX_CACHE`` when set (``off`` disables the cache), else
``$XDG_CACHE_HOME/undesirable_jax/jax`` (``~/.cache/...``). The library itself never turns it on: this
is a process-wide JAX setting, so only entry points (the CLI, a user's own script) should choose it.

A cache entry is compiled code that runs when it is loaded, and JAX's own file cache ties nothing to
the key a file is stored under: two entries swapped under each other's names ran the wrong program,
and a damaged entry was reported on every later run but never replaced. :class:`VerifiedCache` is
the cache JAX is given instead. Each entry (``<key>.ujx``) carries a header with its key, the
jax/jaxlib versions and device it was compiled for, and a SHA-256 of all three and the executable;
an entry is loaded only when all of them match. A mismatched or damaged entry is removed (one warning
line) and JAX compiles the program again and stores a fresh entry, so the problem is reported once.
Entries are written atomically (a temporary file, then a rename). This guards against accidents
(damaged disks, copied or renamed files), not against someone who may write the folder: such a user
can forge a header too, so the folder must stay yours, as JAX's own documentation asks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ENV_VAR = "UNDESIRABLE_JAX_CACHE"
OFF = "off"
SUFFIX = ".ujx"
MAGIC = b"undesirable_jax compile cache v1\n"
_KEY = re.compile(r"[A-Za-z0-9._-]{1,200}")


def default_dir(environ: dict | None = None) -> Path | None:
    """The cache folder the environment asks for, or None when ``$UNDESIRABLE_JAX_CACHE`` is ``off``."""
    env = os.environ if environ is None else environ
    chosen = env.get(ENV_VAR, "").strip()
    if chosen.lower() == OFF:
        return None
    if chosen:
        return Path(chosen).expanduser()
    base = env.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "undesirable_jax" / "jax"


def _warn_stderr(message: str) -> None:
    print(f"warning: compilation cache: {message}", file=sys.stderr, flush=True)


def _versions() -> str:
    import jax
    import jaxlib

    return f"jax {jax.__version__}, jaxlib {jaxlib.__version__}"


def _device() -> str:
    """The default backend and device kind (only called while compiling: the backend exists then)."""
    import jax

    return f"{jax.default_backend()} {jax.devices()[0].device_kind}"


def _digest(key: str, stamp: str, payload: bytes) -> str:
    h = hashlib.sha256()
    for part in (key.encode(), b"\0", stamp.encode(), b"\0", payload):
        h.update(part)
    return h.hexdigest()


def pack(key: str, stamp: str, payload: bytes) -> bytes:
    """An entry's bytes: the magic line, a JSON header (key, stamp, SHA-256, size), the executable."""
    header = {"key": key, "stamp": stamp, "sha256": _digest(key, stamp, payload), "size": len(payload)}
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def unpack(data: bytes, key: str, stamp: str | None = None) -> tuple[bytes | None, str]:
    """``(executable, "")`` when ``data`` is an intact entry for ``key`` (and ``stamp``, when given),
    else ``(None, why)``."""
    if not data.startswith(MAGIC):
        return None, "not an entry of this cache (damaged or written by another tool)"
    head, sep, payload = data[len(MAGIC):].partition(b"\n")
    try:
        header = json.loads(head) if sep else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or not all(isinstance(header.get(k), str) for k in ("key", "stamp", "sha256")):
        return None, "its header is damaged"
    if header["key"] != key:
        return None, f"it holds the entry of another key ({header['key'][:40]}…)"
    if header.get("size") != len(payload) or _digest(key, header["stamp"], payload) != header["sha256"]:
        return None, "its contents are damaged (checksum mismatch)"
    if stamp is not None and header["stamp"] != stamp:
        return None, f"it was compiled for {header['stamp']}, not {stamp}"
    return payload, ""


class VerifiedCache:
    """JAX's cache interface (``get``/``put``, ``_path``) over ``<folder>/<key>.ujx`` entries (see module doc).

    Duck-typed rather than derived from JAX's ``CacheInterface``, so that this module imports without JAX
    (``--help`` stays fast).
    """

    def __init__(self, folder: Path, warn: Callable[[str], None] = _warn_stderr):
        self._path = folder
        self.warn = warn
        self._stamp: str | None = None

    def stamp(self) -> str:
        """The versions and device every entry of this process is compiled for."""
        if self._stamp is None:
            self._stamp = f"{_versions()}, {_device()}"
        return self._stamp

    def entry(self, key: str) -> Path:
        return self._path / f"{key}{SUFFIX}"

    def get(self, key: str) -> bytes | None:
        """The executable stored under ``key`` when its entry is intact and for this key, versions and device;
        else None (a bad entry is removed, with one warning, so JAX compiles and stores it again)."""
        if not _KEY.fullmatch(key):
            return None
        path = self.entry(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            self.warn(f"cannot read {str(path)!r} ({e.strerror}); compiling instead")
            return None
        payload, why = unpack(data, key, self.stamp())
        if payload is None:
            self._remove(path, why)
        return payload

    def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` atomically (a temporary file renamed into place)."""
        if not _KEY.fullmatch(key):
            return
        try:
            fd, tmp = tempfile.mkstemp(dir=self._path, prefix=".tmp-", suffix=SUFFIX)
            with os.fdopen(fd, "wb") as f:
                f.write(pack(key, self.stamp(), value))
            os.replace(tmp, self.entry(key))
        except OSError as e:
            self.warn(f"cannot write in {str(self._path)!r} ({e.strerror}); this program is not cached")

    def _remove(self, path: Path, why: str) -> None:
        try:
            path.unlink(missing_ok=True)
            self.warn(f"removed {path.name} from {str(self._path)!r}: {why}; it is compiled again")
        except OSError as e:
            self.warn(f"{str(path)!r} is not used ({why}) and cannot be removed ({e.strerror}); delete it")

    def sweep(self) -> int:
        """Check every entry against its file name and checksum and remove the bad ones, with one warning
        line for all; returns how many were removed. (The versions and device are checked at load.)"""
        bad: list[tuple[Path, str]] = []
        for path in sorted(self._path.glob(f"*{SUFFIX}")):
            key = path.name[:-len(SUFFIX)]
            try:
                payload, why = unpack(path.read_bytes(), key)
            except OSError as e:
                payload, why = None, f"unreadable ({e.strerror})"
            if key.startswith(".tmp-"):   # a write in progress, or one killed long ago
                _remove_if_old(path)
            elif payload is None:
                bad.append((path, why))
        for path, _ in bad:
            path.unlink(missing_ok=True)
        if bad:
            self.warn(f"removed {len(bad)} damaged or mismatched entr{'y' if len(bad) == 1 else 'ies'} from "
                      f"{str(self._path)!r} (e.g. {bad[0][0].name}: {bad[0][1]}); compiled again when next needed")
        return len(bad)


def _remove_if_old(path: Path, age_s: float = 3600.0) -> None:
    """Remove a temporary file left by a killed write (another process may be writing a young one)."""
    try:
        if time.time() - path.stat().st_mtime > age_s:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def usable_folder(folder: str | os.PathLike, warn: Callable[[str], None] = _warn_stderr) -> Path | None:
    """``folder`` as one absolute path (``~`` expanded, links resolved), created if needed and checked for
    writing by writing a file; None, after one warning line, when it cannot be used."""
    path = Path(folder).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".tmp-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        warn(f"cannot use {str(path)!r} ({e.strerror or type(e).__name__}); running without it (choose another "
             f"folder with --compile-cache DIR or ${ENV_VAR}, or --compile-cache {OFF})")
        return None
    return path


def folder_option(value: str | None, environ: dict | None = None) -> Path | None:
    """``--compile-cache``'s value (None: the environment's default, :func:`default_dir`) → the folder asked
    for, or None for ``off``. An empty or blank value is refused: it would mean the current folder."""
    if value is None:
        return default_dir(environ)
    if not value.strip():
        raise ValueError(f"--compile-cache: an empty folder name (that would be the current folder); give a "
                         f"folder, or {OFF} to run without the cache")
    return None if value.strip().lower() == OFF else Path(value)


def enable(folder: str | os.PathLike | None, warn: Callable[[str], None] = _warn_stderr) -> Path | None:
    """Give JAX a :class:`VerifiedCache` in ``folder``; None leaves the cache off. Returns the folder in use.

    The folder is resolved to one absolute path and checked for writing first (an unusable one: one
    warning line, the cache stays off), and its entries are checked (:meth:`VerifiedCache.sweep`).
    Every compiled program is kept (no minimum compile time or size), since the CLI's programs are
    few and each is reused across runs; XLA's own side caches (GPU autotuning) are not used, since
    nothing would check them.
    """
    if folder is None:
        return None
    if not str(folder).strip():
        raise ValueError(f"compilation cache: an empty folder name; give a folder, or '{OFF}' to disable it")
    path = usable_folder(folder, warn)
    if path is None:
        return None
    import jax
    from jax._src import compilation_cache as cc

    cache = VerifiedCache(path, warn)
    cache.sweep()
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    if cc._cache is not None:
        cc.reset_cache()
    with cc._cache_initialized_mutex:
        cc._cache, cc._cache_initialized = cache, True
    return path
