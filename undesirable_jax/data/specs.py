"""Data named by a short string, as the command line takes it: one image, or a labelled data set.

``resolve_image("photo.jpg")`` / ``resolve_image("chelsea")`` give raw pixels and a short name;
``from_spec("digits+corrupt", "test")`` gives the evaluated set and the set a sampler's pool is drawn
from. Every set returned knows its ``ids`` without decoding an image, so a process that shares a run
reads only its own images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..checks import BadFileError
from .datasets import CORRUPTIONS, PLAIN_GROUP, Example, corrupted, digits, image_folder, lfw, tfds_source
from .images import SAMPLE_IMAGES, load_image, sample_image

#: The data set specs :func:`from_spec` knows (PATH and NAME stand for a folder and a tfds name).
DATASET_SPECS = ("digits", "lfw", "digits+corrupt", "lfw+corrupt", "folder:PATH", "tfds:NAME")
_BUILT_IN = {"digits": digits, "lfw": lfw}


def resolve_image(spec: str, name: str = "image") -> tuple[np.ndarray, str]:
    """An image file or offline sample name → (RGB/grey ``uint8`` pixels, a short name for outputs).

    ``name`` is the argument named in errors (``"--pool"`` for a command-line option).
    """
    path = Path(spec)
    if path.is_file():
        try:
            return load_image(path), path.stem
        except BadFileError as e:
            raise ValueError(f"{name}: {e}") from e
    if spec in SAMPLE_IMAGES:
        return sample_image(spec), spec
    raise ValueError(f"{name}: no file at {spec!r} and not an offline sample image ({', '.join(SAMPLE_IMAGES)}); "
                     "check the path")


class Subset:
    """Some examples of a data set, with the set's ``ids``, ``clusters``, ``groups`` (own id and ``"all"``
    for a set without them) and indexing; no image is read to choose them.

    ``limit``: the first ``limit`` examples (all when None). ``spread``: instead, ``spread`` examples at
    the evenly spaced positions ``⌊i · N / spread⌋``, i = 0 … spread − 1, of a set of N (all N when
    ``spread ≥ N``). A ``+corrupt`` set stores the split, then each corruption's copies in the same
    order, so with ``spread`` a multiple of 4 whose quarter divides N/4 every version gets spread/4
    images of the same source images; a folder (sorted by class) gets every class in proportion.
    """

    def __init__(self, dataset: Any, limit: int | None = None, *, spread: int | None = None):
        if limit is not None and spread is not None:
            raise ValueError("limit, spread: give one (the first LIMIT images, or SPREAD images spread evenly)")
        size = len(dataset)
        if spread is None:
            self.positions = tuple(range(size if limit is None else min(limit, size)))
        else:
            n = min(int(spread), size)
            self.positions = tuple(i * size // n for i in range(n))
        self.dataset, self.n = dataset, len(self.positions)
        ids = dataset.ids
        clusters = getattr(dataset, "clusters", ids)
        groups = getattr(dataset, "groups", None)
        self.ids = tuple(ids[p] for p in self.positions)
        self.clusters = tuple(clusters[p] for p in self.positions)
        self.groups = tuple(PLAIN_GROUP if groups is None else groups[p] for p in self.positions)
        self.class_names = tuple(getattr(dataset, "class_names", ()))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} outside the {self.n} images of this subset")
        return self.dataset[self.positions[index]]

    def __iter__(self) -> Iterator[Example]:
        for p in self.positions:
            yield self.dataset[p]


def from_spec(spec: str, split: str = "test", data_dir: str | os.PathLike | None = None,
              name: str = "dataset") -> tuple[Any, Any]:
    """A data set spec (one of :data:`DATASET_SPECS`) → (the evaluated set, the set pools are drawn from).

    ``digits``/``lfw`` draw pools from their train split; ``+corrupt`` adds noisy, blurred and occluded
    copies at the levels of :data:`CORRUPTIONS`; a folder or tfds set is its own pool.
    """
    base = spec.split("+")[0]
    if spec in _BUILT_IN:
        return _BUILT_IN[spec](split), _BUILT_IN[spec]("train")
    if spec.endswith("+corrupt") and base in _BUILT_IN:
        return corrupted(_BUILT_IN[base](split), CORRUPTIONS[base]), _BUILT_IN[base]("train")
    if spec.startswith("folder:"):
        ds = image_folder(spec[len("folder:"):])
        return ds, ds
    if spec.startswith("tfds:"):
        ds = tfds_source(spec[len("tfds:"):], split, data_dir)
        return ds, ds
    raise ValueError(f"{name}: unknown data set {spec!r}; use digits, lfw, digits+corrupt, lfw+corrupt, "
                     "folder:PATH or tfds:NAME")


def label(spec: str, split: str, limit: int | None = None, spread: int | None = None) -> str:
    """A data set's label in a run's configuration, with the subset and the corruption levels if any.

    ``[:L]``: the first L images (``Subset(limit=L)``); ``[spread S]``: S evenly spaced images.
    """
    text = f"{spec}:{split}" + (f"[:{limit}]" if limit else "") + (f"[spread {spread}]" if spread else "")
    base = spec.split("+")[0]
    return text + (f" {CORRUPTIONS[base]}" if spec.endswith("+corrupt") and base in CORRUPTIONS else "")
