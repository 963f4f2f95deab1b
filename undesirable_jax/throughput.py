"""Engine throughput: perturbed images per second through ``explain`` against the raw classifier.

Shared by the ``undesirable-jax benchmark`` command and ``benchmarks/bench_engine.py`` (which is not
installed with the package). One measurement:

- ``check``: before timing, the engine's ``window_probs`` for a few windows are compared with the raw
  classifier applied to the same perturbed images built by hand (same keys): an engine that is fast
  but wrong does not get a number.
- ``raw``: the jitted classifier (softmax included) on batches of the chunk size, dispatched back to
  back and blocked once at the end, scaled to the same number of images as the engine processes.
- ``engine``: a later :func:`undesirable_jax.explain` call (compile excluded).

Raw and engine runs are interleaved round by round and the best of each is kept, so load from other
processes on a shared machine hits both alike. Wall and process-CPU seconds are both recorded; CPU
time is the steadier measure when other processes share the cores.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import checks
from .classifiers import Classifier, as_classifier, resolve_outputs
from .engine import default_chunk, explain, plan_chunk
from .samplers import Sampler
from .windows import WindowGrid

#: Forward passes of one image at the original PDA defaults: 224², window 10, stride 1, S = 10.
PDA_DEFAULT_PASSES = (224 - 10 + 1) ** 2 * 10
#: The largest |Δp| between the engine and hand-built perturbed images that passes the check.
CHECK_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class Throughput:
    """One engine-versus-raw measurement (rates in perturbed images per second)."""

    pairs: int                  # (window, sample) pairs = perturbed images per explain call
    chunk: int                  # pairs per engine step = raw batch size
    check_error: float          # max |engine window_probs − hand-built|, over the checked windows
    raw_wall: float             # best raw seconds for ``pairs`` images
    raw_cpu: float
    engine_wall: float          # best engine seconds for one explain call
    engine_cpu: float

    @property
    def raw_rate(self) -> float:
        """Raw classifier images/s (wall clock)."""
        return self.pairs / self.raw_wall

    @property
    def engine_rate(self) -> float:
        """Engine perturbed images/s (wall clock)."""
        return self.pairs / self.engine_wall

    @property
    def ratio_wall(self) -> float:
        """Engine rate ÷ raw rate, wall clock (1.0: the engine adds nothing to the classifier's cost)."""
        return self.raw_wall / self.engine_wall

    @property
    def ratio_cpu(self) -> float:
        """Engine rate ÷ raw rate in process CPU seconds."""
        return self.raw_cpu / self.engine_cpu

    @property
    def pda_default_seconds(self) -> float:
        """Projected seconds for one image at PDA defaults (462 250 passes) at the engine rate."""
        return PDA_DEFAULT_PASSES / self.engine_rate

    @property
    def ok(self) -> bool:
        """Whether the engine agreed with the hand-built perturbed images (max |Δp| <= 1e-4)."""
        return self.check_error <= CHECK_TOLERANCE

    def rows(self) -> list[tuple[str, str]]:
        """The measurement as (label, value) rows of a table."""
        return [("pairs per explain", f"{self.pairs}"), ("chunk", f"{self.chunk}"),
                ("check vs hand-built (max |Δp|)", f"{self.check_error:.1e} ({'ok' if self.ok else 'FAIL'})"),
                ("raw classifier img/s", f"{self.raw_rate:,.0f}"), ("engine img/s", f"{self.engine_rate:,.0f}"),
                ("engine / raw (wall)", f"{self.ratio_wall:.3f}"), ("engine / raw (CPU time)", f"{self.ratio_cpu:.3f}"),
                ("PDA-default s/image (462 250 passes)", f"{self.pda_default_seconds:,.1f}")]

    def record(self) -> dict[str, Any]:
        """The fields and the derived rates, as one JSON-ready dict."""
        return dataclasses.asdict(self) | {"raw_rate": self.raw_rate, "engine_rate": self.engine_rate,
                                           "ratio_wall": self.ratio_wall, "ratio_cpu": self.ratio_cpu}


def block(x: Any) -> Any:
    """``block_until_ready`` on every array leaf of ``x``; returns ``x``."""
    return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def wall_cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one call of ``fn`` with its result blocked."""
    c0, t0 = time.process_time(), time.perf_counter()
    block(fn())
    return time.perf_counter() - t0, time.process_time() - c0


def check_engine(classifier: Any, image: Any, sampler: Sampler, *, window: int, stride: int,
                 num_samples: int, chunk_size: int | None = None, key: jax.Array | None = None) -> float:
    """Max |engine ``window_probs`` − classifier on hand-built perturbed images| over three windows.

    The hand-built images use the engine's per-pair keys ``fold_in(fold_in(key, w), s)``, so the
    two agree up to float rounding for every sampler.
    """
    img = jnp.asarray(image, jnp.float32)
    clf = resolve_outputs(classifier, img)
    key = jax.random.key(0) if key is None else key
    ex = explain(clf, img, window=window, stride=stride, sampler=sampler, num_samples=num_samples,
                 key=key, chunk_size=chunk_size)
    grid = WindowGrid(img.shape[0], img.shape[1], window, stride)
    ny, nx = grid.shape
    state = sampler.prepare(img, window)
    err = 0.0
    for iy, ix in sorted({(0, 0), (ny // 2, nx // 3), (ny - 1, nx - 1)}):
        y, x = int(grid.ys[iy]), int(grid.xs[ix])
        w_id = iy * nx + ix
        batch = []
        for s in range(num_samples):
            k = jax.random.fold_in(jax.random.fold_in(key, w_id), s)
            patch = sampler.fill(state, img, window, k, jnp.int32(y), jnp.int32(x), jnp.int32(s))
            batch.append(img.at[y:y + window, x:x + window].set(patch))
        p = np.asarray(clf.probs(jnp.stack(batch))).mean(0)
        err = max(err, float(np.abs(p - np.asarray(ex.window_probs[:, iy, ix])).max()))
    return err


@functools.partial(jax.jit)
def _raw_probs(clf: Classifier, batch: jnp.ndarray) -> jnp.ndarray:
    return clf.probs(batch)


def engine_throughput(classifier: Any, image: Any, sampler: Sampler, *, window: int, stride: int,
                      num_samples: int, chunk_size: int | None = None, rounds: int = 3,
                      key: jax.Array | None = None, progress: bool = False) -> Throughput:
    """Measure :class:`Throughput` of ``explain`` on ``image`` against the raw ``classifier``.

    ``rounds``: interleaved raw/engine rounds, best of each kept. ``chunk_size`` as in ``explain``
    (None: the engine's default); the raw batch has the same size.
    """
    checks.positive_int("rounds", rounds)
    img = jnp.asarray(image, jnp.float32)
    clf = resolve_outputs(classifier, img)
    key = jax.random.key(0) if key is None else key
    grid = WindowGrid(img.shape[0], img.shape[1], window, stride)
    pairs = grid.num_windows * num_samples
    chunk = plan_chunk(chunk_size, pairs, 1, item_bytes=int(img.size) * 4, default=default_chunk(clf, img.shape))
    calls = -(-pairs // chunk)

    # The check runs on non-overlapping windows (fewer passes), with the same sampler and chunk.
    err = check_engine(clf, img, sampler, window=window, stride=max(stride, window),
                       num_samples=num_samples, chunk_size=chunk, key=key)

    batch = jax.random.normal(jax.random.fold_in(key, 1), (chunk, *img.shape), jnp.float32)
    run_engine = functools.partial(explain, clf, img, window=window, stride=stride, sampler=sampler,
                                   num_samples=num_samples, key=key, chunk_size=chunk)

    def run_raw():
        out = None
        for _ in range(calls):
            out = _raw_probs(clf, batch)
        return out

    block(run_raw())
    block(run_engine())  # compile
    scale = pairs / (calls * chunk)  # the raw loop classifies calls·chunk ≥ pairs images
    raw, eng = np.full(2, np.inf), np.full(2, np.inf)
    from tqdm.auto import tqdm

    for _ in tqdm(range(rounds), desc="rounds", unit="round", disable=not progress):
        raw = np.minimum(raw, np.asarray(wall_cpu(run_raw)) * scale)
        eng = np.minimum(eng, np.asarray(wall_cpu(run_engine)))
    return Throughput(pairs=pairs, chunk=chunk, check_error=err, raw_wall=float(raw[0]),
                      raw_cpu=float(raw[1]), engine_wall=float(eng[0]), engine_cpu=float(eng[1]))
