"""Data named by a short string, as the command line takes it: one image, or a labelled data set.

``resolve_image("photo.jpg")`` / ``resolve_image("chelsea")`` give raw pixels and a short name;
``from_spec("digits+corrupt", "test")`` gives the evaluated set and the set a sampler's pool is drawn
from. Every set returned knows its ``ids`` without decoding an image, so a process that shares a run
reads only its own images. :func:`read_text` and :func:`read_preprocess` read the small text files
that describe an external model (``--class-names``, ``--preprocess``), checked before it is loaded.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..checks import BadFileError
from .datasets import CORRUPTIONS, PLAIN_GROUP, Example, corrupted, digits, image_folder, lfw, tfds_source
from .images import SAMPLE_IMAGES, load_image, sample_image
from .preprocess import _RESAMPLE

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


#: The fields of a ``--preprocess`` JSON file (see :class:`~undesirable_jax.data.Preprocessor`).
PREPROCESS_KEYS = ("size", "resize", "mean", "std", "grayscale", "resample")
#: Deepest bracket nesting a ``--preprocess`` file may have (it needs 2: an object of lists); checked on
#: the raw text, before ``json.loads`` could recurse through a hostile file.
MAX_JSON_DEPTH = 4


def read_text(path: str | os.PathLike, name: str, max_bytes: int = 10_000_000) -> str:
    """A small UTF-8 text file's content; ValueError naming ``name`` and the file when it is missing,
    a folder, larger than ``max_bytes``, or not UTF-8 text (a NUL byte: a binary file)."""
    where = repr(os.fspath(path))
    if not Path(path).is_file():
        raise ValueError(f"{name}: no file at {where}; check the path")
    if Path(path).stat().st_size > max_bytes:
        raise ValueError(f"{name}: {where} is larger than {max_bytes:,} bytes; is it the right file?")
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: {where} is not UTF-8 text (byte {e.start} cannot be decoded); save it as "
                         "UTF-8 text") from None
    if "\0" in text:
        raise ValueError(f"{name}: {where} is not a text file (it holds NUL bytes); give a UTF-8 text file")
    return text


def json_depth(text: str, limit: int) -> int:
    """The deepest bracket nesting of JSON ``text`` (brackets inside strings not counted), scanning no
    further than the first point where it exceeds ``limit``."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif ch in "]}":
            depth -= 1
    return deepest


def read_preprocess(path: str | os.PathLike, name: str = "--preprocess") -> dict[str, Any]:
    """A preprocessing JSON file → its fields, each checked (sizes and sides positive ints, means and
    stds 1 or 3 finite numbers, stds > 0, ``grayscale`` a bool, ``resample`` a known filter)."""
    where = repr(os.fspath(path))
    text = read_text(path, name, max_bytes=100_000)
    depth = json_depth(text, MAX_JSON_DEPTH)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"{name}: {where} nests brackets more than {MAX_JSON_DEPTH} deep; a preprocessing file "
                         'is one object of short lists, e.g. {"size": [224, 224], "mean": [124, 116, 104]}')
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: {where} is not valid JSON ({e})") from None
    unknown = sorted(set(data) - set(PREPROCESS_KEYS)) if isinstance(data, dict) else ["(not an object)"]
    if unknown:
        raise ValueError(f"{name}: unknown keys {unknown} in {where}; use {list(PREPROCESS_KEYS)}")
    return {k: _preprocess_field(k, v, f"{name}: {where}") for k, v in data.items()}


def _preprocess_field(key: str, value: Any, where: str) -> Any:
    """One checked field of a preprocessing file (tuples for lists)."""
    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    def finite(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if key == "size" and isinstance(value, list) and len(value) == 2 and all(map(count, value)):
        return tuple(value)
    if key == "resize" and (value is None or count(value)):
        return value
    if key in ("mean", "std") and isinstance(value, list) and len(value) in (1, 3) and all(map(finite, value)) \
            and (key == "mean" or min(value) > 0):
        return tuple(float(v) for v in value)
    if key == "grayscale" and isinstance(value, bool):
        return value
    if key == "resample" and value in _RESAMPLE:
        return value
    need = {"size": "[h, w], two ints >= 1", "resize": "null or an int >= 1 (the short side before the crop)",
            "mean": "a list of 1 or 3 finite numbers (0..255 scale)",
            "std": "a list of 1 or 3 finite numbers > 0 (0..255 scale)", "grayscale": "true or false",
            "resample": f"one of {list(_RESAMPLE)}"}[key]
    raise ValueError(f"{where} has {key!r} = {json.dumps(value)[:60]}; it must be {need}")
