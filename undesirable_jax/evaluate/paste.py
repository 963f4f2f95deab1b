"""Ground truth on real photographs: paste an object patch, then ask whether a map finds it.

Pasting a patch that the classifier recognises (a cup cut from another photograph) onto a photograph
changes the image in a known place. Where the prediction moves towards the patch's class, the pasted
pixels are by construction evidence against the original class and for the object's class, so a map
of undesirable pixels for the original class (or of evidence for the object's class) should put its
peak and its mass inside the pasted region, in the spirit of BAM (Yang & Kim 2019).

- :func:`paste_patch`: the patch resized to a random scale and pasted at a random position, both
  drawn from an explicit key; returns the new image and the pasted region's pixel mask.
- :func:`pointing_hit`: does the map's top pixel (ties broken at random by a key) fall in the mask?
- :func:`mass_share`: the share of a non-negative map's mass inside the mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .ranking import rank_pixels


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compare by identity
class Pasted:
    """``image`` float32 ``[H, W, C]`` with the patch in it; ``mask`` bool ``[H, W]``, True where pasted;
    ``box`` ``(top, left, height, width)`` of the pasted patch."""

    image: np.ndarray
    mask: np.ndarray
    box: tuple[int, int, int, int]


def paste_patch(image: Any, patch: Any, key: jax.Array, *, scale: tuple[float, float] = (0.3, 0.5)) -> Pasted:
    """Paste ``patch`` ``[h, w, C]`` into ``image`` ``[H, W, C]`` (both in the model's input space).

    From ``key``: a scale ``s ~ U(scale)``; the patch is resized (bilinear, antialiased, aspect kept)
    so that its longer side is ``round(s · min(H, W))`` pixels, then placed at a uniform position where
    it lies wholly inside the image. The same key gives the same result.
    """
    image = np.asarray(image, np.float32)
    patch = np.asarray(patch, np.float32)
    if image.ndim != 3 or patch.ndim != 3 or image.shape[2] != patch.shape[2]:
        raise ValueError(f"image, patch: expected [H, W, C] and [h, w, C] with one C, got {image.shape} "
                         f"and {patch.shape}")
    lo, hi = (float(v) for v in scale)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"scale: expected 0 < low <= high <= 1, got {scale!r}")
    H, W, C = image.shape
    u = np.asarray(jax.random.uniform(key, (3,)), np.float64)
    side = max(1, round((lo + (hi - lo) * u[0]) * min(H, W)))
    h0, w0 = patch.shape[:2]
    ph, pw = (side, max(1, round(side * w0 / h0))) if h0 >= w0 else (max(1, round(side * h0 / w0)), side)
    resized = np.asarray(jax.image.resize(jnp.asarray(patch), (ph, pw, C), "linear", antialias=True))
    top = min(int(u[1] * (H - ph + 1)), H - ph)
    left = min(int(u[2] * (W - pw + 1)), W - pw)
    out = image.copy()
    out[top:top + ph, left:left + pw] = resized
    mask = np.zeros((H, W), bool)
    mask[top:top + ph, left:left + pw] = True
    return Pasted(image=out, mask=mask, box=(top, left, ph, pw))


def pointing_hit(saliency: Any, mask: Any, key: jax.Array) -> bool:
    """True when the highest pixel of ``saliency`` ``[H, W]`` lies in ``mask`` (exact ties: at random by
    ``key``, see :func:`~undesirable_jax.evaluate.ranking.rank_pixels`); no tolerance margin."""
    mask = np.asarray(mask, bool)
    if np.shape(saliency) != mask.shape:
        raise ValueError(f"saliency, mask: expected one [H, W] shape, got {np.shape(saliency)} "
                         f"and {mask.shape}")
    top = int(rank_pixels(jnp.asarray(saliency), key)[0])
    return bool(mask.ravel()[top])


def mass_share(saliency: Any, mask: Any) -> float:
    """``Σ_mask m / Σ m`` for a non-negative map ``m`` ``[H, W]``; NaN when the map is all zero."""
    m = np.asarray(saliency, np.float64)
    mask = np.asarray(mask, bool)
    if m.shape != mask.shape:
        raise ValueError(f"saliency, mask: expected one [H, W] shape, got {m.shape} and {mask.shape}")
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError("saliency: expected a finite non-negative map (clamp signed maps first)")
    total = m.sum()
    return float(m[mask].sum() / total) if total > 0 else float("nan")
