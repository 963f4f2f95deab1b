"""Argument and file checks shared by the library and the command line.

Every check returns the cleaned value or raises ``TypeError`` (wrong kind) / ``ValueError`` (out of
range) whose message starts with the argument's name, says what it got and what it needs. The
command line passes its option names (``"--samples"``), the library its parameter names, so one
check serves both. :class:`BadFileError` is the ``ValueError`` for a file that cannot be used as
asked (an unreadable image, a damaged weight file): its message names the file and the fix.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: The largest seed ``jax.random.key`` takes (a signed 64-bit integer).
SEED_MAX = 2**63 - 1
#: Pair and window indices are int32 inside the jitted engine.
INT32_MAX = 2**31 - 1
#: Highest figure resolution accepted (print quality is 300-600 dots per inch).
MAX_DPI = 1200
#: Smallest significance level: below it ``1 - alpha/2`` rounds to 1 in float64 (no normal quantile).
ALPHA_MIN = 1e-12
#: Largest significance level: a two-sided test at 0.5 already keeps pixels about 0.67 SE from zero.
ALPHA_MAX = 0.5


class BadFileError(ValueError):
    """A file that cannot be used as asked: ``path``, what is wrong with it (``problem``) and the ``fix``."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str):
        self.path, self.problem, self.fix = os.fspath(path), problem, fix
        super().__init__(f"{self.path!r} {problem}; {fix}")


def scalar(value: Any) -> Any:
    """A 0-d NumPy or JAX array as its NumPy scalar (``jnp.float32(0.05)`` → ``np.float32(0.05)``), so every
    check treats Python, NumPy and JAX scalars alike; anything else (a traced value too) unchanged."""
    if isinstance(value, (np.ndarray, np.generic)) or type(value).__module__.startswith(("jax", "jaxlib")):
        shape = getattr(value, "shape", None)
        if shape == () and not type(value).__name__.endswith("Tracer"):
            try:
                return np.asarray(value)[()]
            except Exception:   # a traced or deleted array: left for the caller's type check
                return value
    return value


def integer(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (``bool`` is refused: it is rarely meant)."""
    value = scalar(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: must be an int{_range(minimum, maximum)}, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: must be <= {maximum}, got {value}")
    return int(value)


def positive_int(name: str, value: Any, *, maximum: int | None = INT32_MAX) -> int:
    """An ``int >= 1`` (at most ``maximum``: by default what fits the engine's int32 indices)."""
    return integer(name, value, minimum=1, maximum=maximum)


def positive_number(name: str, value: Any, *, maximum: float | None = None) -> float:
    """A finite real number ``> 0`` (and ``<= maximum`` when given) as ``float``."""
    value = scalar(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: must be a positive number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: must be a positive finite number, got {value!r}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name}: must be <= {maximum:g}, got {value!r}")
    return v


def real(name: str, value: Any, what: str = "a real number") -> float:
    """A finite real number (Python, NumPy or JAX scalar; ``bool`` refused) as ``float``."""
    value = scalar(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: must be {what}, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: must be {what} (finite), got {value!r}")
    return v


def nonnegative_number(name: str, value: Any) -> float:
    """A finite real number ``>= 0`` as ``float`` (a weight that may switch its term off)."""
    v = real(name, value, "a finite number >= 0")
    if v < 0:
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
    return v


def priority_weights(magnitude_weight: Any, se_weight: Any) -> tuple[float, float]:
    """The two weights of adaptive sampling's cell priority (``explain_adaptive``): finite and >= 0."""
    return nonnegative_number("magnitude_weight", magnitude_weight), nonnegative_number("se_weight", se_weight)


def significance(name: str, value: Any) -> float:
    """A two-sided significance level in ``(ALPHA_MIN, ALPHA_MAX]`` = (1e-12, 0.5], such as 0.05."""
    what = f"a significance level in ({ALPHA_MIN:g}, {ALPHA_MAX:g}] such as 0.05"
    v = real(name, value, what)
    if not ALPHA_MIN < v <= ALPHA_MAX:
        raise ValueError(f"{name}: must be {what}, got {value!r}")
    return v


def seed(name: str, value: Any) -> int:
    """A PRNG seed: an int that ``jax.random.key`` accepts (signed 64 bits)."""
    return integer(name, value, minimum=-SEED_MAX - 1, maximum=SEED_MAX)


def prng_key(key: Any, name: str = "key") -> Any:
    """A single typed PRNG key; legacy ``uint32[2]`` keys from ``jax.random.PRNGKey`` are wrapped."""
    import jax
    import jax.numpy as jnp

    if not isinstance(key, jax.Array):
        raise TypeError(f"{name}: expected a PRNG key from jax.random.key(seed), got {type(key).__name__}")
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if key.shape != ():
        raise ValueError(f"{name}: expected a single key, got shape {key.shape}")
    return key


def output_dir(path: str | os.PathLike, name: str) -> Path:
    """A folder that exists or can be created, and can be written: checked before any work is done."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}: {str(path)!r} exists and is not a folder; pick a folder path")
    _check_writable(_existing_ancestor(path), name, path)
    return path


def output_file(path: str | os.PathLike, name: str) -> Path:
    """A file path that can be (over)written: not a folder, its folder creatable and writable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{name}: {str(path)!r} is a folder; give a file path, e.g. {str(path / 'out.json')!r}")
    output_dir(path.parent, name)
    return path


def _existing_ancestor(path: Path) -> Path:
    """The nearest existing ancestor (or ``path`` itself); a file on the way cannot hold folders."""
    p = path.absolute()
    while not p.exists():
        p = p.parent
    return p


def _check_writable(folder: Path, name: str, wanted: Path) -> None:
    if not folder.is_dir():
        raise ValueError(f"{name}: cannot create {str(wanted)!r}: {str(folder)!r} is a file, not a folder; "
                         "pick another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: cannot write in {str(folder)!r} (permission denied); pick a folder you can "
                         "write to")


def _range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    return f" <= {maximum}" if maximum is not None else ""


def window(window: int, stride: int, shape: Sequence[int], names: tuple[str, str] = ("window", "stride")) -> None:
    """A square ``window`` and its ``stride`` on an image of ``shape`` ``(h, w, ...)``: both >= 1, the window
    no larger than the image, the stride no larger than the window (else pixels get no evidence).
    ``names``: the two arguments as errors call them (``("--window", "--stride")`` on the command line)."""
    positive_int(names[0], window, maximum=None)
    positive_int(names[1], stride, maximum=None)
    h, w = int(shape[0]), int(shape[1])
    if window > min(h, w):
        raise ValueError(f"{names[0]}={window} is larger than the image {h}×{w}; pick {names[0]} <= {min(h, w)}")
    if stride > window:
        raise ValueError(f"{names[1]}={stride} is larger than {names[0]}={window}: pixels between windows would "
                         f"get no evidence; pick {names[1]} <= {names[0]} ({window})")
