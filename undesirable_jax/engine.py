"""The PDA engine: every (window, sample) pair through the classifier, in fixed-size jitted chunks.

Pairs are numbered ``i = w · S + s`` (window ``w`` in row-major grid order, sample ``s``). One jitted
step takes ``chunk_size`` consecutive pairs, fills their windows on device with the sampler, classifies
the perturbed images in one batched call and adds the probabilities into a per-window accumulator
``[num_windows, K]``. The last chunk is padded (and masked out), so the step compiles once; memory is
one chunk of images plus the accumulator, whatever the number of windows. Each pair's randomness
comes from ``fold_in(fold_in(key, w), s)``, so results do not depend on the chunk size or devices.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from . import checks
from .classifiers import Classifier, as_classifier, check_probs, valid_probs
from .evidence import weight_of_evidence
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
    Laplace correction uses even when only some rows were kept.
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
    num_samples: int = 10,
    key: jax.Array,
    chunk_size: int | None = None,
    classes: Sequence[int] | None = None,
    laplace_n: float = 100_000,
    mesh: Mesh | str | None = None,
    progress: bool = False,
) -> Explanation:
    """Prediction Difference Analysis of one image: weight of evidence for every class at once.

    Args:
      classifier: a callable ``[N, H, W, C] -> logits [N, K]`` or a :class:`Classifier`.
      image: ``[H, W, C]`` float array, preprocessed for the classifier.
      window, stride: the sliding window's side and step in pixels (METHOD.md §1).
      sampler: what fills a removed window (``undesirable_jax.samplers``).
      num_samples: S, samples averaged per window.
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
    """
    clf = as_classifier(classifier)
    img = _check_image(image)
    grid = WindowGrid(img.shape[0], img.shape[1], window, stride)
    num_samples = checks.positive_int("num_samples", num_samples)
    if not isinstance(sampler, Sampler):
        raise TypeError(
            f"sampler: expected a sampler such as undesirable_jax.samplers.constant(0.0), got "
            f"{type(sampler).__name__}")
    if not (isinstance(laplace_n, (int, float)) and math.isfinite(laplace_n) and laplace_n > 0):
        raise ValueError(f"laplace_n: must be a positive number (training-set size), got {laplace_n!r}")
    key = checks.prng_key(key)
    total = grid.num_windows * num_samples
    if total > checks.INT32_MAX:
        raise ValueError(f"num_samples: {num_samples} samples x {grid.num_windows} windows = {total} perturbed "
                         f"images, more than the engine's int32 indices hold ({checks.INT32_MAX}); lower "
                         "num_samples or raise the stride")

    base = _base_probs(clf, img)
    jax.block_until_ready(base)
    clf.raise_host_error()  # a black box's own error, kept by its host callback, comes first
    num_classes = check_probs(base, clf.outputs)
    rows = _check_classes(classes, num_classes)

    mesh = _check_mesh(mesh)
    chunk = plan_chunk(chunk_size, total, mesh.size)
    state = sampler.prepare(img, window)
    ys, xs = jnp.asarray(grid.ys), jnp.asarray(grid.xs)
    acc, bad = _zeros(mesh, grid.num_windows, int(rows.shape[0]))
    starts = range(0, total, chunk)
    for start in tqdm(starts, desc="windows", unit="chunk", disable=not progress):
        acc, bad = _step(clf, sampler, state, img, key, ys, xs, rows, jnp.int32(start), acc, bad,
                         window=window, num_samples=num_samples, chunk=chunk, mesh=mesh)
    any_bad = bool(jnp.any(bad))
    clf.raise_host_error()
    if any_bad:
        raise ValueError("classifier: returned NaN or inf, or probabilities outside [0, 1] or not summing to 1, "
                         "on a perturbed image; check the model and that the sampler's fills lie in the input "
                         "range it expects")

    ny, nx = grid.shape
    # The one reduction over devices; the result lives on one device, like the image's explanation.
    acc = jax.device_put(jnp.sum(acc, axis=0), jax.local_devices()[0])
    window_probs = (acc / num_samples).T.reshape(rows.shape[0], ny, nx)
    probs = base[rows]
    we = weight_of_evidence(probs[:, None, None], window_probs, laplace_n, num_classes)
    return Explanation(
        evidence=grid.to_pixels(we),
        probs=probs,
        classes=rows,
        coverage=jnp.asarray(grid.coverage()),
        window_probs=window_probs,
        window=int(window),
        stride=int(stride),
        num_samples=num_samples,
        num_classes=num_classes,
        laplace_n=float(laplace_n),
    )


@jax.jit
def _base_probs(clf: Classifier, image: jnp.ndarray) -> jnp.ndarray:
    return clf.probs(image[None])[0]


def pair_indices(start: jnp.ndarray, chunk: int, total: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Pair numbers ``start … start+chunk−1`` clamped to the last pair, and which of them are real."""
    i = start + jnp.arange(chunk, dtype=jnp.int32)
    return jnp.minimum(i, total - 1), i < total


def perturb(sampler: Sampler, state: Any, image: jnp.ndarray, key: jax.Array, ys: jnp.ndarray,
            xs: jnp.ndarray, pairs: jnp.ndarray, *, window: int, num_samples: int) -> jnp.ndarray:
    """The perturbed images ``[P, H, W, C]`` for pair numbers ``pairs`` (built on device)."""
    w, s = pairs // num_samples, pairs % num_samples
    nx = xs.shape[0]
    y, x = ys[w // nx], xs[w % nx]
    keys = jax.vmap(lambda a, b: jax.random.fold_in(jax.random.fold_in(key, a), b))(w, s)
    fill = functools.partial(sampler.fill, state, image, window)
    patches = jax.vmap(fill)(keys, y, x, s)
    zero = jnp.zeros((), jnp.int32)
    return jax.vmap(lambda p, a, b: jax.lax.dynamic_update_slice(image, p, (a, b, zero)))(patches, y, x)


@functools.partial(jax.jit, static_argnames=("window", "num_samples", "chunk", "mesh"),
                   donate_argnames=("acc",))
def _step(clf, sampler, state, image, key, ys, xs, rows, start, acc, bad, *, window, num_samples, chunk, mesh):
    """One chunk: each of the mesh's devices takes ``chunk / devices`` consecutive pairs."""
    per_device = chunk // mesh.size
    total = acc.shape[1] * num_samples
    axes = mesh.axis_names

    def local(clf, sampler, state, image, key, ys, xs, rows, start, acc, bad):
        offset = start + _flat_axis_index(mesh) * per_device
        pairs, valid = pair_indices(offset, per_device, total)
        batch = perturb(sampler, state, image, key, ys, xs, pairs, window=window, num_samples=num_samples)
        full = clf.probs(batch)  # padding pairs repeat the last real pair, so every row is checked
        bad = bad | ~valid_probs(full)
        probs = jnp.where(valid[:, None], full[:, rows], 0.0)
        return acc.at[0, pairs // num_samples].add(probs), bad

    rep, sharded = PartitionSpec(), PartitionSpec(axes)
    return jax.shard_map(local, mesh=mesh, in_specs=(rep,) * 9 + (sharded, sharded),
                         out_specs=(sharded, sharded), check_vma=False)(
        clf, sampler, state, image, key, ys, xs, rows, start, acc, bad)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _zeros(mesh: Mesh, num_windows: int, num_rows: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-device accumulators, placed exactly as ``_step`` returns them (so it compiles once)."""
    sharded = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
    acc = jnp.zeros((mesh.size, num_windows, num_rows), jnp.float32)
    bad = jnp.zeros((mesh.size,), bool)
    return jax.lax.with_sharding_constraint(acc, sharded), jax.lax.with_sharding_constraint(bad, sharded)


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
