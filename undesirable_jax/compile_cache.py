"""JAX's persistent compilation cache for command-line runs: compile a model's step once per machine.

An EfficientNet-Lite0 step takes minutes to compile on a small CPU, and every new process compiled it
again. JAX can keep compiled executables on disk, keyed by the program, the backend and the JAX
version, so a second run with the same shapes loads instead of compiling. The folder is
``$UNDESIRABLE_JAX_CACHE`` when set (``off`` disables the cache), else
``$XDG_CACHE_HOME/undesirable_jax/jax`` (``~/.cache/...``). The library itself never turns it on: this
is a process-wide JAX setting, so only entry points (the CLI, a user's own script) should choose it.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "UNDESIRABLE_JAX_CACHE"
OFF = "off"


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


def enable(folder: str | os.PathLike | None) -> Path | None:
    """Point JAX's persistent compilation cache at ``folder`` (created if needed); None leaves it off.

    Every compiled program is kept (no minimum compile time or size), since the CLI's programs are
    few and each is reused across runs. Returns the folder in use.
    """
    if folder is None:
        return None
    import jax

    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"compilation cache: cannot create {str(path)!r} ({e.strerror}); choose another "
                         f"folder with --compile-cache DIR or ${ENV_VAR}, or disable it with "
                         f"--compile-cache {OFF}") from None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
