"""ImageNet (ILSVRC-2012) folders: WordNet-id class folders labelled by their ILSVRC class index.

An ImageNet validation folder laid out as ``root/n01440764/*.JPEG``, … has one folder per WordNet id;
:func:`~undesirable_jax.data.datasets.image_folder` labels the folders 0, 1, … in sorted order, which is
the ILSVRC index only when all 1000 folders are there. :func:`ilsvrc_labels` relabels a folder whose
class folders are all ILSVRC WordNet ids by each id's position in ``imagenet_wnids.txt`` (the 1000 ids
in ILSVRC-2012 label order, the order of torchvision's and TensorFlow Datasets' ImageNet classes), so a
subset of the classes is scored against the right outputs of a 1000-class model.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any, Sequence

WNIDS_FILE = Path(__file__).with_name("imagenet_wnids.txt")


@functools.cache
def ilsvrc_wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 WordNet ids in label order (class ``i`` of an ImageNet model is ``wnids[i]``)."""
    return tuple(line.strip() for line in WNIDS_FILE.read_text().splitlines() if line.strip())


def ilsvrc_labels(dataset: Any, model_classes: Sequence[str]) -> Any:
    """``dataset`` relabelled by ILSVRC index when it is an image folder of ILSVRC WordNet-id folders and the
    model has 1000 classes (its ``class_names`` become the 1000 ids); any other data set is returned as is."""
    from .datasets import ImageFolder

    names = getattr(dataset, "class_names", ())
    if not isinstance(dataset, ImageFolder) or len(model_classes) != 1000 or not names:
        return dataset
    if not all(re.fullmatch(r"n\d{8}", str(c)) for c in names):
        return dataset
    index = {w: i for i, w in enumerate(ilsvrc_wnids())}
    unknown = [c for c in names if c not in index]
    if unknown:
        raise ValueError(f"dataset: the class folders {unknown[:5]} of {str(dataset.root)!r} are WordNet ids but not "
                         "ILSVRC-2012 classes; a 1000-class ImageNet model has no output for them. Remove those "
                         "folders or evaluate a model trained on them")
    labels = tuple(index[names[label]] for label in dataset.labels)
    return dataclasses.replace(dataset, labels=labels, class_names=ilsvrc_wnids())
