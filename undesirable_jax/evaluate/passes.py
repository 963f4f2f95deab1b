"""What an evaluation costs in classifier passes: images classified per method, to compare with the raw rate.

A *pass* is one image through the classifier. Per image and method the runner records (``passes`` in
each result file, summed over the ``num_seeds`` repeats):

- ``build``: forward passes that build the method's maps (:data:`BUILD_PASSES`: PDA ``windows · S + 1``,
  occlusion ``windows + 1``, RISE its masks, Sobol ``designs · (grid² + 2)``; the controls and the
  random map none);
- ``gradient``: backward passes, one per image and class (t and c): gradient × input 2, integrated
  gradients ``2 · (steps + 1)``, SmoothGrad ``2 · samples``; the forward passes they differentiate (1,
  ``steps + 1``, ``samples``: one for both classes) are in ``build``. A backward pass costs about two
  forward passes;
- ``score``: forward passes of the scoring (:func:`score_passes`).

``shared``: the passes every image pays once whatever the methods (its outputs decided, its
probabilities, the scoring's untouched image once per repeat). The sanity checks' passes (a few images
only) are not counted. Padding of the last chunk to the batch size is not a pass: it is overhead, and
shows as such in ``benchmarks/bench_dataset.py``'s overhead ratio (seconds ÷ passes at the raw rate).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..windows import WindowGrid


def _windows(config: Any, shape: tuple[int, ...]) -> int:
    return WindowGrid(int(shape[0]), int(shape[1]), config.window, config.stride).num_windows


BUILD_PASSES: dict[str, Callable[[Any, tuple[int, ...]], tuple[int, int]]] = {
    "pda": lambda cfg, shape: (_windows(cfg, shape) * cfg.num_samples + 1, 0),
    "occlusion": lambda cfg, shape: (_windows(cfg, shape) + 1, 0),
    "rise": lambda cfg, shape: (cfg.rise_masks, 0),
    "gradient_input": lambda cfg, shape: (1, 2),
    "random": lambda cfg, shape: (0, 0),
    "gradient_ref": lambda cfg, shape: (1, 2),
    "integrated_gradients": lambda cfg, shape: (cfg.ig_steps + 1, 2 * (cfg.ig_steps + 1)),
    "smoothgrad": lambda cfg, shape: (cfg.smoothgrad_samples, 2 * cfg.smoothgrad_samples),
    "sobol": lambda cfg, shape: (cfg.sobol_designs * (cfg.sobol_grid ** 2 + 2), 0),
}
"""Per method: ``(forward, backward)`` passes of one build of one image ``shape`` ``[H, W, C]`` (both
classes t and c); a method missing here (a model-free control) classifies nothing."""


def build_passes(name: str, config: Any, shape: tuple[int, ...]) -> tuple[int, int]:
    """``(forward, backward)`` passes of one build of method ``name`` (module docstring)."""
    rule = BUILD_PASSES.get(name)
    return (0, 0) if rule is None else rule(config, shape)


def score_passes(config: Any, rankings: int, own_fills: int | None) -> int:
    """Forward passes that score one method once (one repeat), from the sizes the scoring uses.

    ``rankings``: the method's rankings besides U_t (its competitor maps and their union), each removed
    at the Q percents; ``own_fills``: the fills of its own construction perturbation (None: not scored
    under it). Per draw D (only the draws that differ: ROAD's noisy ones; a deterministic perturbation is
    classified once, :meth:`.removal.Perturbation.distinct_draws`): MoRF and LeRF of the full order at Q
    percents and C + 1 curve fractions, the U_t curve at C + 1 steps, the other rankings at Q percents;
    the own-fill score classifies ``own_fills · Q`` mixtures plus the untouched image.
    """
    q, c = len(config.percents), config.curve_steps
    d = config.scoring().distinct_draws(config.scoring_draws)
    common = d * (2 * (q + c + 1) + (c + 1) + rankings * q)
    return common + (0 if own_fills is None else own_fills * q + 1)


def image_passes(names: list[str], config: Any, shape: tuple[int, ...],
                 score: dict[str, list[int]]) -> dict[str, dict[str, int]]:
    """Per method, its ``build``, ``gradient`` and ``score`` passes over all repeats, plus ``shared``.

    ``score``: per method, :func:`score_passes` of each repeat (as the scoring recorded them).
    """
    out = {}
    for n in names:
        forward, backward = build_passes(n, config, shape)
        out[n] = {"build": forward * config.num_seeds, "gradient": backward * config.num_seeds,
                  "score": int(sum(score[n]))}
    out["shared"] = {"build": 2, "gradient": 0, "score": config.num_seeds}
    return out


def passes_markdown(results: list[dict], methods: list[str]) -> list[str]:
    """The summary's table of passes per image by method: means over the images (and their sum)."""
    rows = [m for m in [*methods, "shared"] if any(m in r["passes"] for r in results)]
    out = ["## Classifier passes per image", "",
           "Images through the classifier per image evaluated, mean over the images, all repeats "
           "(`undesirable_jax.evaluate.passes`): forward passes that build the maps, backward passes (gradient "
           "methods, one per image and class), forward passes of the scoring. Sanity checks not counted.", "",
           "| method | build (forward) | gradient (backward) | scoring | forward in all |", "|---|---|---|---|---|"]
    totals = np.zeros(3)
    for m in rows:
        vals = np.array([[r["passes"][m][k] for k in ("build", "gradient", "score")] for r in results
                         if m in r["passes"]], float).mean(axis=0)
        totals += vals
        out.append(f"| {m} | {vals[0]:,.0f} | {vals[1]:,.0f} | {vals[2]:,.0f} | {vals[0] + vals[2]:,.0f} |")
    out += [f"| **all** | {totals[0]:,.0f} | {totals[1]:,.0f} | {totals[2]:,.0f} | {totals[0] + totals[2]:,.0f} |", ""]
    return out
