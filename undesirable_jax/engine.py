"""The PDA engine: every (window, sample) pair through the classifier, in fixed-size jitted chunks.

Pairs are numbered ``i = w · S + s`` (window ``w`` in row-major grid order, sample ``s``). One jitted
step takes ``chunk_size`` consecutive pairs, fills their windows on device with the sampler, classifies
the perturbed images in one batched call and adds the probabilities, and their squared distances
from the untouched image's probabilities, into two per-window accumulators ``[num_windows, K]``
(float32). The last chunk is padded (and masked out), so the step compiles once; memory is one chunk
of images plus the accumulators, whatever the number of windows. Each pair's randomness comes from
``fold_in(fold_in(key, w), s)``, so results do not depend on the chunk size or devices.

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
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from . import checks
from .classifiers import Classifier, as_classifier, check_probs, rank_classes, valid_probs
from .evidence import pixel_evidence, weight_of_evidence_se
from .samplers import Sampler
from .windows import WindowGrid

DEFAULT_CHUNK = 256


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

    @property
    def grid(self) -> WindowGrid:
        """The window positions this explanation was computed on."""
        h, w = self.evidence.shape[-2:]
        return WindowGrid(int(h), int(w), self.window, self.stride)

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
        per device); the steps are balanced so the last one is not mostly padding. Memory grows
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
    num_windows = run.grid.num_windows
    check_pair_count(num_windows, hi)
    chunk = plan_chunk(chunk_size, num_windows * lo, run.mesh.size)
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
        top = rank_classes(run.p0, run.rows)[:1]
        se = np.asarray(run.window_stats(acc, counts, top)[2][:, 0])
        active = active[(counts[active] < hi) & ~(se[active] <= target_se)]
    return run.explanation(acc, counts, stride=stride, num_samples=hi)


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
    """Everything fixed for one image (from :func:`prepare`): evaluate any windows' samples with it.

    ``grid`` is the window grid whose indices ``w`` key the pairs: ``fold_in(fold_in(key, w), s)``.
    """

    clf: Classifier
    sampler: Sampler
    state: Any
    image: jnp.ndarray
    key: jax.Array
    grid: WindowGrid
    rows: jnp.ndarray
    p0: jnp.ndarray          # [R] p(c|x) of the untouched image, kept rows
    num_classes: int
    laplace_n: float
    mesh: Mesh
    progress: bool

    def zeros(self) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Fresh per-device accumulators (sums, squared distances from p0) and the NaN flag."""
        return _zeros(self.mesh, self.grid.num_windows, int(self.rows.shape[0]))

    def evaluate(self, acc: tuple, windows: np.ndarray, s_start: int, s_count: int, chunk: int) -> tuple:
        """Add samples ``s_start … s_start+s_count−1`` of the windows ``windows`` (grid indices) into ``acc``."""
        total = int(windows.size) * s_count
        if total == 0:
            return acc
        wins = np.zeros(self.grid.num_windows, np.int32)  # padded to one shape: one compile per chunk size
        wins[:windows.size] = windows
        ys, xs = jnp.asarray(self.grid.ys), jnp.asarray(self.grid.xs)
        args = (jnp.asarray(wins), jnp.int32(s_start), jnp.int32(s_count), jnp.int32(total))
        sums, squares, bad = acc
        for start in tqdm(range(0, total, chunk), desc="windows", unit="chunk", disable=not self.progress):
            sums, squares, bad = _step(self.clf, self.sampler, self.state, self.image, self.key, ys, xs,
                                       self.rows, self.p0, *args, jnp.int32(start), sums, squares, bad,
                                       window=self.grid.window, chunk=chunk, mesh=self.mesh)
        return sums, squares, bad

    def window_stats(self, acc: tuple, counts: np.ndarray, rows: Any = None) -> tuple[jnp.ndarray, jnp.ndarray,
                                                                                        jnp.ndarray]:
        """``(mean [W, R], se of the mean [W, R], se of the WE [W, R])`` from the accumulators.

        ``rows``: only these of the kept rows (indices), e.g. to steer sampling cheaply when K is large.
        Windows with no sample get NaN means; windows with one sample NaN standard errors.
        """
        sums, squares, bad = acc
        any_bad = bool(jnp.any(bad))
        self.clf.raise_host_error()
        if any_bad:
            raise ValueError("classifier: returned NaN or inf, or probabilities outside [0, 1] or not summing to "
                             "1, on a perturbed image; check the model and that the sampler's fills lie in the "
                             "input range it expects")
        # The one reduction over devices; the result lives on one device, like the image's explanation.
        one = jax.local_devices()[0]
        sums, squares = (jax.device_put(jnp.sum(a, axis=0), one) for a in (sums, squares))
        p0 = self.p0
        if rows is not None:
            rows = jnp.asarray(rows)
            sums, squares, p0 = sums[:, rows], squares[:, rows], p0[rows]
        return _moments(sums, squares, jnp.asarray(counts, jnp.float32), p0, self.laplace_n, self.num_classes)

    def explanation(self, acc: tuple, counts: np.ndarray, *, stride: int, num_samples: int) -> Explanation:
        """The :class:`Explanation` of windows that were all evaluated (``counts`` ≥ 1 each)."""
        mean, se, _ = self.window_stats(acc, counts)
        return self.assemble(mean, se, counts, stride=stride, num_samples=num_samples)

    def assemble(self, mean, se, counts, *, stride: int, num_samples: int) -> Explanation:
        """An :class:`Explanation` from per-window means and standard errors ``[W, R]`` on ``grid``."""
        window_probs, window_se, evidence, evidence_se = _maps(mean, se, self.p0, self.grid, self.laplace_n,
                                                               self.num_classes)
        return Explanation(
            evidence=evidence, probs=self.p0, classes=self.rows,
            coverage=jnp.asarray(self.grid.coverage()), window_probs=window_probs,
            window=int(self.grid.window), stride=int(stride), num_samples=int(num_samples),
            num_classes=self.num_classes, laplace_n=float(self.laplace_n),
            evidence_se=evidence_se, window_probs_se=window_se,
            window_samples=jnp.asarray(np.asarray(counts).reshape(self.grid.shape), jnp.int32))


def prepare(classifier: Any, image: Any, *, window: int, stride: int, sampler: Sampler, key: jax.Array,
            classes: Sequence[int] | None, laplace_n: float, mesh: Mesh | str | None, progress: bool) -> Run:
    """Check the inputs, classify the untouched image and prepare the sampler: a :class:`Run`."""
    clf = as_classifier(classifier)
    img = _check_image(image)
    grid = WindowGrid(img.shape[0], img.shape[1], window, stride)
    if not isinstance(sampler, Sampler):
        raise TypeError(
            f"sampler: expected a sampler such as undesirable_jax.samplers.constant(0.0), got "
            f"{type(sampler).__name__}")
    checks.positive_number("laplace_n (training-set size)", laplace_n)
    key = checks.prng_key(key)
    base = _base_probs(clf, img)
    jax.block_until_ready(base)
    clf.raise_host_error()  # a black box's own error, kept by its host callback, comes first
    num_classes = check_probs(base, clf.outputs)
    rows = _check_classes(classes, num_classes)
    return Run(clf, sampler, sampler.prepare(img, window), img, key, grid, rows, base[rows], num_classes,
               float(laplace_n), _check_mesh(mesh), bool(progress))


@functools.partial(jax.jit, static_argnames=("laplace_n", "num_classes"))
def _moments(sums, squares, counts, p0, laplace_n, num_classes):
    """Per-window mean, its standard error, and the WE's standard error, from the accumulated moments.

    ``sums`` = Σ p, ``squares`` = Σ (p − p0)² per window and row; shifting by p0 keeps float32 from cancelling
    the variance of a probability near 1. Sample variance with n − 1; NaN for n < 2 (and n = 0). A
    variance within float32 rounding of the two sums (identical samples, as from a fixed fill) is 0.
    """
    n = counts[:, None]
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


@jax.jit
def _base_probs(clf: Classifier, image: jnp.ndarray) -> jnp.ndarray:
    return clf.probs(image[None])[0]


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


@functools.partial(jax.jit, static_argnames=("window", "chunk", "mesh"), donate_argnames=("acc", "sq"))
def _step(clf, sampler, state, image, key, ys, xs, rows, p0, wins, s_start, s_count, total, start, acc, sq, bad,
          *, window, chunk, mesh):
    """One chunk of the pairs ``i → (window wins[i // s_count], sample s_start + i % s_count)``, ``i < total``.

    Each of the mesh's devices takes ``chunk / devices`` consecutive pairs and adds their
    probabilities into its own ``acc [W, R]`` and their squared distances from ``p0`` into ``sq [W, R]``.
    """
    per_device = chunk // mesh.size
    axes = mesh.axis_names

    def local(clf, sampler, state, image, key, ys, xs, rows, p0, wins, s_start, s_count, total, start, acc, sq,
              bad):
        offset = start + _flat_axis_index(mesh) * per_device
        pairs, valid = pair_indices(offset, per_device, total)
        w, s = wins[pairs // s_count], s_start + pairs % s_count
        batch = perturb_at(sampler, state, image, key, ys, xs, w, s, window=window)
        full = clf.probs(batch)  # padding pairs repeat the last real pair, so every row is checked
        bad = bad | ~valid_probs(full)
        probs = jnp.where(valid[:, None], full[:, rows], 0.0)
        d = jnp.where(valid[:, None], probs - p0, 0.0)
        return acc.at[0, w].add(probs), sq.at[0, w].add(d * d), bad

    rep, sharded = PartitionSpec(), PartitionSpec(axes)
    return jax.shard_map(local, mesh=mesh, in_specs=(rep,) * 14 + (sharded,) * 3,
                         out_specs=(sharded,) * 3, check_vma=False)(
        clf, sampler, state, image, key, ys, xs, rows, p0, wins, s_start, s_count, total, start, acc, sq, bad)


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


def plan_chunk(chunk_size: int | None, total: int, devices: int) -> int:
    """Pairs per step: at most ``chunk_size`` (default 256 a device), a multiple of the device count,
    and balanced so the steps needed for ``total`` pairs carry the least padding."""
    if chunk_size is None:
        limit = DEFAULT_CHUNK * devices
    else:
        limit = checks.positive_int("chunk_size", chunk_size)
        if limit % devices:
            raise ValueError(f"chunk_size={limit} does not split over {devices} devices: pick a multiple of "
                             f"{devices} (e.g. {devices * max(1, round(limit / devices))})")
    steps = -(-total // limit)
    per_step = -(-total // steps)
    return -(-per_step // devices) * devices


def _check_image(image: Any) -> jnp.ndarray:
    try:
        arr = jnp.asarray(image)
    except TypeError as e:
        raise TypeError(f"image: expected a numeric array [H, W, C], got {type(image).__name__}") from e
    if arr.ndim != 3:
        raise ValueError(f"image: expected one image [H, W, C], got shape {arr.shape}; "
                         "for a batch, call explain once per image")
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise TypeError(f"image: expected a float array, got dtype {arr.dtype}")
    arr = arr.astype(jnp.float32)
    if not bool(jnp.all(jnp.isfinite(arr))):
        raise ValueError("image: contains NaN or inf; clean the image or its preprocessing")
    return arr


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
