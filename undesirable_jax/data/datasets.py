"""Labelled image sets that iterate as :class:`Example` records, all readable offline.

- :func:`digits`: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes).
- :func:`lfw`: scikit-image's ``lfw_subset``, 25x25 faces (first 100) versus non-faces (last 100).
- :func:`corrupted`: a set plus corrupted copies of every image (Gaussian noise, blur, an occluding
  square), so a well-trained model makes enough errors to study; :data:`CORRUPTIONS` holds the
  levels measured to give the shipped models 20–40 % errors (``digits+corrupt``, ``lfw+corrupt``).
- :func:`image_folder`: ``root/<class name>/<image>``, class names sorted, images read on access.
- :func:`tfds_source`: a prepared tensorflow-datasets set through ``tfds.data_source`` (random
  access, no TensorFlow); the data directory is checked first so a missing set fails at once
  instead of tfds retrying downloads for minutes.

Every example carries a ``cluster`` (its source image: the unit of the evaluation's paired statistics,
:mod:`undesirable_jax.evaluate.stats`) and a ``group`` (the split the summary reports): a corrupted
copy's cluster is its source image's id and its group the corruption kind (``clean`` for the source
itself); an image of a plain set is its own cluster, in group ``all``. Every set reports ``ids``,
``clusters`` and ``groups`` without decoding an image.

Held-out split of the two built-in sets (fixed, no randomness): example ``i`` is in ``"test"`` when
``i % 5 == 0`` and in ``"train"`` otherwise; ``"all"`` is every example. Images are ``uint8``:
digits' 0..16 values become ``round(v * 255 / 16)``, lfw's floats in [0, 1] become ``round(x * 255)``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..checks import BadFileError

SPLITS = ("train", "test", "all")
DIGITS_CLASSES: tuple[str, ...] = tuple(str(c) for c in range(10))
LFW_CLASSES: tuple[str, ...] = ("face", "non-face")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compare by identity
class Example:
    """One labelled image: ``id`` is stable and unique within its set; ``image`` is raw pixels.

    ``cluster``: the id of its source image (copies of one source share it; ``""`` means the image is
    its own source and becomes ``id``); ``group``: the kind of image for the summary's splits
    (:data:`PLAIN_GROUP` for plain sets, ``clean`` or the corruption kind for :func:`corrupted`).
    """

    id: str
    image: np.ndarray
    label: int
    cluster: str = ""
    group: str = "all"

    def __post_init__(self):
        if not self.cluster:
            object.__setattr__(self, "cluster", self.id)


PLAIN_GROUP = "all"
"""The group of every image of a set without corrupted copies."""


class _Sequence:
    """Shared iteration for the sets below: ``len``, ``[i]``, ``iter``."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Example:
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"index: expected an int, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a set of {n} examples")
        return int(index) % n

    def __iter__(self) -> Iterator[Example]:
        for i in range(len(self)):
            yield self[i]


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySet(_Sequence):
    """Examples held in memory: ``images [N, ...]``, ``labels [N]``, ``ids [N]``.

    ``clusters``, ``groups`` ``[N]``: see the module docstring; None → each image its own cluster,
    every group :data:`PLAIN_GROUP`.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    ids: tuple[str, ...]
    class_names: tuple[str, ...]
    clusters: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None

    def __post_init__(self):
        n = len(self.ids)
        object.__setattr__(self, "clusters", tuple(self.ids) if self.clusters is None else tuple(self.clusters))
        object.__setattr__(self, "groups", (PLAIN_GROUP,) * n if self.groups is None else tuple(self.groups))
        if len(self.clusters) != n or len(self.groups) != n:
            raise ValueError(f"clusters, groups: expected one per image ({n}), got {len(self.clusters)} and "
                             f"{len(self.groups)}")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Example:
        i = self._check_index(index)
        return Example(id=self.ids[i], image=self.images[i], label=int(self.labels[i]), cluster=self.clusters[i],
                       group=self.groups[i])


def _split_indices(n: int, split: str) -> np.ndarray:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    i = np.arange(n)
    return i if split == "all" else (i[i % 5 == 0] if split == "test" else i[i % 5 != 0])


def digits(split: str = "test") -> ArraySet:
    """scikit-learn digits as ``uint8 [8, 8]`` images, labels 0..9 (split: see the module doc)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = _split_indices(len(d.target), split)
    images = np.round(d.images[idx] * (255.0 / 16.0)).astype(np.uint8)
    return ArraySet(name="digits", images=images, labels=d.target[idx].astype(np.int64),
                    ids=tuple(f"digits/{i}" for i in idx), class_names=DIGITS_CLASSES)


def lfw(split: str = "test") -> ArraySet:
    """scikit-image ``lfw_subset`` as ``uint8 [25, 25]``: label 0 = face, 1 = non-face."""
    from skimage.data import lfw_subset

    x = lfw_subset()
    labels = (np.arange(len(x)) >= 100).astype(np.int64)
    idx = _split_indices(len(x), split)
    images = np.round(np.clip(x[idx], 0.0, 1.0) * 255.0).astype(np.uint8)
    return ArraySet(name="lfw", images=images, labels=labels[idx],
                    ids=tuple(f"lfw/{i}" for i in idx), class_names=LFW_CLASSES)


CORRUPTION_KINDS = ("noise", "blur", "occlusion")
CORRUPTIONS: dict[str, dict[str, float]] = {
    "digits": {"noise": 0.4, "blur": 1.2, "occlusion": 3},
    "lfw": {"noise": 0.8, "blur": 6.0, "occlusion": 12},
}
"""Corruption levels per built-in set, measured on the held-out split with the shipped CNNs (error
rates of the corrupted copies, seed 0 — digits: noise 31 %, blur 31 %, occlusion 24 % (clean 1.9 %);
lfw: noise 25 %, blur 28 %, occlusion 25 % (clean 5 %)): noise — Gaussian standard deviation as a fraction of the full range; blur —
Gaussian sigma in pixels; occlusion — side in pixels of a black square at a random position."""


def corrupt(image: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """One corrupted copy of a ``uint8`` image ``[H, W]`` or ``[H, W, C]`` (see :data:`CORRUPTIONS`)."""
    x = np.asarray(image, np.float64)
    if kind == "noise":
        x = x + level * 255.0 * rng.standard_normal(x.shape)
    elif kind == "blur":
        from scipy.ndimage import gaussian_filter

        x = gaussian_filter(x, sigma=(level, level) + (0,) * (x.ndim - 2), mode="nearest")
    elif kind == "occlusion":
        side = int(level)
        h, w = x.shape[:2]
        if not 1 <= side <= min(h, w):
            raise ValueError(f"level: an occlusion side must lie in [1, {min(h, w)}], got {level!r}")
        y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        x = x.copy()
        x[y0:y0 + side, x0:x0 + side] = 0.0
    else:
        raise ValueError(f"kind: expected one of {CORRUPTION_KINDS}, got {kind!r}")
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def corrupted(base: ArraySet, levels: dict[str, float], seed: int = 0) -> ArraySet:
    """``base`` followed by one corrupted copy of each image per entry of ``levels`` (kind → level).

    Copy ids are ``<id>+<kind><level>`` and its randomness comes from ``(seed, kind, position)``, so
    the set and its ids are the same on every call (runs resume by id). Every copy's cluster is its
    source's cluster; groups: ``clean`` for ``base``'s images, the corruption kind for the copies.
    """
    if not isinstance(base, ArraySet):
        raise TypeError(f"base: expected an ArraySet (digits, lfw), got {type(base).__name__}")
    unknown = [k for k in levels if k not in CORRUPTION_KINDS]
    if not levels or unknown:
        raise ValueError(f"levels: expected a non-empty dict with keys from {CORRUPTION_KINDS}, got {levels!r}")
    images, labels, ids = [base.images], [base.labels], list(base.ids)
    clusters, groups = list(base.clusters) * (len(levels) + 1), ["clean"] * len(base.ids)
    for k, (kind, level) in enumerate(levels.items()):
        imgs = [corrupt(im, kind, level, np.random.default_rng([seed, CORRUPTION_KINDS.index(kind), i]))
                for i, im in enumerate(base.images)]
        images.append(np.stack(imgs))
        labels.append(base.labels)
        ids += [f"{i}+{kind}{level:g}" for i in base.ids]
        groups += [kind] * len(base.ids)
    return ArraySet(name=f"{base.name}+corrupt", images=np.concatenate(images), labels=np.concatenate(labels),
                    ids=tuple(ids), class_names=base.class_names, clusters=tuple(clusters), groups=tuple(groups))


class _OwnSources(_Sequence):
    """A set without corrupted copies (with ``ids``): each image is its own cluster, all in :data:`PLAIN_GROUP`."""

    @property
    def clusters(self) -> tuple[str, ...]:
        """Each image is its own source: its id."""
        return self.ids

    @property
    def groups(self) -> tuple[str, ...]:
        return (PLAIN_GROUP,) * len(self)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFolder(_OwnSources):
    """Images under ``root/<class>/``; read with Pillow as RGB ``uint8`` when accessed.

    A file that cannot be read stops the run with :class:`~undesirable_jax.checks.BadFileError`
    naming it (nothing is skipped silently): remove or replace it and resume.

    ``ids`` (each path below ``root``) are known without decoding, so runners skip finished images;
    each image is its own cluster, in group :data:`PLAIN_GROUP`.
    """

    root: Path
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Example:
        from .images import load_image

        i = self._check_index(index)
        try:
            image = load_image(self.paths[i])
        except BadFileError as e:
            raise BadFileError(self.paths[i], f"{e.problem} (image {self.ids[i]!r} of the data set "
                                              f"{str(self.root)!r}); the run stops here",
                               "remove or replace it, then run the same command with --resume: finished "
                               "images are kept") from e
        return Example(id=self.ids[i], image=image, label=self.labels[i])


def image_files(folder: Path) -> list[Path]:
    """The image files (:data:`IMAGE_SUFFIXES`, not hidden) under ``folder``, recursively, sorted by path."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def image_folder(root: str | os.PathLike) -> ImageFolder:
    """One sub-folder per class (names sorted -> labels 0, 1, ...), image files found recursively."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: {str(root)!r} is not a directory; expected root/<class name>/<images>")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = image_files(root / name)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"root: no images ({', '.join(IMAGE_SUFFIXES)}) in class sub-folders of {str(root)!r}; "
                         f"expected root/<class name>/<image files>")
    return ImageFolder(root=root, paths=tuple(paths), labels=tuple(labels), class_names=tuple(classes),
                       ids=tuple(p.relative_to(root).as_posix() for p in paths))


def check_model_classes(dataset_classes: Sequence[str], model_classes: Sequence[str], *, dataset: str,
                        model: str, name: str = "dataset") -> None:
    """Refuse a data set whose labels are not the model's class ids.

    The counts must agree, and so must the names, in order (compared case-insensitively, full name or
    its first synonym: ``"tabby"`` matches ``"tabby, tabby cat"``). WordNet ids (``n02123045``), the
    ImageNet folder convention, are accepted for a 1000-class model: sorted, they are the ILSVRC label
    order. A set without class names (some tfds sets) is not checked.
    """
    ds, mc = [str(c) for c in dataset_classes], [str(c) for c in model_classes]
    if not ds:
        return
    if len(ds) != len(mc):
        raise ValueError(f"{name}: {dataset!r} has {len(ds)} classes ({_some(ds)}) but the model {model!r} has "
                         f"{len(mc)} ({_some(mc)}); its labels would be scored as the model's classes. Evaluate "
                         "the model on a data set labelled with its classes")
    if len(mc) == 1000 and all(re.fullmatch(r"n\d{8}", c) for c in ds):
        return
    for i, (a, b) in enumerate(zip(ds, mc)):
        if a.strip().lower() not in (b.strip().lower(), b.split(",")[0].strip().lower()):
            raise ValueError(f"{name}: class {i} of {dataset!r} is {a!r} but class {i} of the model {model!r} is "
                             f"{b!r}; the labels do not mean the model's classes. Name and order the data set's "
                             "classes like the model's")


def _some(names: Sequence[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


# ------------------------------------------------------------------------ tensorflow-datasets


def _default_tfds_dir() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def _prepare_hint(name: str, data_dir: Path) -> str:
    base = name.split("/")[0].split(":")[0]
    steps = (f"prepare it once in the array_record file format (tfds build needs TensorFlow, and network access "
             f"for sets it downloads):\n"
             f"  tfds build {base} --data_dir {data_dir} --file_format array_record\n"
             f"(or tfds.builder({base!r}, data_dir=..., file_format='array_record').download_and_prepare()),"
             f" then copy the folder {base}/ into {data_dir} on this machine")
    if base == "imagenet2012":
        steps = (f"imagenet2012 cannot be downloaded automatically: put ILSVRC2012_img_train.tar and "
                 f"ILSVRC2012_img_val.tar (from image-net.org) in {data_dir / 'downloads' / 'manual'}, then "
                 + steps)
    return steps


def check_tfds_prepared(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Return the data directory if ``name`` is prepared in it (a ``dataset_info.json`` under
    ``data_dir/<name>/[<config>/]<version>/``); else raise FileNotFoundError saying how to prepare it."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a tfds data set name such as 'imagenette', got {name!r}")
    root = _default_tfds_dir() if data_dir is None else Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir: {str(root)!r} does not exist; {_prepare_hint(name, root)}")
    parts = name.split(":")[0].split("/")
    base = root.joinpath(*parts)
    found = base.is_dir() and any(
        p.is_file() for pattern in ("*/dataset_info.json", "*/*/dataset_info.json")
        for p in base.glob(pattern))
    if not found:
        raise FileNotFoundError(f"tfds data set {name!r} is not prepared in {str(root)!r} (no "
                                f"{base.name}/[config/]version/dataset_info.json); {_prepare_hint(name, root)}")
    return root


@dataclasses.dataclass(frozen=True, eq=False)
class TfdsSource(_OwnSources):
    """A ``tfds.data_source`` split read as :class:`Example` (random access, no TensorFlow)."""

    name: str
    split: str
    source: Any
    class_names: tuple[str, ...]
    image_key: str = "image"
    label_key: str = "label"

    def __len__(self) -> int:
        return len(self.source)

    @property
    def ids(self) -> tuple[str, ...]:
        """``<name>/<split>/<position>``: known without decoding a record (a split's order is fixed)."""
        return tuple(f"{self.name}/{self.split}/{i}" for i in range(len(self)))

    def __getitem__(self, index: int) -> Example:
        i = self._check_index(index)
        record = self.source[i]
        return Example(id=f"{self.name}/{self.split}/{i}", image=np.asarray(record[self.image_key]),
                       label=int(record[self.label_key]))


def tfds_source(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
                image_key: str = "image", label_key: str = "label") -> TfdsSource:
    """A prepared tfds set (``"imagenet2012"``, ``"imagenette"``, any name) from ``data_dir``.

    ``data_dir`` defaults to ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``. Nothing is downloaded:
    the data must have been prepared in the ``array_record`` file format (see
    :func:`check_tfds_prepared` for the error, which says how).
    """
    root = check_tfds_prepared(name, data_dir)
    import tensorflow_datasets as tfds

    source = tfds.data_source(name, split=split, data_dir=os.fspath(root), download=False)
    info = getattr(source, "dataset_info", None)
    features = info.features if info is not None else {}
    for key in (image_key, label_key):
        if key not in features:
            raise ValueError(f"{key!r}: tfds set {name!r} has no feature {key!r}; its features are "
                             f"{sorted(features)}; pass image_key= / label_key=")
    names = tuple(getattr(features[label_key], "names", ()) or ())
    return TfdsSource(name=name, split=split, source=source, class_names=names,
                      image_key=image_key, label_key=label_key)
