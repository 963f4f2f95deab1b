"""Mask generation: where the sliding windows sit, and how per-window values become pixel maps.

A window is a ``window × window`` square (all channels). Along each axis its top-left corner takes
the positions ``0, s, 2s, …`` plus ``length − window`` when the stride does not land on it, so every
pixel is covered (METHOD.md §1). Positions are separable, so a per-window grid ``[..., nY, nX]``
turns into a per-pixel mean with two small matrix products instead of a scatter over windows.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from . import checks


def positions(length: int, window: int, stride: int) -> np.ndarray:
    """Top-left corners along one axis of ``length`` pixels: ``0, s, 2s, …`` and ``length − window``."""
    checks.window(window, stride, (length, length))
    pos = list(range(0, length - window + 1, stride))
    if pos[-1] != length - window:
        pos.append(length - window)
    return np.asarray(pos, dtype=np.int32)


def membership(length: int, window: int, pos: np.ndarray) -> np.ndarray:
    """``[n, length]`` 0/1 matrix: entry (i, j) is 1 when the window at ``pos[i]`` covers pixel j."""
    idx = np.arange(length)[None, :]
    return ((idx >= pos[:, None]) & (idx < pos[:, None] + window)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class WindowGrid:
    """All window positions on an ``height × width`` image for one window size and stride."""

    height: int
    width: int
    window: int
    stride: int

    def __post_init__(self):
        checks.window(self.window, self.stride, (self.height, self.width))

    @property
    def ys(self) -> np.ndarray:
        """Row of each window's top-left corner, ``[nY]``."""
        return positions(self.height, self.window, self.stride)

    @property
    def xs(self) -> np.ndarray:
        """Column of each window's top-left corner, ``[nX]``."""
        return positions(self.width, self.window, self.stride)

    @property
    def shape(self) -> tuple[int, int]:
        """``(nY, nX)``: the number of window positions along each axis."""
        return len(self.ys), len(self.xs)

    @property
    def num_windows(self) -> int:
        ny, nx = self.shape
        return ny * nx

    def coverage(self) -> np.ndarray:
        """``[H, W]`` int32: how many windows contain each pixel (always ≥ 1)."""
        cy = membership(self.height, self.window, self.ys).sum(0)
        cx = membership(self.width, self.window, self.xs).sum(0)
        return np.outer(cy, cx).astype(np.int32)

    def to_pixels(self, grid: jnp.ndarray) -> jnp.ndarray:
        """Mean over covering windows: ``[..., nY, nX]`` per-window values → ``[..., H, W]``.

        Exact (no scatter): sum = Aᵧᵀ · grid · Aₓ with the membership matrices, divided by coverage.
        """
        grid = jnp.asarray(grid)
        if grid.shape[-2:] != self.shape:
            raise ValueError(f"grid: last two axes must be the window grid {self.shape}, got {grid.shape}")
        ay = jnp.asarray(membership(self.height, self.window, self.ys))
        ax = jnp.asarray(membership(self.width, self.window, self.xs))
        total = jnp.einsum("yh,...yx,xw->...hw", ay, grid, ax, precision="highest")
        return total / jnp.asarray(self.coverage(), dtype=total.dtype)

    def mask(self, iy: int, ix: int) -> np.ndarray:
        """``[H, W]`` bool mask of the window at grid index ``(iy, ix)``."""
        m = np.zeros((self.height, self.width), dtype=bool)
        y, x = self.ys[iy], self.xs[ix]
        m[y:y + self.window, x:x + self.window] = True
        return m
