"""Images from disk and the real photographs that ship inside installed packages (no network).

Every image comes back the same way, RGB ``uint8 [H, W, 3]``, so the model preprocessors see one
format. ``IMAGENET_CLASSES`` are the 1000 ILSVRC-2012 class names in label order, shipped as
``imagenet_classes.txt`` beside this file (generated once from
``tensorflow_datasets.datasets.siscore.labels.IMAGENET_LABELS_LIST``).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

SAMPLE_IMAGES: tuple[str, ...] = (
    "chelsea", "coffee", "astronaut", "rocket", "china", "flower", "grace_hopper")


def _read_imagenet_classes() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt holds {len(names)} names, expected 1000: reinstall the package")
    return names


IMAGENET_CLASSES: tuple[str, ...] = _read_imagenet_classes()


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


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file with Pillow as RGB ``uint8 [H, W, 3]``."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no image file at {str(path)!r}; check the path")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


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
