"""Figures for evidence maps and undesirable factors (METHOD.md §3, "Display").

Headless by construction: figures are ``matplotlib.figure.Figure`` objects on an Agg canvas, made
without ``pyplot``, so nothing touches a display or pyplot's global figure list (no figure leaks in
loops; close nothing). The numerical modules never import this one.

- :func:`plot_evidence`: a signed map R on a diverging colour map symmetric around 0
  (red = evidence for the class, blue = against), with a colour bar.
- :func:`plot_heat`: a map U ≥ 0 as a heat overlay on a greyed copy of the image.
- :func:`factor_figure`: the image, U_t and U_c for each listed competitor (+ the combined map),
  titled with class names and probabilities. :func:`evidence_figure`: signed R maps of some classes.
- :func:`save_figure`: PNG, written atomically. :func:`explain_figure`: explain → factors → figure
  (→ PNG) in one call, e.g. for a README figure from a real model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import checks
from .classifiers import rank_classes
from .engine import Explanation, explain
from .factors import Factors, factors as compute_factors
from .io import atomic_path

MAX_DPI = checks.MAX_DPI
#: Largest figure written, in pixels (about 1 GB of RGBA while matplotlib draws it).
MAX_FIGURE_PIXELS = 2**28

EVIDENCE_CMAP = "RdBu_r"  # low (against) = blue, high (for) = red
HEAT_CMAP = "inferno"


def display_image(image: Any) -> np.ndarray:
    """``[H, W, 3]`` float RGB in [0, 1] for display, from uint8, [0, 1] floats or any-range model input.

    Integers in [0, 255] are divided by 255; floats already in [0, 1] pass through; anything else
    (e.g. mean/std-normalised input) is rescaled jointly over channels from its 0.5th to its 99.5th
    percentile and clipped, which keeps colour balance and ignores a few outliers. A constant image
    becomes mid-grey. ``[H, W]`` and ``[H, W, 1]`` become grey RGB; a 4th (alpha) channel is dropped.
    """
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"image: expected a numeric array [H, W, C], got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image: expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape {arr.shape}")
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    if not np.all(np.isfinite(arr)):
        raise ValueError("image: contains NaN or inf; pass the image as the model sees it, or its uint8 original")
    x = arr.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if np.issubdtype(arr.dtype, np.integer) and lo >= 0 and hi <= 255:
        x = x / 255.0
    elif not (lo >= 0.0 and hi <= 1.0):
        lo, hi = np.percentile(x, [0.5, 99.5])
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            lo, hi = float(x.min()), float(x.max())
        x = np.full_like(x, 0.5) if hi - lo <= 0 else np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x.astype(np.float32)


def greyed(image: Any, low: float = 0.3, high: float = 0.85) -> np.ndarray:
    """A grey ``[H, W, 3]`` copy of ``image`` with luminance compressed to [low, high], under overlays."""
    rgb = display_image(image)
    lum = rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)
    return np.repeat((low + (high - low) * lum)[..., None], 3, axis=-1)


def class_label(class_id: int, class_names: Sequence[str] | None) -> str:
    """``class_names[class_id]``, or ``"class <id>"`` when no names are given."""
    class_id = int(class_id)
    if class_names is None:
        return f"class {class_id}"
    if not 0 <= class_id < len(class_names):
        raise ValueError(f"class_names: has {len(class_names)} names but class id {class_id} was asked "
                         "for; pass the names of all the classifier's classes, or None")
    return str(class_names[class_id])


def plot_evidence(ax: Any, evidence: Any, *, vmax: float | None = None, title: str | None = None,
                  colorbar: bool = True) -> Any:
    """Signed evidence map ``[H, W]`` (bits) on ``ax``: red = for, blue = against, limits ±vmax.

    ``vmax`` defaults to max |R|, so the colour map is symmetric around 0 (white).
    """
    r = _map2d("evidence", evidence)
    m = float(np.max(np.abs(r))) if vmax is None else float(vmax)
    if not m > 0:
        m = 1.0  # an all-zero map: any symmetric range shows it as white
    im = ax.imshow(r, cmap=EVIDENCE_CMAP, vmin=-m, vmax=m, interpolation="nearest")
    _finish(ax, im, title, colorbar, label="WE (bits)")
    return im


def plot_heat(ax: Any, image: Any, heat: Any, *, vmax: float | None = None, title: str | None = None,
              cmap: str = HEAT_CMAP, colorbar: bool = True, significant: Any = None) -> Any:
    """Map ``heat`` ≥ 0 ``[H, W]`` as an overlay on a greyed ``image``; opacity grows with the value.

    ``significant``: optional ``[H, W]`` bool; the other pixels are drawn at a quarter of the opacity
    and hatched (e.g. the pixels that ``factors(..., alpha=…)`` dropped).
    """
    grey = greyed(image)
    u = _map2d("heat", heat)
    if u.shape != grey.shape[:2]:
        raise ValueError(f"heat: map shape {u.shape} does not match the image {grey.shape[:2]}; pass the "
                         "image the explanation was computed on")
    if np.any(u < 0):
        raise ValueError(f"heat: must be >= 0 (an undesirable map U), got min {float(u.min()):.3g}; use "
                         "plot_evidence for signed maps")
    m = float(u.max()) if vmax is None else float(vmax)
    if not m > 0:
        m = 1.0
    if title and not np.any(u > 0):
        title += " (zero everywhere)"
    ax.imshow(grey, interpolation="nearest")
    alpha = 0.9 * np.sqrt(np.clip(u / m, 0.0, 1.0))  # small values fade out, the image shows through
    if significant is not None:
        keep = np.asarray(significant, bool)
        if keep.shape != u.shape:
            raise ValueError(f"significant: mask shape {keep.shape} does not match the map {u.shape}")
        alpha = np.where(keep, alpha, 0.25 * alpha)
    im = ax.imshow(u, cmap=cmap, vmin=0.0, vmax=m, alpha=alpha, interpolation="nearest")
    if significant is not None and not keep.all():
        ax.contourf(~keep, levels=[0.5, 1.5], colors="none", hatches=["////"])
    _finish(ax, im, title, colorbar, label="U (bits)")
    return im


def factor_figure(image: Any, factors: Factors, class_names: Sequence[str] | None = None, *,
                  show_combined: bool = True, shared_scale: bool = False, panel_size: float = 3.0,
                  cmap: str = HEAT_CMAP, title: str | None = None, unmasked: Factors | None = None) -> Figure:
    """One row: the image, U_t, U_c for each competitor in ``factors`` and (optionally) the combined map.

    ``image``: the image the explanation was made on (model input of any range, or its uint8 original
    of the same size). ``class_names``: names indexed by class id (None: "class <id>").
    ``shared_scale``: one colour scale for all U maps (default: each panel scaled to its own max).
    The figure is ``panel_size · panels`` by ``1.25 · panel_size`` inches.
    ``unmasked``: when ``factors`` was computed with ``alpha``, the same factors with ``alpha=None``: the
    panels then show every pixel and fade and hatch those that are not significant.
    """
    if not isinstance(factors, Factors):
        raise TypeError(f"factors: expected undesirable_jax.factors.Factors, got {type(factors).__name__}")
    if np.ndim(factors.target) != 2:
        raise ValueError(f"factors: expected the factors of one explanation (target [H, W]), got target shape "
                         f"{np.shape(factors.target)}; for a stack take one: jax.tree.map(lambda a: a[i], f)")
    u_t, u_c, comb = (np.asarray(a, np.float32) for a in (factors.target, factors.non_target, factors.combined))
    masks = [None] * (2 + u_c.shape[0])
    if unmasked is not None:
        masks = _significance(factors, unmasked)
        u_t, u_c, comb = (np.asarray(a, np.float32) for a in (unmasked.target, unmasked.non_target,
                                                               unmasked.combined))
    if not (np.all(np.isfinite(u_t)) and np.all(np.isfinite(u_c)) and np.all(np.isfinite(comb))):
        raise ValueError("factors: maps contain NaN (target_class = "
                         f"{int(factors.target_class)}: the target was not among the explanation's classes)")
    t = int(factors.target_class)
    names = [class_label(c, class_names) for c in np.asarray(factors.non_target_classes)]
    probs = np.asarray(factors.non_target_probs, np.float64)
    maps = [u_t, *u_c] + ([comb] if show_combined else [])
    vmax = max(float(m.max()) for m in maps) if shared_scale else None

    n = len(maps) + 1
    fig = _figure(panel_size * n, 1.25 * panel_size)
    axes = fig.subplots(1, n, squeeze=False)[0]
    axes[0].imshow(display_image(image), interpolation="nearest")
    _finish(axes[0], None, f"input\ntarget: {class_label(t, class_names)}", False)
    plot_heat(axes[1], image, u_t, vmax=vmax, cmap=cmap, significant=masks[0],
              title=f"U_t: against {class_label(t, class_names)}\np = {_fmt_p(factors.target_prob)}")
    for i, (name, p) in enumerate(zip(names, probs)):
        plot_heat(axes[2 + i], image, u_c[i], vmax=vmax, cmap=cmap, significant=masks[1 + i],
                  title=f"U_c: for {name}\np = {_fmt_p(p)}")
    if show_combined:
        plot_heat(axes[-1], image, comb, vmax=vmax, cmap=cmap, significant=masks[-1],
                  title=f"combined U_c\n(p-weighted, {len(names)} classes)")
    kind = "decoupled from the target" if factors.decoupled else "plain PDA"
    level = "" if factors.alpha is None else f"; hatched: not significant at {factors.alpha:g}"
    fig.suptitle(title or f"Undesirable factors (U_c {kind}{level})")
    return fig


def evidence_figure(explanation: Explanation, class_ids: Sequence[int] | None = None, image: Any = None,
                    class_names: Sequence[str] | None = None, *, panel_size: float = 3.0) -> Figure:
    """Signed evidence maps R_c of ``class_ids`` (default: the top 3 by p(c|x)), after the image if given."""
    if not isinstance(explanation, Explanation):
        raise TypeError(f"explanation: expected an undesirable_jax.Explanation, got {type(explanation).__name__}")
    if explanation.evidence.ndim != 3:
        raise ValueError(f"explanation: expected one explanation (evidence [K, H, W]), got shape "
                         f"{explanation.evidence.shape}; take one from the stack first")
    probs = np.asarray(explanation.probs)
    classes = np.asarray(explanation.classes)
    if class_ids is None:
        order = rank_classes(probs, classes)
        class_ids = classes[order[: min(3, classes.size)]].tolist()
    rows = [explanation.row(int(c)) for c in class_ids]
    n = len(rows) + (image is not None)
    fig = _figure(panel_size * n, 1.25 * panel_size)
    axes = list(fig.subplots(1, n, squeeze=False)[0])
    if image is not None:
        ax = axes.pop(0)
        ax.imshow(display_image(image), interpolation="nearest")
        _finish(ax, None, "input", False)
    evidence = np.asarray(explanation.evidence)
    for ax, r in zip(axes, rows):
        c = int(classes[r])
        plot_evidence(ax, evidence[r], title=f"R: {class_label(c, class_names)}\np = {_fmt_p(probs[r])}")
    fig.suptitle("Weight of evidence (red: for, blue: against)")
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically; the image is figure size × ``dpi`` pixels."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig: expected a matplotlib Figure, got {type(fig).__name__}")
    dpi = checks.positive_int("dpi", dpi, maximum=MAX_DPI)
    width, height = (float(v) * dpi for v in fig.get_size_inches())
    if width * height > MAX_FIGURE_PIXELS:
        raise ValueError(f"dpi: {dpi} makes a {width:.0f}x{height:.0f} image, more than {MAX_FIGURE_PIXELS:,} "
                         f"pixels; lower dpi to at most {int(dpi * (MAX_FIGURE_PIXELS / (width * height)) ** 0.5)}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path: figures are written as PNG, got {str(path)!r}; use a name ending in .png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=int(dpi))
    return path


class FactorReport(NamedTuple):
    """What :func:`explain_figure` made: the figure, the factors and the explanation behind them."""

    figure: Figure
    factors: Factors
    explanation: Explanation


def explain_figure(classifier: Any, image: Any, *, display: Any = None,
                   class_names: Sequence[str] | None = None, target: int | None = None, top_k: int = 3,
                   decouple: bool = True, path: str | os.PathLike | None = None, dpi: int = 100,
                   title: str | None = None, **explain_kwargs: Any) -> FactorReport:
    """Explain ``image``, compute its factors and draw them (and save a PNG when ``path`` is given).

    ``image`` is the classifier's input; ``display`` (default: ``image``) is what the panels show,
    e.g. the uint8 original before normalisation. ``explain_kwargs`` go to
    :func:`undesirable_jax.explain` (``sampler``, ``key``, ``window``, ``stride``, ``num_samples``, …).
    """
    expl = explain(classifier, image, **explain_kwargs)
    f = compute_factors(expl, target=target, top_k=top_k, decouple=decouple)
    fig = factor_figure(image if display is None else display, f, class_names, title=title)
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return FactorReport(fig, f, expl)


def _significance(masked: Factors, unmasked: Factors) -> list:
    """Per panel (U_t, each U_c, combined): where ``masked`` kept the pixel, or every pixel of a map
    that the mask left unchanged."""
    if masked.alpha is None or unmasked.alpha is not None:
        raise ValueError("unmasked: pass factors computed with alpha as `factors` and the same factors with "
                         "alpha=None as `unmasked`")
    if int(masked.target_class) != int(unmasked.target_class) or not np.array_equal(
            np.asarray(masked.non_target_classes), np.asarray(unmasked.non_target_classes)):
        raise ValueError("unmasked: its target and competitors differ from those of `factors`; compute both "
                         "from the same explanation with the same target and top_k")
    pairs = [(masked.target, unmasked.target), *zip(masked.non_target, unmasked.non_target),
             (masked.combined, unmasked.combined)]
    return [np.asarray(m) >= np.asarray(u) for m, u in pairs]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _map2d(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected one map [H, W], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or inf")
    return arr


def _finish(ax: Any, im: Any, title: str | None, colorbar: bool, label: str = "") -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar and im is not None:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cb.set_label(label, fontsize=8)
        cb.ax.tick_params(labelsize=7)


def _fmt_p(p: Any) -> str:
    p = float(p)
    return f"{p:.2f}" if p >= 0.01 else f"{p:.1e}"
