"""Removing pixels by a ranking: how many, what replaces them, and the classifier's view of the result.

The scoring half of the evaluation (METHOD.md §4). Which pixels go first is decided elsewhere:
:func:`~undesirable_jax.evaluate.ranking.rank_pixels` orders a map (exact ties at random by a key) and
:func:`~undesirable_jax.evaluate.ranking.pixel_ranks` gives each pixel its place (0 = removed first).
The top ``q`` % are the pixels with ``place < round(q / 100 · H · W)`` (:func:`pixel_counts`).

- *Sampler fills* (a method's own construction perturbation): :func:`fill_image` asks a sampler for a
  full-image fill by tiling the image with the PDA window (non-overlapping tiles; the last row/column
  of tiles is shifted inward, as on the engine's grid) and calling ``sampler.fill`` once per tile. What
  removal means per sampler: ``constant`` — the constant colour; ``blur`` — the image's own blurred
  pixels; ``marginal`` — the pixels at the same place in a pool image (drawn per tile from the key, or
  ``sample % M`` without shuffle); ``conditional_gaussian`` — each tile drawn conditioned on the
  untouched pixels around it (the original image, not the other removed pixels: an approximation for
  large masks). :func:`mixture_probs` classifies images that take their first-ranked pixels from such a
  fill and the rest from the image, in fixed-size jitted chunks.
- *Scoring perturbations*: :class:`Perturbation` replaces a removed-pixel mask in one of three ways
  (``road``: ROAD's noisy linear imputation from the kept neighbours, :func:`road_impute`;
  ``constant``: one value, e.g. the data mean; ``blur``: the image's own Gaussian-blurred pixels), and
  :func:`perturbed_probs` classifies the image under every (ranking, pixel count, key) with it. Unlike
  a sampler fill it sees the mask, so nothing of a removed pixel leaks through its neighbours' fill.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax import struct

from .. import checks
from ..classifiers import Classifier
from ..samplers import Sampler, gaussian_blur
from ..windows import WindowGrid
from .road import ROAD_TOL, add_noise, linear_impute

PERTURBATIONS = ("road", "constant", "blur")


def pixel_counts(percents: Any, num_pixels: int) -> jnp.ndarray:
    """How many pixels the top ``percents`` % of an image of ``num_pixels`` pixels are (rounded)."""
    return jnp.round(jnp.asarray(percents, jnp.float32) / 100.0 * num_pixels).astype(jnp.int32)


def fill_image(sampler: Sampler, image: jnp.ndarray, window: int, key: jax.Array,
               sample: int | jnp.ndarray = 0) -> jnp.ndarray:
    """A full-image fill ``[H, W, C]`` from ``sampler``, one tile of ``window`` pixels at a time.

    Tiles sit on the non-overlapping grid ``WindowGrid(H, W, window, window)``; tile ``i`` gets the key
    ``fold_in(key, i)`` and sample number ``sample``. Where the last tiles overlap, the later one wins.
    """
    h, w = image.shape[:2]
    grid = WindowGrid(h, w, window, window)
    state = sampler.prepare(image, window)
    ys, xs = np.meshgrid(grid.ys, grid.xs, indexing="ij")
    ys, xs = jnp.asarray(ys.ravel()), jnp.asarray(xs.ravel())
    return _tile(sampler, state, image, key, ys, xs, jnp.asarray(sample, jnp.int32), window=window)


@functools.partial(jax.jit, static_argnames=("window",))
def _tile(sampler, state, image, key, ys, xs, sample, *, window):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(ys.shape[0]))
    patches = jax.vmap(lambda k, y, x: sampler.fill(state, image, window, k, y, x, sample))(keys, ys, xs)
    zero = jnp.zeros((), jnp.int32)

    def put(i, out):
        return jax.lax.dynamic_update_slice(out, patches[i].astype(out.dtype), (ys[i], xs[i], zero))

    return jax.lax.fori_loop(0, ys.shape[0], put, jnp.zeros_like(image))


def mixture_probs(classifier: Classifier, keep: jnp.ndarray, put: jnp.ndarray, pixel_ranks: jnp.ndarray,
                  counts: jnp.ndarray, batch_size: int) -> jnp.ndarray:
    """Mean class probabilities of images that take their top pixels from ``put``, the rest from ``keep``.

    Args:
      classifier: a :class:`Classifier` (traced through ``jit``).
      keep, put: ``[N, S, H, W, C]``: per image, S source pairs (e.g. S fill samples).
      pixel_ranks: ``[N, J, H·W]``: each pixel's place in J rankings per image
        (:func:`~undesirable_jax.evaluate.ranking.pixel_ranks`, 0 = taken first).
      counts: ``[F]`` pixel counts: image (n, j, f, s) takes pixel i from ``put`` when
        ``pixel_ranks[n, j, i] < counts[f]``.
      batch_size: images per classifier call (results do not depend on it beyond rounding).

    Returns ``[N, J, F, K]``, the mean over the S sources. Images are built on device, one chunk at a
    time, so memory is one batch of images whatever N·J·F·S is.
    """
    n, s, h, w, c = keep.shape
    j, f = pixel_ranks.shape[1], counts.shape[0]
    total = n * j * f * s
    batch = max(1, min(int(batch_size), total))
    chunks = -(-total // batch)
    idx = jnp.minimum(jnp.arange(chunks * batch, dtype=jnp.int32), total - 1).reshape(chunks, batch)

    def one(i):
        i_n, rest = i // (j * f * s), i % (j * f * s)
        i_j, rest = rest // (f * s), rest % (f * s)
        i_f, i_s = rest // s, rest % s
        take = (pixel_ranks[i_n, i_j] < counts[i_f]).reshape(h, w, 1)
        return jnp.where(take, put[i_n, i_s], keep[i_n, i_s])

    def chunk(ids):
        return classifier.probs(jax.vmap(one)(ids))

    probs = jax.lax.map(chunk, idx).reshape(chunks * batch, -1)[:total]
    return probs.reshape(n, j, f, s, -1).mean(axis=3)


@struct.dataclass
class Perturbation:
    """How the scoring removes pixels: ``kind`` in :data:`PERTURBATIONS` and its setting (all static).

    ``value``: the constant (model-input units; the data mean is the usual choice). ``sigma``: the blur's
    standard deviation in pixels. ``noise``: ROAD's noise standard deviation on removed pixels.
    """

    kind: str = struct.field(pytree_node=False)
    value: float = struct.field(pytree_node=False, default=0.0)
    sigma: float = struct.field(pytree_node=False, default=1.0)
    noise: float = struct.field(pytree_node=False, default=0.01)

    def __post_init__(self):
        if self.kind not in PERTURBATIONS:
            raise ValueError(f"kind: expected one of {PERTURBATIONS}, got {self.kind!r}")
        for name in ("value", "sigma", "noise"):
            v = getattr(self, name)
            checks.real(name, v, "a finite float")
        if self.sigma <= 0 or self.noise < 0:
            raise ValueError(f"sigma, noise: need sigma > 0 and noise >= 0, got {self.sigma!r}, {self.noise!r}")

    def apply(self, image: jnp.ndarray, removed: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
        """``image [H, W, C]`` with the ``removed [H, W]`` bool pixels replaced; ``key`` drives ROAD's noise."""
        return self.draw(image, removed, self.fill(image, removed), key)

    def fill(self, image: jnp.ndarray, removed: jnp.ndarray) -> jnp.ndarray:
        """The noise-free replacement ``[H, W, C]`` of the removed pixels (ROAD: its linear imputation, solved
        as :func:`.road.road_impute` does; the constant; the blurred image), shared by every draw."""
        if self.kind == "road":
            h, w = removed.shape
            return linear_impute(image, removed, tol=ROAD_TOL, maxiter=h * w)
        return (jnp.full_like(image, self.value) if self.kind == "constant"
                else gaussian_blur(image, float(self.sigma)))

    def draw(self, image: jnp.ndarray, removed: jnp.ndarray, fill: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
        """One perturbed image from a :meth:`fill`: ROAD adds its noise from ``key``; the others ignore it."""
        if self.kind == "road":
            return add_noise(image, removed, fill, key, float(self.noise))
        return jnp.where(removed[..., None], fill, image)

    def distinct_draws(self, draws: int) -> int:
        """How many of ``draws`` keys give different images: ``draws`` for ROAD with noise, else 1 (the
        others are deterministic, so one draw is their mean exactly)."""
        return int(draws) if self.kind == "road" and self.noise > 0 else 1

    def describe(self) -> str:
        """A short label such as ``road(noise=0.01)``."""
        setting = {"road": f"noise={self.noise:g}", "constant": f"value={self.value:g}",
                   "blur": f"sigma={self.sigma:g}"}[self.kind]
        return f"{self.kind}({setting})"


def perturbed_probs(classifier: Classifier, image: jnp.ndarray, places: jnp.ndarray, counts: jnp.ndarray,
                    keys: jax.Array, *, perturbation: Perturbation, batch_size: int,
                    in_turn: bool | None = None) -> jnp.ndarray:
    """Class probabilities of ``image [H, W, C]`` with the first ``counts[f]`` pixels of each ranking removed.

    ``places [J, H·W]``: each pixel's place in ranking j (:func:`~undesirable_jax.evaluate.ranking.pixel_ranks`); pixel i is removed when
    ``places[j, i] < counts[f]``. ``keys [D]``: one perturbation draw each, shared by every ranking and
    count (common random numbers for paired comparisons). Returns ``[J, F, K]``, the mean over the D draws.

    Each removal's fill is computed once for all its draws (ROAD's linear solve, then D noise draws:
    :meth:`Perturbation.fill`, :meth:`Perturbation.draw`), and a deterministic perturbation is
    classified once (:meth:`Perturbation.distinct_draws`). A step classifies about ``batch_size``
    images: ``batch_size // D`` removals × their D draws.

    ``in_turn``: a step's fills are computed one removal after another (``lax.map``) rather than
    vectorised (``vmap``, where ROAD's CG iterates in lockstep until the slowest removal converges).
    None: in turn on CPU, vectorised on accelerators (``benchmarks/bench_road.py``, mask kind
    ``ranking``: per mask, ``lax.map`` against ``vmap`` on CPU; not yet measured on a GPU, where the
    lockstep iterations run in parallel). The results do not depend on it.
    """
    if in_turn is None:
        in_turn = jax.default_backend() == "cpu"
    return _perturbed_probs(classifier, image, places, counts, keys, perturbation=perturbation,
                            batch_size=int(batch_size), in_turn=bool(in_turn))


@functools.partial(jax.jit, static_argnames=("perturbation", "batch_size", "in_turn"))
def _perturbed_probs(classifier, image, places, counts, keys, *, perturbation, batch_size, in_turn):
    h, w, _ = image.shape
    keys = keys[:perturbation.distinct_draws(keys.shape[0])]
    j, f, d = places.shape[0], counts.shape[0], keys.shape[0]
    total = j * f
    batch = max(1, min(int(batch_size) // d, total))
    chunks = -(-total // batch)
    idx = jnp.minimum(jnp.arange(chunks * batch, dtype=jnp.int32), total - 1).reshape(chunks, batch)

    def removed(i):
        return (places[i // f] < counts[i % f]).reshape(h, w)

    def fill(i):
        return perturbation.fill(image, removed(i))

    def draws(i, filled):
        return jax.vmap(lambda k: perturbation.draw(image, removed(i), filled, k))(keys)       # [D, H, W, C]

    def chunk(ids):
        fills = jax.lax.map(fill, ids) if in_turn else jax.vmap(fill)(ids)
        images = jax.vmap(draws)(ids, fills).reshape(-1, *image.shape)
        return classifier.probs(images).reshape(batch, d, -1).mean(axis=1)

    probs = jax.lax.map(chunk, idx).reshape(chunks * batch, -1)[:total]
    return probs.reshape(j, f, -1)
