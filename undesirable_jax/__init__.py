"""undesirable_jax: undesirable pixels for black-box image classifiers, on a jit-compiled PDA engine.

Kang, Jung & Lee (2019) on top of Prediction Difference Analysis (Zintgraf et al. 2017).
"""

from . import classifiers, data, evidence, models, samplers, visualize, windows
from .classifiers import Classifier, flax_linen, flax_nnx, from_function, probabilities
from .adaptive import explain_adaptive
from .engine import Explanation, explain
from .factors import Factors, factors
from .windows import WindowGrid

__version__ = "0.1.0"

__all__ = [
    "Classifier", "Explanation", "Factors", "WindowGrid", "classifiers", "data", "evidence", "explain",
    "explain_adaptive",
    "factors", "flax_linen", "flax_nnx", "from_function", "models", "probabilities", "samplers", "visualize",
    "windows", "__version__",
]
