"""Classifiers as pure functions ``(params, images [N, H, W, C]) -> logits [N, K]``, with their weights.

``load(name, weights=None)`` gives a :class:`LoadedModel` for the built-in names in
:data:`MODEL_NAMES`; the submodules hold the architectures (``efficientnet``, ``resnet``,
``small_cnn``), the training script (``train_small_cnn``) and the code-free weight readers
(``checkpoints``); the small CNNs' trained parameters ship in ``weights/``.
"""

from . import checkpoints, efficientnet, resnet, small_cnn
from .registry import MODEL_NAMES, LoadedModel, check_model, load
from .external import ExternalOptions, resolve
from .checkpoints import UnsafeWeightsError, load_state_dict, read_checkpoint, save_safetensors

__all__ = [
    "ExternalOptions", "LoadedModel", "MODEL_NAMES", "UnsafeWeightsError", "check_model", "checkpoints", "efficientnet", "load", "load_state_dict",
    "read_checkpoint", "resnet", "resolve", "save_safetensors", "small_cnn",
]
