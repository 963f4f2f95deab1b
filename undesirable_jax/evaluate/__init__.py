"""Evaluation: our metric after Kang et al. (METHOD.md §4), baselines, and resumable runs over data sets.

- :mod:`.methods`: the evaluated methods as a registry (name → builder of signed maps).
- :mod:`.keys`: the run's disjoint PRNG streams (build, score, rank, sanity).
- :mod:`.removal`: what replaces removed pixels (sampler fills, and the scoring perturbations: ROAD
  imputation, a constant, blur) and the classifier's probabilities after removal.
- :mod:`.metrics`: removal gain in both orders, correction, suppression, own-perturbation scores.
- :mod:`.baselines`: random, occlusion, RISE (centred), gradient × input, gradient × (x − r), integrated
  gradients and SmoothGrad with a reference matched to the scoring fill, Sobol attribution, model-free controls.
- :mod:`.road`: ROAD's noisy linear imputation (:func:`road_impute`), a removal that does not leak.
- :mod:`.ranking`: pixel orders, descending by score, ties broken at random, values within a tolerance of 0
  counted as 0 (:func:`rank_pixels`, :func:`.ranking.positive_count`).
- :mod:`.stats`: paired differences over source images (clusters): cluster bootstrap, Wilcoxon p, d_z, Holm
  over a declared family (:func:`.stats.paired`).
- :mod:`.sanity`: Adebayo et al.'s cascading parameter randomisation (ρ, |ρ|, SSIM, the map against the
  image) and random-logit checks.
- :mod:`.paste`: a pasted object patch as ground truth on real photographs (pointing game, mass share).
- :mod:`.runner`: per-image result files, resume, process split, merge.
- :mod:`.orchestrate`: one run in one process, in processes started by hand, or under ``jax.distributed``.
- :mod:`.summary`: cluster means with 95 % intervals (U_t own support and the full signed order apart),
  splits, paired comparisons, margins over the best control, the Holm family, sanity table, a plot.
"""

from . import baselines, keys, methods, metrics, orchestrate, paste, ranking, removal, road, runner, sanity, stats, summary
from .baselines import gradient_input, occlusion, random_maps, rise, rise_masks, signed_maps
from .methods import BUILDERS, SignedMaps
from .metrics import DEFAULT_PERCENTS, MethodMaps
from .ranking import rank_pixels
from .removal import PERTURBATIONS, Perturbation, fill_image
from .road import road_impute
from .runner import METHODS, EvalConfig, evaluate_image, merge, run

__all__ = [
    "BUILDERS", "DEFAULT_PERCENTS", "EvalConfig", "METHODS", "MethodMaps", "PERTURBATIONS",
    "Perturbation", "SignedMaps", "baselines", "evaluate_image", "fill_image", "gradient_input",
    "keys", "merge", "methods", "metrics", "orchestrate", "occlusion", "paste", "random_maps", "rank_pixels", "ranking", "removal", "rise", "rise_masks",
    "road", "road_impute", "run", "runner", "sanity", "signed_maps", "stats", "summary",
]
