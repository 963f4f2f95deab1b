"""Ground truth on real photographs: paste an object patch, then ask whether a map finds it.

Pasting a patch that the classifier recognises (a cup cut from another photograph) onto a photograph
changes the image in a known place. Where the prediction moves towards the patch's class, the pasted
pixels are by construction evidence against the original class and for the object's class, so a map
of undesirable pixels for the original class (or of evidence for the object's class) should put its
peak and its mass inside the pasted region, in the spirit of BAM (Yang & Kim 2019).

- :data:`PHOTOGRAPHS`: every offline photograph this package can read (its seven
  :data:`~undesirable_jax.data.SAMPLE_IMAGES` and the photographs scikit-image ships in its wheel),
  read by :func:`photograph`; each is one cluster (the unit of the paired statistics).
- :func:`crops`: several square crops of one photograph (centre first, then the corners).
- :data:`PATCHES`: object patches, each a hand-chosen box around one object in a different photograph
  (:class:`ObjectPatch`, pixels from :func:`patch_pixels`). The object's class is the one the model
  predicts for the patch alone; a benchmark keeps a patch only when that prediction is confident.
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

from ..data.images import SAMPLE_IMAGES, sample_image, to_rgb_uint8
from .ranking import rank_pixels


#: scikit-image's offline photographs besides the sample images (grey ones come back as RGB);
#: ``motorcycle`` is the left view of ``stereo_motorcycle``. Synthetic images, logos, binary
#: silhouettes and download-only data are left out.
_SKIMAGE_PHOTOGRAPHS = ("camera", "coins", "moon", "page", "text", "clock", "brick", "grass", "gravel",
                        "hubble_deep_field", "immunohistochemistry", "retina", "cell", "microaneurysms",
                        "motorcycle")
PHOTOGRAPHS: tuple[str, ...] = (*SAMPLE_IMAGES, *_SKIMAGE_PHOTOGRAPHS)


def photograph(name: str) -> np.ndarray:
    """One of :data:`PHOTOGRAPHS` as RGB ``uint8 [H, W, 3]``, read from an installed package (no network)."""
    if name in SAMPLE_IMAGES:
        return sample_image(name)
    if name not in _SKIMAGE_PHOTOGRAPHS:
        raise ValueError(f"name: unknown photograph {name!r}; choose one of {PHOTOGRAPHS}")
    import skimage.data

    pixels = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    return to_rgb_uint8(np.asarray(pixels), name=name)


def crops(image: Any, count: int, *, fraction: float = 0.75) -> list[np.ndarray]:
    """The first ``count`` of five square crops of ``image`` ``[H, W, ...]``: centre, top-left, top-right,
    bottom-left, bottom-right, each of side ``round(fraction · min(H, W))``."""
    image = np.asarray(image)
    if not isinstance(count, int) or not 1 <= count <= 5:
        raise ValueError(f"count: expected an int in 1..5 (centre and four corners), got {count!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: expected 0 < fraction <= 1, got {fraction!r}")
    h, w = image.shape[:2]
    side = max(1, round(fraction * min(h, w)))
    corners = [((h - side) // 2, (w - side) // 2), (0, 0), (0, w - side), (h - side, 0), (h - side, w - side)]
    return [image[y:y + side, x:x + side] for y, x in corners[:count]]


@dataclasses.dataclass(frozen=True)
class ObjectPatch:
    """An object cut from one of :data:`PHOTOGRAPHS`: ``box`` ``(top, left, bottom, right)`` in its pixels."""

    name: str
    photo: str
    box: tuple[int, int, int, int]
    what: str


PATCHES: tuple[ObjectPatch, ...] = (
    ObjectPatch("cup", "coffee", (15, 165, 310, 420), "espresso cup with handle and spoon, some saucer"),
    ObjectPatch("motorcycle", "motorcycle", (75, 90, 455, 690), "the whole motorcycle, some garage floor"),
    ObjectPatch("tripod", "camera", (130, 220, 512, 420), "camera on its tripod, some of the hands and grass"),
    ObjectPatch("cat", "chelsea", (0, 100, 300, 400), "the cat's head and chest"),
    ObjectPatch("helmet", "astronaut", (300, 330, 512, 512), "the space helmet on the astronaut's arm"),
)
"""Object patches from five different photographs (boxes chosen by hand around one object each)."""


def patch_pixels(patch: ObjectPatch) -> np.ndarray:
    """The patch's RGB ``uint8`` pixels ``[bottom − top, right − left, 3]`` cut from its photograph."""
    top, left, bottom, right = patch.box
    pixels = photograph(patch.photo)
    if not (0 <= top < bottom <= pixels.shape[0] and 0 <= left < right <= pixels.shape[1]):
        raise ValueError(f"patch {patch.name!r}: box {patch.box} lies outside {patch.photo!r} {pixels.shape[:2]}")
    return pixels[top:bottom, left:right]


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
