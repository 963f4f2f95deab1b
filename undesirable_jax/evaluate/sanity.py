"""Sanity checks for saliency maps after Adebayo et al. (NeurIPS 2018): does the map depend on the model?

- *Cascading model-parameter randomisation*: the classifier's layers are re-initialised one after the
  other, from the top (output) layer down; a map that stays the same while the weights become random
  does not explain the model. :func:`cascading_randomisation` yields the stages and
  :func:`randomisation_rhos` compares each stage's map with the trained model's by Spearman's ρ.
- *Random-logit check*: explain a class drawn at random among the non-top classes
  (:func:`random_other_class`); a map of U_c for that class should differ from the top class's.
- *Measures* (:func:`compare_maps`): Spearman's ρ of the signed maps, ρ of their absolute values
  (|ρ|; Adebayo et al. report both), and SSIM of the maps normalised to [0, 1] (:func:`ssim`); each
  map is also compared with the image itself (grey intensity, the edge-detector test: a map that
  still looks like the image once the model is random explains the image, not the model).
  :func:`fails` flags a method whose fully randomised maps stay close (any measure ≥ :data:`FAIL_AT`).

Layers are the parent paths of a parameter pytree's leaves (``params/Conv_0`` holds ``kernel`` and
``bias``). Their default order is the model's own: the position in the classifier's traced
computation (jaxpr) where a layer's parameters are first used; top-first is the reverse. A randomised
leaf is drawn from a centred Gaussian with the trained leaf's standard deviation (a constant leaf,
such as a zero bias, stays at zero), keyed by the stage and the leaf's position in the layer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
import numpy as np

from ..classifiers import Classifier, as_classifier


@dataclasses.dataclass(frozen=True)
class SanityRow:
    """Stage ``stage`` (0 = trained) with ``layers`` randomised so far (top first) and its measures
    against the trained model's map (``rho``, ``abs_rho``, ``ssim``) and, when an image was given,
    against the image (``rho_image``, ``abs_rho_image``; NaN otherwise)."""

    stage: int
    layers: tuple[str, ...]
    rho: float
    abs_rho: float = float("nan")
    ssim: float = float("nan")
    rho_image: float = float("nan")
    abs_rho_image: float = float("nan")


FAIL_AT = 0.5
"""A method fails the randomisation check when, with every layer random, its mean |ρ| or SSIM against
the trained model's map, or its mean |ρ| against the image, is at least this."""

SSIM_SIGMA, SSIM_C1, SSIM_C2 = 1.5, 0.01 ** 2, 0.03 ** 2
"""SSIM's Gaussian window (σ in pixels, mirrored borders) and constants (Wang et al. 2004, data range 1)."""


def _path_name(path: Sequence[Any]) -> str:
    parts = []
    for p in path:
        parts.append(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))))
    return "/".join(parts)


def _leaves(params: Any) -> list[tuple[str, str, Any]]:
    """``(layer, leaf path, value)`` for every array leaf, in pytree order."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = _path_name(path)
        layer = name.rsplit("/", 1)[0] if "/" in name else name
        out.append((layer, name, leaf))
    return out


def _params_of(classifier: Any) -> tuple[Classifier, Any]:
    clf = as_classifier(classifier)
    if clf.params is None:
        raise TypeError("classifier: parameter randomisation needs a Classifier whose weights are a pytree "
                        "in .params (uj.from_function(fn, params) or a loaded model), got params=None")
    return clf, clf.params


def layer_order(classifier: Any, input_shape: Sequence[int]) -> list[str]:
    """Layer names, input side first, by where the traced classifier first uses each layer's leaves.

    ``input_shape``: one image ``(H, W, C)``; the classifier is traced (not run) on a batch of one.
    """
    clf, params = _params_of(classifier)
    leaves = _leaves(params)
    x = jax.ShapeDtypeStruct((1, *tuple(input_shape)), jnp.float32)
    closed = jax.make_jaxpr(lambda p, im: clf.fn(p, im))(params, x)
    invars = closed.jaxpr.invars[:len(leaves)]
    first = {}
    for i, eqn in enumerate(closed.jaxpr.eqns):
        for v in eqn.invars:
            if isinstance(v, jax_core.Var) and v not in first:
                first[v] = i
    depth: dict[str, int] = {}
    for (layer, _, _), var in zip(leaves, invars):
        depth[layer] = min(depth.get(layer, 1 << 30), first.get(var, 1 << 30))
    return sorted(depth, key=lambda name: depth[name])


def randomise_layers(classifier: Any, layers: Sequence[str], key: jax.Array) -> Classifier:
    """The classifier with every leaf of ``layers`` redrawn as N(0, std(trained leaf)²), keyed by ``key``."""
    clf, params = _params_of(classifier)
    leaves = _leaves(params)
    known = {layer for layer, _, _ in leaves}
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise ValueError(f"layers: {unknown} are not layers of this classifier; its layers are {sorted(known)}")
    chosen = set(layers)
    new = []
    for i, (layer, _, leaf) in enumerate(leaves):
        if layer in chosen and jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
            leaf = jnp.asarray(leaf)
            noise = jax.random.normal(jax.random.fold_in(key, i), leaf.shape, jnp.float32)
            leaf = (noise * jnp.std(leaf.astype(jnp.float32))).astype(leaf.dtype)
        new.append(leaf)
    treedef = jax.tree_util.tree_structure(params)
    return clf.replace(params=jax.tree_util.tree_unflatten(treedef, new))


Stage = tuple[tuple[str, ...], Classifier]


def cascading_randomisation(classifier: Any, key: jax.Array, *, input_shape: Sequence[int] | None = None,
                            layers: Sequence[str] | None = None) -> Iterator[Stage]:
    """Yield ``(randomised layers, classifier)``: first the trained model ``((), classifier)``, then one
    more layer randomised per stage, top layer first.

    ``layers``: the order to randomise (top first); default the reverse of :func:`layer_order`
    (needs ``input_shape``). Stage ``s`` redraws its new layer with ``fold_in(key, s)``; the layers
    randomised earlier keep their draws, so stage ``s`` contains stage ``s − 1``'s random weights.
    """
    clf, _ = _params_of(classifier)
    if layers is None:
        if input_shape is None:
            raise ValueError("input_shape: needed to find the layer order when layers is None; "
                             "pass input_shape=(H, W, C) or layers=[top, ..., bottom]")
        layers = layer_order(clf, input_shape)[::-1]
    yield (), clf
    current = clf
    for s, layer in enumerate(layers, start=1):
        current = randomise_layers(current, [layer], jax.random.fold_in(key, s))
        yield tuple(layers[:s]), current


def _average_ranks(x: jnp.ndarray) -> jnp.ndarray:
    """0-based ranks with ties given the mean of the ranks they span (as scipy.stats.rankdata)."""
    s = jnp.sort(x)
    lo = jnp.searchsorted(s, x, side="left")
    hi = jnp.searchsorted(s, x, side="right")
    return (lo + hi - 1).astype(jnp.float32) / 2.0


@jax.jit
def _spearman(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return jnp.sum(ra * rb) / jnp.sqrt(jnp.sum(ra * ra) * jnp.sum(rb * rb))


def spearman_maps(a: Any, b: Any, *, absolute: bool = False) -> float:
    """Spearman's ρ between two maps of one shape (ties average-ranked); NaN when a map is constant.

    ``absolute``: rank ``|a|`` and ``|b|`` (Adebayo et al. report both; sign flips then do not count).
    """
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.shape != b.shape:
        raise ValueError(f"a, b: expected maps of one shape, got {a.shape} and {b.shape}")
    if not (bool(jnp.all(jnp.isfinite(a))) and bool(jnp.all(jnp.isfinite(b)))):
        raise ValueError("a, b: maps must be finite")
    if absolute:
        a, b = jnp.abs(a), jnp.abs(b)
    return float(_spearman(a.ravel(), b.ravel()))


def normalise(m: Any) -> jnp.ndarray:
    """``|m| / max |m|`` in [0, 1] (all zeros for an all-zero map)."""
    a = jnp.abs(jnp.asarray(m, jnp.float32))
    top = jnp.max(a)
    return jnp.where(top > 0, a / jnp.where(top > 0, top, 1.0), 0.0)


def ssim(a: Any, b: Any) -> float:
    """Mean SSIM of two maps ``[H, W]`` after :func:`normalise` (window and constants: :data:`SSIM_SIGMA`).

    ``(2μ_aμ_b + C1)(2σ_ab + C2) / ((μ_a² + μ_b² + C1)(σ_a² + σ_b² + C2))`` with local means, variances and
    covariance from the Gaussian window, averaged over pixels; 1 for equal maps.
    """
    from ..samplers import gaussian_blur

    a, b = normalise(a), normalise(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a, b: expected two [H, W] maps of one shape, got {a.shape} and {b.shape}")

    def mean(x):
        return gaussian_blur(x[..., None], SSIM_SIGMA)[..., 0]

    ma, mb = mean(a), mean(b)
    va, vb, cov = mean(a * a) - ma * ma, mean(b * b) - mb * mb, mean(a * b) - ma * mb
    s = ((2 * ma * mb + SSIM_C1) * (2 * cov + SSIM_C2)) / ((ma * ma + mb * mb + SSIM_C1) * (va + vb + SSIM_C2))
    return float(jnp.mean(s))


def compare_maps(reference: Any, other: Any, image: Any = None) -> dict[str, float]:
    """``rho``, ``abs_rho``, ``ssim`` of ``other`` against ``reference`` (maps ``[H, W]``) and, with an
    ``image`` ``[H, W, C]``, ``rho_image`` and ``abs_rho_image``: ``other`` against the image's grey
    intensity (Σ over channels; |other| against it for the absolute one)."""
    out = {"rho": spearman_maps(reference, other), "abs_rho": spearman_maps(reference, other, absolute=True),
           "ssim": ssim(reference, other)}
    if image is not None:
        grey = jnp.sum(jnp.asarray(image, jnp.float32), axis=-1)
        out["rho_image"] = spearman_maps(grey, other)
        out["abs_rho_image"] = spearman_maps(jnp.abs(grey), other, absolute=True)
    return out


def fails(abs_rho: float, ssim_value: float, abs_rho_image: float) -> bool:
    """True when a fully randomised model's maps stay close to the trained map or to the image
    (any of the three at least :data:`FAIL_AT`; NaN counts as not close)."""
    return any(v >= FAIL_AT for v in (abs_rho, ssim_value, abs_rho_image) if math.isfinite(v))


def randomisation_rhos(make_map: Callable[[Classifier], Any], classifier: Any, key: jax.Array, *,
                       input_shape: Sequence[int] | None = None, layers: Sequence[str] | None = None,
                       image: Any = None) -> list[SanityRow]:
    """:func:`compare_maps` of ``make_map(stage classifier)`` against ``make_map(trained)`` at every stage.

    ``make_map`` must explain a fixed class (the trained model's choice), not each stage's own top
    class; stage 0 compares the trained map with itself (ρ = 1 unless the map is constant). ``image``:
    also compare every stage's map with the image.
    """
    rows, reference = [], None
    for s, (done, clf) in enumerate(cascading_randomisation(classifier, key, input_shape=input_shape,
                                                            layers=layers)):
        m = np.asarray(make_map(clf))
        reference = m if reference is None else reference
        rows.append(SanityRow(stage=s, layers=done, **compare_maps(reference, m, image)))
    return rows


def random_other_class(probs: Any, key: jax.Array) -> jnp.ndarray:
    """A class drawn uniformly from the classes other than the top one of ``probs`` ``[..., K]`` (K ≥ 2)."""
    probs = jnp.asarray(probs)
    k = probs.shape[-1]
    if k < 2:
        raise ValueError(f"probs: need at least 2 classes for a non-top class, got {k}")
    top = jnp.argmax(probs, axis=-1)
    r = jax.random.randint(key, top.shape, 0, k - 1)
    return (r + (r >= top)).astype(jnp.int32)
