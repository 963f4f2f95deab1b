"""Samplers: what fills a removed window (METHOD.md §2).

Every sampler is a frozen pytree dataclass with two pure methods, so the engine can pass it through
``jit`` (arrays are leaves, settings are static) and vmap ``fill`` over a chunk of windows:

- ``prepare(image, window) -> state``: once per image, outside the per-chunk step (a blurred copy,
  conditional matrices, shape checks). Raise ``ValueError`` here for input that does not fit.
- ``fill(state, image, window, key, y, x, sample) -> [window, window, C]``: the values for one
  (window, sample) pair with top-left corner ``(y, x)``; ``key`` is already specific to that pair,
  so results do not depend on chunking or devices.

The conditional Gaussian sampler lives in :mod:`undesirable_jax.conditional` and implements the same
two methods.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@runtime_checkable
class Sampler(Protocol):
    """The interface the engine relies on (see the module docstring)."""

    def prepare(self, image: jnp.ndarray, window: int) -> Any: ...

    def fill(self, state: Any, image: jnp.ndarray, window: int, key: jax.Array,
             y: jnp.ndarray, x: jnp.ndarray, sample: jnp.ndarray) -> jnp.ndarray: ...


@struct.dataclass
class Constant:
    """Fill every removed pixel with one value (a scalar, or one value per channel)."""

    value: jnp.ndarray  # [] or [C]

    def prepare(self, image, window):
        channels = image.shape[-1]
        if self.value.ndim == 1 and self.value.shape[0] != channels:
            raise ValueError(
                f"sampler: constant colour has {self.value.shape[0]} channels but the image has "
                f"{channels}; pass a scalar or a length-{channels} colour")
        return None

    def fill(self, state, image, window, key, y, x, sample):
        return jnp.broadcast_to(self.value.astype(image.dtype), (window, window, image.shape[-1]))


@struct.dataclass
class Marginal:
    """Fill a window with the pixels at the same place in another image of ``pool``.

    For each (window, sample) pair the pool image is drawn uniformly at random from the pair's
    key, so different samples of one window usually see different images (the original PDA code took
    the first S images of its data folder; a pool of S images with ``shuffle=False`` does that).
    """

    pool: jnp.ndarray  # [M, H, W, C]
    shuffle: bool = struct.field(pytree_node=False, default=True)

    def prepare(self, image, window):
        if self.pool.shape[1:] != image.shape:
            raise ValueError(
                f"sampler: marginal pool images have shape {tuple(self.pool.shape[1:])} but the image "
                f"is {tuple(image.shape)}; preprocess the pool like the image")
        return None

    def fill(self, state, image, window, key, y, x, sample):
        m = self.pool.shape[0]
        idx = jax.random.randint(key, (), 0, m) if self.shuffle else sample % m
        zero = jnp.zeros((), jnp.int32)
        block = jax.lax.dynamic_slice(self.pool, (idx, y, x, zero), (1, window, window, image.shape[-1]))
        return block[0].astype(image.dtype)


@struct.dataclass
class Blur:
    """Fill a window with the image's own Gaussian-blurred pixels (deterministic: one sample suffices)."""

    sigma: float = struct.field(pytree_node=False)

    def prepare(self, image, window):
        return gaussian_blur(image, self.sigma)

    def fill(self, state, image, window, key, y, x, sample):
        zero = jnp.zeros((), jnp.int32)
        return jax.lax.dynamic_slice(state, (y, x, zero), (window, window, image.shape[-1]))


def constant(value: float | Any = 0.0) -> Constant:
    """Constant fill: a scalar, or a per-channel colour such as the data set's mean colour."""
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim > 1:
        raise ValueError(f"value: expected a scalar or a per-channel colour [C], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"value: must be finite, got {value!r}")
    return Constant(value=jnp.asarray(arr))


def marginal(pool: Any, *, shuffle: bool = True) -> Marginal:
    """Marginal fill from ``pool``, a stack ``[M, H, W, C]`` of images preprocessed like the input."""
    arr = np.asarray(pool, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[0] < 1:
        raise ValueError(f"pool: expected a stack of images [M, H, W, C] with M >= 1, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("pool: contains NaN or inf; clean or drop those images")
    return Marginal(pool=jnp.asarray(arr), shuffle=bool(shuffle))


def blur(sigma: float = 5.0) -> Blur:
    """Blur fill: the image's own pixels under a Gaussian of standard deviation ``sigma`` pixels."""
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma: must be a positive number of pixels, got {sigma!r}")
    return Blur(sigma=float(sigma))


def gaussian_blur(image: jnp.ndarray, sigma: float) -> jnp.ndarray:
    """Separable Gaussian blur of an ``[H, W, C]`` image, borders mirrored (radius 3σ).

    Each axis is one matrix product with an ``[n, n]`` blur matrix (:func:`blur_matrix`), so the
    cost does not grow with sigma.
    """
    h, w = image.shape[0], image.shape[1]
    rows = jnp.asarray(blur_matrix(h, sigma), image.dtype)
    cols = jnp.asarray(blur_matrix(w, sigma), image.dtype)
    hi = jax.lax.Precision.HIGHEST
    out = jnp.einsum("ij,jwc->iwc", rows, image, precision=hi)
    return jnp.einsum("kj,ijc->ikc", cols, out, precision=hi)


def blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``[n, n]`` float64: row ``i`` holds the Gaussian weights (taps up to 3σ) that blur pixel ``i``.

    Taps past the border are mirrored as often as needed: the mirrored line repeats with period
    ``P = 2(n - 1)``. For sigma >= P the whole Gaussian folded onto one period is flat to within
    1e-8 (Poisson summation: ``2 exp(-2 π² σ² / P²)``; the 3σ truncation alone moves weights by
    about 2e-4), so flat weights are used: every row is the mirrored line's mean. Building the
    matrix costs at most ``O(n²)`` whatever sigma.
    """
    if n == 1:
        return np.ones((1, 1))
    period = 2 * (n - 1)
    if sigma >= period:
        row = np.full(n, 2.0 / period)
        row[[0, -1]] = 1.0 / period
        return np.tile(row, (n, 1))
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    idx = (np.arange(n)[:, None] + t[None, :]) % period
    idx = np.where(idx > n - 1, period - idx, idx)
    m = np.zeros((n, n))
    np.add.at(m, (np.repeat(np.arange(n), t.size), idx.ravel()), np.tile(kernel, n))
    return m


from .conditional import ConditionalGaussian, conditional_gaussian, load_conditional_gaussian, save_conditional_gaussian  # noqa: E402

#: The sampler names :func:`from_name` knows.
SAMPLER_NAMES = ("blur", "constant", "marginal", "conditional")


def from_name(name: str, *, pool: Callable[[], Any] | None = None, window: int | None = None,
              key: jax.Array | None = None, blur_sigma: float = 8.0, fill_value: float = 0.0,
              sampler_file: str | os.PathLike | None = None) -> Sampler:
    """The sampler called ``name`` (one of :data:`SAMPLER_NAMES`) with its settings.

    ``pool()`` gives preprocessed images ``[M, H, W, C]``; it is called only by the samplers that need
    images (marginal, conditional without ``sampler_file``), since reading them is the slow part.
    ``window`` and ``key`` are the conditional sampler's fit window and key.
    """
    if name not in SAMPLER_NAMES:
        raise ValueError(f"sampler: unknown sampler {name!r}; use one of {', '.join(SAMPLER_NAMES)}")
    if sampler_file is not None and name != "conditional":
        raise ValueError("--sampler-file: only used with --sampler conditional")
    if name == "blur":
        return blur(blur_sigma)
    if name == "constant":
        return constant(fill_value)
    if name == "conditional" and sampler_file is not None:
        if not Path(sampler_file).is_file():
            raise ValueError(f"--sampler-file: no file at {str(sampler_file)!r}; check the path")
        return load_conditional_gaussian(sampler_file, window=window)
    if pool is None:
        raise ValueError(f"pool: the {name} sampler needs pool images; pass pool=lambda: images")
    return marginal(pool()) if name == "marginal" else conditional_gaussian(pool(), window=window, key=key)
