"""Baselines that produce maps of the image's ``[H, W]`` shape, so every metric applies to every method.

Each signed baseline gives a map ``R_c`` per class (positive: supports c; negative: speaks against c)
and becomes :class:`~undesirable_jax.evaluate.metrics.MethodMaps` through :func:`signed_maps`:
support = max(0, R_t), undesirable = max(0, −R_t), competitor = max(0, R_c) — the same rule as U_t
and the plain U_c of the factors.

- :func:`random_maps`: uniform noise from a key (the chance level).
- :func:`occlusion`: PDA with a constant fill and one sample (deterministic occlusion measured in
  weight of evidence), plain (not decoupled) per class.
- :func:`rise`: RISE-style random masks (Petsiuk et al. 2018), generated and applied on device. Ours is
  centred so it has a sign: ``R_c(i) = E[p(c|x_M) | pixel i kept] − E[p(c|x_M)]``, estimated as
  ``Σₙ p(c|x_Mₙ)·Mₙ(i) / Σₙ Mₙ(i) − mean_n p(c|x_Mₙ)``. A kept pixel that lowers p(c) on average is
  undesirable for c. Masked-out pixels take the evaluation's fill (``x_M = M·x + (1 − M)·fill``), so
  "removal" means the same thing as in the metrics.
- :func:`gradient_input`: gradient × input for white-box (differentiable JAX) classifiers,
  ``R_c = Σ_channels ∂ log p(c|x)/∂x · (x − reference)`` (reference 0: plain gradient × input).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import checks
from ..classifiers import Classifier, as_classifier
from ..engine import explain
from ..samplers import constant
from .metrics import MethodMaps


def signed_maps(r_target: jnp.ndarray, r_competitor: jnp.ndarray) -> MethodMaps:
    """Signed maps ``R_t``, ``R_c`` ``[..., H, W]`` → support, undesirable and competitor maps."""
    return MethodMaps(support=jnp.maximum(0.0, r_target), undesirable=jnp.maximum(0.0, -r_target),
                      competitor=jnp.maximum(0.0, r_competitor))


def random_maps(key: jax.Array, height: int, width: int) -> MethodMaps:
    """Three independent uniform maps (support, undesirable, competitor) from ``key``."""
    k = jax.random.split(key, 3)
    u = [jax.random.uniform(k[i], (height, width)) for i in range(3)]
    return MethodMaps(support=u[0], undesirable=u[1], competitor=u[2])


def occlusion(classifier: Any, image: Any, classes: Sequence[int], *, window: int, stride: int,
              value: float | Sequence[float] = 0.0, chunk_size: int | None = None,
              laplace_n: float = 100_000, mesh: Any = None) -> jnp.ndarray:
    """Occlusion in weight of evidence: ``[len(classes), H, W]`` (PDA, constant ``value``, one sample)."""
    expl = explain(classifier, image, window=window, stride=stride, sampler=constant(value),
                   num_samples=1, key=jax.random.key(0), chunk_size=chunk_size, classes=list(classes),
                   laplace_n=laplace_n, mesh=mesh)
    return expl.evidence


def rise_masks(key: jax.Array, num_masks: int, height: int, width: int, *, cells: int = 7,
               keep_prob: float = 0.5) -> jnp.ndarray:
    """RISE masks ``[num_masks, H, W]`` in [0, 1], from one uniform draw ``[num_masks, cells² + 2]``.

    Mask i: a ``cells × cells`` grid of cells kept with probability ``keep_prob`` (row i of the draw),
    bilinearly upsampled (as ``jax.image.resize(..., "linear")``, applied as two small matrix
    products) to ``cells + 1`` cell sizes and cropped at a random shift of up to one cell.
    """
    return _masks_from_draws(rise_draws(key, num_masks, cells), height, width, cells, keep_prob)


def rise_draws(key: jax.Array, num_masks: int, cells: int) -> jnp.ndarray:
    """The uniform numbers behind :func:`rise_masks` (one threefry call: it compiles slowly on CPU)."""
    return jax.random.uniform(key, (num_masks, cells * cells + 2))


def _masks_from_draws(u: jnp.ndarray, height: int, width: int, cells: int, keep_prob: float) -> jnp.ndarray:
    ch, cw = -(-height // cells), -(-width // cells)
    ay, ax = _upsample_matrix(cells, (cells + 1) * ch), _upsample_matrix(cells, (cells + 1) * cw)

    def one(row):
        grid = (row[:-2] < keep_prob).astype(jnp.float32).reshape(cells, cells)
        up = jnp.einsum("ya,ab,xb->yx", ay, grid, ax, precision="highest")
        dy = jnp.minimum(jnp.floor(row[-2] * ch), ch - 1).astype(jnp.int32)
        dx = jnp.minimum(jnp.floor(row[-1] * cw), cw - 1).astype(jnp.int32)
        return jax.lax.dynamic_slice(up, (dy, dx), (height, width))

    return jax.vmap(one)(u)


def _upsample_matrix(size: int, out: int) -> jnp.ndarray:
    """``[out, size]``: linear resize along one axis as a matrix (resize is linear and separable)."""
    with jax.ensure_compile_time_eval():
        return jax.image.resize(jnp.eye(size, dtype=jnp.float32), (out, size), method="linear")


def rise(classifier: Any, image: Any, fill: Any, classes: Any, key: jax.Array, *, num_masks: int = 500,
         cells: int = 7, keep_prob: float = 0.5, batch_size: int = 64) -> jnp.ndarray:
    """Centred RISE saliency ``[len(classes), H, W]`` (module docstring); masks from ``key``.

    The masks are :func:`rise_masks` ``(key, num_masks, H, W)``; the result does not depend on
    ``batch_size`` beyond rounding.
    """
    clf = as_classifier(classifier)
    image = jnp.asarray(image, jnp.float32)
    fill = jnp.asarray(fill, jnp.float32)
    if image.ndim != 3 or fill.shape != image.shape:
        raise ValueError(f"image, fill: expected two [H, W, C] arrays of one shape, got {image.shape} "
                         f"and {fill.shape}")
    for name, v in (("num_masks", num_masks), ("cells", cells), ("batch_size", batch_size)):
        checks.positive_int(name, v)
    if not 0.0 < keep_prob < 1.0:
        raise ValueError(f"keep_prob: expected a probability in (0, 1), got {keep_prob!r}")
    classes = jnp.asarray(classes, jnp.int32).reshape(-1)
    batch = min(int(batch_size), int(num_masks))
    return _rise(clf, image, fill, classes, key, num_masks=int(num_masks), cells=int(cells),
                 keep_prob=float(keep_prob), batch=batch)


@functools.partial(jax.jit, static_argnames=("num_masks", "cells", "keep_prob", "batch"))
def _rise(clf: Classifier, image, fill, classes, key, *, num_masks, cells, keep_prob, batch):
    h, w, _ = image.shape
    chunks = -(-num_masks // batch)

    draws = rise_draws(key, num_masks, cells)

    def step(carry, c):
        weighted, kept, psum = carry
        i = c * batch + jnp.arange(batch, dtype=jnp.int32)
        valid = (i < num_masks).astype(jnp.float32)
        rows = draws[jnp.minimum(i, num_masks - 1)]
        masks = _masks_from_draws(rows, h, w, cells, keep_prob) * valid[:, None, None]
        x = masks[..., None] * image + (1.0 - masks[..., None]) * fill
        p = clf.probs(x)[:, classes] * valid[:, None]                        # [B, L]
        weighted = weighted + jnp.einsum("bl,bhw->lhw", p, masks, precision="highest")
        return (weighted, kept + masks.sum(0), psum + p.sum(0)), None

    init = (jnp.zeros((classes.shape[0], h, w)), jnp.zeros((h, w)), jnp.zeros(classes.shape[0]))
    (weighted, kept, psum), _ = jax.lax.scan(step, init, jnp.arange(chunks))
    return weighted / jnp.maximum(kept, 1e-12) - (psum / num_masks)[:, None, None]


def gradient_input(classifier: Any, image: Any, classes: Any, *, reference: Any = 0.0) -> jnp.ndarray:
    """Gradient × input ``[len(classes), H, W]`` of ``log p(c|x)``, summed over channels.

    Needs a classifier JAX can differentiate (a Flax model or any pure ``jnp`` function); a black box
    raises ``TypeError`` saying so.
    """
    clf = as_classifier(classifier)
    image = jnp.asarray(image, jnp.float32)
    if image.ndim != 3:
        raise ValueError(f"image: expected one image [H, W, C], got shape {image.shape}")
    classes = jnp.asarray(classes, jnp.int32).reshape(-1)
    try:
        return _gradient_input(clf, image, classes, jnp.asarray(reference, jnp.float32))
    except (jax.errors.JAXTypeError, TypeError) as e:
        raise TypeError(
            "classifier: gradient_input needs a classifier JAX can differentiate (a Flax model or a pure "
            f"jnp function); this one is not ({e}). Drop 'gradient_input' from the methods") from e


@jax.jit
def _gradient_input(clf: Classifier, image, classes, reference):
    def logp(x, c):
        return jnp.log(jnp.maximum(clf.probs(x[None])[0, c], jnp.finfo(jnp.float32).tiny))

    grads = jax.vmap(jax.grad(logp), in_axes=(None, 0))(image, classes)   # [L, H, W, C]
    return jnp.sum(grads * (image - reference)[None], axis=-1)
