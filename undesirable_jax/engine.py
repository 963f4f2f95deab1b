"""The PDA engine: every (window, sample) pair through the classifier, in fixed-size jitted chunks.

Pairs are numbered ``i = w · S + s`` (window ``w`` in row-major grid order, sample ``s``). One jitted
step takes ``chunk_size`` consecutive pairs, fills their windows on device with the sampler, classifies
the perturbed images in one batched call and adds the probabilities, and their squared distances
from the untouched image's probabilities, into two per-window accumulators ``[num_windows, K]``
(float32). A host black box is called between two jitted steps instead, while the device fills the
next chunk (:meth:`Run._host_steps`). The last chunk is padded (and masked out), so the step compiles
once; memory is one chunk of images plus the accumulators, whatever the number of windows. Each pair's
randomness comes from ``fold_in(fold_in(key, w), s)``, so results do not depend on the chunk size or
devices.

:func:`explain_batch` runs N images through the same steps: windows are numbered over the batch
(``g = n · W + w`` for window ``w`` of image ``n``), image ``n`` has its own key ``fold_in(key, n)``, and
a chunk may hold pairs of several images, so images with few windows still fill the device's batch.

The second moments give each window's standard error of its mean probability at no extra forward
pass; :func:`undesirable_jax.evidence.pixel_evidence` turns them into ``Explanation.evidence_se``.
``num_samples=(min, max)`` with ``target_se`` samples adaptively: every window gets ``min`` samples,
then the windows whose weight of evidence is still less precise than ``target_se`` get more (doubling,
up to ``max``), round after round, through the same jitted step. A round is a list of windows and a
range of sample numbers, so sample ``s`` of window ``w`` always has the same key, whatever the schedule.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from . import checks
from .black_boxes import HostFunction, fixed_batch as host_fixed_batch   # plan_chunk has a fixed_batch argument
from .classifiers import (Classifier, as_classifier, check_batch_probs, decide_batch_outputs, output_probs,
                          rank_classes, raw_outputs, valid_probs)
from .evidence import pixel_evidence, weight_of_evidence_se
from .samplers import Sampler
from .windows import WindowGrid

DEFAULT_CHUNK = 256
#: Memory budget of one chunk's perturbed images a device when ``chunk_size`` is not given: 512 MiB
#: (256 images of up to 2 MiB each: 224² RGB float32 is 0.6 MiB; a 2048² RGB image gets 10 a chunk).
CHUNK_BYTES = 2**29
#: Host black boxes (``Classifier.differentiable`` False): default pairs a step, per device, fill this many
#: bytes of float32 images (between DEFAULT_CHUNK and HOST_CHUNK_MAX), since every step pays the host
#: call's fixed cost (hand-over, conversion to NumPy, the call, the checks) once.
HOST_CHUNK_BYTES = 32 * 2**20
HOST_CHUNK_MAX = 8192


@struct.dataclass
class Explanation:
    """The result of :func:`explain` for one image (a pytree: explanations stack and go through jit).

    ``evidence`` [K, H, W]: weight of evidence in bits, mean over the windows covering each pixel.
    ``probs`` [K]: p(c|x) of the untouched image. ``classes`` [K]: class id of each row.
    ``coverage`` [H, W]: windows per pixel. ``window_probs`` [K, nY, nX]: mean p(c | window removed).
    The static fields record how it was made; ``num_classes`` is the classifier's full K, which the
    Laplace correction uses even when only some rows were kept; ``num_samples`` is S (the most
    samples a window may get when sampling adaptively).

    Uncertainty (from the same forward passes; None in explanations built by hand):
    ``window_probs_se`` [K, nY, nX]: standard error of each window's mean probability (NaN where a
    window has fewer than 2 samples: S = 1 gives no standard error). ``evidence_se`` [K, H, W]: the
    standard error of ``evidence`` by the delta method (:func:`undesirable_jax.evidence.pixel_se`);
    NaN on pixels covered by a window without one. ``window_samples`` int [nY, nX]: samples each window
    position was evaluated with; 0 marks a position :func:`undesirable_jax.explain_adaptive`
    interpolated instead of evaluating.

    ``outputs``: what the classifier returned ("logits", "probs" or "log_probs"), as given or as
    decided by ``outputs="auto"`` from the untouched image's output.
    """

    evidence: jnp.ndarray
    probs: jnp.ndarray
    classes: jnp.ndarray
    coverage: jnp.ndarray
    window_probs: jnp.ndarray
    window: int = struct.field(pytree_node=False)
    stride: int = struct.field(pytree_node=False)
    num_samples: int = struct.field(pytree_node=False)
    num_classes: int = struct.field(pytree_node=False)
    laplace_n: float = struct.field(pytree_node=False)
    evidence_se: jnp.ndarray | None = None
    window_probs_se: jnp.ndarray | None = None
    window_samples: jnp.ndarray | None = None
    outputs: str = struct.field(pytree_node=False, default="logits")

    @property
    def grid(self) -> WindowGrid:
        """The window positions this explanation was computed on."""
        h, w = self.evidence.shape[-2:]
        return WindowGrid(int(h), int(w), self.window, self.stride)

    def unstack(self) -> list["Explanation"]:
        """The explanations of a stack (from :func:`explain_batch`), one per image."""
        if np.ndim(self.probs) != 2:
            raise ValueError("unstack: needs a stack of explanations [N, ...], got one explanation")
        return [jax.tree.map(lambda a, i=i: a[i], self) for i in range(int(self.probs.shape[0]))]

    def row(self, class_id: int) -> int:
        """Row index of ``class_id`` in the arrays (a clear error when it was not kept)."""
        classes = np.asarray(self.classes)
        if classes.ndim != 1:
            raise ValueError(f"row: needs one explanation, got a stack of {classes.shape[0]}; index it first")
        hits = np.flatnonzero(classes == class_id)
        if hits.size == 0:
            raise ValueError(
                f"class {class_id} is not in this explanation (kept classes: "
                f"{np.asarray(self.classes).tolist()}); run explain with classes=None or include it")
        return int(hits[0])


def explain(
    classifier: Any,
    image: Any,
    *,
    window: int = 10,
    stride: int = 1,
    sampler: Sampler,
    num_samples: int | tuple[int, int] = 10,
    key: jax.Array,
    chunk_size: int | None = None,
    classes: Sequence[int] | None = None,
    laplace_n: float = 100_000,
    mesh: Mesh | str | None = None,
    progress: bool = False,
    target_se: float | None = None,
) -> Explanation:
    """Prediction Difference Analysis of one image: weight of evidence for every class at once.

    Args:
      classifier: a callable ``[N, H, W, C] -> logits [N, K]`` or a :class:`Classifier`.
      image: ``[H, W, C]`` float array, preprocessed for the classifier.
      window, stride: the sliding window's side and step in pixels (METHOD.md §1).
      sampler: what fills a removed window (``undesirable_jax.samplers``).
      num_samples: S, samples averaged per window; or ``(min_samples, max_samples)`` with
        ``target_se`` to sample adaptively (module docstring).
      key: ``jax.random.key``; the same key gives the same result.
      chunk_size: at most this many (window, sample) pairs per step, over all devices (None: 256
        per device; more for a host black box on small images, :func:`default_chunk`); the steps
        are balanced so the last one is not mostly padding. Memory grows
        with it, not with the window count.
      classes: class ids whose rows to keep (default: all K).
      laplace_n: N of the Laplace correction (training-set size).
      mesh: devices to spread each chunk over: None (the default device), ``"local"`` (all local
        devices) or a ``jax.sharding.Mesh`` (every axis is used). Each device accumulates its own
        pairs; one sum at the end. ``chunk_size`` must then be a multiple of the device count.
      progress: show a tqdm bar over chunks.
      target_se: with a ``num_samples`` range: a window stops taking samples once the standard error
        of its weight of evidence (bits) for the top-1 class of the untouched image (among the kept
        rows) is at most this.
    """
    lo, hi = check_samples(num_samples, target_se)
    run = prepare(classifier, image, window=window, stride=stride, sampler=sampler, key=key,
                  classes=classes, laplace_n=laplace_n, mesh=mesh, progress=progress)
    acc, counts = sample_windows(run, lo, hi, target_se, chunk_size)
    return run.explanation(acc, counts, stride=stride, num_samples=hi)


def explain_batch(
    classifier: Any,
    images: Any,
    *,
    window: int = 10,
    stride: int = 1,
    sampler: Sampler,
    num_samples: int | tuple[int, int] = 10,
    key: jax.Array,
    chunk_size: int | None = None,
    classes: Sequence[int] | None = None,
    laplace_n: float = 100_000,
    mesh: Mesh | str | None = None,
    progress: bool = False,
    target_se: float | None = None,
    indices: Sequence[int] | None = None,
) -> Explanation:
    """:func:`explain` for a batch ``[N, H, W, C]``: the pairs of all N images share the same chunks.

    A separate function rather than ``explain`` accepting both shapes: the result is a *stacked*
    :class:`Explanation` (every array gets a leading image axis: ``evidence [N, K, H, W]``), and its
    keys are derived per image, so a ``[1, H, W, C]`` batch is not the same call as its one image.
    Image ``i`` uses the key ``jax.random.fold_in(key, indices[i])`` (``indices`` default ``0 … N−1``; pass
    the images' positions in a data set so that a result does not depend on how the set was split into
    batches), or ``key[i]`` when ``key`` holds one key per image (shape ``[N]``; e.g. the evaluation's
    per-image streams; ``indices`` must then be None): its explanation equals ``explain(images[i],
    key=<that key>)`` (up to float32 summation order) and does not depend on the other images of the
    batch. One step takes ``chunk_size`` (image, window, sample) triples, so many images with few
    windows each fill the device's batch (a coarse grid, a small model), and the Python work per step
    is shared by the whole batch.

    Memory: one chunk of perturbed images plus the accumulators ``[N · windows, K]`` (two of them)
    and the N stacked explanations; pass ``classes`` to keep only the rows you need (1,000 classes at
    stride 1 on 224² images are about 0.2 GB an accumulator per image), and split a large data set into
    batches of a size that fits. Each (image, window) pair is counted against the int32 pair limit.
    ``unstack()`` turns the result into one :class:`Explanation` per image.

    Args: as in :func:`explain`, with ``images`` a float array ``[N, H, W, C]`` (N ≥ 1); ``classes`` is
    applied to every image; ``target_se`` steers each image by its own top-1 class.
    """
    lo, hi = check_samples(num_samples, target_se)
    imgs = _check_image(images, batch=True)
    keys = _image_keys(key, indices, imgs.shape[0])
    run = prepare_batch(classifier, imgs, keys, window=window, stride=stride, sampler=sampler, classes=classes,
                        laplace_n=laplace_n, mesh=mesh, progress=progress)
    acc, counts = sample_windows(run, lo, hi, target_se, chunk_size)
    return run.explanations(acc, counts, stride=stride, num_samples=hi)


def sample_windows(run: "Run", lo: int, hi: int, target_se: float | None,
                   chunk_size: int | None) -> tuple[tuple, np.ndarray]:
    """Every window of every image of ``run`` gets ``lo`` samples, then (with ``target_se``) the imprecise
    ones get more, doubling up to ``hi``: the accumulators and the samples per window ``[N · W]``."""
    num_windows = run.num_images * run.grid.num_windows
    check_pair_count(num_windows, hi)
    chunk = run.plan_chunk(chunk_size, num_windows * lo)
    counts = np.zeros(num_windows, np.int64)
    active = np.arange(num_windows)
    acc = run.zeros()
    while active.size:
        n = int(counts[active[0]])
        m = (lo if n == 0 else min(hi, 2 * n)) - n
        acc = run.evaluate(acc, active, n, m, chunk)
        counts[active] += m
        if m == 0 or target_se is None:
            break
        top = np.stack([np.asarray(rank_classes(p, run.rows)[:1]) for p in np.asarray(run.base)])
        se = np.asarray(run.batch_stats(acc, counts, top)[2][..., 0]).reshape(-1)
        active = active[(counts[active] < hi) & ~(se[active] <= target_se)]
    return acc, counts


def check_samples(num_samples: Any, target_se: Any) -> tuple[int, int]:
    """``(min_samples, max_samples)`` from ``num_samples`` (an int S means ``(S, S)``), checked."""
    if isinstance(num_samples, (tuple, list)):
        if len(num_samples) != 2:
            raise ValueError(f"num_samples: expected S or (min_samples, max_samples), got {num_samples!r}")
        lo = checks.positive_int("num_samples (min_samples)", num_samples[0])
        hi = checks.positive_int("num_samples (max_samples)", num_samples[1])
        if hi < lo:
            raise ValueError(f"num_samples: max_samples={hi} is below min_samples={lo}; pass (min, max)")
        if target_se is None:
            raise ValueError("target_se: a num_samples range needs a target standard error in bits, e.g. 0.05")
    else:
        lo = hi = checks.positive_int("num_samples", num_samples)
        if target_se is not None:
            raise ValueError("target_se: only used with a num_samples range (min_samples, max_samples); "
                             f"got num_samples={lo}")
    if target_se is not None:
        checks.positive_number("target_se (bits)", target_se)
    return lo, hi


def check_pair_count(num_windows: int, num_samples: int) -> None:
    """Refuse more (window, sample) pairs than the engine's int32 pair numbers hold."""
    total = num_windows * num_samples
    if total > checks.INT32_MAX:
        raise ValueError(f"num_samples: {num_samples} samples x {num_windows} windows = {total} perturbed "
                         f"images, more than the engine's int32 indices hold ({checks.INT32_MAX}); lower "
                         "num_samples or raise the stride")


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything fixed for N images (from :func:`prepare` or :func:`prepare_batch`): evaluate any
    windows' samples with it.

    Windows are numbered over the batch, ``g = n · W + w`` (image ``n``, window ``w`` of ``grid``), and
    pair ``(g, s)`` uses the key ``fold_in(fold_in(keys[n], w), s)``. ``state`` is the sampler's state
    with a leading image axis on the leaves listed in ``batched`` (the leaves that differ between the
    images; a leaf shared by all, such as a conditional sampler's matrices, is stored once).
    """

    clf: Classifier
    sampler: Sampler
    state: Any
    batched: tuple[bool, ...]  # per leaf of ``state``: has an image axis
    images: jnp.ndarray        # [N, H, W, C]
    keys: jax.Array            # [N]
    grid: WindowGrid
    rows: jnp.ndarray
    base: jnp.ndarray          # [N, R] p(c|x) of the untouched images, kept rows
    num_classes: int
    laplace_n: float
    mesh: Mesh
    progress: bool

    def plan_chunk(self, chunk_size: int | None, pairs: int) -> int:
        """:func:`plan_chunk` for ``pairs`` of this run: its classifier's default, image bytes and fixed batch."""
        return plan_chunk(chunk_size, pairs, self.mesh.size, int(math.prod(self.images.shape[1:])) * 4,
                          host_fixed_batch(self.clf), default=default_chunk(self.clf, self.images.shape[1:]))

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def p0(self) -> jnp.ndarray:
        """``[R]`` p(c|x) of the untouched image of a one-image run."""
        self._check_single("p0")
        return self.base[0]

    def zeros(self) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Fresh per-device accumulators (sums, squared distances from p0) and the NaN flag."""
        return _zeros(self.mesh, self.num_images * self.grid.num_windows, int(self.rows.shape[0]))

    def evaluate(self, acc: tuple, windows: np.ndarray, s_start: int, s_count: int, chunk: int) -> tuple:
        """Add samples ``s_start … s_start+s_count−1`` of the windows ``windows`` (batch indices ``g``) into ``acc``."""
        total = int(windows.size) * s_count
        if total == 0:
            return acc
        wins = np.zeros(self.num_images * self.grid.num_windows, np.int32)  # one shape: one compile per chunk
        wins[:windows.size] = windows
        ys, xs = jnp.asarray(self.grid.ys), jnp.asarray(self.grid.xs)
        args = (jnp.asarray(wins), np.int32(s_start), np.int32(s_count), np.int32(total))
        host = self.clf.fn if isinstance(self.clf.fn, HostFunction) and self.clf.fn.outside_jit() else None
        if host is not None:
            return self._host_steps(host, acc, range(0, total, chunk), ys, xs, args, chunk)
        sums, squares, bad = acc
        for start in tqdm(range(0, total, chunk), desc="windows", unit="chunk", disable=not self.progress):
            sums, squares, bad = _step(self.clf, self.sampler, self.state, self.images, self.keys, ys, xs,
                                       self.rows, self.base, *args, np.int32(start), sums, squares, bad,
                                       window=self.grid.window, chunk=chunk, mesh=self.mesh,
                                       batched=self.batched)
        return sums, squares, bad

    def _host_steps(self, host: HostFunction, acc: tuple, starts: Any, ys: jnp.ndarray, xs: jnp.ndarray,
                    args: tuple, chunk: int) -> tuple:
        """:meth:`evaluate` for a host black box: ``host`` classifies each chunk in this thread, between
        jitted steps; each step adds the previous chunk's outputs and perturbs the next chunk
        (:func:`_host_step`), so it is dispatched before the host call and an accelerator fills the next
        chunk meanwhile.

        Called from inside a step (``jax.pure_callback``) instead, ``bench_black_box.py``'s NumPy MLP ran
        1.2–1.3× slower on CPU, and the host call cannot overlap the device's work. Adding and perturbing in
        one step rather than two saves a second XLA call's fixed cost on each chunk. On a 2-core CPU the
        overlap itself gains nothing (both halves share the cores). An error of the host function is raised
        after its chunk, before any later chunk is classified.
        """
        def step(pending: tuple | None, start: int | None, acc: tuple) -> tuple:
            """Add ``pending`` = (outputs, their chunk's start) and perturb the chunk at ``start``, as asked."""
            outputs, done = pending if pending is not None else (None, 0)
            return _host_step(self.clf, self.sampler, self.state, self.images, self.keys, ys, xs, self.rows,
                              self.base, *args, outputs, np.int32(done), np.int32(start or 0), *acc,
                              window=self.grid.window, chunk=chunk, mesh=self.mesh, batched=self.batched,
                              add=pending is not None, perturb=start is not None)

        starts = list(starts)
        *acc, batch = step(None, starts[0], acc)
        pending = None   # the last classified chunk's outputs, not added yet
        with tqdm(total=len(starts), desc="windows", unit="chunk", disable=not self.progress) as bar:
            for i, start in enumerate(starts):
                following = starts[i + 1] if i + 1 < len(starts) else None
                ahead = None   # dispatched before the host call, not awaited
                if following is not None:
                    *acc, ahead = step(pending, following, acc)
                elif pending is not None:
                    acc = step(pending, None, acc)
                outputs = host.call_shards(batch)
                self.clf.raise_host_error()
                bar.update()
                pending, batch = (outputs, start), ahead
        return step(pending, None, acc)

    def window_stats(self, acc: tuple, counts: np.ndarray, rows: Any = None) -> tuple[jnp.ndarray, jnp.ndarray,
                                                                                        jnp.ndarray]:
        """``(mean [W, R], se of the mean [W, R], se of the WE [W, R])`` of a one-image run.

        ``rows``: only these of the kept rows (indices), e.g. to steer sampling cheaply when K is large.
        Windows with no sample get NaN means; windows with one sample NaN standard errors.
        """
        self._check_single("window_stats")
        stats = self.batch_stats(acc, counts, None if rows is None else np.asarray(rows)[None])
        return tuple(a[0] for a in stats)

    def batch_stats(self, acc: tuple, counts: np.ndarray, rows: Any = None) -> tuple[jnp.ndarray, jnp.ndarray,
                                                                                       jnp.ndarray]:
        """``(mean, se of the mean, se of the WE)``, each ``[N, W, R]``, from the accumulators.

        ``counts`` [N · W]: samples per window. ``rows`` [N, k]: only these of the kept rows, per image.
        """
        sums, squares, bad = acc
        any_bad = bool(jnp.any(bad))
        self.clf.raise_host_error()
        if any_bad:
            raise ValueError("classifier: returned NaN or inf, or probabilities outside [0, 1] or not summing to "
                             "1, on a perturbed image; check the model and that the sampler's fills lie in the "
                             "input range it expects")
        shape = (self.num_images, self.grid.num_windows)
        counts = jnp.asarray(np.asarray(counts).reshape(shape), jnp.float32)
        rows = None if rows is None else jnp.asarray(rows, jnp.int32)
        # The one reduction over devices; the result lives on one device, like the image's explanation.
        one = jax.local_devices()[0]
        sums, squares = (jax.device_put(jnp.sum(a, axis=0), one) for a in (sums, squares))
        return _batch_moments(sums, squares, counts, self.base, rows, self.laplace_n, self.num_classes)

    def explanation(self, acc: tuple, counts: np.ndarray, *, stride: int, num_samples: int) -> Explanation:
        """The :class:`Explanation` of a one-image run whose windows were all evaluated (``counts`` ≥ 1)."""
        mean, se, _ = self.window_stats(acc, counts)
        return self.assemble(mean, se, counts, stride=stride, num_samples=num_samples)

    def explanations(self, acc: tuple, counts: np.ndarray, *, stride: int, num_samples: int) -> Explanation:
        """The stacked :class:`Explanation` ``[N, …]`` of a run whose windows were all evaluated."""
        mean, se, _ = self.batch_stats(acc, counts)
        window_probs, window_se, evidence, evidence_se = _batch_maps(mean, se, self.base, self.grid,
                                                                     self.laplace_n, self.num_classes)
        n = self.num_images
        return Explanation(
            evidence=evidence, probs=self.base, classes=jnp.broadcast_to(self.rows, (n, self.rows.shape[0])),
            coverage=jnp.broadcast_to(jnp.asarray(self.grid.coverage()), (n, *self.grid.coverage().shape)),
            window_probs=window_probs, window=int(self.grid.window), stride=int(stride),
            num_samples=int(num_samples), num_classes=self.num_classes, laplace_n=float(self.laplace_n),
            evidence_se=evidence_se, window_probs_se=window_se,
            window_samples=jnp.asarray(np.asarray(counts).reshape(n, *self.grid.shape), jnp.int32),
            outputs=self.clf.outputs)

    def assemble(self, mean, se, counts, *, stride: int, num_samples: int) -> Explanation:
        """An :class:`Explanation` from per-window means and standard errors ``[W, R]`` (one-image run)."""
        window_probs, window_se, evidence, evidence_se = _maps(mean, se, self.p0, self.grid, self.laplace_n,
                                                               self.num_classes)
        return Explanation(
            evidence=evidence, probs=self.p0, classes=self.rows,
            coverage=jnp.asarray(self.grid.coverage()), window_probs=window_probs,
            window=int(self.grid.window), stride=int(stride), num_samples=int(num_samples),
            num_classes=self.num_classes, laplace_n=float(self.laplace_n),
            evidence_se=evidence_se, window_probs_se=window_se,
            window_samples=jnp.asarray(np.asarray(counts).reshape(self.grid.shape), jnp.int32),
            outputs=self.clf.outputs)

    def _check_single(self, what: str) -> None:
        if self.num_images != 1:
            raise ValueError(f"Run.{what}: this run holds {self.num_images} images; use the batch_* methods")


def prepare(classifier: Any, image: Any, *, window: int, stride: int, sampler: Sampler, key: jax.Array,
            classes: Sequence[int] | None, laplace_n: float, mesh: Mesh | str | None, progress: bool) -> Run:
    """Check the inputs, classify the untouched image and prepare the sampler: a one-image :class:`Run`."""
    img = _check_image(image)
    key = checks.prng_key(key)
    return prepare_batch(classifier, img[None], key[None], window=window, stride=stride, sampler=sampler,
                         classes=classes, laplace_n=laplace_n, mesh=mesh, progress=progress)


def prepare_batch(classifier: Any, images: jnp.ndarray, keys: jax.Array, *, window: int, stride: int,
                  sampler: Sampler, classes: Sequence[int] | None, laplace_n: float, mesh: Mesh | str | None,
                  progress: bool) -> Run:
    """A :class:`Run` for checked images ``[N, H, W, C]`` (float32) with one key each ``[N]``."""
    clf = as_classifier(classifier)
    grid = WindowGrid(images.shape[1], images.shape[2], window, stride)
    if not isinstance(sampler, Sampler):
        raise TypeError(
            f"sampler: expected a sampler such as undesirable_jax.samplers.constant(0.0), got "
            f"{type(sampler).__name__}")
    checks.positive_number("laplace_n (training-set size)", laplace_n)
    raw = raw_outputs(clf, images)   # one compile per classifier and batch shape, "auto" or not
    jax.block_until_ready(raw)
    clf.raise_host_error()  # a black box's own error, kept by its host callback, comes first
    host_raw = np.asarray(raw)
    # "auto" decided here, once, on the first image; every other image of the batch must agree with it
    clf = clf.replace(outputs=decide_batch_outputs(host_raw, clf.outputs))
    base = output_probs(raw, clf.outputs)
    num_classes = check_batch_probs(np.asarray(base), clf.outputs)
    rows = _check_classes(classes, num_classes)
    state, batched = stack_states([sampler.prepare(img, window) for img in jnp.unstack(images)])  # not N slices
    return Run(clf, sampler, state, batched, images, keys, grid, rows, base[:, rows], num_classes,
               float(laplace_n), _check_mesh(mesh), bool(progress))


def stack_states(states: list) -> tuple[Any, tuple[bool, ...]]:
    """One sampler state for N images: leaves that differ get a leading image axis, shared ones are kept once.

    Returns the state and, per leaf (in ``jax.tree.leaves`` order), whether it has the image axis.
    """
    flat = [jax.tree_util.tree_flatten(s) for s in states]
    treedef = flat[0][1]
    if any(t != treedef for _, t in flat):
        raise ValueError("sampler: prepared states of different structure for the images of one batch")
    leaves, batched = [], []
    for column in zip(*(f[0] for f in flat)):
        shared = all(leaf is column[0] for leaf in column)
        leaves.append(column[0] if shared else jnp.stack(column))
        batched.append(not shared)
    return jax.tree_util.tree_unflatten(treedef, leaves), tuple(batched)


def _state_of(state: Any, batched: tuple[bool, ...], n: jnp.ndarray) -> Any:
    """Image ``n``'s sampler state from the stacked state of :func:`stack_states`."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return jax.tree_util.tree_unflatten(treedef, [leaf[n] if b else leaf for leaf, b in zip(leaves, batched)])


@functools.partial(jax.jit, static_argnames=("laplace_n", "num_classes"))
def _batch_moments(sums, squares, counts, base, rows, laplace_n, num_classes):
    """:func:`_moments` per image: summed accumulators ``[N · W, R]`` → ``[N, W, R]`` (or the ``rows``)."""
    n, w = counts.shape
    sums, squares = (a.reshape(n, w, -1) for a in (sums, squares))
    p0 = base[:, None, :]
    if rows is not None:
        take = lambda a: jnp.take_along_axis(a, rows[:, None, :], axis=-1)  # noqa: E731
        sums, squares, p0 = take(sums), take(squares), take(p0)
    return _moments(sums, squares, counts[..., None], p0, laplace_n, num_classes)


@functools.partial(jax.jit, static_argnames=("laplace_n", "num_classes"))
def _moments(sums, squares, counts, p0, laplace_n, num_classes):
    """Per-window mean, its standard error, and the WE's standard error, from the accumulated moments.

    ``sums`` = Σ p, ``squares`` = Σ (p − p0)² per window and row; shifting by p0 keeps float32 from cancelling
    the variance of a probability near 1. Sample variance with n − 1; NaN for n < 2 (and n = 0). A
    variance within float32 rounding of the two sums (identical samples, as from a fixed fill) is 0.
    """
    n = counts
    mean = sums / n
    d = mean - p0
    centred = squares - n * d * d
    eps = jnp.finfo(jnp.float32).eps
    rounding = 4 * eps * (squares + n * n * jnp.abs(d) * jnp.maximum(mean, p0))
    var = jnp.where(centred > rounding, centred, 0.0) / (n - 1)
    se = jnp.where(n >= 2, jnp.sqrt(var / n), jnp.nan)
    return mean, se, weight_of_evidence_se(mean, se, laplace_n, num_classes)


@functools.partial(jax.jit, static_argnames=("grid", "laplace_n", "num_classes"))
def _maps(mean, se, p0, grid, laplace_n, num_classes):
    """Per-window ``[W, R]`` means and standard errors → window maps ``[R, nY, nX]`` and pixel maps."""
    r = p0.shape[0]
    ny, nx = grid.shape
    window_probs = mean.T.reshape(r, ny, nx)
    window_se = se.T.reshape(r, ny, nx)
    evidence, evidence_se = pixel_evidence(grid, p0[:, None, None], window_probs, laplace_n, num_classes, window_se)
    return window_probs, window_se, evidence, evidence_se


@functools.partial(jax.jit, static_argnames=("grid", "laplace_n", "num_classes"))
def _batch_maps(mean, se, base, grid, laplace_n, num_classes):
    """:func:`_maps` for each image: ``[N, W, R]`` → stacked maps."""
    return jax.vmap(lambda m, e, p: _maps(m, e, p, grid, laplace_n, num_classes))(mean, se, base)


def pair_indices(start: jnp.ndarray, chunk: int, total: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Pair numbers ``start … start+chunk−1`` clamped to the last pair, and which of them are real."""
    i = start + jnp.arange(chunk, dtype=jnp.int32)
    return jnp.minimum(i, total - 1), i < total


def perturb(sampler: Sampler, state: Any, image: jnp.ndarray, key: jax.Array, ys: jnp.ndarray,
            xs: jnp.ndarray, pairs: jnp.ndarray, *, window: int, num_samples: int) -> jnp.ndarray:
    """The perturbed images ``[P, H, W, C]`` for pair numbers ``pairs = w · S + s`` (built on device)."""
    return perturb_at(sampler, state, image, key, ys, xs, pairs // num_samples, pairs % num_samples,
                      window=window)


def perturb_at(sampler: Sampler, state: Any, image: jnp.ndarray, key: jax.Array, ys: jnp.ndarray,
               xs: jnp.ndarray, w: jnp.ndarray, s: jnp.ndarray, *, window: int) -> jnp.ndarray:
    """The perturbed images ``[P, H, W, C]`` for windows ``w`` (grid indices) and samples ``s``."""
    nx = xs.shape[0]
    y, x = ys[w // nx], xs[w % nx]
    keys = jax.vmap(lambda a, b: jax.random.fold_in(jax.random.fold_in(key, a), b))(w, s)
    fill = functools.partial(sampler.fill, state, image, window)
    patches = jax.vmap(fill)(keys, y, x, s)
    zero = jnp.zeros((), jnp.int32)
    return jax.vmap(lambda p, a, b: jax.lax.dynamic_update_slice(image, p, (a, b, zero)))(patches, y, x)


def perturb_images(sampler: Sampler, state: Any, batched: tuple[bool, ...], images: jnp.ndarray, keys: jax.Array,
                   ys: jnp.ndarray, xs: jnp.ndarray, n: jnp.ndarray, w: jnp.ndarray, s: jnp.ndarray, *,
                   window: int) -> jnp.ndarray:
    """The perturbed images ``[P, H, W, C]``: image ``n``, window ``w`` (grid index), sample ``s``, per pair.

    With one image (nothing ``batched``) this is :func:`perturb_at` of ``images[0]``, pair for pair.
    """
    nx = xs.shape[0]
    y, x = ys[w // nx], xs[w % nx]
    zero = jnp.zeros((), jnp.int32)

    def one(n, w, s, y, x):
        image = images[n]
        key = jax.random.fold_in(jax.random.fold_in(keys[n], w), s)
        patch = sampler.fill(_state_of(state, batched, n), image, window, key, y, x, s)
        return jax.lax.dynamic_update_slice(image, patch, (y, x, zero))

    return jax.vmap(one)(n, w, s, y, x)


@functools.partial(jax.jit, static_argnames=("window", "chunk", "mesh", "batched"), donate_argnames=("acc", "sq"))
def _step(clf, sampler, state, images, keys, ys, xs, rows, base, wins, s_start, s_count, total, start, acc, sq,
          bad, *, window, chunk, mesh, batched):
    """One chunk of the pairs ``i → (window wins[i // s_count], sample s_start + i % s_count)``, ``i < total``.

    ``wins`` holds batch window numbers ``g = n · W + w`` (image ``n``). Each of the mesh's devices
    takes ``chunk / devices`` consecutive pairs and adds their probabilities into its own
    ``acc [N · W, R]`` and their squared distances from image ``n``'s ``base`` into ``sq [N · W, R]``.
    """
    per_device = chunk // mesh.size
    axes = mesh.axis_names
    num_windows = ys.shape[0] * xs.shape[0]

    def local(clf, sampler, state, images, keys, ys, xs, rows, base, wins, s_start, s_count, total, start, acc,
              sq, bad):
        g, valid, s = _local_pairs(mesh, per_device, wins, s_start, s_count, total, start)
        n, w = g // num_windows, g % num_windows
        batch = perturb_images(sampler, state, batched, images, keys, ys, xs, n, w, s, window=window)
        full = clf.probs(batch)  # padding pairs repeat the last real pair, so every row is checked
        return _add_probs(full, valid, g, n, rows, base, acc, sq, bad)

    rep, sharded = PartitionSpec(), PartitionSpec(axes)
    return jax.shard_map(local, mesh=mesh, in_specs=(rep,) * 14 + (sharded,) * 3,
                         out_specs=(sharded,) * 3, check_vma=False)(
        clf, sampler, state, images, keys, ys, xs, rows, base, wins, s_start, s_count, total, start, acc, sq, bad)


def _local_pairs(mesh: Mesh, per_device: int, wins, s_start, s_count, total, start) -> tuple:
    """This device's part of a chunk (inside ``shard_map``): batch window ``g``, real or padding, sample ``s``."""
    offset = start + _flat_axis_index(mesh) * per_device
    pairs, valid = pair_indices(offset, per_device, total)
    return wins[pairs // s_count], valid, s_start + pairs % s_count


def _add_probs(full, valid, g, n, rows, base, acc, sq, bad) -> tuple:
    """Add a chunk's probabilities ``full [P, K]`` (kept ``rows``) and their squared distances from image
    ``n``'s ``base`` into window ``g``'s accumulators; padding pairs add nothing but are checked too."""
    bad = bad | ~valid_probs(full)
    probs = jnp.where(valid[:, None], full[:, rows], 0.0)
    d = jnp.where(valid[:, None], probs - base[n], 0.0)
    return acc.at[0, g].add(probs), sq.at[0, g].add(d * d), bad


@functools.partial(jax.jit, static_argnames=("window", "chunk", "mesh", "batched", "add", "perturb"),
                   donate_argnames=("acc", "sq"))
def _host_step(clf, sampler, state, images, keys, ys, xs, rows, base, wins, s_start, s_count, total, outputs, done,
               start, acc, sq, bad, *, window, chunk, mesh, batched, add, perturb):
    """The device's part of a host black box's chunk, two chunks at a time: with ``add``, add ``clf``'s
    host outputs ``[chunk, K]`` for the chunk at ``done`` into the accumulators (as :func:`_step` adds its
    own classifier's); with ``perturb``, build the chunk at ``start`` as the host function takes it.
    Returns ``(acc, sq, bad)``, and the perturbed images (sharded over the mesh's devices) with ``perturb``.
    """
    per_device = chunk // mesh.size
    num_windows = ys.shape[0] * xs.shape[0]

    def local(sampler, state, images, keys, ys, xs, rows, base, wins, s_start, s_count, total, outputs, done, start,
              acc, sq, bad):
        if add:
            g, valid, _ = _local_pairs(mesh, per_device, wins, s_start, s_count, total, done)
            acc, sq, bad = _add_probs(clf.probs_of(outputs), valid, g, g // num_windows, rows, base, acc, sq, bad)
        if not perturb:
            return acc, sq, bad
        g, _, s = _local_pairs(mesh, per_device, wins, s_start, s_count, total, start)
        n, w = g // num_windows, g % num_windows
        batch = perturb_images(sampler, state, batched, images, keys, ys, xs, n, w, s, window=window)
        return acc, sq, bad, clf.fn.device_input(batch)

    rep, sharded = PartitionSpec(), PartitionSpec(mesh.axis_names)
    return jax.shard_map(local, mesh=mesh, in_specs=(rep,) * 12 + (sharded, rep, rep) + (sharded,) * 3,
                         out_specs=(sharded,) * (4 if perturb else 3), check_vma=False)(
        sampler, state, images, keys, ys, xs, rows, base, wins, s_start, s_count, total, outputs, done, start, acc,
        sq, bad)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _zeros(mesh: Mesh, num_windows: int, num_rows: int) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Per-device accumulators (sums, squares ``[devices, W, R]``; NaN flag), placed exactly as
    ``_step`` returns them (so it compiles once)."""
    sharded = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
    acc = jnp.zeros((mesh.size, num_windows, num_rows), jnp.float32)
    sq = jnp.zeros((mesh.size, num_windows, num_rows), jnp.float32)
    bad = jnp.zeros((mesh.size,), bool)
    return tuple(jax.lax.with_sharding_constraint(a, sharded) for a in (acc, sq, bad))


def _flat_axis_index(mesh: Mesh) -> jnp.ndarray:
    """This device's position in the mesh, all axes flattened in order."""
    index = jnp.zeros((), jnp.int32)
    for name in mesh.axis_names:
        index = index * mesh.shape[name] + jax.lax.axis_index(name)
    return index


def _check_mesh(mesh: Mesh | str | None) -> Mesh:
    if mesh is None:
        return Mesh(np.asarray(jax.local_devices()[:1]), ("devices",))
    if isinstance(mesh, str):
        if mesh != "local":
            raise ValueError(f'mesh: expected None, "local" or a jax.sharding.Mesh, got {mesh!r}')
        return Mesh(np.asarray(jax.local_devices()), ("devices",))
    if not isinstance(mesh, Mesh):
        raise TypeError(f'mesh: expected None, "local" or a jax.sharding.Mesh, got {type(mesh).__name__}')
    return mesh


def default_chunk(classifier: Any, image_shape: Sequence[int]) -> int:
    """Pairs per device and step when ``chunk_size`` is None: :data:`DEFAULT_CHUNK` for a JAX classifier;
    for a host black box as many images as fit :data:`HOST_CHUNK_BYTES` (within ``[DEFAULT_CHUNK,
    HOST_CHUNK_MAX]``): small images through a host function are otherwise dominated by each call's fixed cost."""
    if as_classifier(classifier).differentiable:
        return DEFAULT_CHUNK
    image_bytes = 4 * math.prod(int(d) for d in image_shape)
    return int(min(HOST_CHUNK_MAX, max(DEFAULT_CHUNK, HOST_CHUNK_BYTES // image_bytes)))


def plan_chunk(chunk_size: int | None, total: int, devices: int, item_bytes: int = 0,
               fixed_batch: int | None = None, *, default: int = DEFAULT_CHUNK) -> int:
    """Pairs per step: at most ``chunk_size`` (default ``default`` a device, see :func:`default_chunk`; fewer
    when that many perturbed images of ``item_bytes`` each would exceed :data:`CHUNK_BYTES` a device), a
    multiple of the device count, and balanced so the steps needed for ``total`` pairs carry the least padding.

    ``fixed_batch``: the one batch size a black box accepts; the default chunk is then a multiple of
    it on each device (as many as the budget allows, at least one), so the calls are full instead of
    padded (the model file's fixed batch was checked against the same budget when it was loaded). An explicit
    ``chunk_size`` whose images would not fit in this machine's memory is refused naming one that does.
    """
    per_device = max(1, CHUNK_BYTES // item_bytes) if item_bytes else default
    if chunk_size is None:
        limit = min(default, per_device) * devices
        if fixed_batch is not None:   # whole calls of the fixed batch on each device, no more than needed
            per_call = fixed_batch * devices
            return per_call * min(max(1, limit // per_call), -(-total // per_call))
    else:
        limit = checks.positive_int("chunk_size", chunk_size)
        if limit % devices:
            raise ValueError(f"chunk_size={limit} does not split over {devices} devices: pick a multiple of "
                             f"{devices} (e.g. {devices * max(1, round(limit / devices))})")
        if item_bytes and limit * item_bytes > _machine_bytes():
            raise ValueError(f"chunk_size={limit}: {limit} perturbed images of {item_bytes / 2**20:,.1f} MiB each need "
                             f"{limit * item_bytes / 2**30:,.1f} GiB, more than this machine's memory; use "
                             f"chunk_size={per_device * devices} or less")
    steps = -(-total // limit)
    per_step = -(-total // steps)
    return -(-per_step // devices) * devices


def _machine_bytes() -> int:
    """This machine's physical memory in bytes (2^62 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**62


def _check_image(image: Any, *, batch: bool = False) -> jnp.ndarray:
    """One image ``[H, W, C]`` (or, with ``batch``, images ``[N, H, W, C]``) as a finite float32 array."""
    name, want = ("images", "a batch [N, H, W, C]") if batch else ("image", "one image [H, W, C]")
    try:
        arr = jnp.asarray(image)
    except TypeError as e:
        raise TypeError(f"{name}: expected a numeric array {want[want.index('['):]}, got {type(image).__name__}") from e
    if not batch and arr.ndim == 2:   # a batch of 3-D arrays is more likely one image than grey images
        raise ValueError(f"image: expected {want}, got shape {arr.shape} without a channel axis; "
                         "add one: image[..., None]")
    if arr.ndim != (4 if batch else 3) or (batch and arr.shape[0] < 1):
        other = ("for one image [H, W, C], call explain" if batch else
                 "for a batch [N, H, W, C], call explain_batch (or explain once per image)")
        raise ValueError(f"{name}: expected {want}, got shape {arr.shape}; {other}")
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise TypeError(f"{name}: expected a float array, got dtype {arr.dtype}")
    arr = arr.astype(jnp.float32)
    if not bool(jnp.all(jnp.isfinite(arr))):
        raise ValueError(f"{name}: contains NaN or inf; clean the image or its preprocessing")
    return arr


def _image_keys(key: Any, indices: Sequence[int] | None, n: int) -> jax.Array:
    """One key per image: ``fold_in(key, indices[i])`` for a single ``key``, or ``key`` itself when it holds N."""
    if isinstance(key, jax.Array) and key.ndim == 1 and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != (n,):
            raise ValueError(f"key: expected one key or one key per image ({n}), got {key.shape[0]} keys")
        if indices is not None:
            raise ValueError("indices: not used with one key per image; pass key=jax.random.key(seed) with "
                             "indices, or the N keys alone")
        return key
    return _fold_in_each(checks.prng_key(key), _check_indices(indices, n))


@jax.jit
def _fold_in_each(key: jax.Array, indices: jnp.ndarray) -> jax.Array:
    """``[fold_in(key, i) for i in indices]`` in one compiled call (run op by op, 256 images took 1.8 ms)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)


def _check_indices(indices: Sequence[int] | None, n: int) -> jnp.ndarray:
    if indices is None:
        return jnp.arange(n, dtype=jnp.int32)
    arr = np.asarray(indices)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > checks.INT32_MAX:
        raise ValueError(f"indices: expected {n} non-negative integer ids, one per image, got {indices!r}")
    return jnp.asarray(arr, jnp.int32)


def _check_classes(classes: Sequence[int] | None, num_classes: int) -> jnp.ndarray:
    if classes is None:
        return jnp.arange(num_classes, dtype=jnp.int32)
    arr = np.asarray(classes)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"classes: expected a non-empty list of class ids, got {classes!r}")
    if arr.min() < 0 or arr.max() >= num_classes:
        raise ValueError(f"classes: ids must lie in [0, {num_classes}), got {arr.tolist()}")
    if len(set(arr.tolist())) != arr.size:
        raise ValueError(f"classes: ids must be distinct, got {arr.tolist()}")
    return jnp.asarray(arr, jnp.int32)
