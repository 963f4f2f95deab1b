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

from typing import Any, Protocol, runtime_checkable

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
    """Separable Gaussian blur of an ``[H, W, C]`` image with reflected borders (radius 3σ)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel = jnp.asarray(kernel / kernel.sum(), dtype=image.dtype)

    def along(img, axis):
        n = img.shape[axis]
        idx = np.arange(-radius, n + radius)
        idx = np.abs(idx)                      # reflect at 0
        idx = np.where(idx > n - 1, 2 * (n - 1) - idx, idx)  # reflect at n-1
        idx = np.clip(idx, 0, n - 1)
        padded = jnp.take(img, jnp.asarray(idx), axis=axis)
        windows = [jax.lax.slice_in_dim(padded, i, i + n, axis=axis) for i in range(2 * radius + 1)]
        return sum(w * kernel[i] for i, w in enumerate(windows))

    return along(along(image, 0), 1)


from .conditional import ConditionalGaussian, conditional_gaussian, load_conditional_gaussian, save_conditional_gaussian  # noqa: E402
