"""Images, preprocessing and labelled data sets, all usable offline.

``load_image`` / ``sample_image`` give RGB ``uint8`` images; a :class:`Preprocessor` makes a model
input and a :class:`Preprocessed` maps heatmaps back to the original pixels; ``digits``, ``lfw``,
``image_folder`` and ``tfds_source`` iterate as :class:`Example` records.
"""

from .datasets import (CORRUPTIONS, PLAIN_GROUP, ArraySet, Example, ImageFolder, TfdsSource, check_model_classes,
                       check_tfds_prepared, corrupt, corrupted, digits, image_folder, lfw, tfds_source)
from .images import IMAGENET_CLASSES, SAMPLE_IMAGES, imagenet_classes, load_image, sample_image, short_name, to_rgb_uint8
from .preprocess import EFFICIENTNET_LITE, TORCHVISION, Preprocessed, Preprocessor, PreprocessWarning
from .specs import DATASET_SPECS, Subset, from_spec, resolve_image
from .specs import label as dataset_label

__all__ = [
    "ArraySet", "CORRUPTIONS", "PLAIN_GROUP", "DATASET_SPECS", "Subset", "dataset_label", "from_spec", "resolve_image",
    "EFFICIENTNET_LITE", "Example", "IMAGENET_CLASSES", "ImageFolder", "Preprocessed", "Preprocessor",
    "PreprocessWarning", "SAMPLE_IMAGES", "TORCHVISION", "TfdsSource", "check_model_classes", "check_tfds_prepared",
    "corrupt", "corrupted", "digits",
    "image_folder", "imagenet_classes", "lfw", "load_image", "sample_image", "short_name", "tfds_source", "to_rgb_uint8",
]
