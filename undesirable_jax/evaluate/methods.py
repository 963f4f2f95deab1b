"""The evaluated methods as a registry: name → a builder of that method's signed maps for one image.

Every builder gets the image, the target t and competitor c, and its own construction key (from the
``build`` stream of :mod:`.keys`), and returns :class:`SignedMaps`:

- ``against`` ``[H, W]``: signed evidence against the target (−R_t for PDA, −attribution for the
  baselines). The scoring ranks all pixels by it, so the order continues past its positive set (U_t).
- ``competitors``: the competitor maps by label; ``"uc"`` comes first (PDA: the decoupled U_c when
  ``config.decouple``, else the plain one; baselines: their plain R_c), PDA adds ``"uc_plain"`` (R_c)
  when ``"uc"`` is decoupled.
- ``own``: the perturbation the method was built with, to score it a second time "under its own
  construction perturbation": ``"sampler"`` (fills from the run's sampler), a constant value, or None.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .. import checks
from ..classifiers import as_classifier
from ..engine import explain_batch
from ..factors import factors
from ..samplers import Sampler
from . import baselines
from .removal import fill_image


@dataclasses.dataclass(frozen=True)
class SignedMaps:
    """One method's maps for one image (see the module docstring)."""

    against: jnp.ndarray
    competitors: dict[str, jnp.ndarray]
    own: str | float | None


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What every builder may use: classifier, image ``[H, W, C]``, t, c, run settings."""

    classifier: Any
    image: jnp.ndarray
    target: int
    competitor: int
    config: Any
    sampler: Sampler
    chunk_size: int | None = None
    batch_size: int = 64
    mesh: Any = None


def _pda(ctxs: list[BuildContext], keys: list[jax.Array]) -> list[SignedMaps]:
    cfg, ctx = ctxs[0].config, ctxs[0]
    expl = explain_batch(ctx.classifier, _stack(ctxs), window=cfg.window, stride=cfg.stride, sampler=ctx.sampler,
                         num_samples=cfg.num_samples, key=jnp.stack(keys), chunk_size=ctx.chunk_size, classes=None,
                         laplace_n=cfg.laplace_n, mesh=ctx.mesh)          # all rows: factors' stable q
    return [_pda_maps(e, c) for e, c in zip(expl.unstack(), ctxs)]


def _stack(ctxs: list[BuildContext]) -> jnp.ndarray:
    """The images of ``ctxs`` as one batch ``[N, H, W, C]``."""
    return jnp.stack([c.image for c in ctxs])


def _pda_maps(expl: Any, ctx: BuildContext) -> SignedMaps:
    """−R_t and U_c of one image's explanation (all rows kept)."""
    cfg = ctx.config
    r_t, r_c = expl.evidence[expl.row(ctx.target)], expl.evidence[expl.row(ctx.competitor)]
    if not cfg.decouple:
        return SignedMaps(against=-r_t, competitors={"uc": r_c}, own="sampler")
    return SignedMaps(against=-r_t, competitors={"uc": _decoupled(expl, ctx), "uc_plain": r_c}, own="sampler")


def _decoupled(expl: Any, ctx: BuildContext) -> jnp.ndarray:
    """PDA's decoupled U_c for ``ctx.competitor`` (from the factors' ranked competitors, all if needed)."""
    k = min(ctx.config.top_k, expl.num_classes - 1)
    for top_k in (k, expl.num_classes - 1):
        f = factors(expl, target=ctx.target, top_k=top_k, decouple=True)
        hits = np.flatnonzero(np.asarray(f.non_target_classes) == ctx.competitor)
        if hits.size:
            return f.non_target[int(hits[0])]
    raise ValueError(f"competitor: class {ctx.competitor} is not among the explanation's classes")


def _occlusion(ctxs: list[BuildContext], keys: list[jax.Array]) -> list[SignedMaps]:
    cfg, ctx = ctxs[0].config, ctxs[0]
    classes = sorted({k for c in ctxs for k in (c.target, c.competitor)})   # rows do not depend on each other
    r = baselines.occlusion_batch(ctx.classifier, _stack(ctxs), classes, window=cfg.window, stride=cfg.stride,
                                  value=cfg.occlusion_value, chunk_size=ctx.chunk_size, laplace_n=cfg.laplace_n,
                                  mesh=ctx.mesh)
    return [SignedMaps(against=-r[i, classes.index(c.target)], competitors={"uc": r[i, classes.index(c.competitor)]},
                       own=float(cfg.occlusion_value)) for i, c in enumerate(ctxs)]


def _rise(ctx: BuildContext, key: jax.Array) -> SignedMaps:
    cfg = ctx.config
    fill = fill_image(ctx.sampler, ctx.image, cfg.window, jax.random.fold_in(key, 1))
    r = baselines.rise(ctx.classifier, ctx.image, fill, [ctx.target, ctx.competitor], jax.random.fold_in(key, 0),
                       num_masks=cfg.rise_masks, cells=cfg.rise_cells, batch_size=ctx.batch_size)
    return SignedMaps(against=-r[0], competitors={"uc": r[1]}, own="sampler")


def _gradient_input(ctx: BuildContext, key: jax.Array) -> SignedMaps:
    r = baselines.gradient_input(ctx.classifier, ctx.image, [ctx.target, ctx.competitor])
    return SignedMaps(against=-r[0], competitors={"uc": r[1]}, own=0.0)   # reference 0


def _random(ctx: BuildContext, key: jax.Array) -> SignedMaps:
    h, w = ctx.image.shape[:2]
    m = baselines.random_maps(key, h, w)
    return SignedMaps(against=m.undesirable, competitors={"uc": m.competitor}, own=None)


def _reference(ctx: BuildContext) -> jnp.ndarray:
    """The reference matched to the run's scoring fill (:func:`.baselines.scoring_reference`)."""
    return baselines.scoring_reference(ctx.image, ctx.config.scoring())


def _gradient_ref(ctx: BuildContext, key: jax.Array) -> SignedMaps:
    r = baselines.gradient_input(ctx.classifier, ctx.image, [ctx.target, ctx.competitor], reference=_reference(ctx))
    return SignedMaps(against=-r[0], competitors={"uc": r[1]}, own=None)   # own = the scoring perturbation


def _integrated_gradients(ctx: BuildContext, key: jax.Array) -> SignedMaps:
    r = baselines.integrated_gradients(ctx.classifier, ctx.image, [ctx.target, ctx.competitor],
                                       reference=_reference(ctx), steps=ctx.config.ig_steps)
    return SignedMaps(against=-r[0], competitors={"uc": r[1]}, own=None)


def _smoothgrad(ctx: BuildContext, key: jax.Array) -> SignedMaps:
    cfg = ctx.config
    r = baselines.smoothgrad(ctx.classifier, ctx.image, [ctx.target, ctx.competitor], key, reference=_reference(ctx),
                             samples=cfg.smoothgrad_samples, sigma=cfg.smoothgrad_sigma)
    return SignedMaps(against=-r[0], competitors={"uc": r[1]}, own=None)


def _sobol(ctx: BuildContext, key: jax.Array) -> SignedMaps:
    cfg = ctx.config
    fill = fill_image(ctx.sampler, ctx.image, cfg.window, jax.random.fold_in(key, 1))   # as RISE
    r = baselines.sobol(ctx.classifier, ctx.image, fill, [ctx.target, ctx.competitor], jax.random.fold_in(key, 0),
                        grid=cfg.sobol_grid, designs=cfg.sobol_designs, batch_size=ctx.batch_size,
                        laplace_n=cfg.laplace_n)
    return SignedMaps(against=-r[0], competitors={"uc": r[1]}, own="sampler")


def _control(name: str) -> Callable[[BuildContext, jax.Array], SignedMaps]:
    """A model-free control's builder: ``against`` = the control map; its competitor map is the same map
    (a map that ignores the classes says the same pixels speak against t and for c)."""
    def build(ctx: BuildContext, key: jax.Array) -> SignedMaps:
        m = baselines.control_map(name, ctx.image, sigma=ctx.config.control_sigma)
        return SignedMaps(against=m, competitors={"uc": m}, own=None)

    build.__name__ = f"_control_{name}"
    return build


BATCH_BUILDERS: dict[str, Callable[[list[BuildContext], list[jax.Array]], list[SignedMaps]]] = {
    "pda": _pda, "occlusion": _occlusion}
"""The methods whose windows of several images share the engine's chunks (:func:`undesirable_jax.explain_batch`):
they build the maps of a list of images (one context and key each) in one call; image i's maps equal
its maps built alone (up to float32 summation order). The other methods build one image at a time."""


def _one(batch: Callable[[list[BuildContext], list[jax.Array]], list[SignedMaps]]
         ) -> Callable[[BuildContext, jax.Array], SignedMaps]:
    """A batch builder as a one-image builder."""
    def build(ctx: BuildContext, key: jax.Array) -> SignedMaps:
        return batch([ctx], [key])[0]

    build.__name__ = batch.__name__
    return build


BUILDERS: dict[str, Callable[[BuildContext, jax.Array], SignedMaps]] = {
    "pda": _one(_pda), "occlusion": _one(_occlusion), "rise": _rise, "gradient_input": _gradient_input, "random": _random,
    "gradient_ref": _gradient_ref, "integrated_gradients": _integrated_gradients, "smoothgrad": _smoothgrad,
    "sobol": _sobol, **{name: _control(name) for name in baselines.CONTROLS}}
"""The methods by name, in the order the runner reports them (new methods are appended: a method's build
key is ``fold_in(key, its position)``, so appending keeps the earlier methods' maps).

``gradient_ref``, ``integrated_gradients``, ``smoothgrad``: gradient × (x − r), integrated gradients
and SmoothGrad × (x − r) with the reference r matched to the scoring fill
(:func:`.baselines.scoring_reference`: ROAD's neighbour mean, the constant, or the blurred image); they
are scored under the common scoring perturbation only (``own`` None: it is their own).
``sobol``: signed total Sobol indices over the run's sampler fills (:func:`.baselines.sobol`).
The controls (:data:`CONTROLS`) ignore the classifier."""

NEEDS_GRADIENTS = ("gradient_input", "gradient_ref", "integrated_gradients", "smoothgrad")

CONTROLS: tuple[str, ...] = baselines.CONTROLS
"""The model-free controls among :data:`BUILDERS` (maps computed from the image alone): every method's
summary row reports its margin over the best of them."""


def check_settings(config: Any) -> None:
    """Validate the settings of the methods registered here (called by ``EvalConfig`` on creation)."""
    for name in ("ig_steps", "smoothgrad_samples", "sobol_grid", "sobol_designs"):
        checks.positive_int(name, getattr(config, name), maximum=None)
    for name in ("smoothgrad_sigma", "control_sigma"):
        checks.positive_number(name, getattr(config, name))
    if config.sobol_designs & (config.sobol_designs - 1):
        raise ValueError(f"sobol_designs: expected a power of 2 (a balanced Sobol sequence), got "
                         f"{config.sobol_designs}")


def usable(name: str, classifier: Any) -> str | None:
    """None when ``name`` can run on ``classifier``, else the reason it is skipped."""
    if name in NEEDS_GRADIENTS and not as_classifier(classifier).differentiable:   # black boxes
        return f"{name} skipped: the classifier declares no gradients (differentiable = False)"
    return None


def average_windows(maps: list[SignedMaps]) -> SignedMaps:
    """One map from several window sizes: the mean of each size's maps after scaling each to max |value| 1.

    Scaling first keeps one window size (whose evidence sums over more or fewer windows per pixel)
    from dominating the average; competitor maps are averaged label by label (labels all maps share).
    ``own`` is None: the average was built under no single perturbation.
    """
    if not maps:
        raise ValueError("maps: expected the maps of at least one window size")

    def scaled(a: jnp.ndarray) -> jnp.ndarray:
        top = jnp.max(jnp.abs(a))
        return jnp.where(top > 0, a / jnp.where(top > 0, top, 1.0), 0.0)

    labels = [lab for lab in maps[0].competitors if all(lab in m.competitors for m in maps)]
    return SignedMaps(against=jnp.mean(jnp.stack([scaled(m.against) for m in maps]), axis=0),
                      competitors={lab: jnp.mean(jnp.stack([scaled(m.competitors[lab]) for m in maps]), axis=0)
                                   for lab in labels}, own=None)
