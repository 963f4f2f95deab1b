"""A data set through ``explain`` and ``evaluate``: images/hour and the overhead ratio, and packing many images per step.

(1) Overhead. For a grid of windows on ``--images`` images (``--model``: EfficientNet-Lite0 with its
shipped weights by default, or a random-weight ResNet; ``--dtype``; at ``--size``², the offline sample photographs resized, constant 0 fill, S = 1, all 1000 classes):

- ``explain_batch``: the images in batches of ``--batch-images``; the first batch compiles and is not
  timed (steady state), the others are;
- ``explain`` per image: one call per image, the first not timed;
- raw: the jitted classifier on a ready batch of the engine's chunk size, best of 3.

Overhead ratio = seconds per image ÷ (its passes, the untouched image included, at the raw rate): 1.0 means
nothing but the classifier's own work. Rows: window 16 / stride 8 at ``--size`` and a stride-1 grid at
``--stride1-size`` (``--stride1-window``), the latter assembling 1000-class stride-1 maps.

(2) Evaluate. :func:`undesirable_jax.evaluate.run` with the issue's evaluation (PDA window 16, stride 8,
S = 4; occlusion; RISE; gradient × (x − r); ROAD scoring, 2 orders × 10 q × 4 draws; one seed) over
``--eval-images`` photographs at ``--size``², one image a step and ``--eval-batch`` a step, each run
twice over the same images with the second run timed (steady state). Overhead ratio = seconds per image
÷ (its forward passes, as :mod:`undesirable_jax.evaluate.passes` counts them and the results record
them, + 2 × its backward passes) at the raw rate. ``--before DIR`` also times an older checkout (one
image a step) in a child process, for a before/after in one run.

(3) Packing. ``digits_cnn`` (8×8 digits, sklearn test split), window 2, stride 2, S = 1: 16 passes an
image. Images/s of ``explain_batch`` over ``--digits`` images against one ``explain`` call per image
(target ≥ 3×), and the batched result checked against the per-image one (|Δp| ≤ 1e-6).

CPU defaults keep the whole run to about 10 minutes on 2 shared cores: 112² and 6 images for the
coarse grid (the issue asks for 20; ``--images 20`` runs them), 56² and 2 images for stride 1. GPU
rows (224², ResNet-50 bf16 and EfficientNet-Lite0, 200 images) are in ``gpu_all.py`` (part
``dataset``). ``--smoke``: tiny sizes, no HISTORY.md entry.

    python benchmarks/bench_dataset.py              # CPU, appends to HISTORY.md
    git worktree add /tmp/uj-before a0ea702 && python benchmarks/bench_dataset.py --parts evaluate \
        --before /tmp/uj-before                     # evaluate before and after issue 22's batching
    python benchmarks/bench_dataset.py --smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import numpy as np

import undesirable_jax as uj
from undesirable_jax import data, engine

from _common import block, load_model, load_note, report, table

PACKING_TARGET, OVERHEAD_TARGET = 3.0, 1.3


def photos(size: int, n: int) -> np.ndarray:
    """``n`` offline sample photographs (cycled) resized to ``size``², EfficientNet-Lite's normalisation."""
    from undesirable_jax._cli_options import sample_names

    prep = data.Preprocessor(size=(size, size), resize=None, mean=(127.0,) * 3, std=(128.0,) * 3)
    names = sample_names()
    out = [prep(data.resolve_image(names[i % len(names)], "image")[0]).image for i in range(n)]
    return np.stack(out).astype(np.float32)


def raw_rate(clf: Any, shape: tuple[int, ...], chunk: int) -> float:
    """Images/s of the jitted classifier on a ready batch of ``chunk`` images (best of 3, compile excluded)."""
    batch = jax.random.normal(jax.random.key(9), (chunk, *shape))
    probs = jax.jit(lambda c, x: c.probs(x))
    block(probs(clf, batch))
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        block(probs(clf, batch))
        best = min(best, time.perf_counter() - t0)
    return chunk / best


def timed_images(fn: Any, groups: list) -> float:
    """Seconds per image over ``groups[1:]`` (the first group compiles and is not timed)."""
    block(fn(groups[0]))
    t0 = time.perf_counter()
    for g in groups[1:]:
        block(fn(g))
    return (time.perf_counter() - t0) / sum(len(g) for g in groups[1:])


def overhead_row(clf: Any, images: np.ndarray, *, window: int, stride: int, batch: int) -> list[Any]:
    """One grid: per-image seconds of explain_batch and of explain, their overhead ratios, images/hour."""
    kw = dict(window=window, stride=stride, sampler=uj.samplers.constant(0.0), num_samples=1, key=jax.random.key(0))
    grid = uj.WindowGrid(images.shape[1], images.shape[2], window, stride)
    passes = grid.num_windows + 1
    chunk = engine.plan_chunk(None, grid.num_windows * batch, 1)
    rate = raw_rate(clf, images.shape[1:], chunk)
    ideal = passes / rate
    groups = [images[i:i + batch] for i in range(0, len(images), batch)]
    if len(groups) < 2:
        raise SystemExit(f"--images {len(images)} with --batch-images {batch}: need two batches (one compiles)")
    per_batch = timed_images(lambda g: uj.explain_batch(clf, g, **kw).evidence, groups)
    singles = [images[i:i + 1] for i in range(min(len(images), batch + 1))]
    per_image = timed_images(lambda g: uj.explain(clf, g[0], **kw).evidence, singles)
    return [f"{images.shape[1]}², window {window}, stride {stride}", len(images), batch, passes, chunk, f"{rate:,.0f}",
            f"{per_image:.2f}", f"{per_image / ideal:.3f}", f"{per_batch:.2f}", f"{per_batch / ideal:.3f}",
            f"{3600 / per_batch:,.0f}", "met" if per_batch / ideal <= OVERHEAD_TARGET else "MISSED"]


EVAL_TARGET = 1.5
EVAL_PERCENTS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 70.0, 90.0)


def eval_config(window: int, stride: int) -> Any:
    """The issue's evaluation: PDA (S = 4), occlusion, RISE, gradient × (x − r); ROAD, 2 orders × 10 q × 4 draws."""
    from undesirable_jax import evaluate as ev

    return ev.EvalConfig(model="bench", window=window, stride=stride, num_samples=4, num_seeds=1,
                         methods=("pda", "occlusion", "rise", "gradient_ref"), percents=EVAL_PERCENTS,
                         curve_steps=10, scoring_draws=4, perturbation="road")


def time_evaluate(clf: Any, images: np.ndarray, *, window: int, stride: int, batch: int, out: Path) -> float:
    """Seconds per image of :func:`undesirable_jax.evaluate.run` over ``images`` with ``batch`` images a step,
    timed on a second run over the same images into a fresh folder (the first compiles every path the
    images take: steady state). Uses only what the package had before issue 22's batching when ``batch``
    is 1, so ``--before`` can time an older checkout."""
    from undesirable_jax import evaluate as ev
    from undesirable_jax.data import Example

    config = eval_config(window, stride)
    labels = np.asarray(jax.jit(lambda c, x: c.probs(x))(clf, images)).argmax(-1)
    examples = [Example(id=f"p{i}", image=im, label=int(lab)) for i, (im, lab) in enumerate(zip(images, labels))]
    kw = dict(sampler=uj.samplers.constant(0.0), progress=False, summarize=False,
              **({} if batch == 1 else {"batch_images": batch}))
    ev.run(out / f"warm{batch}", examples, clf, config, **kw)
    t0 = time.perf_counter()
    ev.run(out / f"timed{batch}", examples, clf, config, **kw)
    return (time.perf_counter() - t0) / len(examples)


def evaluate_row(label: str, per_image: float, timed: int, batch: int, shape: tuple[int, ...], rate: float,
                 window: int, stride: int, passes: tuple[float, float]) -> list[Any]:
    """One row: seconds per image ÷ its ``passes`` (forward, backward) at the raw rate (a backward pass
    counted as two forward)."""
    fwd, bwd = passes
    ratio = per_image / ((fwd + 2 * bwd) / rate)
    return [label, f"{shape[0]}², window {window}, stride {stride}", timed, batch, f"{fwd:,.0f}", f"{bwd:,.0f}",
            f"{rate:,.0f}", f"{per_image:.1f}", f"{ratio:.3f}", f"{3600 / per_image:,.0f}",
            "met" if ratio <= EVAL_TARGET else "MISSED"]


def recorded_passes(out: Path, batch: int) -> tuple[float, float]:
    """Mean forward and backward passes an image that the timed run's result files recorded."""
    import json

    recs = [json.loads(p.read_text()) for p in sorted((out / f"timed{batch}" / "results").glob("*.json"))]
    return (float(np.mean([sum(v["build"] + v["score"] for v in r["passes"].values()) for r in recs])),
            float(np.mean([sum(v["gradient"] for v in r["passes"].values()) for r in recs])))


def before_time(before: str, args: Any, out: Path) -> float:
    """:func:`time_evaluate` with one image a step, run by a child process on the package at ``before``."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(before).resolve())}
    cmd = [sys.executable, __file__, "--child-evaluate", str(out), "--size", str(args.size), "--model", args.model,
           "--dtype", args.dtype, "--eval-images", str(args.eval_images)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"--before {before}: the child run failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def packing_row(n: int, batch: int) -> list[Any]:
    """digits_cnn, window 2, stride 2: images/s with ``batch`` images per call vs one call per image."""
    model = uj.models.load("digits_cnn")
    split = data.digits("test")
    images = np.stack([model.preprocess(split[i].image).image for i in range(n)]).astype(np.float32)
    kw = dict(window=2, stride=2, sampler=uj.samplers.constant(0.0), num_samples=1, key=jax.random.key(0))
    clf = model.classifier
    groups = [images[i:i + batch] for i in range(0, n, batch)]
    per_batch = timed_images(lambda g: uj.explain_batch(clf, g, **kw).evidence, [images[:batch]] + groups)
    per_image = timed_images(lambda g: uj.explain(clf, g[0], **kw).evidence, [images[:1]] + [images[i:i + 1]
                                                                                          for i in range(n)])
    check = uj.explain_batch(clf, images[:3], **kw)
    err = max(float(np.max(np.abs(np.asarray(check.window_probs[i]) - np.asarray(
        uj.explain(clf, images[i], **{**kw, "key": jax.random.fold_in(kw["key"], i)}).window_probs)))) for i in range(3))
    speed = per_image / per_batch
    return ["digits_cnn 8², window 2, stride 2 (16 passes)", n, batch, f"{1 / per_image:,.0f}", f"{1 / per_batch:,.0f}",
            f"{speed:.1f}", f"{err:.1e}", "met" if speed >= PACKING_TARGET and err <= 1e-6 else "MISSED"]


def evaluate_part(args: Any, notes: str) -> None:
    """The evaluate rows: one image a step, ``--eval-batch`` a step, and (``--before``) an older checkout."""
    import tempfile

    if args.before and not (Path(args.before) / "undesirable_jax" / "__init__.py").is_file():
        raise SystemExit(f"--before: {args.before!r} holds no undesirable_jax package (a checkout of this "
                         "repository, e.g. `git worktree add /tmp/uj-before a0ea702`)")
    clf, desc, _ = load_model(args.model, args.size, 3, 1000, jax.random.key(4), args.dtype)
    shape = (args.size, args.size, 3)
    rate = max(raw_rate(clf, shape, c) for c in (64, 256))   # the scoring's batch and the engine's chunk
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (1, args.eval_batch):
            t = time_evaluate(clf, photos(args.size, args.eval_images), window=16, stride=8, batch=batch,
                              out=Path(tmp))
            passes = recorded_passes(Path(tmp), batch)   # the same settings: the same passes for both rows
            rows.append(evaluate_row("now", t, args.eval_images, batch, shape, rate, 16, 8, passes))
        if args.before:   # older code records no passes; same settings and images, so the same passes
            t = before_time(args.before, args, Path(tmp) / "before")
            rows.insert(0, evaluate_row(f"before ({args.before})", t, args.eval_images, 1, shape, rate, 16, 8,
                                        passes))
    headers = ["code", f"{desc.split(' (')[0]} {args.dtype} grid", "images timed", "images a step",
               "forward passes an image", "backward passes", "raw img/s", "s/image", "overhead", "images/hour",
               f"≤ {EVAL_TARGET}"]
    report("bench_dataset: a data set through evaluate, overhead ratio = s/image ÷ (passes at the raw rate)",
           table(headers, rows), append=not args.no_append,
           notes=notes.replace("Constant 0 fill, S = 1, all 1000 classes", "PDA S = 4 (constant 0 fill), "
                               "occlusion, RISE 500 masks, gradient × (x − r); ROAD 2 orders × 10 q × 4 draws, "
                               "curve 11 steps, one seed; raw rate: best of batches 64 and 256; a backward pass "
                               "counted as two forward").replace("steady state (first batch not timed)",
                                                                  "steady state: a second run over the same images, timed"))


def child_evaluate(args: Any) -> None:
    """``--child-evaluate OUT``: print :func:`time_evaluate`'s seconds per image (one image a step)."""
    clf, _, _ = load_model(args.model, args.size, 3, 1000, jax.random.key(4), args.dtype)
    print(time_evaluate(clf, photos(args.size, args.eval_images), window=16, stride=8, batch=1,
                        out=Path(args.child_evaluate)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=112, help="EfficientNet-Lite0 input side of the window-16 row")
    p.add_argument("--images", type=int, default=6, help="images of the window-16 row (two batches at least)")
    p.add_argument("--batch-images", type=int, default=3, help="images per explain_batch call")
    p.add_argument("--model", default="efficientnet_lite0",
                   help="efficientnet_lite0 (shipped weights) or resnet18/34/50 (random weights), at --size")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16 (the classifier's compute type)")
    p.add_argument("--stride1-size", type=int, default=56, help="input side of the stride-1 row")
    p.add_argument("--stride1-window", type=int, default=8, help="window of the stride-1 row")
    p.add_argument("--stride1-images", type=int, default=2, help="images of the stride-1 row (batches of 1)")
    p.add_argument("--digits", type=int, default=256, help="digits of the packing row")
    p.add_argument("--digits-batch", type=int, default=128, help="digits per explain_batch call")
    p.add_argument("--eval-images", type=int, default=8,
                   help="images of the evaluate rows (run twice: the second run is timed); a multiple of --eval-batch")
    p.add_argument("--before", default=None,
                   help="a checkout of the package before issue 22 (e.g. `git worktree add /tmp/uj-before a0ea702`): "
                        "its evaluate is timed too, in a child process, in the same run")
    p.add_argument("--child-evaluate", default=None, help=argparse.SUPPRESS)
    p.add_argument("--eval-batch", type=int, default=4, help="images a step in the evaluate row's batched run")
    p.add_argument("--parts", nargs="+", default=["overhead", "evaluate", "packing"],
                   help="overhead, evaluate and/or packing")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, no HISTORY.md entry")
    p.add_argument("--no-append", action="store_true", help="print only")
    args = p.parse_args(argv)
    if args.child_evaluate:
        return child_evaluate(args)
    if args.smoke:
        args.size, args.images, args.batch_images, args.stride1_size = 32, 4, 2, 24
        args.digits, args.digits_batch, args.no_append = 16, 8, True
        args.eval_images, args.eval_batch = 2, 2
    if "evaluate" in args.parts and args.eval_images % args.eval_batch:
        raise SystemExit("--eval-images: must be a multiple of --eval-batch (every step the same shape)")
    notes = (f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {load_note()} at the end. Constant 0 fill, "
             f"S = 1, all 1000 classes; steady state (first batch not timed).")
    if "overhead" in args.parts:
        clf, desc, _ = load_model(args.model, args.size, 3, 1000, jax.random.key(4), args.dtype)
        rows = [overhead_row(clf, photos(args.size, args.images), window=16, stride=8, batch=args.batch_images)]
        if args.stride1_size != args.size:
            clf, _, _ = load_model(args.model, args.stride1_size, 3, 1000, jax.random.key(4), args.dtype)
        rows.append(overhead_row(clf, photos(args.stride1_size, args.stride1_images + 1), window=args.stride1_window,
                                 stride=1, batch=1))
        headers = [f"{desc.split(' (')[0]} {args.dtype} grid", "images", "images a batch", "passes an image", "chunk", "raw img/s",
                   "explain s/image", "explain overhead", "explain_batch s/image", "explain_batch overhead",
                   "images/hour (batch)", f"≤ {OVERHEAD_TARGET}"]
        report("bench_dataset: a data set through explain, overhead ratio = s/image ÷ (passes at the raw rate)",
               table(headers, rows), append=not args.no_append, notes=notes)
    if "evaluate" in args.parts:
        evaluate_part(args, notes)
    if "packing" in args.parts:
        headers = ["model, grid", "images", "images a call", "img/s one call each", "img/s explain_batch",
                   "speed-up", "max |Δp| batch vs one", f"≥ {PACKING_TARGET}×"]
        report("bench_dataset: many images per step (explain_batch) vs one explain call per image",
               table(headers, [packing_row(args.digits, args.digits_batch)]), append=not args.no_append,
               notes=f"{jax.devices()[0].device_kind}, {load_note()} at the end.")


if __name__ == "__main__":
    main()
