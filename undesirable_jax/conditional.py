"""Conditional Gaussian sampler (METHOD.md §2): fill a window with values that agree with its ring.

A multivariate Gaussian over ``l × l`` patches (``l = window + 2·padding``) is fitted on random
patches of real images, on device. A removed ``k × k`` window is filled by sampling its pixels from
the Gaussian conditioned on the observed pixels of the surrounding patch:

    μ₁|₂ = μ₁ + Σ₁₂ Σ₂₂⁻¹ (x₂ − μ₂),   Σ₁|₂ = Σ₁₁ − Σ₁₂ Σ₂₂⁻¹ Σ₂₁,   x̃ = μ₁|₂ + chol(Σ₁|₂) z.

Near a border the patch is shifted to stay inside the image, so along each axis the window sits at
offset ``o ∈ {0, …, 2·padding}`` inside its patch (``padding`` in the interior). The pair
``(o_y, o_x)`` is the window's *position class*; the regression matrix ``W = Σ₁₂ Σ₂₂⁻¹``, the bias
``μ₁ − W μ₂`` and ``chol(Σ₁|₂)`` depend only on it, so they are computed once per class (in float64
with numpy) when the sampler is built. Sampling inside the engine's jitted step is then, per window,
``bias[c] + W[c]·x₂ + L[c]·z`` for its class ``c``: under ``vmap`` a batched matrix–vector product
(gathered class matrices on accelerators, a loop reading them in place on CPU, where copying them per
window was 1.3–6× slower at 5×5 windows and 7–28× at 10×10 (``benchmarks/bench_affine.py``); see
:func:`class_affine`; the sampler's ``batching`` field can force either form,
e.g. to test the accelerator form on a CPU). The products run at full float32 precision on every
platform (GPUs would otherwise use TF32, about three significant digits). An image shorter than ``l`` along an
axis is zero-padded to ``l`` in :meth:`ConditionalGaussian.prepare`; the padded pixels get zero
weight (their classes are recomputed for that image size, marginalising them out of the Gaussian).

The fitted sampler is saved to one safetensors file (no pickle) with its window, padding, channel
layout and a free-text description of the preprocessing; see :func:`save_conditional_gaussian` and
:func:`load_conditional_gaussian`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import custom_batching

from . import checks, io

FORMAT = "undesirable_jax.conditional_gaussian/1"


@struct.dataclass
class ConditionalState:
    """What :meth:`ConditionalGaussian.prepare` hands to ``fill`` for one image.

    ``source``: the image, zero-padded to at least ``l`` along each axis. The class arrays are indexed
    by ``o_y · (2·padding + 1) + o_x``: ``obs_index`` [n_cls, n_obs] spatial indices into the flattened
    ``l × l`` patch; ``weight`` [n_cls, G, n_in, n_obs·c] = Σ₁₂Σ₂₂⁻¹; ``bias`` [n_cls, G, n_in] =
    μ₁ − Wμ₂; ``chol`` [n_cls, G, n_in, n_in] = chol(Σ₁|₂). G is C per channel, 1 joint.
    """

    source: jnp.ndarray
    obs_index: jnp.ndarray
    weight: jnp.ndarray
    bias: jnp.ndarray
    chol: jnp.ndarray


@struct.dataclass
class ConditionalGaussian:
    """A fitted patch Gaussian and its per-position-class conditionals (a pytree sampler).

    ``mean`` [G, d] and ``cov`` [G, d, d] are the (regularised) patch moments: G = C groups of
    d = l² pixels when ``per_channel``, else one group of d = l²·C values ordered (row, column,
    channel). ``lo``/``hi`` [C]: the range of pixel values per channel in the fitting images; samples
    are clipped to it. The ``cond_*`` arrays are the :class:`ConditionalState` class arrays for an
    image at least ``l`` pixels high and wide (every class observes ``l² − k²`` pixels).
    ``batching``: how a batch of windows is sampled under ``vmap`` (see :func:`class_affine`): ``"auto"``
    (the platform's faster form), ``"gathered"`` or ``"looped"``; same results, not saved with the sampler.
    Change it with ``sampler.replace(batching="gathered")``.
    """

    mean: jnp.ndarray
    cov: jnp.ndarray
    lo: jnp.ndarray
    hi: jnp.ndarray
    cond_obs_index: jnp.ndarray
    cond_weight: jnp.ndarray
    cond_bias: jnp.ndarray
    cond_chol: jnp.ndarray
    window: int = struct.field(pytree_node=False)
    padding: int = struct.field(pytree_node=False)
    per_channel: bool = struct.field(pytree_node=False)
    channels: int = struct.field(pytree_node=False)
    preprocessing: str = struct.field(pytree_node=False, default="")
    batching: str = struct.field(pytree_node=False, default="auto")

    @property
    def size(self) -> int:
        """``l = window + 2·padding``: the side of the fitted patch."""
        return self.window + 2 * self.padding

    def prepare(self, image: jnp.ndarray, window: int) -> ConditionalState:
        """Check that the image and window fit this sampler; pad small images and recompute their classes."""
        if window != self.window:
            raise ValueError(
                f"window: this conditional sampler was fitted for window={self.window} (padding="
                f"{self.padding}), got window={window}; fit one with conditional_gaussian(..., "
                f"window={window}) or explain with window={self.window}")
        if image.ndim != 3 or image.shape[-1] != self.channels:
            raise ValueError(
                f"image: this conditional sampler was fitted on {self.channels}-channel images, got "
                f"image shape {tuple(image.shape)}; fit it on images preprocessed like this one")
        h, w = int(image.shape[0]), int(image.shape[1])
        if h < window or w < window:
            raise ValueError(f"image: {h}×{w} is smaller than the window {window}; pick a smaller window")
        size = self.size
        if h >= size and w >= size:
            return ConditionalState(source=image, obs_index=self.cond_obs_index, weight=self.cond_weight,
                                    bias=self.cond_bias, chol=self.cond_chol)
        source = jnp.pad(image, ((0, max(size - h, 0)), (0, max(size - w, 0)), (0, 0)))
        present_y, present_x = np.arange(size) < h, np.arange(size) < w
        mats = class_matrices(np.asarray(self.mean, np.float64), np.asarray(self.cov, np.float64),
                              window=self.window, padding=self.padding, per_channel=self.per_channel,
                              channels=self.channels, present_y=present_y, present_x=present_x)
        return ConditionalState(source=source, **{k: jnp.asarray(v) for k, v in mats.items()})

    def _observed(self, state: ConditionalState, y: jnp.ndarray, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """The window's position class and its observed values ``[G, n_obs·c]``."""
        size, pad, c = self.size, self.padding, self.channels
        src = state.source
        py = jnp.clip(y - pad, 0, src.shape[0] - size)
        px = jnp.clip(x - pad, 0, src.shape[1] - size)
        cls = (y - py) * (2 * pad + 1) + (x - px)
        zero = jnp.zeros((), jnp.int32)
        patch = jax.lax.dynamic_slice(src, (py, px, zero), (size, size, c)).reshape(size * size, c)
        obs = patch[state.obs_index[cls]]                          # [n_obs, C]
        v = obs.T if self.per_channel else obs.reshape(1, -1)      # [G, n_obs·c]
        return cls, v.astype(state.weight.dtype)

    def moments(self, state: ConditionalState, image: jnp.ndarray, window: int,
                y: jnp.ndarray, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Conditional mean ``[G, n_in]`` and Cholesky factor ``[G, n_in, n_in]`` of the window at (y, x)."""
        cls, v = self._observed(state, y, x)
        z = jnp.zeros(state.bias.shape[1:], state.bias.dtype)
        mean = class_affine(state.bias, state.weight, state.chol, cls, v, z, batching=self.batching)
        return mean, state.chol[cls]

    def fill(self, state: ConditionalState, image: jnp.ndarray, window: int, key: jax.Array,
             y: jnp.ndarray, x: jnp.ndarray, sample: jnp.ndarray) -> jnp.ndarray:
        """One draw of the window's pixels ``[window, window, C]`` given its ring, clipped to [lo, hi]."""
        cls, v = self._observed(state, y, x)
        z = jax.random.normal(key, state.bias.shape[1:], state.bias.dtype)
        draw = class_affine(state.bias, state.weight, state.chol, cls, v, z, batching=self.batching)
        c = self.channels
        block = draw.T.reshape(window, window, c) if self.per_channel else draw.reshape(window, window, c)
        return jnp.clip(block, self.lo, self.hi).astype(image.dtype)


def conditional_gaussian(
    images: Any,
    *,
    window: int,
    key: jax.Array,
    padding: int = 2,
    num_patches: int = 20_000,
    per_channel: bool = True,
    shrinkage: float = 0.0,
    ridge: float = 1e-3,
    preprocessing: str = "",
) -> ConditionalGaussian:
    """Fit a conditional Gaussian sampler on ``images`` ``[M, H, W, C]`` (preprocessed like the input).

    ``num_patches`` patches of side ``l = window + 2·padding`` are drawn on device (image and position
    uniform, with replacement, from ``key``); their mean and covariance are estimated on device, one
    Gaussian per channel (``per_channel=True``, as in PDA) or one over all channels jointly.

    Regularisation, so that conditioning is stable in float32 even for smooth images whose patch
    covariance is nearly singular: with S the sample covariance and v̄ the mean of its diagonal,
    ``Σ = (1 − shrinkage)·S + shrinkage·diag(S) + ridge·v̄·I``. The ridge bounds Σ₂₂'s condition
    number by about ``d / ridge`` and keeps Σ₁|₂ ≥ ridge·v̄·I (so its Cholesky factor exists);
    ``shrinkage`` additionally pulls correlations toward 0 (useful with few patches).

    ``preprocessing`` is free text saved with the sampler (e.g. "RGB /255, ImageNet mean/std").
    """
    arr = _check_images(images)
    window = checks.integer("window", window, minimum=1)
    padding = checks.integer("padding", padding, minimum=0)
    num_patches = checks.integer("num_patches", num_patches, minimum=2)
    per_channel = _check_bool("per_channel", per_channel)
    key = checks.prng_key(key)
    for name, val in (("shrinkage", shrinkage), ("ridge", ridge)):
        checks.nonnegative_number(name, val)
    if shrinkage > 1:
        raise ValueError(f"shrinkage: must lie in [0, 1], got {shrinkage!r}")
    if not isinstance(preprocessing, str):
        raise TypeError(f"preprocessing: expected a string describing it, got {type(preprocessing).__name__}")
    size = window + 2 * padding
    m, h, w, c = arr.shape
    if h < size or w < size:
        raise ValueError(
            f"images: {h}×{w} images are smaller than the patch side {size} = window {window} + 2·padding "
            f"{padding}; fit on larger images or use a smaller window or padding")
    imgs = jnp.asarray(arr)
    mean, cov = _patch_moments(imgs, key, size=size, num_patches=num_patches, per_channel=per_channel)
    lo, hi = jnp.min(imgs, axis=(0, 1, 2)), jnp.max(imgs, axis=(0, 1, 2))
    s = np.asarray(cov, np.float64)
    diag = np.einsum("gii->gi", s)
    eye = np.eye(s.shape[-1])
    reg = ((1 - shrinkage) * s + shrinkage * diag[:, :, None] * eye
           + ridge * diag.mean(-1)[:, None, None] * eye)
    return from_moments(np.asarray(mean), reg, window=window, padding=padding, per_channel=per_channel,
                        channels=c, lo=np.asarray(lo), hi=np.asarray(hi), preprocessing=preprocessing)


def from_moments(
    mean: Any,
    cov: Any,
    *,
    window: int,
    padding: int,
    per_channel: bool,
    channels: int,
    lo: Any = -np.inf,
    hi: Any = np.inf,
    preprocessing: str = "",
) -> ConditionalGaussian:
    """Build the sampler from given patch moments (no regularisation is added: ``cov`` must be SPD).

    ``mean`` [G, d], ``cov`` [G, d, d] in the layout of :class:`ConditionalGaussian`; ``lo``/``hi``:
    scalars or per-channel [C] clip bounds. The class matrices are computed here, in float64.
    """
    window = checks.integer("window", window, minimum=1)
    padding = checks.integer("padding", padding, minimum=0)
    channels = checks.integer("channels", channels, minimum=1)
    per_channel = _check_bool("per_channel", per_channel)
    size = window + 2 * padding
    groups, dim = (channels, size * size) if per_channel else (1, size * size * channels)
    mean = np.asarray(mean, np.float64)
    cov = np.asarray(cov, np.float64)
    if mean.shape != (groups, dim) or cov.shape != (groups, dim, dim):
        raise ValueError(
            f"mean, cov: expected shapes {(groups, dim)} and {(groups, dim, dim)} for window={window}, "
            f"padding={padding}, channels={channels}, per_channel={per_channel}; got {mean.shape} and "
            f"{cov.shape}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
        raise ValueError("mean, cov: contain NaN or inf; check the fitting images")
    cov32 = cov.astype(np.float32)
    lo32 = np.broadcast_to(np.asarray(lo, np.float32), (channels,)).copy()
    hi32 = np.broadcast_to(np.asarray(hi, np.float32), (channels,)).copy()
    if np.any(lo32 > hi32):
        raise ValueError(f"lo, hi: lower clip bound above upper one: lo={lo32.tolist()}, hi={hi32.tolist()}")
    full = np.ones(size, bool)
    # Built from the float32-rounded moments, so a saved-and-loaded sampler is bit-identical.
    mats = class_matrices(mean.astype(np.float32).astype(np.float64), cov32.astype(np.float64),
                          window=window, padding=padding, per_channel=per_channel, channels=channels,
                          present_y=full, present_x=full)
    return ConditionalGaussian(
        mean=jnp.asarray(mean, jnp.float32), cov=jnp.asarray(cov32), lo=jnp.asarray(lo32),
        hi=jnp.asarray(hi32), cond_obs_index=jnp.asarray(mats["obs_index"]),
        cond_weight=jnp.asarray(mats["weight"]), cond_bias=jnp.asarray(mats["bias"]),
        cond_chol=jnp.asarray(mats["chol"]), window=window, padding=padding, per_channel=per_channel,
        channels=channels, preprocessing=preprocessing)


def class_matrices(mean: np.ndarray, cov: np.ndarray, *, window: int, padding: int, per_channel: bool,
                   channels: int, present_y: np.ndarray, present_x: np.ndarray) -> dict[str, np.ndarray]:
    """Conditioning matrices for every position class, in float64, returned as float32/int32 arrays.

    Class ``o_y·(2p+1) + o_x`` puts the window's top-left corner at ``(o_y, o_x)`` inside the patch;
    the observed pixels are the patch pixels marked present (inside the image) and outside the
    window. Classes observing fewer pixels than the largest one are padded with index 0 and zero
    weight, so every class has the same shapes.
    """
    size, k, c = window + 2 * padding, window, channels
    reps = 1 if per_channel else c           # values per spatial pixel in one group's vector
    spatial = np.arange(size * size).reshape(size, size)
    present = np.outer(present_y, present_x)
    classes = []
    for oy in range(2 * padding + 1):
        for ox in range(2 * padding + 1):
            inner = np.zeros((size, size), bool)
            inner[oy:oy + k, ox:ox + k] = True
            classes.append((spatial[inner], spatial[present & ~inner]))
    n_obs = max(1, max(len(o) for _, o in classes))
    n_in = k * k * reps
    groups = mean.shape[0]
    out_idx = np.zeros((len(classes), n_obs), np.int32)
    out_w = np.zeros((len(classes), groups, n_in, n_obs * reps))
    out_b = np.zeros((len(classes), groups, n_in))
    out_l = np.zeros((len(classes), groups, n_in, n_in))

    def expand(sp):  # spatial indices -> vector indices (row, column, channel order when joint)
        return (sp[:, None] * reps + np.arange(reps)).reshape(-1)

    for j, (inner_sp, obs_sp) in enumerate(classes):
        i1, i2 = expand(inner_sp), expand(obs_sp)
        out_idx[j, :len(obs_sp)] = obs_sp
        for g in range(groups):
            s11, s12, s22 = cov[g][np.ix_(i1, i1)], cov[g][np.ix_(i1, i2)], cov[g][np.ix_(i2, i2)]
            if len(i2):
                l22 = _cholesky(s22, "Σ₂₂")
                wt = _cho_solve(l22, s12.T).T                    # Σ₁₂ Σ₂₂⁻¹
            else:
                wt = np.zeros((n_in, 0))
            cond = s11 - wt @ s12.T
            out_w[j, g, :, :len(i2)] = wt
            out_b[j, g] = mean[g, i1] - wt @ mean[g, i2]
            out_l[j, g] = _cholesky(0.5 * (cond + cond.T), "Σ₁|₂")
    return {"obs_index": out_idx, "weight": out_w.astype(np.float32), "bias": out_b.astype(np.float32),
            "chol": out_l.astype(np.float32)}


BATCHING = ("auto", "gathered", "looped")
_HIGHEST = jax.lax.Precision.HIGHEST


def class_affine(bias: jnp.ndarray, weight: jnp.ndarray, chol: jnp.ndarray, cls: jnp.ndarray,
                 v: jnp.ndarray, z: jnp.ndarray, *, batching: str = "auto") -> jnp.ndarray:
    """``bias[cls] + weight[cls] @ v + chol[cls] @ z`` per group: one window's conditional draw ``[G, n_in]``.

    Under ``vmap`` over windows (how the engine calls ``fill``) a batching rule computes the batch in
    one of two equal ways: ``batching="auto"`` picks per platform, :func:`affine_looped` on CPU and
    :func:`affine_gathered` elsewhere; ``"gathered"`` or ``"looped"`` force one on every platform.
    """
    if batching not in _AFFINE:
        raise ValueError(f"batching: expected one of {BATCHING}, got {batching!r}")
    return _AFFINE[batching](bias, weight, chol, cls, v, z)


def _affine_one(bias, weight, chol, cls, v, z):
    return (bias[cls] + jnp.einsum("gio,go->gi", weight[cls], v, precision=_HIGHEST)
            + jnp.einsum("gij,gj->gi", chol[cls], z, precision=_HIGHEST))


def _batched_affine(batching: str):
    """``_affine_one`` with a ``vmap`` rule that computes a batch of windows the ``batching`` way."""

    @custom_batching.custom_vmap
    def affine(bias, weight, chol, cls, v, z):
        return _affine_one(bias, weight, chol, cls, v, z)

    @affine.def_vmap
    def rule(axis_size, in_batched, bias, weight, chol, cls, v, z):
        if any(in_batched[:3]):  # class tables batched too (e.g. a vmap over samplers): plain vmap
            axes = tuple(0 if b else None for b in in_batched)
            return jax.vmap(_affine_one, in_axes=axes)(bias, weight, chol, cls, v, z), True
        cls, v, z = (a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)
                     for a, b in zip((cls, v, z), in_batched[3:]))
        if batching == "auto":
            out = jax.lax.platform_dependent(bias, weight, chol, cls, v, z, cpu=affine_looped,
                                             default=affine_gathered)
        else:
            out = {"gathered": affine_gathered, "looped": affine_looped}[batching](bias, weight, chol, cls, v, z)
        return out, True

    return affine


_AFFINE = {b: _batched_affine(b) for b in BATCHING}


def affine_gathered(bias, weight, chol, cls, v, z):
    """Batched form for accelerators: gather each window's class matrices, then one batched matmul.

    ``cls`` [P], ``v`` [P, G, n_obs·c], ``z`` [P, G, n_in] → [P, G, n_in]. On CPU it is memory-bound:
    the gathered copies (P × the class matrices, 60 MB for 256 windows of 10×10×3) dominate.
    """
    return (bias[cls] + jnp.einsum("pgio,pgo->pgi", weight[cls], v, precision=_HIGHEST)
            + jnp.einsum("pgij,pgj->pgi", chol[cls], z, precision=_HIGHEST))


def affine_looped(bias, weight, chol, cls, v, z):
    """Batched form for CPU: a loop over windows reading its class's matrices in place (no copies);
    faster than :func:`affine_gathered` there from 5×5 windows up (1.3–6× at 5×5, 7–28× at 10×10 on
    2 loaded cores; slower at 2×2: ``benchmarks/bench_affine.py``), but one kernel launch per window
    on a GPU."""
    return jax.lax.map(lambda a: _affine_one(bias, weight, chol, *a), (cls, v, z))


def save_conditional_gaussian(path: str | os.PathLike, sampler: ConditionalGaussian) -> Path:
    """Write ``sampler`` to one safetensors file (atomically): moments, clip range and settings.

    The class matrices are not stored; loading recomputes them (bit-identically) from the moments.
    """
    from safetensors.numpy import save

    if not isinstance(sampler, ConditionalGaussian):
        raise TypeError(f"sampler: expected a ConditionalGaussian, got {type(sampler).__name__}")
    tensors = {name: np.ascontiguousarray(np.asarray(getattr(sampler, name)))
               for name in ("mean", "cov", "lo", "hi")}
    meta = {"format": FORMAT, "window": str(sampler.window), "padding": str(sampler.padding),
            "per_channel": json.dumps(sampler.per_channel), "channels": str(sampler.channels),
            "preprocessing": sampler.preprocessing}
    return io.write_bytes(path, save(tensors, metadata=meta))


def load_conditional_gaussian(path: str | os.PathLike, *, window: int | None = None,
                              padding: int | None = None, channels: int | None = None) -> ConditionalGaussian:
    """Read a sampler written by :func:`save_conditional_gaussian` (safetensors: no code is executed).

    ``window``, ``padding``, ``channels``: when given, what the caller will use it with; a mismatch
    with what the file was fitted for raises ``ValueError``.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no such file {str(path)!r}; save one with save_conditional_gaussian")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"path: {str(path)!r} is not a readable safetensors file ({e})") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"path: {str(path)!r} is not a conditional Gaussian sampler file "
                         f"(format {meta.get('format')!r}, expected {FORMAT!r})")
    missing = {"mean", "cov", "lo", "hi"} - set(tensors)
    if missing:
        raise ValueError(f"path: {str(path)!r} lacks tensors {sorted(missing)}")
    try:
        stored = {name: int(meta[name]) for name in ("window", "padding", "channels")}
        per_channel = json.loads(meta["per_channel"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"path: {str(path)!r} has missing or malformed settings in its metadata ({e!r}); "
                         "save it again with save_conditional_gaussian") from e
    for name, want in (("window", window), ("padding", padding), ("channels", channels)):
        if want is not None and want != stored[name]:
            raise ValueError(f"{name}: the sampler in {str(path)!r} was fitted for {name}={stored[name]}, "
                             f"got {name}={want}; fit a new sampler for {name}={want}")
    return from_moments(tensors["mean"], tensors["cov"], window=stored["window"], padding=stored["padding"],
                        per_channel=per_channel, channels=stored["channels"],
                        lo=tensors["lo"], hi=tensors["hi"], preprocessing=meta.get("preprocessing", ""))


@functools.partial(jax.jit, static_argnames=("size", "num_patches", "per_channel"))
def _patch_moments(images: jnp.ndarray, key: jax.Array, *, size: int, num_patches: int,
                   per_channel: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean [G, d] and sample covariance [G, d, d] of random ``size × size`` patches (on device)."""
    m, h, w, c = images.shape
    k_img, k_y, k_x = jax.random.split(key, 3)
    idx = jax.random.randint(k_img, (num_patches,), 0, m)
    ys = jax.random.randint(k_y, (num_patches,), 0, h - size + 1)
    xs = jax.random.randint(k_x, (num_patches,), 0, w - size + 1)
    zero = jnp.zeros((), jnp.int32)
    patches = jax.vmap(lambda i, y, x: jax.lax.dynamic_slice(images, (i, y, x, zero), (1, size, size, c))[0])(
        idx, ys, xs)                                             # [N, l, l, C]
    if per_channel:
        vecs = patches.reshape(num_patches, size * size, c).transpose(2, 0, 1)   # [C, N, l²]
    else:
        vecs = patches.reshape(1, num_patches, size * size * c)                # [1, N, l²·C]
    mean = vecs.mean(axis=1)
    centred = vecs - mean[:, None, :]
    cov = jnp.einsum("gni,gnj->gij", centred, centred, precision=jax.lax.Precision.HIGHEST)
    return mean, cov / (num_patches - 1)


def _cholesky(a: np.ndarray, name: str) -> np.ndarray:
    try:
        return np.linalg.cholesky(a)
    except np.linalg.LinAlgError as e:
        raise ValueError(f"cov: {name} is not positive definite; fit with a larger ridge (or more "
                         f"patches), or pass a positive-definite covariance") from e


def _cho_solve(l: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve (L Lᵀ) X = B for X with two triangular solves (numpy only, float64)."""
    y = np.linalg.solve(l, b)
    return np.linalg.solve(l.T, y)


def _check_images(images: Any) -> np.ndarray:
    try:
        arr = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise TypeError(f"images: expected a numeric array [M, H, W, C], got {type(images).__name__}") from e
    if arr.ndim != 4 or arr.shape[0] < 1:
        raise ValueError(f"images: expected a stack [M, H, W, C] with M >= 1, got shape {arr.shape}; "
                         "for one image use images[None]")
    if not np.all(np.isfinite(arr)):
        raise ValueError("images: contain NaN or inf; clean them or their preprocessing")
    return arr


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)
