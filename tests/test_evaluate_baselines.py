"""Baselines of undesirable_jax.evaluate against analytic answers and independent numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from undesirable_jax import evaluate as ev

W6 = np.random.default_rng(0).normal(size=(36, 3)).astype(np.float32)   # 6×6×1 images, 3 classes


def linear(x):
    return x.reshape(x.shape[0], -1) @ jnp.asarray(W6)


def np_probs(x):
    z = x.reshape(-1).astype(np.float64) @ W6.astype(np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


IMAGE = np.random.default_rng(1).uniform(size=(6, 6, 1)).astype(np.float32)


def test_gradient_input_matches_the_analytic_gradient_of_log_softmax():
    got = np.asarray(ev.gradient_input(linear, IMAGE, [2, 0]))
    p = np_probs(IMAGE)
    x = IMAGE.reshape(-1).astype(np.float64)
    for row, c in enumerate([2, 0]):
        grad = W6[:, c] - W6 @ p               # d log p_c / dx for logits x @ W
        np.testing.assert_allclose(got[row], (grad * x).reshape(6, 6), rtol=1e-4, atol=1e-6)
    ref = np.asarray(ev.gradient_input(linear, IMAGE, [2], reference=0.5))
    np.testing.assert_allclose(ref[0], ((W6[:, 2] - W6 @ p) * (x - 0.5)).reshape(6, 6), rtol=1e-4, atol=1e-6)


def test_gradient_input_refuses_a_black_box():
    def black_box(x):   # leaves JAX through numpy: not differentiable
        return jnp.asarray(np.asarray(x).reshape(x.shape[0], -1) @ W6)

    with pytest.raises(TypeError, match="gradient_input"):
        ev.gradient_input(black_box, IMAGE, [0])


def test_rise_matches_a_numpy_reference_and_ignores_batch_size():
    key = jax.random.key(4)
    fill = np.full_like(IMAGE, 0.3)
    masks = np.asarray(ev.rise_masks(key, 40, 6, 6, cells=3))
    assert masks.shape == (40, 6, 6) and masks.min() >= 0 and masks.max() <= 1
    probs = np.stack([np_probs(m[..., None] * IMAGE + (1 - m[..., None]) * fill) for m in masks])  # [40, K]
    expected = (np.einsum("nk,nhw->khw", probs, masks) / masks.sum(0)) - probs.mean(0)[:, None, None]
    got7 = np.asarray(ev.rise(linear, IMAGE, fill, [1, 2], key, num_masks=40, cells=3, batch_size=7))
    got64 = np.asarray(ev.rise(linear, IMAGE, fill, [1, 2], key, num_masks=40, cells=3, batch_size=64))
    np.testing.assert_allclose(got7, expected[[1, 2]], atol=1e-5)
    np.testing.assert_allclose(got64, got7, atol=1e-6)


def test_rise_masks_keep_about_keep_prob_and_are_smooth_cells():
    m = np.asarray(ev.rise_masks(jax.random.key(0), 400, 12, 12, cells=4, keep_prob=0.3))
    assert 0.25 < m.mean() < 0.35
    assert np.unique(np.round(m, 6)).size > 2     # bilinear: not binary


def planted(x):
    a = x[:, 1:4, 1:4, 0].mean((1, 2))
    h = x[:, 7:11, 7:11, 0].mean((1, 2))
    return jnp.stack([2.0 * a - 3.0 * h + 1.0, jnp.full_like(a, 0.5), 0.5 * h], axis=-1)


def test_rise_sign_marks_supporting_and_hindering_regions():
    img = jnp.ones((12, 12, 1))
    r = np.asarray(ev.rise(planted, img, jnp.zeros_like(img), [0, 2], jax.random.key(1), num_masks=300, cells=4))
    assert r[0, 1:4, 1:4].mean() > 0.02 and r[0, 7:11, 7:11].mean() < -0.02
    assert r[1, 7:11, 7:11].mean() > 0            # the hindering region makes the image look like class 2
    maps = ev.signed_maps(jnp.asarray(r[0]), jnp.asarray(r[1]))
    assert float(maps.undesirable[7:11, 7:11].mean()) > float(maps.undesirable[1:4, 1:4].mean())
    np.testing.assert_array_equal(maps.support, np.maximum(0, r[0]))


def test_occlusion_equals_a_direct_loop_over_windows():
    got = np.asarray(ev.occlusion(linear, IMAGE, [0, 2], window=3, stride=3, value=0.25, laplace_n=50.0))
    n, k = 50.0, 3
    lap = lambda p: (p * n + 1) / (n + k)
    lo = lambda p: np.log2(p / (1 - p))
    p0 = np_probs(IMAGE)
    for y in (0, 3):
        for x in (0, 3):
            occluded = IMAGE.copy()
            occluded[y:y + 3, x:x + 3] = 0.25
            p1 = np_probs(occluded)
            for row, c in enumerate([0, 2]):
                we = lo(lap(p0[c])) - lo(lap(p1[c]))
                np.testing.assert_allclose(got[row, y:y + 3, x:x + 3], we, rtol=1e-4, atol=1e-5)


def test_random_maps_are_reproducible_and_independent():
    a, b = ev.random_maps(jax.random.key(0), 5, 7), ev.random_maps(jax.random.key(0), 5, 7)
    np.testing.assert_array_equal(a.undesirable, b.undesirable)
    assert a.support.shape == (5, 7)
    assert not np.allclose(a.support, a.undesirable)
    assert not np.allclose(a.undesirable, ev.random_maps(jax.random.key(1), 5, 7).undesirable)


def test_rise_rejects_bad_input():
    with pytest.raises(ValueError, match="num_masks"):
        ev.rise(linear, IMAGE, IMAGE, [0], jax.random.key(0), num_masks=0)
    with pytest.raises(ValueError, match="keep_prob"):
        ev.rise(linear, IMAGE, IMAGE, [0], jax.random.key(0), keep_prob=1.0)
    with pytest.raises(ValueError, match="fill"):
        ev.rise(linear, IMAGE, IMAGE[:3], [0], jax.random.key(0))
