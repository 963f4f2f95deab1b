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
- :func:`scoring_reference`: the reference matched to a scoring perturbation's fill, for
  gradient × (x − r), :func:`integrated_gradients` and :func:`smoothgrad` (all of ``log p(c|x)``).
- :func:`sobol`: Sobol attribution (Fel et al., NeurIPS 2021), signed total indices of each class's
  weight of evidence over quasi-Monte-Carlo masks (:func:`sobol_design`, :func:`jansen_total`).
- :func:`control_map`: model-free controls (−x, blurred −x, Sobel edges, distance from the centre).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import checks
from ..classifiers import Classifier, as_classifier
from ..engine import explain_batch
from ..evidence import laplace, log_odds
from ..samplers import constant, gaussian_blur
from .metrics import MethodMaps
from .removal import Perturbation
from .road import neighbour_sum


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
    return occlusion_batch(classifier, jnp.asarray(image)[None], classes, window=window, stride=stride,
                           value=value, chunk_size=chunk_size, laplace_n=laplace_n, mesh=mesh)[0]


def occlusion_batch(classifier: Any, images: Any, classes: Sequence[int], *, window: int, stride: int,
                    value: float | Sequence[float] = 0.0, chunk_size: int | None = None,
                    laplace_n: float = 100_000, mesh: Any = None) -> jnp.ndarray:
    """:func:`occlusion` of images ``[N, H, W, C]`` whose windows share the engine's chunks:
    ``[N, len(classes), H, W]`` (the constant fill needs no key; a row does not depend on the other rows
    kept, so one ``classes`` list may serve every image)."""
    expl = explain_batch(classifier, images, window=window, stride=stride, sampler=constant(value),
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
    return _differentiate("gradient_input", _gradient_input, clf, image, classes, jnp.asarray(reference, jnp.float32))


@jax.jit
def _gradient_input(clf: Classifier, image, classes, reference):
    def logp(x, c):
        return jnp.log(jnp.maximum(clf.probs(x[None])[0, c], jnp.finfo(jnp.float32).tiny))

    grads = jax.vmap(jax.grad(logp), in_axes=(None, 0))(image, classes)   # [L, H, W, C]
    return jnp.sum(grads * (image - reference)[None], axis=-1)


# --- Baselines with a reference matched to the scoring fill (gradient × (x − r), IG, SmoothGrad) ---------

def scoring_reference(image: Any, perturbation: Perturbation) -> jnp.ndarray:
    """The reference ``r`` ``[H, W, C]`` that matches how ``perturbation`` fills a removed pixel.

    ``road``: the weighted mean of the in-image 8-neighbours (:func:`.road.neighbour_sum` ÷ the
    pixel's degree), what ROAD's linear imputation gives an isolated removed pixel (noise left out: its
    mean is 0); ``constant``: the constant; ``blur``: the image blurred with the perturbation's σ.
    """
    image = jnp.asarray(image, jnp.float32)
    if image.ndim != 3:
        raise ValueError(f"image: expected one image [H, W, C], got shape {image.shape}")
    if perturbation.kind == "road":
        degree = neighbour_sum(jnp.ones(image.shape[:2], jnp.float32))[..., None]
        return neighbour_sum(image) / degree
    if perturbation.kind == "constant":
        return jnp.full_like(image, float(perturbation.value))
    return gaussian_blur(image, float(perturbation.sigma))


def _log_prob(clf: Classifier, x: jnp.ndarray, c: jnp.ndarray) -> jnp.ndarray:
    """``Σ_n log p(c|x_n)`` over a batch ``x [N, H, W, C]`` (floored at the smallest float32)."""
    return jnp.sum(jnp.log(jnp.maximum(clf.probs(x)[:, c], jnp.finfo(jnp.float32).tiny)))


def _differentiate(name: str, fn: Callable[..., jnp.ndarray], *args: Any) -> jnp.ndarray:
    """``fn(*args)``, with a black box's failure to differentiate turned into a ``TypeError`` naming ``name``."""
    try:
        return fn(*args)
    except (jax.errors.JAXTypeError, TypeError) as e:
        raise TypeError(
            f"classifier: {name} needs a classifier JAX can differentiate (a Flax model or a pure jnp "
            f"function); this one is not ({e}). Drop '{name}' from the methods") from e


def _prepare(classifier: Any, image: Any, classes: Any, reference: Any) -> tuple:
    clf = as_classifier(classifier)
    image = jnp.asarray(image, jnp.float32)
    if image.ndim != 3:
        raise ValueError(f"image: expected one image [H, W, C], got shape {image.shape}")
    reference = jnp.broadcast_to(jnp.asarray(reference, jnp.float32), image.shape)
    return clf, image, jnp.asarray(classes, jnp.int32).reshape(-1), reference


def integrated_gradients(classifier: Any, image: Any, classes: Any, *, reference: Any,
                         steps: int = 32) -> jnp.ndarray:
    """Integrated gradients ``[len(classes), H, W]`` of ``log p(c|x)`` from ``reference`` to ``image``.

    ``(x − r) · ∫₀¹ ∇ log p(c | r + α(x − r)) dα``, the integral by the trapezoid rule on ``steps + 1``
    points (one batched backward pass per class), summed over channels. Completeness: the map sums
    to ``log p(c|x) − log p(c|r)`` up to the quadrature error.
    """
    checks.positive_int("steps", steps)
    clf, image, classes, reference = _prepare(classifier, image, classes, reference)
    w = np.full(int(steps) + 1, 1.0 / steps)
    w[[0, -1]] *= 0.5
    return _differentiate("integrated_gradients", _integrated, clf, image, classes, reference,
                          jnp.linspace(0.0, 1.0, int(steps) + 1), jnp.asarray(w, jnp.float32))


@jax.jit
def _integrated(clf: Classifier, image, classes, reference, alphas, weights):
    path = reference[None] + alphas[:, None, None, None] * (image - reference)[None]

    def one(c):
        g = jax.grad(lambda p: _log_prob(clf, p, c))(path)                  # [S + 1, H, W, C]
        return jnp.einsum("s,shwc->hwc", weights, g, precision="highest")

    return jnp.sum(jax.vmap(one)(classes) * (image - reference)[None], axis=-1)


def smoothgrad(classifier: Any, image: Any, classes: Any, key: jax.Array, *, reference: Any,
               samples: int = 16, sigma: float = 0.15) -> jnp.ndarray:
    """SmoothGrad × (x − r) ``[len(classes), H, W]``: the mean gradient of ``log p(c|·)`` over noisy copies.

    ``(x − r) · mean_n ∇ log p(c | x + εₙ)``, ``εₙ ~ N(0, (sigma · (max x − min x))²)`` per value, the
    ``samples`` copies drawn from ``key`` (Smilkov et al. 2017, times the input's difference from the
    reference), summed over channels.
    """
    checks.positive_int("samples", samples)
    checks.positive_number("sigma", sigma)
    clf, image, classes, reference = _prepare(classifier, image, classes, reference)
    noise = jax.random.normal(key, (int(samples), *image.shape), jnp.float32)
    noisy = image[None] + float(sigma) * (jnp.max(image) - jnp.min(image)) * noise
    return _differentiate("smoothgrad", _smooth, clf, image, classes, reference, noisy)


@jax.jit
def _smooth(clf: Classifier, image, classes, reference, noisy):
    def one(c):
        return jnp.mean(jax.grad(lambda p: _log_prob(clf, p, c))(noisy), axis=0)

    return jnp.sum(jax.vmap(one)(classes) * (image - reference)[None], axis=-1)


# --- Sobol attribution (Fel et al., NeurIPS 2021) ------------------------------------------------------

def sobol_design(key: jax.Array, grid: int, designs: int) -> np.ndarray:
    """Cell values ``[designs·(grid² + 2), grid²]`` in [0, 1]: the rows A, then B, then C₁ … C_d.

    A and B are the two halves of a scrambled Sobol sequence of dimension ``2d`` (d = grid²; scipy's
    ``qmc.Sobol`` seeded from ``key``); ``C_i`` is A with column i taken from B (Saltelli's scheme).
    """
    from scipy.stats import qmc

    d = int(grid) ** 2
    seed = int(np.asarray(jax.random.randint(key, (), 0, np.iinfo(np.int32).max)))
    ab = qmc.Sobol(d=2 * d, scramble=True, seed=np.random.default_rng(seed)).random_base2(
        int(round(np.log2(designs))))
    a, b = ab[:, :d], ab[:, d:]
    c = np.repeat(a[None], d, axis=0)
    c[np.arange(d), :, np.arange(d)] = b.T
    return np.concatenate([a, b, c.reshape(-1, d)]).astype(np.float32)


def jansen_total(f: jnp.ndarray, design: jnp.ndarray, designs: int) -> jnp.ndarray:
    """Signed total Sobol indices ``[L, d]`` from scores ``f [N(d + 2), L]`` of :func:`sobol_design`'s rows.

    Jansen's estimator ``ST_i = mean_n (f(A_n) − f(C_i,n))² / (2 Var f)``, Var over A and B together
    (0 where f does not vary). The sign is that of ``mean_n (f(A_n) − f(C_i,n))(A_n,i − B_n,i)``: the
    direction in which keeping more of cell i moves the score (for an additive f, the sign of its weight).
    """
    n = int(designs)
    fa, fb = f[:n], f[n:2 * n]
    d = (f.shape[0] - 2 * n) // n
    fc = f[2 * n:].reshape(d, n, -1)
    var = jnp.var(jnp.concatenate([fa, fb]), axis=0)                          # [L]
    diff = fa[None] - fc                                                      # [d, N, L]
    st = jnp.mean(diff ** 2, axis=1) / (2.0 * jnp.where(var > 0, var, 1.0)) * (var > 0)
    step = (design[:n] - design[n:2 * n]).T                                   # [d, N]: A_i − B_i
    direction = jnp.einsum("dnl,dn->dl", diff, step, precision="highest")
    return (jnp.sign(direction) * st).T


def sobol_cells(classifier: Any, image: Any, fill: Any, classes: Any, key: jax.Array, *, grid: int = 4,
                designs: int = 32, batch_size: int = 64, laplace_n: float = 100_000) -> jnp.ndarray:
    """Signed total Sobol indices ``[len(classes), grid, grid]`` of each class's weight of evidence.

    Mask ``M`` (cell values of :func:`sobol_design`, nearest-upsampled: a pixel takes its cell's value)
    perturbs the image as ``M·x + (1 − M)·fill``; the score is the Laplace-corrected log-odds (bits) of
    ``p(c|x_M)``, PDA's unit. The ``designs·(grid² + 2)`` images are built and classified on device in
    jitted chunks of ``batch_size``; :func:`jansen_total` estimates the indices.
    """
    clf = as_classifier(classifier)
    image, fill = jnp.asarray(image, jnp.float32), jnp.asarray(fill, jnp.float32)
    if image.ndim != 3 or fill.shape != image.shape:
        raise ValueError(f"image, fill: expected two [H, W, C] arrays of one shape, got {image.shape} "
                         f"and {fill.shape}")
    for name, v in (("grid", grid), ("designs", designs), ("batch_size", batch_size)):
        checks.positive_int(name, v)
    if designs & (designs - 1):
        raise ValueError(f"designs: expected a power of 2 (a balanced Sobol sequence), got {designs}")
    classes = jnp.asarray(classes, jnp.int32).reshape(-1)
    design = jnp.asarray(sobol_design(key, grid, designs))
    f = _sobol_scores(clf, image, fill, classes, design, grid=int(grid),
                      batch=min(int(batch_size), design.shape[0]), laplace_n=float(laplace_n))
    return jansen_total(f, design, designs).reshape(-1, grid, grid)


@functools.partial(jax.jit, static_argnames=("grid", "batch", "laplace_n"))
def _sobol_scores(clf: Classifier, image, fill, classes, design, *, grid, batch, laplace_n):
    h, w, _ = image.shape
    total = design.shape[0]
    cy, cx = (jnp.arange(h) * grid) // h, (jnp.arange(w) * grid) // w
    cell = (cy[:, None] * grid + cx[None, :]).reshape(-1)
    idx = jnp.minimum(jnp.arange(-(-total // batch) * batch), total - 1).reshape(-1, batch)

    def chunk(ids):
        m = design[ids][:, cell].reshape(-1, h, w, 1)
        p = clf.probs(m * image + (1.0 - m) * fill)
        return log_odds(laplace(p, laplace_n, p.shape[-1]))[:, classes]

    return jax.lax.map(chunk, idx).reshape(-1, classes.shape[0])[:total]


def sobol(classifier: Any, image: Any, fill: Any, classes: Any, key: jax.Array, **kwargs: Any) -> jnp.ndarray:
    """Sobol attribution ``[len(classes), H, W]``: :func:`sobol_cells` resized linearly to the image."""
    cells = sobol_cells(classifier, image, fill, classes, key, **kwargs)
    h, w = jnp.shape(image)[:2]
    return jax.image.resize(cells, (cells.shape[0], h, w), method="linear")


# --- Model-free controls: maps from the image alone --------------------------------------------------

def _grey(image: jnp.ndarray) -> jnp.ndarray:
    return jnp.sum(jnp.asarray(image, jnp.float32), axis=-1)


def control_map(name: str, image: Any, *, sigma: float = 1.0) -> jnp.ndarray:
    """A model-free map ``[H, W]`` (high = removed first); ``name`` one of :data:`CONTROLS`.

    ``neg_x``: −Σ_channels x (darkest first); ``neg_blur_x``: the same after a Gaussian blur of
    ``sigma`` pixels; ``sobel``: the Sobel gradient magnitude of Σ_channels x (edges first, borders
    mirrored); ``centre_distance``: the distance from the image centre (farthest first).
    """
    image = jnp.asarray(image, jnp.float32)
    if image.ndim != 3:
        raise ValueError(f"image: expected one image [H, W, C], got shape {image.shape}")
    if name == "neg_x":
        return -_grey(image)
    if name == "neg_blur_x":
        return -_grey(gaussian_blur(image, float(sigma)))
    if name == "sobel":
        g = jnp.pad(_grey(image), 1, mode="reflect")
        smooth = g[:-2] + 2.0 * g[1:-1] + g[2:]                 # [H, W + 2]: vertical [1, 2, 1]
        gx = smooth[:, 2:] - smooth[:, :-2]
        diff = g[2:] - g[:-2]                                    # [H, W + 2]: vertical [-1, 0, 1]
        gy = diff[:, :-2] + 2.0 * diff[:, 1:-1] + diff[:, 2:]
        return jnp.sqrt(gx * gx + gy * gy)
    if name == "centre_distance":
        h, w = image.shape[:2]
        y, x = np.mgrid[:h, :w].astype(np.float32)
        return jnp.asarray(np.hypot(y - (h - 1) / 2.0, x - (w - 1) / 2.0))
    raise ValueError(f"name: expected one of {CONTROLS}, got {name!r}")


CONTROLS = ("neg_x", "neg_blur_x", "sobel", "centre_distance")
"""The model-free controls :func:`control_map` computes."""
