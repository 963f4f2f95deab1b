"""Adaptive windows: a stride-1 explanation for a fraction of its forward passes.

:func:`explain_adaptive` evaluates the windows of a coarse grid, then refines the cells between
evaluated positions where the weight of evidence most needs it, until ``budget`` (a fraction of the
stride-1 passes) is spent. The positions are those of the stride-1 grid, and each evaluated window ``w``
(its stride-1 index) uses the same keys ``fold_in(fold_in(key, w), s)`` as
:func:`undesirable_jax.explain` with ``stride=1``, so an evaluated position has exactly the value the
exhaustive run gives it, and ``budget=1.0`` reproduces that run.

Refinement is a quadtree over the grid of window positions: a cell is a rectangle whose four corners
are evaluated. At the end every position that was not evaluated gets the window probabilities of every
kept class interpolated linearly over a Delaunay triangulation of the evaluated positions (so points
added by a neighbour's split count too), and the evidence is computed from those. A cell's priority is the number of positions it would fill
times ``spread + magnitude_weight · max|WE| + se_weight · SE``, over the ``focus`` most probable classes
of the untouched image: ``spread`` is the range of WE over its corners (the map changes fast there),
``max|WE|`` the largest evidence at a corner (where undesirable pixels are), SE the corners' mean
standard error (uncertain). The chosen cells are split at their midpoints (the new corners are
evaluated in one engine call per round) until the budget is spent or every position is evaluated.
"""

from __future__ import annotations

import heapq
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from scipy.sparse import csr_matrix
from scipy.spatial import Delaunay

from . import checks
from .classifiers import rank_classes
from .engine import Explanation, Run, check_samples, plan_chunk, prepare
from .evidence import weight_of_evidence
from .samplers import Sampler

ROUND_SHARE = 3  # each refinement round evaluates about 1/ROUND_SHARE of the positions left to spend,
MIN_ROUND = 64   # and at least this many (the schedule does not depend on the chunk size or devices)


def explain_adaptive(
    classifier: Any,
    image: Any,
    *,
    window: int = 10,
    sampler: Sampler,
    num_samples: int = 10,
    key: jax.Array,
    budget: float = 0.1,
    coarse_stride: int | None = None,
    focus: int = 4,
    magnitude_weight: float = 1.0,
    se_weight: float = 2.0,
    chunk_size: int | None = None,
    classes: Sequence[int] | None = None,
    laplace_n: float = 100_000,
    mesh: Mesh | str | None = None,
    progress: bool = False,
) -> Explanation:
    """PDA on the full stride-1 grid of window positions, evaluating only about ``budget`` of them.

    Args:
      classifier, image, window, sampler, num_samples, key, chunk_size, classes, laplace_n, mesh,
        progress: as in :func:`undesirable_jax.explain` (``num_samples`` an int S).
      budget: the fraction of the stride-1 passes (positions × S) to spend, in (0, 1]. It must cover
        the coarse grid.
      coarse_stride: spacing of the first grid in positions (default: the power of two nearest
        ``sqrt(3 / budget)``, about a third of the budget, widened when the grid would not fit).
      focus: the refinement looks at this many of the most probable kept classes (the target and
        its top competitors).
      magnitude_weight, se_weight: weights of max|WE| and of the standard error in a cell's priority
        (module docstring).

    Returns an :class:`Explanation` with ``stride=1``; ``window_samples`` is S at evaluated positions
    and 0 at interpolated ones; ``window_probs_se`` there is the interpolated corners' sampling error
    (interpolation error is not included).
    """
    s_count, _ = check_samples(num_samples, None)
    budget = _check_budget(budget)
    checks.priority_weights(magnitude_weight, se_weight)
    run = prepare(classifier, image, window=window, stride=1, sampler=sampler, key=key, classes=classes,
                  laplace_n=laplace_n, mesh=mesh, progress=progress)
    ny, nx = run.grid.shape
    limit = max(1, int(np.floor(budget * ny * nx + 1e-9)))
    first, cy, cx, stride = _coarse_grid(coarse_stride, budget, ny, nx, limit)
    if first.size > limit:
        raise ValueError(f"budget: {budget} is {limit} of {ny * nx} window positions, less than the coarse "
                         f"grid's {first.size} (coarse_stride {stride}); raise budget or coarse_stride")
    chunk = plan_chunk(chunk_size, first.size * s_count, run.mesh.size)
    evaluated = np.zeros(ny * nx, bool)
    acc = run.evaluate(run.zeros(), first, 0, s_count, chunk)
    evaluated[first] = True
    cells = [(int(a), int(b), int(c), int(d)) for a, b in zip(cy[:-1], cy[1:]) for c, d in zip(cx[:-1], cx[1:])]
    if len(cy) == 1 or len(cx) == 1:  # a one-position axis: cells are segments along the other
        cells = _degenerate_cells(cy, cx)
    weights = (float(magnitude_weight), float(se_weight))
    top = np.asarray(rank_classes(run.p0, run.rows)[:_check_focus(focus, run.rows.shape[0])])
    acc = _refine_rounds(run, acc, cells, evaluated, top, weights, limit - first.size, s_count, chunk)
    return _assemble(run, acc, evaluated, s_count)


def _refine_rounds(run: Run, acc: tuple, cells: list, evaluated: np.ndarray, top: np.ndarray,
                   weights: tuple[float, float], spare: int, s_count: int, chunk: int) -> tuple:
    """Split cells and evaluate their new corners, round by round, until ``spare`` positions are spent.

    Updates ``evaluated`` in place; returns the accumulators.
    """
    nx = run.grid.shape[1]
    while spare > 0 and any(_splittable(c) for c in cells):
        stats = run.window_stats(acc, evaluated * s_count, top)
        scores = _scores(run, stats, top, cells, nx, weights)
        cap = min(spare, max(-(-spare // ROUND_SHARE), MIN_ROUND))
        cells, new = _refine(cells, scores, evaluated, nx, cap)
        if new.size == 0 and cap < spare:
            cells, new = _refine(cells, scores, evaluated, nx, spare)
        if new.size == 0:
            break
        acc = run.evaluate(acc, new, 0, s_count, chunk)
        evaluated[new] = True
        spare -= new.size
    return acc


def _assemble(run: Run, acc: tuple, evaluated: np.ndarray, s_count: int) -> Explanation:
    """Interpolate every unevaluated position from the evaluated ones; build the explanation."""
    ny, nx = run.grid.shape
    counts = evaluated * s_count
    mean, se, _ = run.window_stats(acc, counts)
    done = np.flatnonzero(evaluated)
    idx, weights = interpolation_weights(done, ny, nx)
    rows = np.repeat(np.arange(ny * nx), idx.shape[1])
    lerp = csr_matrix((weights.ravel(), (rows, idx.ravel())), shape=(ny * nx, done.size))
    lerp2 = csr_matrix((weights.ravel() ** 2, (rows, idx.ravel())), shape=(ny * nx, done.size))
    est = lerp @ np.asarray(mean, np.float64)[done]              # sparse: 3 weights per position
    est_var = lerp2 @ np.square(np.asarray(se, np.float64))[done]
    return run.assemble(jnp.asarray(est, jnp.float32), jnp.sqrt(jnp.asarray(est_var, jnp.float32)), counts,
                        stride=1, num_samples=s_count)


def interpolation_weights(known: np.ndarray, ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-linear interpolation of a ``ny × nx`` grid from the positions ``known`` (flat indices).

    Returns ``(idx [P, 3], weights [P, 3])`` for every position P = ny·nx: its value is
    ``Σ weights · values[idx]`` with ``values`` in the order of ``known``. Inside the grid the weights are
    the barycentric coordinates in a Delaunay triangle of the known positions (which include the four
    corners); a known position gets weight 1 on itself; a grid of one row or column interpolates
    linearly along it.
    """
    py, px = np.divmod(np.arange(ny * nx), nx)
    ky, kx = np.divmod(known, nx)
    if ny == 1 or nx == 1:
        t, kt = (px, kx) if ny == 1 else (py, ky)
        hi = np.clip(np.searchsorted(kt, t), 1, len(kt) - 1) if len(kt) > 1 else np.zeros_like(t)
        lo = np.maximum(hi - 1, 0)
        span = np.maximum(kt[hi] - kt[lo], 1)
        w = np.clip((t - kt[lo]) / span, 0.0, 1.0)
        return np.stack([lo, hi, hi], 1), np.stack([1.0 - w, w, np.zeros_like(w)], 1)
    tri = Delaunay(np.stack([ky, kx], 1).astype(np.float64))
    pts = np.stack([py, px], 1).astype(np.float64)
    simplex = tri.find_simplex(pts)
    if np.any(simplex < 0):
        raise AssertionError("interpolation: a window position lies outside the known positions' hull")
    t = tri.transform[simplex]
    b = np.einsum("pij,pj->pi", t[:, :2], pts - t[:, 2])
    weights = np.clip(np.concatenate([b, 1.0 - b.sum(1, keepdims=True)], 1), 0.0, 1.0)
    idx = tri.simplices[simplex]
    pos = np.full(ny * nx, -1)
    pos[known] = np.arange(known.size)
    exact = pos >= 0                           # known positions: exactly their own value
    idx[exact] = pos[exact][:, None]
    weights[exact] = np.asarray([1.0, 0.0, 0.0])
    return idx, weights / weights.sum(1, keepdims=True)


def _scores(run: Run, stats: tuple, top: np.ndarray, cells: list, nx: int,
            weights: tuple[float, float]) -> np.ndarray:
    """Priority of each cell (module docstring), from its corners' WE and standard errors."""
    mean, _, we_se = stats                    # the ``top`` rows only
    we = weight_of_evidence(run.p0[top][None], mean, run.laplace_n, run.num_classes)
    we, we_se = np.asarray(we), np.nan_to_num(np.asarray(we_se))
    c = np.asarray(cells)
    idx = np.stack([c[:, 0] * nx + c[:, 2], c[:, 0] * nx + c[:, 3], c[:, 1] * nx + c[:, 2],
                    c[:, 1] * nx + c[:, 3]], axis=1)
    v, s = we[idx], we_se[idx]                        # [cells, 4, F]
    spread = (v.max(1) - v.min(1)).max(-1)
    size = (c[:, 1] - c[:, 0] + 1) * (c[:, 3] - c[:, 2] + 1)
    return size * (spread + weights[0] * np.abs(v).max((1, 2)) + weights[1] * s.mean(1).max(-1))


def _refine(cells: list, scores: np.ndarray, evaluated: np.ndarray, nx: int, cap: int) -> tuple[list, np.ndarray]:
    """Split the highest-priority cells while their new corners fit in ``cap``: (cells, new positions)."""
    heap = [(-float(s), i) for i, s in enumerate(scores) if _splittable(cells[i])]
    heapq.heapify(heap)
    taken = evaluated.copy()
    new: list[int] = []
    out = [c for c in cells if not _splittable(c)]
    split = set()
    while heap:
        _, i = heapq.heappop(heap)
        children, points = _split(cells[i])
        fresh = sorted({y * nx + x for y, x in points if not taken[y * nx + x]})
        if len(new) + len(fresh) > cap:
            continue
        taken[fresh] = True
        new += fresh
        out += children
        split.add(i)
    out += [c for i, c in enumerate(cells) if _splittable(c) and i not in split]
    return out, np.asarray(new, np.int64)


def _splittable(cell: tuple) -> bool:
    y0, y1, x0, x1 = cell
    return y1 - y0 >= 2 or x1 - x0 >= 2


def _split(cell: tuple) -> tuple[list, list]:
    """The (up to four) children of ``cell`` at its midpoints, and their corners."""
    y0, y1, x0, x1 = cell
    ys = [y0, (y0 + y1) // 2, y1] if y1 - y0 >= 2 else [y0, y1]
    xs = [x0, (x0 + x1) // 2, x1] if x1 - x0 >= 2 else [x0, x1]
    children = [(a, b, c, d) for a, b in zip(ys[:-1], ys[1:]) for c, d in zip(xs[:-1], xs[1:])]
    return children, [(y, x) for y in ys for x in xs]


def _degenerate_cells(cy: np.ndarray, cx: np.ndarray) -> list:
    """Cells when one axis has a single position: zero-height (or zero-width) segments."""
    ys = list(zip(cy[:-1], cy[1:])) or [(cy[0], cy[0])]
    xs = list(zip(cx[:-1], cx[1:])) or [(cx[0], cx[0])]
    return [(int(a), int(b), int(c), int(d)) for a, b in ys for c, d in xs]


def _coarse_grid(coarse_stride: Any, budget: float, ny: int, nx: int, limit: int):
    """(flat indices, row positions, column positions, stride) of the first grid.

    Default stride: the power of two nearest ``sqrt(3 / budget)`` (midpoint splits then halve cells
    evenly), widened while the grid would take more than the budget.
    Positions are ``0, c, 2c, …`` and the last one on each axis, as for ``explain(stride=c)``.
    """
    def grid(c):
        cy, cx = _axis(ny, c), _axis(nx, c)
        return (cy[:, None] * nx + cx[None, :]).ravel(), cy, cx, c

    if coarse_stride is None:
        c = 2 ** max(0, int(round(np.log2(np.sqrt(3.0 / budget)))))
        while grid(c)[0].size > limit and c < max(ny, nx):
            c += 1
        return grid(c)
    if isinstance(coarse_stride, bool) or not isinstance(coarse_stride, (int, np.integer)) or coarse_stride < 1:
        raise ValueError(f"coarse_stride: expected an int >= 1 (or None), got {coarse_stride!r}")
    return grid(int(coarse_stride))


def _axis(n: int, c: int) -> np.ndarray:
    pos = list(range(0, n, c))
    return np.asarray(pos if pos[-1] == n - 1 else pos + [n - 1], np.int64)


def _check_budget(budget: Any) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.floating)) or not 0 < budget <= 1:
        raise ValueError(f"budget: expected a fraction of the stride-1 passes in (0, 1], got {budget!r}")
    return float(budget)


def _check_focus(focus: Any, rows: int) -> int:
    if isinstance(focus, bool) or not isinstance(focus, (int, np.integer)) or focus < 1:
        raise ValueError(f"focus: expected an int >= 1, got {focus!r}")
    return int(min(focus, rows))
