"""Shared helpers for the benchmark scripts: timing, a small CNN, markdown tables, HISTORY.md entries.

Every script prints its table and (unless ``--no-append``) appends it to ``benchmarks/HISTORY.md``
with the date, machine, device, library versions and the exact command line.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import importlib.metadata as _md
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

HISTORY = Path(__file__).resolve().parent / "HISTORY.md"
PDA_PASSES = (224 - 10 + 1) ** 2 * 10  # 462 250: 224², window 10, stride 1, S = 10
TORCH_HINT = ("torch and captum are optional benchmark dependencies; install the CPU build with\n"
              "  .venv/bin/pip install torch==2.13.0 captum==0.9.0\n"
              "(keep the pin: plain `pip install torch` pulls a multi-GB CUDA build)")


# ---------------------------------------------------------------- timing

# block and wall_cpu are the package's own (undesirable_jax.throughput), shared with the CLI's benchmark.
from undesirable_jax.throughput import block, wall_cpu  # noqa: E402


def best_time(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Best wall-clock seconds of ``fn()`` (results blocked) over ``repeats`` after ``warmup`` calls."""
    for _ in range(warmup):
        block(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def load_note() -> str:
    """The 1-minute load average against the core count (other processes skew wall times)."""
    try:
        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return "load average unknown"


# ---------------------------------------------------------------- models

def small_cnn(num_classes: int = 10, widths: Sequence[int] = (16, 32, 64)):
    """A small Flax CNN: 3×3 convs (stride 1, then 2, 2; symmetric padding 1) + ReLU, mean pool, dense.

    Symmetric explicit padding (not "SAME") so the same weights give the same outputs in PyTorch.
    """
    import flax.linen as nn

    class SmallCNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i, w in enumerate(widths):
                x = nn.Conv(w, (3, 3), strides=(1, 1) if i == 0 else (2, 2), padding=((1, 1), (1, 1)))(x)
                x = nn.relu(x)
            x = x.mean(axis=(1, 2))
            return nn.Dense(num_classes)(x)

    return SmallCNN()


def cast_classifier(clf, dtype: str):
    """The classifier computing in ``dtype`` (inputs and parameters cast inside; probs stay float32)."""
    import undesirable_jax as uj

    if dtype == "float32":
        return clf
    dt = jnp.dtype(dtype)
    if clf.params is None:
        return uj.from_function(_CastFn(clf.fn, dt, with_params=False), outputs=clf.outputs)
    return uj.from_function(_CastFn(clf.fn, dt), clf.params, outputs=clf.outputs)


class _CastFn:
    """Hashable wrapper (static field of the Classifier pytree) that casts params and inputs."""

    def __init__(self, fn: Callable, dtype: Any, with_params: bool = True):
        self.fn, self.dtype, self.with_params = fn, dtype, with_params

    def __call__(self, *args):
        if not self.with_params:
            return self.fn(args[0].astype(self.dtype))
        params, images = args
        p = jax.tree_util.tree_map(
            lambda a: a.astype(self.dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
        return self.fn(p, images.astype(self.dtype))

    def __hash__(self):
        return hash((self.fn, str(self.dtype), self.with_params))

    def __eq__(self, other):
        return (isinstance(other, _CastFn) and self.fn == other.fn and self.dtype == other.dtype
                and self.with_params == other.with_params)


def random_resnet(depth: int, key: jax.Array, num_classes: int, size: int) -> dict:
    """Random ResNet variables (``undesirable_jax.models.resnet.init``) with the final layer scaled so
    logits on a random image have standard deviation ≤ 1: unscaled, softmax is one-hot and every
    probability difference is exactly 0, which would make the benchmarks' checks vacuous."""
    from undesirable_jax.models import resnet as R

    variables = R.init(depth, key, num_classes)
    probe = np.asarray(R.ResNetApply(depth, num_classes)(
        variables, jax.random.normal(jax.random.fold_in(key, 1), (2, size, size, 3))))
    scale = 1.0 / max(1.0, float(probe.std()))
    fc = {k: v * scale for k, v in variables["params"]["fc"].items()}
    return {**variables, "params": {**variables["params"], "fc": fc}}


def load_model(name: str, size: int, channels: int, num_classes: int, key: jax.Array,
               dtype: str = "float32"):
    """``(classifier, description, (H, W, C))`` for ``name`` computing in ``dtype``.

    ``cnn``: the small CNN above at ``size``² × ``channels`` with random weights. ``resnet18/34/50``:
    ``undesirable_jax.models.resnet`` with random weights at ``size``² × 3 (its own bf16 mode).
    ``efficientnet_lite0``, ``digits_cnn``, ``lfw_cnn``: ``undesirable_jax.models.load`` (real weights;
    EfficientNet at ``size``² × 3, the small CNNs at their fixed input shape).
    """
    import undesirable_jax as uj

    if name == "cnn":
        module = small_cnn(num_classes)
        variables = module.init(key, jnp.zeros((1, size, size, channels)))
        clf = cast_classifier(uj.flax_linen(module, variables), dtype)
        return clf, f"small CNN 16-32-64 ({size}²×{channels}, K={num_classes})", (size, size, channels)
    try:
        from undesirable_jax import models
    except ImportError as e:
        raise SystemExit(f"--model {name}: undesirable_jax.models is not available ({e}); use cnn")
    if name.startswith("resnet"):
        depth = int(name[len("resnet"):])
        variables = random_resnet(depth, key, num_classes, size)
        clf = uj.from_function(models.resnet.ResNetApply(depth, num_classes, dtype), variables)
        return clf, f"ResNet-{depth}, random weights ({size}²×3, K={num_classes})", (size, size, 3)
    loaded = models.load(name)
    shape = tuple(loaded.input_shape)
    if name == "efficientnet_lite0":
        shape = (size, size, 3)
    desc = f"{name} ({shape[0]}²×{shape[2]}, K={loaded.num_classes})"
    return cast_classifier(loaded.classifier, dtype), desc, shape


# ---------------------------------------------------------------- reporting

def versions(extra: Sequence[str] = ()) -> str:
    """``python 3.11.7, jax 0.x, jaxlib …`` for the packages that shaped the numbers."""
    parts = [f"python {platform.python_version()}"]
    for pkg in ("jax", "jaxlib", "flax", "numpy", *extra):
        try:
            parts.append(f"{pkg} {_md.version(pkg)}")
        except _md.PackageNotFoundError:
            parts.append(f"{pkg} (not installed)")
    return ", ".join(parts)


def machine() -> str:
    """CPU model name and core count (from lscpu), e.g. ``AMD EPYC, 2 cores``."""
    model, cores = platform.processor() or "unknown CPU", os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{model}, {cores} cores"


def device_name() -> str:
    """The first JAX device, e.g. ``cpu (TFRT_CPU_0)`` or ``gpu NVIDIA H200``."""
    d = jax.devices()[0]
    return f"{d.platform} ({getattr(d, 'device_kind', str(d))})"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; floats get 4 significant digits, big numbers thousands separators."""

    def fmt(v):
        if isinstance(v, (float, np.floating)):
            if v != v:
                return "n/a"
            if abs(v) >= 1000:
                return f"{v:,.0f}"
            return f"{v:.4g}"
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """The exact command, as typed from the repository root."""
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])


def append_results(title: str, body: str, *, extra_versions: Sequence[str] = (), notes: str = "",
                   path: Path = HISTORY) -> None:
    """Append one entry (metadata + ``body``) to HISTORY.md (append-only, under a file lock)."""
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    entry = [f"\n## {title}\n",
             f"- date: {when}",
             f"- machine: {machine()}",
             f"- device: {device_name()}",
             f"- versions: {versions(extra_versions)}",
             f"- command: `{command_line()}`", ""]
    entry.append(body.rstrip() + "\n")
    if notes:
        entry.append(notes.rstrip() + "\n")
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write("\n".join(entry))
        fcntl.flock(f, fcntl.LOCK_UN)


def report(title: str, body: str, *, append: bool, extra_versions: Sequence[str] = (), notes: str = "") -> None:
    """Print ``body`` (and notes); append to HISTORY.md when ``append``."""
    print(f"\n### {title}\n\n{body}\n")
    if notes:
        print(notes)
    if append:
        append_results(title, body, extra_versions=extra_versions, notes=notes)
        print(f"(appended to {HISTORY})")
