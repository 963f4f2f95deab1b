"""Evaluation: our metric after Kang et al. (METHOD.md §4), baselines, and resumable runs over data sets.

- :mod:`.removal`: which pixels (ranks, top-q% masks) and what replaces them (sampler fills).
- :mod:`.metrics`: removal gain, correction, suppression, deletion/insertion — jitted, vectorised.
- :mod:`.baselines`: random, occlusion, RISE (centred) and gradient × input maps.
- :mod:`.runner`: per-image result files, resume, process split, merge.
- :mod:`.summary`: means with 95 % intervals, markdown/CSV tables, the removal-gain plot.
- :mod:`.ranking`: pixel orders, descending by score, exact ties broken at random (:func:`rank_pixels`).
- :mod:`.stats`: paired per-image differences: bootstrap intervals, Wilcoxon p, Holm, tables.
- :mod:`.sanity`: Adebayo et al.'s cascading parameter randomisation and random-logit checks.
- :mod:`.paste`: a pasted object patch as ground truth on real photographs (pointing game, mass share).
- :mod:`.road`: ROAD's noisy linear imputation (:func:`road_impute`), a removal that does not leak.
"""

from . import baselines, metrics, paste, ranking, removal, road, runner, sanity, stats, summary
from .baselines import gradient_input, occlusion, random_maps, rise, rise_masks, signed_maps
from .metrics import DEFAULT_PERCENTS, MapMetrics, MethodMaps, evaluate_maps
from .removal import fill_image, ranks, top_masks
from .ranking import rank_pixels
from .road import road_impute
from .runner import METHODS, EvalConfig, evaluate_image, merge, run

__all__ = [
    "DEFAULT_PERCENTS", "EvalConfig", "METHODS", "MapMetrics", "MethodMaps", "baselines", "evaluate_image",
    "evaluate_maps", "fill_image", "gradient_input", "merge", "metrics", "occlusion", "paste", "random_maps",
    "rank_pixels", "ranking", "ranks", "removal", "rise", "rise_masks", "road", "road_impute", "run",
    "runner", "sanity", "signed_maps", "stats", "summary", "top_masks",
]
