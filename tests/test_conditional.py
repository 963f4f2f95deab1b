"""Conditional Gaussian sampler: Gaussian conditioning against float64 numpy, sampling statistics,
natural images against the marginal sampler, the engine's one-compile step, and save/load."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage import data, transform

import undesirable_jax as uj
from undesirable_jax import conditional as cg
from undesirable_jax import engine, samplers


def random_spd(rng, d, floor=0.05):
    """A random SPD matrix with strong correlations (Wishart-like) plus a floor on the spectrum."""
    a = rng.normal(size=(d, d + 3))
    return a @ a.T / (d + 3) + floor * np.eye(d)


def random_sampler(rng, *, window, padding, channels, per_channel, lo=-np.inf, hi=np.inf):
    size = window + 2 * padding
    groups, d = (channels, size * size) if per_channel else (1, size * size * channels)
    mean = rng.normal(size=(groups, d))
    cov = np.stack([random_spd(rng, d) for _ in range(groups)])
    s = cg.from_moments(mean, cov, window=window, padding=padding, per_channel=per_channel,
                        channels=channels, lo=lo, hi=hi)
    return s, mean, cov


def reference_conditional(mean, cov, image, y, x, window, padding, per_channel):
    """Direct float64 Gaussian conditioning for the window at (y, x), built from scratch.

    The l×l patch is placed at clip(y − p, 0, H − l) (top-aligned at 0 when H < l); observed =
    the patch's pixels inside the image and outside the window. Returns the mean [k, k, C] and
    the conditional covariance of each group.
    """
    h, w, c = image.shape
    size = window + 2 * padding
    py = min(max(y - padding, 0), h - size) if h >= size else 0
    px = min(max(x - padding, 0), w - size) if w >= size else 0
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    in_window = (rows + py >= y) & (rows + py < y + window) & (cols + px >= x) & (cols + px < x + window)
    in_image = (rows + py < h) & (cols + px < w)
    inner = np.flatnonzero(in_window.ravel())
    obs = np.flatnonzero((in_image & ~in_window).ravel())
    if not per_channel:  # vector index = spatial * C + channel
        inner = (inner[:, None] * c + np.arange(c)).ravel()
        obs = (obs[:, None] * c + np.arange(c)).ravel()
    padded = np.zeros((max(h, size), max(w, size), c))
    padded[:h, :w] = image
    patch = padded[py:py + size, px:px + size].astype(np.float64)
    vecs = patch.reshape(size * size, c).T if per_channel else patch.reshape(1, -1)
    means, covs = [], []
    for g in range(mean.shape[0]):
        s = cov[g]
        s11, s12, s22 = s[np.ix_(inner, inner)], s[np.ix_(inner, obs)], s[np.ix_(obs, obs)]
        if obs.size:
            gain = s12 @ np.linalg.inv(s22)
            means.append(mean[g, inner] + gain @ (vecs[g, obs] - mean[g, obs]))
            covs.append(s11 - gain @ s12.T)
        else:
            means.append(mean[g, inner])
            covs.append(s11)
    m = np.stack(means)
    m = m.T.reshape(window, window, c) if per_channel else m.reshape(window, window, c)
    return m, np.stack(covs)


def moments_at(s, state, image, window, positions):
    """The sampler's conditional mean (as [n, k, k, C]) and covariance (chol·cholᵀ) at (y, x) positions."""
    ys = jnp.asarray([p[0] for p in positions], jnp.int32)
    xs = jnp.asarray([p[1] for p in positions], jnp.int32)
    m, chol = jax.jit(jax.vmap(lambda y, x: s.moments(state, image, window, y, x)))(ys, xs)
    m = np.asarray(m, np.float64)
    n, c = m.shape[0], s.channels
    m = m.transpose(0, 2, 1).reshape(n, window, window, c) if s.per_channel else m.reshape(n, window, window, c)
    chol = np.asarray(chol, np.float64)
    return m, chol @ np.swapaxes(chol, -1, -2)


def rel(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


# Interior, four edges, four corners and the near-border offsets in between.
POSITIONS = {"interior": (6, 7), "top": (0, 6), "left": (5, 0), "bottom": (14, 8), "right": (4, 15),
             "top-left": (0, 0), "bottom-right": (14, 15), "near-top": (1, 8), "near-right-bottom": (13, 14)}


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "joint"])
def test_conditional_moments_match_float64_numpy(per_channel):
    rng = np.random.default_rng(0)
    window, padding, c = 3, 2, 2
    s, mean, cov = random_sampler(rng, window=window, padding=padding, channels=c, per_channel=per_channel)
    image = rng.normal(size=(17, 18, c)).astype(np.float32)
    state = s.prepare(jnp.asarray(image), window)
    got_m, got_c = moments_at(s, state, jnp.asarray(image), window, list(POSITIONS.values()))
    classes_seen = set()
    for i, (name, (y, x)) in enumerate(POSITIONS.items()):
        ref_m, ref_c = reference_conditional(mean, cov, image, y, x, window, padding, per_channel)
        assert rel(got_m[i], ref_m) < 1e-4, name
        assert rel(got_c[i], ref_c) < 1e-4, name
        classes_seen.add((y - min(max(y - padding, 0), 17 - 7), x - min(max(x - padding, 0), 18 - 7)))
    assert len(classes_seen) == len(POSITIONS)  # every position above is a different class


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "joint"])
@pytest.mark.parametrize("shape", [(5, 9, 2), (9, 4, 2), (3, 3, 2)], ids=["short", "narrow", "window-sized"])
def test_images_smaller_than_the_patch_condition_on_what_exists(shape, per_channel):
    rng = np.random.default_rng(1)
    window, padding = 3, 2
    s, mean, cov = random_sampler(rng, window=window, padding=padding, channels=2, per_channel=per_channel)
    image = rng.normal(size=shape).astype(np.float32)
    state = s.prepare(jnp.asarray(image), window)
    positions = [(y, x) for y in range(shape[0] - window + 1) for x in range(shape[1] - window + 1)]
    got_m, got_c = moments_at(s, state, jnp.asarray(image), window, positions)
    for i, (y, x) in enumerate(positions):
        ref_m, ref_c = reference_conditional(mean, cov, image, y, x, window, padding, per_channel)
        assert rel(got_m[i], ref_m) < 1e-4, (y, x)
        assert rel(got_c[i], ref_c) < 1e-4, (y, x)


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "joint"])
def test_samples_converge_to_the_conditional_gaussian(per_channel):
    """n = 40 000 draws. Mean: every coordinate within 5 standard errors (a false pass would need the
    error to hide below 5σ in all coordinates; a false failure has probability < 1e-5). Covariance:
    relative Frobenius error < 0.05, about 3× its expected size sqrt((1 + tr²/‖Σ‖²)/n) ≤ 0.017, while
    the unconditioned prior covariance is far outside it (checked below)."""
    rng = np.random.default_rng(2)
    window, padding, c, n = 3, 1, 2, 40_000
    s, mean, cov = random_sampler(rng, window=window, padding=padding, channels=c, per_channel=per_channel)
    image = rng.normal(size=(8, 8, c)).astype(np.float32)
    y, x = 0, 3  # an edge window
    ref_m, ref_c = reference_conditional(mean, cov, image, y, x, window, padding, per_channel)
    state = s.prepare(jnp.asarray(image), window)
    keys = jax.random.split(jax.random.key(0), n)
    draws = jax.jit(jax.vmap(lambda k: s.fill(state, jnp.asarray(image), window, k, jnp.int32(y),
                                              jnp.int32(x), jnp.int32(0))))(keys)
    draws = np.asarray(draws, np.float64)                             # [n, k, k, C]
    if per_channel:
        vec = draws.reshape(n, window * window, c).transpose(2, 0, 1)  # [C, n, k²]
        ref_vec = ref_m.reshape(window * window, c).T
    else:
        vec = draws.reshape(1, n, -1)
        ref_vec = ref_m.reshape(1, -1)
    emp_m = vec.mean(1)
    se = np.sqrt(np.einsum("gii->gi", ref_c) / n)
    assert np.all(np.abs(emp_m - ref_vec) < 5 * se)
    for g in range(vec.shape[0]):
        emp_c = np.cov(vec[g], rowvar=False)
        assert rel(emp_c, ref_c[g]) < 0.05
        size = window + 2 * padding   # the window sits at patch offset (0, 1): top border, x = 3 → patch column 2
        inner = np.flatnonzero(((np.arange(size)[:, None] >= y) & (np.arange(size)[:, None] < y + window)
                                & (np.arange(size) >= 1) & (np.arange(size) < 1 + window)).ravel())
        if not per_channel:
            inner = (inner[:, None] * c + np.arange(c)).ravel()
        prior = cov[g][np.ix_(inner, inner)]
        assert rel(prior, ref_c[g]) > 0.2   # the test can tell conditioned from unconditioned
        assert np.max(np.abs(mean[g, inner] - ref_vec[g]) / se[g]) > 20   # … in the mean too


def test_samples_are_clipped_to_the_fitted_range():
    rng = np.random.default_rng(3)
    s, _, _ = random_sampler(rng, window=3, padding=1, channels=2, per_channel=True,
                             lo=[-0.3, 0.0], hi=[0.2, 0.5])
    image = rng.normal(size=(6, 6, 2)).astype(np.float32)
    state = s.prepare(jnp.asarray(image), 3)
    keys = jax.random.split(jax.random.key(1), 500)
    draws = np.asarray(jax.vmap(lambda k: s.fill(state, jnp.asarray(image), 3, k, jnp.int32(2),
                                                 jnp.int32(1), jnp.int32(0)))(keys))
    for ch, (lo, hi) in enumerate([(-0.3, 0.2), (0.0, 0.5)]):
        assert draws[..., ch].min() >= lo and draws[..., ch].max() <= hi
        assert np.mean(draws[..., ch] == hi) > 0.01  # the bounds were actually hit


def test_fitted_moments_layout_is_exact_on_two_patch_sized_images():
    """Images exactly l×l: every patch is one of the two images, so mean = b + p̂(a − b) and the
    sample covariance is rank one, S = p̂(1 − p̂)·n/(n − 1)·(a − b)(a − b)ᵀ, in both layouts; the
    stored covariance is S regularised as the docstring says."""
    rng = np.random.default_rng(4)
    size, c, n = 7, 3, 4000
    a, b = rng.uniform(size=(2, size, size, c)).astype(np.float32)
    for per_channel in (True, False):
        s = cg.conditional_gaussian(np.stack([a, b]), window=3, padding=2, num_patches=n,
                                    key=jax.random.key(0), per_channel=per_channel, ridge=1e-3,
                                    shrinkage=0.1)
        if per_channel:
            va, vb = a.reshape(-1, c).T, b.reshape(-1, c).T          # [C, l²]
        else:
            va, vb = a.reshape(1, -1), b.reshape(1, -1)
        diff = (va - vb).astype(np.float64)
        mean = np.asarray(s.mean, np.float64)
        p = np.sum((mean - vb) * diff) / np.sum(diff * diff)
        assert 0.45 < p < 0.55
        np.testing.assert_allclose(mean, vb + p * diff, atol=1e-5)
        ref = p * (1 - p) * n / (n - 1) * np.einsum("gi,gj->gij", diff, diff)
        diag = np.einsum("gii->gi", ref)      # regularised: 0.9·S + 0.1·diag(S) + 1e-3·mean(diag S)·I
        ref = 0.9 * ref + (0.1 * diag + 1e-3 * diag.mean(-1, keepdims=True))[:, :, None] * np.eye(ref.shape[-1])
        np.testing.assert_allclose(np.asarray(s.cov), ref, atol=2e-5)
        np.testing.assert_allclose(np.asarray(s.lo), np.minimum(a, b).min((0, 1)))
        np.testing.assert_allclose(np.asarray(s.hi), np.maximum(a, b).max((0, 1)))


def test_fitting_draws_every_patch_position():
    """Image value = its row index: the patch's top row averages E[y] = (H − l)/2 over uniform y."""
    size, h, n = 7, 12, 20_000
    img = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None, None], (h, 9, 1))
    s = cg.conditional_gaussian(img[None], window=3, padding=2, num_patches=n, key=jax.random.key(5))
    top = np.asarray(s.mean)[0, :size]
    sd = np.sqrt(((h - size + 1) ** 2 - 1) / 12 / n)
    np.testing.assert_allclose(top, (h - size) / 2, atol=5 * sd)
    np.testing.assert_allclose(np.asarray(s.mean)[0, -1], (h - size) / 2 + size - 1, atol=5 * sd)


def _natural(name, shape):
    img = getattr(data, name)().astype(np.float32) / 255.0
    return transform.resize(img, shape, anti_aliasing=True).astype(np.float32)


@pytest.mark.slow
def test_conditional_fills_beat_marginal_fills_on_a_natural_image():
    shape, window = (60, 90, 3), 8
    test_img = _natural("chelsea", shape)
    others = [_natural(n, shape) for n in ("astronaut", "coffee", "rocket")]
    pool = np.stack(others + [o[:, ::-1] for o in others])       # 6 images, none of them the cat
    cond = cg.conditional_gaussian(pool, window=window, padding=2, num_patches=20_000,
                                   key=jax.random.key(0), preprocessing="RGB/255, resized to 60×90")
    marg = samplers.marginal(pool)
    grid = uj.WindowGrid(shape[0], shape[1], window, 4)
    ys, xs = np.meshgrid(grid.ys, grid.xs, indexing="ij")
    ys, xs = jnp.asarray(ys.ravel()), jnp.asarray(xs.ravel())
    img = jnp.asarray(test_img)
    truth = jax.vmap(lambda y, x: jax.lax.dynamic_slice(img, (y, x, 0), (window, window, 3)))(ys, xs)

    def mse(sampler, draws=4):
        state = sampler.prepare(img, window)
        errs = []
        for d in range(draws):
            keys = jax.random.split(jax.random.key(10 + d), ys.shape[0])
            fills = jax.vmap(lambda k, y, x: sampler.fill(state, img, window, k, y, x, jnp.int32(d)))(keys, ys, xs)
            errs.append(float(jnp.mean((fills - truth) ** 2)))
        return float(np.mean(errs))

    cond_mse, marg_mse = mse(cond), mse(marg)
    const_mse = mse(samplers.constant(pool.mean(axis=(0, 1, 2))), draws=1)
    assert cond_mse < 0.33 * marg_mse, (cond_mse, marg_mse)    # measured ≈ 0.16×
    assert cond_mse < 0.8 * const_mse, (cond_mse, const_mse)   # it uses the ring: ≈ 0.6× the mean colour


def _fitted_small(window=4, channels=3, per_channel=True):
    rng = np.random.default_rng(6)
    base = rng.normal(size=(4, 24, 24, channels))
    smooth = ndimage.gaussian_filter(base, (0, 1.5, 1.5, 0)).astype(np.float32)
    return cg.conditional_gaussian(smooth, window=window, padding=2, num_patches=2000,
                                   key=jax.random.key(0), per_channel=per_channel, preprocessing="test")


def _linear_classifier(h, w, c, k=5, seed=0):
    rng = np.random.default_rng(seed)
    a = jnp.asarray(rng.normal(size=(h * w * c, k)).astype(np.float32) / np.sqrt(h * w * c) * 4)
    return uj.from_function(lambda p, x: x.reshape(x.shape[0], -1) @ p, a)


@pytest.mark.slow
def test_explain_compiles_once_is_deterministic_and_chunk_invariant():
    s = _fitted_small()
    image = ndimage.gaussian_filter(np.random.default_rng(7).normal(size=(14, 15, 3)), (1.5, 1.5, 0))
    image = jnp.asarray(image, jnp.float32)
    clf = _linear_classifier(14, 15, 3)
    kw = dict(window=4, stride=2, sampler=s, num_samples=3, key=jax.random.key(3))
    before = engine._step._cache_size()
    e7 = uj.explain(clf, image, chunk_size=7, **kw)        # 7·7·3 = 147 pairs: 21 chunks
    assert engine._step._cache_size() == before + 1          # one compile for all chunks
    e7b = uj.explain(clf, image, chunk_size=7, **kw)
    assert engine._step._cache_size() == before + 1
    np.testing.assert_array_equal(np.asarray(e7.evidence), np.asarray(e7b.evidence))
    e64 = uj.explain(clf, image, chunk_size=64, **kw)
    np.testing.assert_allclose(np.asarray(e64.window_probs), np.asarray(e7.window_probs), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(e64.evidence), np.asarray(e7.evidence), rtol=1e-4, atol=1e-5)
    other = uj.explain(clf, image, chunk_size=7, **{**kw, "key": jax.random.key(4)})
    assert not np.allclose(np.asarray(other.window_probs), np.asarray(e7.window_probs))


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "joint"])
def test_every_batching_gives_the_engine_the_same_windows(per_channel):
    """The accelerator form (gathered class matrices) forced on this CPU: the engine's window
    probabilities equal the CPU loop's, and both equal the classifier on hand-built fills."""
    from undesirable_jax.throughput import check_engine

    s = _fitted_small(per_channel=per_channel)
    image = ndimage.gaussian_filter(np.random.default_rng(5).normal(size=(14, 15, 3)), (1.5, 1.5, 0))
    image = jnp.asarray(image, jnp.float32)
    clf = _linear_classifier(14, 15, 3)
    kw = dict(window=4, stride=1, num_samples=3, chunk_size=32)
    probs = {}
    for batching in cg.BATCHING:
        sb = s.replace(batching=batching)
        probs[batching] = np.asarray(uj.explain(clf, image, sampler=sb, key=jax.random.key(2), **kw).window_probs)
        err = check_engine(clf, image, sb, key=jax.random.key(2), **kw)
        assert err < 1e-5, (batching, err)
    for batching in ("gathered", "looped"):
        np.testing.assert_allclose(probs[batching], probs["auto"], rtol=1e-5, atol=1e-7, err_msg=batching)
    with pytest.raises(ValueError, match="batching"):
        uj.explain(clf, image, sampler=s.replace(batching="fast"), key=jax.random.key(2), **kw)


def test_save_load_round_trip_and_mismatch_errors(tmp_path):
    for per_channel in (True, False):
        s = _fitted_small(per_channel=per_channel)
        path = cg.save_conditional_gaussian(tmp_path / f"cg{per_channel}.safetensors", s)
        assert path.read_bytes()[8:9] == b"{"            # a safetensors JSON header, not a pickle
        t = cg.load_conditional_gaussian(path, window=4, padding=2, channels=3)
        assert (t.window, t.padding, t.per_channel, t.channels, t.preprocessing) == (4, 2, per_channel, 3, "test")
        for name in ("mean", "cov", "lo", "hi", "cond_obs_index", "cond_weight", "cond_bias", "cond_chol"):
            np.testing.assert_array_equal(np.asarray(getattr(t, name)), np.asarray(getattr(s, name)), name)
    assert not list(tmp_path.glob(".*.tmp"))                 # the atomic write left no temporary file
    with pytest.raises(ValueError, match="window=4"):
        cg.load_conditional_gaussian(path, window=5)
    with pytest.raises(ValueError, match="padding=2"):
        cg.load_conditional_gaussian(path, padding=3)
    with pytest.raises(ValueError, match="channels=3"):
        cg.load_conditional_gaussian(path, channels=1)
    with pytest.raises(ValueError, match="window=4"):
        t.prepare(jnp.zeros((10, 10, 3)), 5)
    with pytest.raises(ValueError, match="3-channel"):
        t.prepare(jnp.zeros((10, 10, 1)), 4)
    with pytest.raises(ValueError, match="window=4"):
        uj.explain(_linear_classifier(10, 10, 3), jnp.zeros((10, 10, 3)), window=5, sampler=t,
                   num_samples=1, key=jax.random.key(0))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        cg.load_conditional_gaussian(tmp_path / "junk.safetensors")
    from safetensors.numpy import save_file
    save_file({"mean": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"), metadata={"format": "x"})
    with pytest.raises(ValueError, match="not a conditional Gaussian sampler file"):
        cg.load_conditional_gaussian(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="no such file"):
        cg.load_conditional_gaussian(tmp_path / "missing.safetensors")


def test_bad_input_is_rejected_with_clear_errors():
    good = np.zeros((2, 16, 16, 3), np.float32)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"images: expected a stack"):
        cg.conditional_gaussian(good[0], window=4, key=key)
    with pytest.raises(ValueError, match=r"smaller than the patch side 18"):
        cg.conditional_gaussian(good, window=14, key=key)
    with pytest.raises(ValueError, match="NaN"):
        cg.conditional_gaussian(np.full_like(good, np.nan), window=4, key=key)
    with pytest.raises(TypeError, match="window"):
        cg.conditional_gaussian(good, window=4.0, key=key)
    with pytest.raises(ValueError, match="padding"):
        cg.conditional_gaussian(good, window=4, padding=-1, key=key)
    with pytest.raises(TypeError, match="key"):
        cg.conditional_gaussian(good, window=4, key=0)
    with pytest.raises(TypeError, match="per_channel"):
        cg.conditional_gaussian(good, window=4, key=key, per_channel="no")
    with pytest.raises(ValueError, match="ridge"):
        cg.conditional_gaussian(good, window=4, key=key, ridge=-1.0)
    with pytest.raises(ValueError, match="positive definite"):   # constant images, no ridge
        cg.conditional_gaussian(good, window=4, key=key, ridge=0.0)
    with pytest.raises(ValueError, match="mean, cov: expected shapes"):
        cg.from_moments(np.zeros((3, 10)), np.zeros((3, 10, 10)), window=4, padding=2, per_channel=True,
                        channels=3)


def test_fitting_20000_patches_of_14x14_gives_every_position_class():
    imgs = np.random.default_rng(8).uniform(size=(8, 96, 96, 3)).astype(np.float32)
    s = cg.conditional_gaussian(imgs, window=10, padding=2, num_patches=20_000, key=jax.random.key(0))
    assert np.isfinite(np.asarray(s.cond_chol)).all()
    assert s.cond_weight.shape == (25, 3, 100, 96) and s.cond_chol.shape == (25, 3, 100, 100)


def test_batched_forms_agree_with_the_per_window_formula():
    """The CPU loop, the accelerator gather and the vmap rule all compute bias[c] + W[c]v + L[c]z."""
    rng = np.random.default_rng(9)
    n_cls, g, n_in, n_obs, p = 5, 2, 4, 6, 11
    bias, weight, chol = (jnp.asarray(rng.normal(size=s), jnp.float32)
                          for s in ((n_cls, g, n_in), (n_cls, g, n_in, n_obs), (n_cls, g, n_in, n_in)))
    cls = jnp.asarray(rng.integers(0, n_cls, p), jnp.int32)
    v = jnp.asarray(rng.normal(size=(p, g, n_obs)), jnp.float32)
    z = jnp.asarray(rng.normal(size=(p, g, n_in)), jnp.float32)
    b64, w64, l64 = (np.asarray(a, np.float64) for a in (bias, weight, chol))
    c = np.asarray(cls)
    ref = b64[c] + np.einsum("pgio,pgo->pgi", w64[c], v) + np.einsum("pgij,pgj->pgi", l64[c], z)
    per_window = (None, None, None, 0, 0, 0)
    outs = {
        "gathered": cg.affine_gathered(bias, weight, chol, cls, v, z),
        "looped": cg.affine_looped(bias, weight, chol, cls, v, z),
        "vmap": jax.jit(jax.vmap(cg.class_affine, in_axes=per_window))(bias, weight, chol, cls, v, z),
        "nested vmap": jax.vmap(jax.vmap(cg.class_affine, in_axes=per_window), in_axes=per_window)(
            bias, weight, chol, cls[None], v[None], z[None])[0],
        "one noise": jax.vmap(cg.class_affine, in_axes=(None, None, None, 0, 0, None))(
            bias, weight, chol, cls, v, z[0]),
        # a vmap over two stacked samplers' tables (the second one doubled) and over windows
        "stacked tables": jax.vmap(jax.vmap(cg.class_affine, in_axes=per_window), in_axes=(0, 0, 0, None, None, None))(
            jnp.stack([bias, 2 * bias]), jnp.stack([weight, 2 * weight]), jnp.stack([chol, 2 * chol]), cls, v, z)[0],
    }
    for name, out in outs.items():
        want = ref if name != "one noise" else (
            b64[c] + np.einsum("pgio,pgo->pgi", w64[c], v) + np.einsum("pgij,gj->pgi", l64[c], z[0]))
        np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5, err_msg=name)
