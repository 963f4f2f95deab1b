"""Images from disk and the real photographs that ship inside installed packages (no network).

Every image comes back the same way, RGB ``uint8 [H, W, 3]``, so the model preprocessors see one
format. ``IMAGENET_CLASSES`` are the 1000 ILSVRC-2012 class names in label order, shipped as
``imagenet_classes.txt`` beside this file (generated once from
``tensorflow_datasets.datasets.siscore.labels.IMAGENET_LABELS_LIST``).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from importlib import resources
from pathlib import Path

import numpy as np

from ..checks import BadFileError

SAMPLE_IMAGES: tuple[str, ...] = (
    "chelsea", "coffee", "astronaut", "rocket", "china", "flower", "grace_hopper")


def _read_imagenet_classes() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt holds {len(names)} names, expected 1000: reinstall the package")
    return names


IMAGENET_CLASSES: tuple[str, ...] = _read_imagenet_classes()


def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 class names in label order (the names an ImageNet model's outputs index),
    e.g. for ``--class-names`` or a figure of your own ImageNet model: ``imagenet_classes()[281]`` is
    ``"tabby, tabby cat"``."""
    return IMAGENET_CLASSES


def short_name(class_name: str) -> str:
    """The first synonym of a class name: ``"tabby, tabby cat"`` -> ``"tabby"``."""
    return class_name.split(",")[0].strip()


def to_rgb_uint8(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Grey ``[H, W]`` / ``[H, W, 1]``, RGB or RGBA ``uint8`` -> RGB ``uint8 [H, W, 3]`` (alpha dropped)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"{name}: expected dtype uint8 (raw pixels 0..255), got {image.dtype}; "
                        f"convert with np.clip(x, 0, 255).astype(np.uint8) or load it with load_image")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"{name}: expected shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


#: Largest image :func:`load_image` decodes (67 megapixels, 200 MB as RGB), checked from the header.
MAX_PIXELS = 2**26
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
_READ_ERRORS = (OSError, SyntaxError, EOFError, ValueError, IndexError, struct.error)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file with Pillow as RGB ``uint8 [H, W, 3]``, upright and with its real colours.

    - EXIF orientation is applied (the image comes out as viewers show it).
    - 16-bit grey (``I;16``) is scaled to 8 bits, ``round(v * 255 / 65535)``.
    - Transparent pixels (RGBA, LA, palette with transparency) are composited on white, as a
      viewer shows them; fully opaque images keep their exact values.
    - CMYK goes through the file's ICC profile to sRGB when it has one, else Pillow's conversion.
    - 32-bit integer (``I``) and float (``F``) pixels have no fixed range and are refused, as are
      images over :data:`MAX_PIXELS` and files Pillow cannot decode (empty, truncated, not an
      image): :class:`~undesirable_jax.checks.BadFileError` names the file.
    """
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no image file at {str(path)!r}; check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise BadFileError(path, f"is {w}x{h} pixels, more than the {MAX_PIXELS:,} this package "
                                             "decodes", "downscale or crop it first")
                im.load()
                ImageOps.exif_transpose(im, in_place=True)
                return _pixels(path, im)
    except BadFileError:
        raise
    except (*_READ_ERRORS, Image.DecompressionBombError) as e:
        raise BadFileError(path, f"cannot be read as an image ({type(e).__name__}: {' '.join(str(e).split())})",
                           "check that it is a complete image file (PNG, JPEG, ...) and re-save or "
                           "replace it") from e


def _pixels(path: Path, im) -> np.ndarray:
    """A decoded Pillow image of any mode -> RGB ``uint8 [H, W, 3]`` (see :func:`load_image`)."""
    mode = im.mode
    if mode in _SIXTEEN_BIT:
        v = np.asarray(im).astype(np.uint32)
        return to_rgb_uint8(((v * 255 + 32767) // 65535).astype(np.uint8))
    if mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "floating-point"
        raise BadFileError(path, f"holds {kind} pixels (mode {mode}), which have no fixed range",
                           "convert it to an 8- or 16-bit image with the range you mean")
    if mode == "CMYK" and im.info.get("icc_profile"):
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
        im = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    if mode in _ALPHA or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
        if np.all(rgba[..., 3] == 255):
            return np.ascontiguousarray(rgba[..., :3])
        a = rgba[..., 3:].astype(np.float32) / 255.0
        return np.round(rgba[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)
    if mode != "RGB":
        try:
            im = im.convert("RGB")
        except ValueError as e:
            raise BadFileError(path, f"has pixel mode {mode}, which cannot be converted to RGB",
                               "save it as an RGB or greyscale PNG/JPEG") from e
    return np.asarray(im, dtype=np.uint8).copy()


def sample_image(name: str) -> np.ndarray:
    """One of :data:`SAMPLE_IMAGES` as RGB ``uint8 [H, W, 3]``, read from an installed package."""
    if name in ("chelsea", "coffee", "astronaut", "rocket"):
        import skimage.data

        return to_rgb_uint8(getattr(skimage.data, name)(), name=name)
    if name in ("china", "flower"):
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "images"
        return load_image(folder / f"{name}.jpg")
    if name == "grace_hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            return load_image(f.name)
    raise ValueError(f"name: unknown sample image {name!r}; choose one of {SAMPLE_IMAGES}")
