"""Fine maps from a fraction of the passes: adaptive refinement against uniform grids, on held-out images.

The split is fixed here, before any tuning, and nothing below may change it:

- digits_cnn: the digits test set in its order; images 0–4 tune, the next ``--heldout`` (default 30)
  are held out.
- lfw_cnn: the LFW test set in its order (40 images); images 0–4 tune, the next ``--heldout``
  (default 30) are held out.
- efficientnet_lite0: the photograph set. View 0 of a photograph is the 112² centre crop after
  resizing its short side to 128; views 1–4 are the four 112² quadrants of the 224² centre crop after
  resizing the short side to 224. The set lists view 0 of the seven offline photographs (chelsea,
  coffee, astronaut, rocket, china, flower, grace_hopper), then view 1 of each, …, view 4 (35 images);
  images 0–4 tune, the next ``--heldout`` are held out (an exhaustive stride-1 run is 11,025 passes
  of EfficientNet-Lite0 per image, so the default is 8: smaller than the 20 asked for).

Every method is scored against the exhaustive ``explain(stride=1)`` map of the same image and key
(fill: blur, S = 1, so the comparison measures the windows, not sampling noise), on the top-1 class t:

- passes: forward passes used ÷ the stride-1 passes (positions × S);
- ρ R_t, ρ U_t: Spearman rank correlation of the signed map R_t and of U_t = max(0, −R_t) (average ranks;
  nan, and skipped by the medians, where the exhaustive U_t is constant);
- IoU: intersection over union of the top 5 % pixels of U_t (ties broken by lower pixel index); nan,
  and skipped, like ρ U_t, where the exhaustive U_t is constant.

Methods, each a stride-1 map from the windows it evaluates (positions of the stride-1 grid, so an
evaluated window has exactly its exhaustive value):

- ``uniform c (interp)``: the grid of stride c (``0, c, 2c, …`` and the last position on each axis),
  window probabilities interpolated to every stride-1 position (``linear`` or ``cubic``), then
  assembled as ``explain`` does (:func:`undesirable_jax.adaptive.explain_uniform`);
- ``refine (rule)``: the quadtree of :func:`undesirable_jax.explain_adaptive` at the budget that equals the
  uniform grid's passes (equal passes, same curve), with the priority rule ``rule``.

With a deterministic fill, the maps of every method follow from the exhaustive window probabilities
and the positions a method evaluates (:mod:`undesirable_jax.adaptive` is written so that an oracle can
stand in for the classifier); ``--check`` images per model are also run for real through the public
functions, which must give the same map (asserted), and their wall times are reported.

    nice -n 5 .venv/bin/python benchmarks/bench_adaptive.py --split heldout         # the reported numbers
    .venv/bin/python benchmarks/bench_adaptive.py --split tuning --no-append         # for tuning only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import numpy as np
from scipy.stats import spearmanr

import undesirable_jax as uj
from undesirable_jax import adaptive, data, models
from undesirable_jax.data.preprocess import Preprocessor
from undesirable_jax.evidence import pixel_evidence
from undesirable_jax.windows import WindowGrid

from _common import block, load_note, report, table

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "china", "flower", "grace_hopper")
TUNING = 5          # the first five images of each set tune; never reported
SETTINGS = {  # model: (window, blur sigma in pixels, S, default held-out count)
    "digits_cnn": (2, 1.0, 1, 30),
    "lfw_cnn": (4, 2.0, 1, 30),
    "efficientnet_lite0": (8, 4.0, 1, 8),
}
STRIDES = (2, 3, 4, 5, 6, 7, 8)
INTERPOLATIONS = ("linear", "cubic")
RULES = adaptive.RULES
KEEP_ROWS = 8       # rows of the exhaustive run kept in the cache: the top classes (target and focus)
FOCUS = 4           # explain_adaptive's default focus
CHECK_STRIDE = 4    # the equal-pass point run for real (wall times, maps asserted)
# Chosen on the tuning split (2026-12-07, lfw_cnn and digits_cnn images 0–4; best mean of the median IoU
# over the strides in each family): the variants whose held-out numbers decide (issue 23's rule).
CHOSEN = ("uniform linear", "refine evidence linear")


def photo_set() -> list[np.ndarray]:
    """The 35 photograph images in the order of the module docstring (uint8 → EfficientNet input)."""
    view0 = Preprocessor(size=(112, 112), resize=128, mean=(127.0,) * 3, std=(128.0,) * 3)
    big = Preprocessor(size=(224, 224), resize=224, mean=(127.0,) * 3, std=(128.0,) * 3)
    raws = [data.images.sample_image(p) for p in PHOTOS]
    out = [np.asarray(view0(r).image, np.float32) for r in raws]
    for qy, qx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        for r in raws:
            x = np.asarray(big(r).image, np.float32)
            out.append(x[112 * qy:112 * qy + 112, 112 * qx:112 * qx + 112])
    return out


def image_set(name: str, stop: int):
    """(classifier, [images 0 … stop−1 of the model's set]) — the set order of the module docstring."""
    loaded = models.load(name)
    if name == "efficientnet_lite0":
        return loaded.classifier, photo_set()[:stop]
    dataset = {"digits_cnn": data.datasets.digits, "lfw_cnn": data.datasets.lfw}[name]
    examples = list(dataset("test"))[:stop]
    return loaded.classifier, [np.asarray(loaded.preprocess(ex.image).image, np.float32) for ex in examples]


def split_indices(name: str, split: str, heldout: list) -> range:
    counts = dict(item.split("=") for item in heldout)
    n = int(counts.get(name, SETTINGS[name][3]))
    return range(TUNING) if split == "tuning" else range(TUNING, TUNING + n)


def reference(clf, image, window, sampler, key, cache: Path | None, tag: str) -> dict:
    """The exhaustive stride-1 run's top rows (window probabilities, p(c|x)), cached on disk."""
    path = None if cache is None else cache / f"{tag}.npz"
    if path is not None and path.exists():
        return dict(np.load(path))
    t0 = time.perf_counter()
    full = block(uj.explain(clf, image, window=window, stride=1, sampler=sampler, num_samples=1, key=key))
    wall = time.perf_counter() - t0
    probs = np.asarray(full.probs)
    rows = np.lexsort((np.arange(probs.size), -probs))[:KEEP_ROWS]   # probability descending, lower id first
    ref = dict(rows=rows, p0=probs[rows], window_probs=np.asarray(full.window_probs)[rows],
               evidence_t=np.asarray(full.evidence[rows[0]]), num_classes=np.int64(full.num_classes),
               laplace_n=np.float64(full.laplace_n), wall=np.float64(wall))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **ref)
    return ref


def top_set(u: np.ndarray, frac: float = 0.05) -> set:
    k = max(1, int(np.ceil(frac * u.size)))
    order = np.lexsort((np.arange(u.size), -u.ravel()))  # value descending, lower index first
    return set(order[:k].tolist())


def score(ref_r: np.ndarray, r: np.ndarray) -> dict:
    u_ref, u = np.maximum(0, -ref_r), np.maximum(0, -r)
    a, b = top_set(u_ref), top_set(u)
    const = np.ptp(u_ref) == 0
    return {"rho_u": np.nan if const else float(spearmanr(u_ref.ravel(), u.ravel())[0]),
            "rho_r": float(spearmanr(ref_r.ravel(), r.ravel())[0]), "iou": np.nan if const else len(a & b) / len(a | b)}


def target_map(ref: dict, grid: WindowGrid, wp_t: np.ndarray) -> np.ndarray:
    """R_t ``[H, W]`` from the target's window probabilities ``[nY, nX]``, assembled as ``explain`` does."""
    ev, _ = pixel_evidence(grid, ref["p0"][:1, None, None], wp_t[None].astype(np.float32), float(ref["laplace_n"]),
                           int(ref["num_classes"]))
    return np.asarray(ev[0])


def oracle(ref: dict):
    """A probe for :func:`adaptive.refine_positions` that looks the focus classes' WE up in the exhaustive run."""
    wp, lap, k = ref["window_probs"], float(ref["laplace_n"]), int(ref["num_classes"])
    f = min(FOCUS, wp.shape[0])
    we = np.asarray(uj.evidence.weight_of_evidence(ref["p0"][:f, None], wp[:f].reshape(f, -1), lap, k)).T
    return lambda new, evaluated: (we, np.zeros_like(we))   # blur: no standard error


def simulated_maps(ref: dict, grid: WindowGrid, c: int) -> dict:
    """R_t of the two ``CHOSEN`` methods at stride ``c``'s passes, and the refinement's positions."""
    ny, nx = grid.shape
    wp, lap, k = ref["window_probs"], float(ref["laplace_n"]), int(ref["num_classes"])
    cy, cx = adaptive._axis(ny, c), adaptive._axis(nx, c)
    fine = adaptive.interpolate_grid(wp[:1][:, cy[:, None], cx[None, :]].astype(np.float64), cy, cx, ny, nx,
                                     "linear", "probability", laplace_n=lap, num_classes=k)
    mask = adaptive.refine_positions(oracle(ref), ny, nx, cy.size * cx.size / (ny * nx), coarse_stride=None,
                                     rule="evidence", weights=(1.0, 2.0))
    done = np.flatnonzero(mask)
    est = adaptive.scatter_interpolate(wp[0].reshape(-1)[done][:, None].astype(np.float64), done, ny, nx, "linear")
    return {CHOSEN[0]: target_map(ref, grid, fine[0]), CHOSEN[1]: target_map(ref, grid, est[:, 0].reshape(ny, nx)),
            "positions": mask.reshape(ny, nx)}


def simulate(ref: dict, grid: WindowGrid) -> dict:
    """{(method, stride c): (passes fraction, scores)} for one image, from its exhaustive window probabilities."""
    ny, nx = grid.shape
    wp, ref_r = ref["window_probs"], ref["evidence_t"]
    lap, k = float(ref["laplace_n"]), int(ref["num_classes"])
    probe = oracle(ref)
    out, seen = {}, set()
    for c in STRIDES:
        cy, cx = adaptive._axis(ny, c), adaptive._axis(nx, c)
        if (cy.size, cx.size) in seen:   # the same number of positions as a finer stride: skip
            continue
        seen.add((cy.size, cx.size))
        frac = cy.size * cx.size / (ny * nx)
        for interp, space in (("linear", "probability"), ("cubic", "probability"), ("cubic", "log-odds")):
            fine = adaptive.interpolate_grid(wp[:1][:, cy[:, None], cx[None, :]].astype(np.float64), cy, cx, ny, nx,
                                             interp, space, laplace_n=lap, num_classes=k)
            name = f"uniform {interp}" + (" log-odds" if space == "log-odds" else "")
            out[(name, c)] = (frac, score(ref_r, target_map(ref, grid, fine[0])))
        for rule in RULES:
            done = np.flatnonzero(adaptive.refine_positions(probe, ny, nx, frac, coarse_stride=None, rule=rule,
                                                            weights=(1.0, 2.0)))
            assert done.size <= cy.size * cx.size
            for interp in INTERPOLATIONS:
                est = adaptive.scatter_interpolate(wp[0].reshape(-1)[done][:, None].astype(np.float64), done, ny, nx,
                                                   interp)
                out[(f"refine {rule} {interp}", c)] = (done.size / (ny * nx),
                                                       score(ref_r, target_map(ref, grid, est[:, 0].reshape(ny, nx))))
    return out


def check_real(clf, image, window, sampler, key, ref: dict, grid: WindowGrid) -> dict:
    """Run the public functions at stride ``CHECK_STRIDE``'s passes; assert they give the simulated maps; walls."""
    ny, nx = grid.shape
    kw = dict(window=window, sampler=sampler, num_samples=1, key=key)
    frac = adaptive._axis(ny, CHECK_STRIDE).size * adaptive._axis(nx, CHECK_STRIDE).size / (ny * nx)
    t = int(ref["rows"][0])
    sim = simulated_maps(ref, grid, CHECK_STRIDE)
    walls = {}
    for name, call in ((CHOSEN[0], lambda: uj.explain_uniform(clf, image, stride=CHECK_STRIDE,
                                                             interpolation="linear", **kw)),
                       (CHOSEN[1], lambda: uj.explain_adaptive(clf, image, budget=frac, refine=True,
                                                               interpolation="linear", **kw))):
        t0 = time.perf_counter()
        e = block(call())
        wall = time.perf_counter() - t0
        wp = np.asarray(e.window_probs[e.row(t)])
        done = np.asarray(e.window_samples) > 0
        np.testing.assert_allclose(wp[done], ref["window_probs"][0][done], rtol=1e-5, atol=1e-6, err_msg=name)
        same = bool(np.array_equal(done, sim["positions"])) if name == CHOSEN[1] else True
        diff = float(np.max(np.abs(np.asarray(e.evidence[e.row(t)]) - sim[name])))
        if name == CHOSEN[0]:
            assert diff < 1e-2, (name, diff)   # float32 chunk-size noise, amplified by log-odds near p = 1
        walls[name] = (wall, same, diff)
    return walls


def decide(per: list) -> list:
    """Rows (stride, passes, median differences refine − uniform, verdict) for the ``CHOSEN`` pair."""
    rows = []
    for method, c in per[0]:
        if method != CHOSEN[0] or (CHOSEN[1], c) not in per[0]:
            continue
        med = lambda m, key: float(np.nanmedian([p[(m, c)][1][key] for p in per]))  # noqa: E731
        d = {k: med(CHOSEN[1], k) - med(CHOSEN[0], k) for k in ("rho_r", "rho_u", "iou")}
        fr = "/".join(f"{np.median([p[(m, c)][0] for p in per]):.3f}" for m in CHOSEN)
        wins = d["iou"] >= 0.05 and d["rho_r"] >= 0 and d["rho_u"] >= 0
        rows.append([c, fr, f"{d['rho_r']:+.3f}", f"{d['rho_u']:+.3f}", f"{d['iou']:+.3f}", "yes" if wins else "no"])
    return rows


def compare(name: str, args, clf, images: list, idx: list, refs: list, key: jax.Array) -> dict:
    """Simulated comparison over the split's images, real runs on the first ``--check``; prints and appends."""
    window, sigma, _, _ = SETTINGS[name]
    h, w = images[0].shape[:2]
    grid = WindowGrid(h, w, window, 1)
    per = [simulate(ref, grid) for ref in refs]
    walls = [check_real(clf, images[j], window, uj.samplers.blur(sigma), jax.random.fold_in(key, idx[j]), refs[j], grid)
             for j in range(min(args.check, len(images)))]
    curves, rows = {}, []
    for method, c in per[0]:
        fr = [p[(method, c)][0] for p in per]
        med = {m: float(np.nanmedian([p[(method, c)][1][m] for p in per])) for m in ("rho_r", "rho_u", "iou")}
        curves.setdefault(method, []).append((float(np.median(fr)), med))
        rows.append([method, c, f"{np.median(fr):.3f}", f"{med['rho_r']:.3f}", f"{med['rho_u']:.3f}", f"{med['iou']:.3f}"])
    rows.sort(key=lambda r: (r[1], r[0]))
    verdicts = decide(per)
    wall_rows = [["exhaustive stride 1", "1.000", f"{np.median([float(r['wall']) for r in refs[:len(walls)]]):.2f}",
                  "(reference)"]]
    frac = adaptive._axis(grid.shape[0], CHECK_STRIDE).size * adaptive._axis(grid.shape[1], CHECK_STRIDE).size / grid.num_windows
    wall_rows += [[m, f"{frac:.3f}", f"{np.median([wl[m][0] for wl in walls]):.2f}",
                   f"positions {'same' if all(wl[m][1] for wl in walls) else 'DIFFER'}, "
                   f"max |Δ R_t| {max(wl[m][2] for wl in walls):.1e}"] for m in CHOSEN if walls]
    body = (f"{args.split} images {idx[0]}–{idx[-1]} of the set (n = {len(idx)}; tuning images 0–{TUNING - 1} "
            f"{'are these' if args.split == 'tuning' else 'not included'}); window {window}, blur σ {sigma}, S = 1. "
            f"Medians over images:\n\n"
            + table(["method", "stride c (equal passes)", "passes ÷ stride-1", "ρ R_t", "ρ U_t", "IoU top 5 % U_t"], rows)
            + f"\n\nDecision (issue 23): refinement wins at a budget when its median IoU is at least 0.05 above the "
              f"uniform grid's with neither median ρ lower; {CHOSEN[1]} − {CHOSEN[0]} (chosen on the tuning split):\n\n"
            + table(["stride c", "passes ÷ stride-1 (uniform / refine)", "Δ ρ R_t", "Δ ρ U_t", "Δ IoU", "refine wins"],
                    verdicts)
            + f"\n\nWall time (s, compilation included), median over the first {len(walls)} image(s), real runs whose evaluated windows "
              f"were asserted equal to the exhaustive run's:\n\n" + table(["method", "passes ÷ stride-1", "wall s", "real run ÷ simulated"], wall_rows))
    report(f"bench_adaptive: uniform grids vs adaptive refinement at equal passes ({name}, {args.split})", body,
           append=not args.no_append, notes=load_note())
    return curves


def fidelity_figure(curves: dict, path: Path, split: str) -> None:
    """One panel pair per model: median IoU (top 5 % U_t) and ρ U_t against passes, one line per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from undesirable_jax.visualize import save_figure

    fig = Figure(figsize=(4.2 * len(curves), 6.4))
    FigureCanvasAgg(fig)
    for j, (name, by_method) in enumerate(curves.items()):
        for i, (metric, label) in enumerate((("iou", "IoU top 5 % U_t"), ("rho_u", "Spearman ρ U_t"))):
            ax = fig.add_subplot(2, len(curves), i * len(curves) + j + 1)
            for method, pts in sorted(by_method.items()):
                pts = sorted(pts)
                ax.plot([p[0] for p in pts], [p[1][metric] for p in pts], marker="o", ms=3,
                        ls="-" if method.startswith("uniform") else "--", label=method)
            ax.set_xscale("log")
            ax.set_xlabel("passes ÷ stride-1 passes")
            ax.set_ylabel(label)
            ax.set_title(f"{name} ({split}, median)", fontsize=9)
            ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    print(f"figure: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--split", choices=("tuning", "heldout"), default="heldout")
    p.add_argument("--heldout", nargs="+", default=[], metavar="MODEL=N",
                   help="held-out images of a model, e.g. efficientnet_lite0=6 (default: SETTINGS); always the "
                        "first N of the held-out part of the set")
    p.add_argument("--check", type=int, default=2, help="images per model also run for real (maps asserted, wall)")
    p.add_argument("--cache", type=Path, default=None, help="folder caching the exhaustive references (npz)")
    p.add_argument("--references-only", action="store_true", help="compute (and cache) the references, stop")
    p.add_argument("--figure", type=Path, default=None, help="PNG: fidelity against passes per model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-append", action="store_true", help="print only; do not append to HISTORY.md")
    args = p.parse_args()
    key = jax.random.key(args.seed)
    curves = {}
    for name in args.models:
        curves[name] = run_model(name, args, key)
    if args.figure is not None and not args.references_only:
        fidelity_figure(curves, args.figure, args.split)


def run_model(name: str, args: argparse.Namespace, key: jax.Array):
    idx = split_indices(name, args.split, args.heldout)
    clf, images = image_set(name, idx.stop)
    window, sigma, s, _ = SETTINGS[name]
    sampler = uj.samplers.blur(sigma)
    refs = []
    for i in idx:
        refs.append(reference(clf, images[i], window, sampler, jax.random.fold_in(key, i), args.cache, f"{name}-{i}"))
        print(f"{name} image {i}: reference {float(refs[-1]['wall']):.1f} s", flush=True)
    if args.references_only:
        return None
    return compare(name, args, clf, [images[i] for i in idx], list(idx), refs, key)


if __name__ == "__main__":
    main()
