"""undesirable_jax: undesirable pixels for black-box image classifiers, on a jit-compiled PDA engine.

Kang, Jung & Lee (2019) on top of Prediction Difference Analysis (Zintgraf et al. 2017).
"""

from . import black_boxes, classifiers, data, evidence, models, samplers, visualize, windows
from .black_boxes import black_box, from_onnx, from_torch
from .adaptive import explain_adaptive, explain_uniform
from .classifiers import Classifier, flax_linen, flax_nnx, from_function, probabilities, resolve_outputs
from .engine import Explanation, explain, explain_batch
from .factors import Factors, factors
from .windows import WindowGrid

__version__ = "0.1.0"

__all__ = [
    "Classifier", "Explanation", "Factors", "WindowGrid", "black_box", "black_boxes", "classifiers", "data",
    "evidence", "explain", "explain_adaptive", "explain_batch", "explain_uniform", "factors", "flax_linen", "flax_nnx",
    "from_function", "from_onnx", "from_torch", "models", "probabilities", "resolve_outputs", "samplers", "visualize",
    "windows", "__version__",
]
