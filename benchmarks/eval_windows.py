"""Window sweep: PDA's U_t at several window sizes, and their average, scored independently with ROAD.

    .venv/bin/python benchmarks/eval_windows.py --set digits     # windows 1-4, held-out digits + corruptions
    .venv/bin/python benchmarks/eval_windows.py --set lfw        # windows 2-6, held-out lfw + corruptions

Images: ``--limit`` L of ``<set>+corrupt`` (the test split, then its noisy, blurred and occluded copies,
in that order) at the evenly spaced positions ``round(linspace(0, N − 1, L))``, so clean and every
corruption get about L/4 images each (all N when L ≥ N).
Per image: PDA (stride 1, a conditional Gaussian fitted per window size on the training split) builds
−R_t for every window size from its own build key; ``avg`` is :func:`undesirable_jax.evaluate.methods.
average_windows` of all sizes (each map scaled to max |value| 1 first); ``random`` is the null. All are
scored by :func:`undesirable_jax.evaluate.runner.score_maps` (ROAD, draws from the score stream). The
table gives U_t on its own support (removal gain Δp(t) at each q, its mean gain over its own curve) and
the full signed order −R_t (MoRF−LeRF area), as means over source images (clusters: a digit and its
corrupted copies are one unit) with t intervals, and each map's cluster-paired difference against random
(cluster bootstrap CI, d_z, Wilcoxon p on cluster means, Holm over the maps × both areas).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from undesirable_jax import data, models  # noqa: E402
from undesirable_jax import evaluate as ev  # noqa: E402
from undesirable_jax.conditional import conditional_gaussian  # noqa: E402
from undesirable_jax.evaluate import methods, runner, stats, summary  # noqa: E402
from undesirable_jax.evaluate.keys import stream_key  # noqa: E402

SETS = {"digits": (1, 2, 3, 4), "lfw": (2, 3, 4, 5, 6)}


def image_scores(model, samplers, config, ex, prep, seed_count):
    """Per seed, the scores of every window's map, the average and random for one example."""
    img = jax.numpy.asarray(prep(ex.image))
    probs = np.asarray(model.classifier.probs(img[None])[0])
    t = int(ex.label)
    c = int(np.lexsort((np.arange(probs.size), -np.where(np.arange(probs.size) == t, -np.inf, probs)))[0])
    ctx = methods.BuildContext(model.classifier, img, t, c, config, samplers[config.window])
    seeds = []
    for r in range(seed_count):
        key = stream_key(config.seed, "build", ex.id, r)
        maps = {}
        for w, sampler in samplers.items():
            wctx = dataclasses.replace(ctx, config=dataclasses.replace(config, window=w), sampler=sampler)
            maps[f"pda_w{w}"] = dataclasses.replace(methods.BUILDERS["pda"](wctx, jax.random.fold_in(key, w)), own=None)
        maps["avg"] = methods.average_windows(list(maps.values()))
        maps["random"] = methods.BUILDERS["random"](ctx, jax.random.fold_in(key, 1000))
        seeds.append(runner.score_maps(ctx, maps, t, ex.id, r))
    return {"p_target": float(probs[t]), "prediction": int(probs.argmax()), "label": t, "seeds": seeds,
            "cluster": ex.cluster or ex.id}


def table(results, names, percents):
    """Per map: U_t on its own support (Δp(t) at each q, mean gain over its curve) and the full signed
    order −R_t (MoRF − LeRF area), cluster means [t 95 % CI over source images]; each map against random
    on ``ut_area`` and ``area_between``, cluster-paired (Wilcoxon on cluster means, d_z), Holm over those."""
    clusters = [r["cluster"] for r in results]
    cols = {(n, m): [summary.per_image(r, n, m) for r in results] for n in names
            for m in ("ut_gain", "ut_area", "area_between")}

    def cell(values):
        m, lo, hi, _ = summary.cluster_mean_ci(values, clusters)
        return summary._cell({"mean": m, "ci_low": lo, "ci_high": hi})

    rows = {}
    for metric in ("ut_area", "area_between"):
        scores = {n: np.array([float(v) for v in cols[(n, metric)]]) for n in names if n != "random"}
        family = [(n, "random") for n in scores]
        for row in stats.paired_table(scores, nulls={"random": np.array([float(v) for v in cols[("random", metric)]])},
                                      clusters=clusters, family=family):
            if row.b == "random":
                rows[(row.a, metric)] = row
    head = ("| map | " + " | ".join(f"U_t Δp(t) q = {q:g}%" for q in percents)
            + " | U_t mean gain over its curve | −R_t MoRF−LeRF area | U_t area − random (d_z, p Holm) | "
            "−R_t area − random (d_z, p Holm) |")
    lines = [head, "|---" * (len(percents) + 5) + "|"]
    for n in names:
        cells = [cell([float(v[i]) for v in cols[(n, "ut_gain")]]) for i in range(len(percents))]
        vs = []
        for metric in ("ut_area", "area_between"):
            row = rows.get((n, metric))
            vs.append("—" if row is None else
                      f"{row.mean:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}] ({row.d_z:+.2f}, {row.p_holm:.2g})")
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {cell([float(v) for v in cols[(n, 'ut_area')]])} | "
                     f"{cell([float(v) for v in cols[(n, 'area_between')]])} | " + " | ".join(vs) + " |")
    n_clusters = len(set(clusters))
    return (f"Unit: the source image (n = {n_clusters} clusters, {len(results)} images); Holm family: every map "
            f"against random on both areas (m = {2 * (len(names) - 1)}).\n\n" + "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=tuple(SETS), default="digits")
    p.add_argument("--limit", type=int, default=400, help="images: LIMIT evenly spaced positions of <set>+corrupt (clean, noise, blur, occlusion)")
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    model = models.load(f"{args.set}_cnn")

    def prep(raw):
        return np.asarray(model.preprocess(raw).image, np.float32)

    loader = getattr(data, args.set)
    ds = data.corrupted(loader("test"), data.CORRUPTIONS[args.set])
    idx = np.linspace(0, len(ds) - 1, min(args.limit, len(ds))).round().astype(int)    # clean and corrupted
    train = np.stack([prep(ex.image) for ex in loader("train")])
    samplers = {w: conditional_gaussian(train, window=w, key=jax.random.key(w)) for w in SETS[args.set]}
    config = ev.EvalConfig(model=f"{args.set}_cnn", window=SETS[args.set][0], stride=1, num_samples=args.samples,
                           methods=("pda", "random"), scoring_draws=args.draws, num_seeds=args.seeds)
    t0 = time.perf_counter()
    results = [image_scores(model, samplers, config, ds[int(i)], prep, args.seeds) for i in idx]
    wall = time.perf_counter() - t0
    names = [f"pda_w{w}" for w in SETS[args.set]] + ["avg", "random"]
    body = (f"{len(results)} images of {args.set}+corrupt (evenly spaced over clean and corrupted; "
            f"{sum(r['prediction'] != r['label'] for r in results)} misclassified), PDA stride 1, "
            f"{args.samples} samples, conditional Gaussian per window; scoring {config.scoring().describe()}, "
            f"{args.draws} draws, {args.seeds} seed(s). Mean [95% CI].\n\n" + table(results, names, config.percents))
    notes = f"Wall {wall:.0f} s ({_common.load_note()})."
    _common.report(f"Window sweep: PDA U_t on {args.set}+corrupt, windows {SETS[args.set]} and their average",
                   body, append=not args.no_append, notes=notes)


if __name__ == "__main__":
    main()
