"""Model preprocessing that remembers where each model pixel came from.

A :class:`Preprocessor` turns a raw ``uint8`` image into the float32 input a model expects (resize,
centre crop, normalise). The :class:`Preprocessed` result keeps the geometry (original size, resized
size, crop box) so that a heatmap computed on the model input can be drawn on the original image
with :meth:`Preprocessed.to_original`.

The resize and crop follow torchvision's ``Resize(short_side)`` + ``CenterCrop(size)`` on PIL images:
the long side is ``int(short_side * long / short)`` (truncated, as torchvision does), Pillow does the
resampling, and the crop's top-left corner is ``int(round((H' - h) / 2))`` (Python's rounding, as
torchvision's ``center_crop``).

Coordinates follow Pillow's resize convention (pixel centres aligned): the centre of original pixel
``i`` sits at ``(i + 0.5) * H'/H - 0.5`` in the resized image, and at that minus the crop's top row
on the model grid.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

_RESAMPLE = ("nearest", "bilinear", "bicubic", "box", "lanczos")
#: Largest resized image (before the centre crop) a Preprocessor makes: 16.7 megapixels. A short
#: side of 256 then allows aspect ratios up to 256:1; beyond, the resize alone would need gigabytes.
MAX_RESIZED_PIXELS = 2**24


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compare by identity
class Preprocessed:
    """A model input and its mapping back to the original pixels.

    ``image``: float32 ``[h, w, C]`` model input. ``original_shape``: ``(H, W)`` of the raw image.
    ``resized_shape``: ``(H', W')`` after resizing. ``crop_box``: ``(top, left, h, w)`` of the model
    input inside the resized image.
    """

    image: np.ndarray
    original_shape: tuple[int, int]
    resized_shape: tuple[int, int]
    crop_box: tuple[int, int, int, int]

    def to_original(self, map_hw: np.ndarray, *, fill: float = np.nan, order: int = 1) -> np.ndarray:
        """Resample a map on the model grid ``[..., h, w]`` onto the original grid ``[..., H, W]``.

        Original pixels the model never saw (cut off by the crop) get ``fill`` (NaN by default, which
        matplotlib draws as transparent). ``order`` 0 = nearest model pixel, 1 = bilinear.
        """
        m = np.asarray(map_hw)
        top, left, h, w = self.crop_box
        if m.ndim < 2 or m.shape[-2:] != (h, w):
            raise ValueError(f"map_hw: expected shape [..., {h}, {w}] (the model input grid), got {m.shape}")
        if order not in (0, 1):
            raise ValueError(f"order: expected 0 (nearest) or 1 (bilinear), got {order!r}")
        m = m.astype(np.float32) if not np.issubdtype(m.dtype, np.floating) else m
        (H, W), (Hr, Wr) = self.original_shape, self.resized_shape
        y = (np.arange(H) + 0.5) * (Hr / H) - 0.5 - top
        x = (np.arange(W) + 0.5) * (Wr / W) - 0.5 - left
        inside = ((y >= -0.5) & (y <= h - 0.5))[:, None] & ((x >= -0.5) & (x <= w - 0.5))[None, :]
        if order == 0:
            yi = np.clip(np.floor(y + 0.5).astype(int), 0, h - 1)
            xi = np.clip(np.floor(x + 0.5).astype(int), 0, w - 1)
            out = m[..., yi[:, None], xi[None, :]]
        else:
            y = np.clip(y, 0, h - 1)
            x = np.clip(x, 0, w - 1)
            y0 = np.minimum(np.floor(y).astype(int), max(h - 2, 0))
            x0 = np.minimum(np.floor(x).astype(int), max(w - 2, 0))
            y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
            fy, fx = (y - y0)[:, None], (x - x0)[None, :]
            a, b = m[..., y0[:, None], x0[None, :]], m[..., y0[:, None], x1[None, :]]
            c, d = m[..., y1[:, None], x0[None, :]], m[..., y1[:, None], x1[None, :]]
            out = (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy
        return np.where(inside, out, np.asarray(fill, dtype=out.dtype))


class PreprocessWarning(UserWarning):
    """A preprocessing that runs but looks wrong (mean / std on the 0..1 scale for 0..255 pixels)."""


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(W', H')`` of torchvision's ``Resize(short_side)``: the short side becomes ``short_side``, the
    long side ``int(short_side * long / short)`` (truncated, not rounded)."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def crop_corner(resized: int, crop: int) -> int:
    """torchvision's ``center_crop`` offset along one axis: ``int(round((resized - crop) / 2))``."""
    return int(round((resized - crop) / 2.0))


@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """Raw ``uint8`` image -> :class:`Preprocessed`: resize, centre crop, ``(x - mean) / std``.

    ``size``: model input ``(h, w)``. ``resize``: short side before the centre crop (ImageNet's
    256 -> 224; torchvision's numerics, module docstring); ``None`` resizes straight to ``size``
    (aspect ratio not kept). A mean / std on the 0..1 scale warns (:meth:`scale_warning`). ``grayscale``: one
    channel (Pillow's luma), else RGB. ``mean``/``std``: per channel, on the 0..255 scale.
    """

    size: tuple[int, int]
    resize: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    grayscale: bool = False
    resample: str = "bicubic"

    def __post_init__(self):
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size: expected (h, w) with h, w >= 1, got {self.size!r}")
        if self.resize is not None and self.resize < max(self.size):
            raise ValueError(f"resize: the short side {self.resize} must be >= the crop {self.size}")
        least = self.resize ** 2 if self.resize is not None else self.size[0] * self.size[1]
        if least > MAX_RESIZED_PIXELS:
            raise ValueError(f"size/resize: the model input {self.size} (short side {self.resize}) needs a resized "
                             f"image of at least {least:,} pixels, more than {MAX_RESIZED_PIXELS:,}; use a smaller "
                             "input size or short side (at most 4096)")
        channels = 1 if self.grayscale else 3
        if len(self.mean) != channels or len(self.std) != channels or min(self.std) <= 0:
            raise ValueError(f"mean/std: expected {channels} values each (std > 0), got {self.mean!r}, {self.std!r}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample: expected one of {_RESAMPLE}, got {self.resample!r}")
        if self.scale_warning() is not None:
            warnings.warn(self.scale_warning(), PreprocessWarning, stacklevel=3)

    def scale_warning(self) -> str | None:
        """A message when ``mean`` / ``std`` look like the 0..1 scale although pixels are 0..255, else None.

        With mean <= 1 and std < 1 on 0..255 pixels, a normalised pixel reaches hundreds and the
        model's output saturates (p = 1.0 everywhere).
        """
        if max(self.mean) <= 1.0 and max(self.std) < 1.0:   # mean 0, std 1: raw 0..255 pixels, on purpose
            scaled = ", ".join(f"{255 * m:g}" for m in self.mean), ", ".join(f"{255 * v:g}" for v in self.std)
            return (f"mean {list(self.mean)} and std {list(self.std)} look like the 0..1 scale, but they apply to "
                    f"0..255 pixels (normalised pixels reach {255 / min(self.std):.0f}); for 0..1 values give them "
                    f"times 255: mean {scaled[0]}, std {scaled[1]}")
        return None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(h, w, C)`` of the model input."""
        return (*self.size, 1 if self.grayscale else 3)

    def __call__(self, image: np.ndarray) -> Preprocessed:
        from PIL import Image

        from .images import to_rgb_uint8

        raw = np.asarray(image)
        if raw.dtype != np.uint8:
            raise TypeError(f"image: expected raw uint8 pixels, got dtype {raw.dtype}; "
                            f"use np.clip(x, 0, 255).astype(np.uint8) or data.load_image")
        if self.grayscale and (raw.ndim == 2 or (raw.ndim == 3 and raw.shape[2] == 1)):
            if min(raw.shape[:2]) < 1:
                raise ValueError(f"image: empty image of shape {raw.shape}")
            im = Image.fromarray(raw.reshape(raw.shape[:2]), mode="L")
        else:
            im = Image.fromarray(to_rgb_uint8(raw))
            if self.grayscale:
                im = im.convert("L")
        W, H = im.size
        h, w = self.size
        if self.resize is None:
            Wr, Hr = w, h
        else:
            Wr, Hr = resized_size(W, H, self.resize)
            Wr, Hr = max(Wr, w), max(Hr, h)
        if Wr * Hr > MAX_RESIZED_PIXELS:
            side = self.resize if self.resize is not None else min(h, w)
            raise ValueError(
                f"image: {W}x{H} pixels (aspect ratio {max(W, H) / min(W, H):.0f}:1) would be resized to "
                f"{Wr}x{Hr} before the centre crop, more than {MAX_RESIZED_PIXELS:,} pixels; crop it to a "
                f"less extreme aspect ratio first (at most {max(1, MAX_RESIZED_PIXELS // side ** 2)}:1 here)")
        if (Wr, Hr) != (W, H):
            im = im.resize((Wr, Hr), getattr(Image.Resampling, self.resample.upper()))
        top, left = crop_corner(Hr, h), crop_corner(Wr, w)
        x = np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.float32)
        x = x.reshape(h, w, -1)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return Preprocessed(image=x.astype(np.float32), original_shape=(H, W), resized_shape=(Hr, Wr),
                            crop_box=(top, left, h, w))

    def display(self, image: np.ndarray) -> np.ndarray:
        """The raw ``uint8`` pixels resized and cropped like the model input, not normalised: what a
        figure shows under a heatmap of the model input."""
        c = len(self.mean)
        plain = dataclasses.replace(self, mean=(0.0,) * c, std=(1.0,) * c)
        return plain(image).image.clip(0, 255).astype(np.uint8)


#: EfficientNet-Lite (TF-Lite convention): short side 256 bicubic, centre crop 224, (x - 127) / 128.
EFFICIENTNET_LITE = Preprocessor(size=(224, 224), resize=256, mean=(127.0,) * 3, std=(128.0,) * 3,
                                 resample="bicubic")
#: torchvision ImageNet models: short side 256 bilinear, centre crop 224, ImageNet mean / std.
TORCHVISION = Preprocessor(size=(224, 224), resize=256, mean=(123.675, 116.28, 103.53),
                           std=(58.395, 57.12, 57.375), resample="bilinear")
