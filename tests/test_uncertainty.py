"""Standard errors from the engine's second moments, significance masks, and adaptive sampling.

References are independent: a float64 numpy loop that rebuilds every (window, sample) pair from the
documented keys, the empirical spread of the evidence over many keys, and the masking formula
written out in numpy.
"""

from __future__ import annotations

import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import undesirable_jax as uj
from undesirable_jax import samplers

H, W, C, K = 8, 8, 1, 3


def linear(seed=0, scale=3.0):
    """A fixed random linear classifier on flattened images (logits), and its numpy twin."""
    rng = np.random.default_rng(seed)
    a = (rng.normal(size=(H * W * C, K)) * scale / np.sqrt(H * W * C)).astype(np.float32)
    b = rng.normal(size=(K,)).astype(np.float32)
    aj, bj = jnp.asarray(a), jnp.asarray(b)
    return (lambda x: x.reshape(x.shape[0], -1) @ aj + bj), a, b


def image_and_pool(m=12):
    rng = np.random.default_rng(3)
    img = rng.normal(size=(H, W, C)).astype(np.float32)
    pool = rng.normal(size=(m, H, W, C)).astype(np.float32)
    return img, pool


def test_window_se_matches_loop_over_documented_keys():
    clf, a, b = linear()
    img, pool = image_and_pool()
    window, stride, s_count, key = 3, 2, 6, jax.random.key(5)
    e = uj.explain(clf, img, window=window, stride=stride, sampler=samplers.marginal(pool),
                   num_samples=s_count, key=key, chunk_size=7)
    grid = uj.WindowGrid(H, W, window, stride)
    mean = np.zeros((K,) + grid.shape)
    se = np.zeros((K,) + grid.shape)
    for iy, y in enumerate(grid.ys):
        for ix, x in enumerate(grid.xs):
            w = iy * grid.shape[1] + ix
            ps = []
            for s in range(s_count):
                k = jax.random.fold_in(jax.random.fold_in(key, w), s)
                j = int(jax.random.randint(k, (), 0, pool.shape[0]))
                pert = img.astype(np.float64).copy()
                pert[y:y + window, x:x + window] = pool[j, y:y + window, x:x + window]
                z = pert.reshape(-1) @ a.astype(np.float64) + b
                ps.append(np.exp(z - z.max()) / np.exp(z - z.max()).sum())
            ps = np.asarray(ps)
            mean[:, iy, ix] = ps.mean(0)
            se[:, iy, ix] = ps.std(0, ddof=1) / np.sqrt(s_count)
    np.testing.assert_allclose(np.asarray(e.window_probs), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(e.window_probs_se), se, rtol=1e-3, atol=1e-6)
    assert se.max() > 1e-3  # the sampler is noisy here: not a comparison of zeros
    np.testing.assert_array_equal(np.asarray(e.window_samples), np.full(grid.shape, s_count))


def test_evidence_se_matches_spread_over_keys():
    """The delta-method SE agrees with the standard deviation of the evidence over 48 keys."""
    clf, _, _ = linear(scale=2.0)
    img, pool = image_and_pool(m=32)
    ev, se = [], []
    for seed in range(48):
        e = uj.explain(clf, img, window=3, stride=1, sampler=samplers.marginal(pool), num_samples=16,
                       key=jax.random.key(seed))
        ev.append(np.asarray(e.evidence))
        se.append(np.asarray(e.evidence_se))
    empirical = np.std(np.asarray(ev), axis=0, ddof=1)
    predicted = np.mean(np.asarray(se), axis=0)
    rel = np.abs(predicted - empirical) / empirical
    assert empirical.min() > 0
    print('median relative error', np.median(rel))
    assert np.median(rel) < 0.25, np.median(rel)


def test_single_sample_has_no_standard_error_and_fixed_fill_has_zero():
    clf, _, _ = linear()
    img, pool = image_and_pool()
    one = uj.explain(clf, img, window=3, stride=1, sampler=samplers.marginal(pool), num_samples=1,
                     key=jax.random.key(0))
    assert np.all(np.isnan(np.asarray(one.evidence_se)))
    assert np.all(np.isnan(np.asarray(one.window_probs_se)))
    assert np.all(np.isfinite(np.asarray(one.evidence)))
    fixed = uj.explain(clf, img, window=3, stride=1, sampler=samplers.constant(0.5), num_samples=3,
                       key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(fixed.evidence_se), 0.0)


# ---------------------------------------------------------------- alpha masks

def _noisy_explanation(k=4, seed=1):
    clf, _, _ = linear(seed=seed)
    img, pool = image_and_pool(m=6)
    return uj.explain(clf, img, window=3, stride=1, sampler=samplers.marginal(pool), num_samples=4,
                      key=jax.random.key(seed))


@pytest.mark.parametrize("alpha", [0.05, 0.3])
def test_alpha_masks_exactly_the_formula_pixels_plain(alpha):
    e = _noisy_explanation()
    z = statistics.NormalDist().inv_cdf(1 - alpha / 2)
    full = uj.factors(e, top_k=2, decouple=False)
    masked = uj.factors(e, top_k=2, decouple=False, alpha=alpha)
    r, se = np.asarray(e.evidence), np.asarray(e.evidence_se)
    t = e.row(int(full.target_class))
    keep_t = -r[t] > z * se[t]
    np.testing.assert_array_equal(np.asarray(masked.target), np.where(keep_t, np.asarray(full.target), 0.0))
    rows = [e.row(int(c)) for c in np.asarray(full.non_target_classes)]
    keep_c = r[rows] > z * se[rows]
    np.testing.assert_array_equal(np.asarray(masked.non_target),
                                  np.where(keep_c, np.asarray(full.non_target), 0.0))
    assert 0 < keep_t.sum() < keep_t.size or 0 < keep_c.sum() < keep_c.size  # the mask does something
    assert masked.alpha == alpha and full.alpha is None


def test_alpha_decoupled_uses_the_conservative_bound():
    e = _noisy_explanation()
    alpha, z = 0.1, statistics.NormalDist().inv_cdf(1 - 0.1 / 2)
    full = uj.factors(e, top_k=2)
    masked = uj.factors(e, top_k=2, alpha=alpha)
    wp, wse = np.asarray(e.window_probs, np.float64), np.asarray(e.window_probs_se, np.float64)
    t = e.row(int(full.target_class))
    rows = [e.row(int(c)) for c in np.asarray(full.non_target_classes)]
    n, kk = e.laplace_n, e.num_classes - 1
    q = wp[rows] / (1 - wp[t])
    se_q = (wse[rows] + q * wse[t]) / (1 - wp[t])
    lap = (q * n + 1) / (n + kk)
    se_we = n / (n + kk) / (lap * (1 - lap) * np.log(2)) * se_q
    grid = e.grid
    cover = grid.coverage()
    se_pix = np.sqrt(np.asarray(grid.to_pixels(jnp.asarray(se_we ** 2, jnp.float32))) / cover)
    p = np.asarray(e.probs, np.float64)
    q0 = (p[rows] / (1 - p[t]))[:, None, None]
    lo = lambda v: np.log2((v * n + 1) / (n + kk)) - np.log2(1 - (v * n + 1) / (n + kk))
    r_q = np.asarray(grid.to_pixels(jnp.asarray(lo(q0) - lo(q), jnp.float32)))
    keep = r_q > z * se_pix
    margin = np.abs(r_q - z * se_pix) > 1e-4  # compare away from float32 ties
    got = np.asarray(masked.non_target) > 0
    np.testing.assert_array_equal(got[margin], (keep & (r_q > 0))[margin])
    assert 0 < keep.sum() < keep.size


def test_alpha_errors():
    e = _noisy_explanation()
    for bad in (0.0, 1.0, -0.1, 1e-17, 0.6, float("nan"), True, "0.05"):
        with pytest.raises((TypeError, ValueError), match="alpha"):
            uj.factors(e, top_k=2, alpha=bad)
    bare = e.replace(evidence_se=None, window_probs_se=None)
    with pytest.raises(ValueError, match="evidence_se"):
        uj.factors(bare, top_k=2, alpha=0.05)


# ---------------------------------------------------------------- adaptive sampling

def _adaptive(**kw):
    clf, _, _ = linear(scale=2.0)
    img, pool = image_and_pool(m=16)
    args = dict(window=3, stride=1, sampler=samplers.marginal(pool), key=jax.random.key(2))
    args.update(kw)
    return uj.explain(clf, img, **args)


def test_min_equal_max_is_fixed_samples_exactly():
    fixed = _adaptive(num_samples=5, chunk_size=32)
    ranged = _adaptive(num_samples=(5, 5), target_se=0.01, chunk_size=32)
    for name in ("evidence", "evidence_se", "window_probs", "window_probs_se", "window_samples"):
        np.testing.assert_array_equal(np.asarray(getattr(ranged, name)), np.asarray(getattr(fixed, name)))


def test_adaptive_sampling_spends_samples_where_noisy_deterministic_chunk_invariant():
    a = _adaptive(num_samples=(2, 16), target_se=0.02, chunk_size=16)
    b = _adaptive(num_samples=(2, 16), target_se=0.02, chunk_size=16)
    c = _adaptive(num_samples=(2, 16), target_se=0.02, chunk_size=50)
    counts = np.asarray(a.window_samples)
    assert counts.min() >= 2 and counts.max() == 16 and len(np.unique(counts)) > 1
    np.testing.assert_array_equal(np.asarray(a.evidence), np.asarray(b.evidence))
    np.testing.assert_array_equal(counts, np.asarray(c.window_samples))
    np.testing.assert_allclose(np.asarray(a.evidence), np.asarray(c.evidence), rtol=1e-6, atol=1e-6)
    # Windows that stopped early met the target for the top-1 class.
    t = int(np.argmax(np.asarray(a.probs)))
    wp, wse = np.asarray(a.window_probs[t], np.float64), np.asarray(a.window_probs_se[t], np.float64)
    n, kk = a.laplace_n, a.num_classes
    lap = (wp * n + 1) / (n + kk)
    se_we = n / (n + kk) / (lap * (1 - lap) * np.log(2)) * wse
    assert np.all(se_we[counts < 16] <= 0.02 + 1e-7)
    # Each window's samples are the first ones of the fixed-S run with the same key.
    full = _adaptive(num_samples=16, chunk_size=64)
    iy, ix = np.unravel_index(np.argmax(counts), counts.shape)
    np.testing.assert_allclose(np.asarray(a.window_probs)[:, iy, ix], np.asarray(full.window_probs)[:, iy, ix],
                               rtol=1e-6)


@pytest.mark.parametrize("num_samples,target_se,match", [
    ((4, 2), 0.1, "max_samples"), ((2, 4), None, "target_se"), (4, 0.1, "target_se"),
    ((2, 4, 8), 0.1, "num_samples"), ((2, 4), -1.0, "target_se"), ((0, 4), 0.1, "min_samples"),
])
def test_adaptive_sampling_errors(num_samples, target_se, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _adaptive(num_samples=num_samples, target_se=target_se)


# ---------------------------------------------------------------- figures

def test_figure_fades_and_hatches_non_significant_pixels():
    from undesirable_jax.visualize import factor_figure

    e = _noisy_explanation()
    full = uj.factors(e, top_k=2, decouple=False)
    masked = uj.factors(e, top_k=2, decouple=False, alpha=0.3)
    img = np.zeros((H, W, 3), np.float32)
    plain = factor_figure(img, full)
    hatched = factor_figure(img, masked, unmasked=full)
    count = lambda fig: sum(len(ax.collections) for ax in fig.axes)
    assert count(hatched) > count(plain)          # contour hatches drawn
    assert "not significant at 0.3" in hatched._suptitle.get_text()
    with pytest.raises(ValueError, match="unmasked"):
        factor_figure(img, full, unmasked=masked)
