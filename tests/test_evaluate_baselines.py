"""Baselines of undesirable_jax.evaluate against analytic answers and independent numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import undesirable_jax as uj
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


# --- matched references, integrated gradients, SmoothGrad --------------------------------------------

V6 = np.random.default_rng(2).normal(size=(36, 3)).astype(np.float32)


def quadratic(x):
    """Logits ``z_k = Σ_p W[p,k]·x_p² + V[p,k]·x_p``: a non-linear classifier with an analytic gradient."""
    f = x.reshape(x.shape[0], -1)
    return (f * f) @ jnp.asarray(W6) + f @ jnp.asarray(V6)


def np_log_p_and_grad(x, c):
    """log p(c|x) and its gradient for :func:`quadratic`, in float64 numpy."""
    f = x.reshape(-1).astype(np.float64)
    z = (f * f) @ W6 + f @ V6
    logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
    p = np.exp(logp)
    dz = 2.0 * f[:, None] * W6 + V6                                   # [36, K]: dz_k/dx_p
    return logp[c], dz[:, c] - dz @ p


def test_road_reference_is_the_neighbour_mean_on_a_hand_made_image():
    img = np.arange(1, 10, dtype=np.float32).reshape(3, 3, 1)         # 1 2 3 / 4 5 6 / 7 8 9
    ref = np.asarray(ev.baselines.scoring_reference(img, ev.Perturbation("road")))[..., 0]
    # centre: (2+4+6+8)/6 + (1+3+7+9)/12 over weights 4/6 + 4/12 = 1 → 5;
    # corner (0,0): (2+4)/6 + 5/12 over 2/6 + 1/12 → 3.4; edge (0,1): (1+3+5)/6 + (4+6)/12 over 3/6 + 2/12 → 3.5
    assert ref[1, 1] == pytest.approx(5.0) and ref[0, 0] == pytest.approx(3.4) and ref[0, 1] == pytest.approx(3.5)
    assert ref[2, 2] == pytest.approx((8 / 6 + 6 / 6 + 5 / 12) / (5 / 12))
    # ROAD's noise-free imputation of one removed pixel is that pixel's reference value
    for y in range(3):
        for x in range(3):
            removed = np.zeros((3, 3), bool)
            removed[y, x] = True
            imputed = np.asarray(ev.road.linear_impute(jnp.asarray(img), jnp.asarray(removed)))
            assert imputed[y, x, 0] == pytest.approx(ref[y, x], rel=1e-5)
    const = ev.baselines.scoring_reference(img, ev.Perturbation("constant", value=0.25))
    np.testing.assert_array_equal(const, np.full_like(img, 0.25))
    blur = ev.baselines.scoring_reference(img, ev.Perturbation("blur", sigma=0.7))
    np.testing.assert_allclose(blur, uj.samplers.gaussian_blur(jnp.asarray(img), 0.7), rtol=1e-6)


def test_integrated_gradients_equal_a_fine_riemann_sum_and_are_complete():
    """IG(x) = (x − r)·∫₀¹∇f(r + α(x − r))dα with f = log p(c|x) (the log-probability of the explained
    class, as every gradient baseline here). Reference: the analytic gradient of :func:`quadratic`
    summed at 4000 midpoints in float64. Completeness: Σ IG = f(x) − f(r) within 1 %."""
    ref = np.full_like(IMAGE, 0.2)
    ref[:3] = 0.7                                                      # a reference that is not constant
    got = np.asarray(ev.baselines.integrated_gradients(quadratic, IMAGE, [1, 0], reference=ref, steps=64))
    for row, c in enumerate([1, 0]):
        alphas = (np.arange(4000) + 0.5) / 4000
        mean_grad = np.mean([np_log_p_and_grad(ref + a * (IMAGE - ref), c)[1] for a in alphas], axis=0)
        want = (mean_grad * (IMAGE - ref).reshape(-1)).reshape(6, 6)
        np.testing.assert_allclose(got[row], want, rtol=2e-3, atol=2e-4)
        gap = np_log_p_and_grad(IMAGE, c)[0] - np_log_p_and_grad(ref, c)[0]
        assert abs(gap) > 1.0
        default = np.asarray(ev.baselines.integrated_gradients(quadratic, IMAGE, [c], reference=ref))
        assert default.sum() == pytest.approx(gap, rel=0.01)
    with pytest.raises(ValueError, match="steps"):
        ev.baselines.integrated_gradients(quadratic, IMAGE, [0], reference=ref, steps=0)


def test_smoothgrad_with_tiny_noise_is_gradient_times_difference_and_depends_on_its_key():
    ref = np.full_like(IMAGE, 0.4)
    plain = np.asarray(ev.gradient_input(quadratic, IMAGE, [0, 2], reference=ref))
    tiny = np.asarray(ev.baselines.smoothgrad(quadratic, IMAGE, [0, 2], jax.random.key(0), reference=ref,
                                              samples=4, sigma=1e-6))
    np.testing.assert_allclose(tiny, plain, rtol=1e-3, atol=1e-5)
    a = ev.baselines.smoothgrad(quadratic, IMAGE, [0], jax.random.key(1), reference=ref, samples=8, sigma=0.3)
    b = ev.baselines.smoothgrad(quadratic, IMAGE, [0], jax.random.key(1), reference=ref, samples=8, sigma=0.3)
    c = ev.baselines.smoothgrad(quadratic, IMAGE, [0], jax.random.key(2), reference=ref, samples=8, sigma=0.3)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, plain[:1], rtol=1e-2)


# --- Sobol attribution -------------------------------------------------------------------------------

def test_sobol_design_takes_column_i_of_c_i_from_b():
    d, n = 4, 8
    rows = ev.baselines.sobol_design(jax.random.key(0), 2, n)
    assert rows.shape == (n * (d + 2), d) and rows.min() >= 0 and rows.max() <= 1
    a, b, c = rows[:n], rows[n:2 * n], rows[2 * n:].reshape(d, n, d)
    for i in range(d):
        np.testing.assert_array_equal(np.delete(c[i], i, axis=1), np.delete(a, i, axis=1))
        np.testing.assert_array_equal(c[i][:, i], b[:, i])
    assert not np.array_equal(rows, ev.baselines.sobol_design(jax.random.key(1), 2, n))


def additive_total_indices(a):
    """Closed form for f(m) = Σ_i a_i·m_i + const with independent m_i ~ U(0, 1) (the design's cells):
    Var f = Σ_j a_j²·Var(m) and, with m_i alone left free, E[Var(f | m_~i)] = a_i²·Var(m), so the total
    index is ST_i = a_i² / Σ_j a_j² (Var(m) = 1/12 cancels); the sign is that of a_i."""
    return np.sign(a) * a * a / np.sum(a * a)


def test_jansen_estimator_recovers_the_additive_closed_form():
    a = np.array([2.0, -1.0, 0.5, 0.0, -3.0, 1.0, 0.0, 0.25, 1.5])
    design = ev.baselines.sobol_design(jax.random.key(3), 3, 256)
    f = (design @ a + 7.0)[:, None]
    got = np.asarray(ev.baselines.jansen_total(jnp.asarray(f), jnp.asarray(design), 256))[0]
    np.testing.assert_allclose(got, additive_total_indices(a), atol=0.01)


def test_sobol_indices_of_a_two_class_linear_model_follow_the_closed_form():
    """A 2-class linear model with logits (v·x, 0): its log-odds is v·x / ln 2 bits, so on the masked image
    M·x + (1 − M)·fill it is additive in the cell values m_i with a_i = Σ_{p ∈ cell i} v_p (x_p − fill_p)
    / ln 2 (nearest upsampling: each pixel belongs to one cell). The Laplace correction with N = 1e6
    moves log-odds by < 1e-3 bits at these probabilities."""
    rng = np.random.default_rng(7)
    v = rng.normal(size=(6, 6)).astype(np.float32) * 0.15

    def two_class(x):
        z = jnp.sum(x[..., 0] * jnp.asarray(v), axis=(1, 2))
        return jnp.stack([z, jnp.zeros_like(z)], axis=-1)

    fill = np.full_like(IMAGE, 0.5)
    cells = np.asarray(ev.baselines.sobol_cells(two_class, IMAGE, fill, [0, 1], jax.random.key(5), grid=3,
                                                designs=256, batch_size=100, laplace_n=1e6))
    contrib = (v * (IMAGE[..., 0] - 0.5)).reshape(3, 2, 3, 2).sum((1, 3)).ravel()
    np.testing.assert_allclose(cells[0].ravel(), additive_total_indices(contrib), atol=0.02)
    np.testing.assert_allclose(cells[1], -cells[0], atol=1e-3)      # class 1's log-odds is class 0's negated
    pixels = np.asarray(ev.baselines.sobol(two_class, IMAGE, fill, [0], jax.random.key(5), grid=3, designs=256,
                                           laplace_n=1e6))
    blocks = np.kron(cells[0], np.ones((2, 2)))                      # each cell's value on its 2×2 pixels
    assert pixels.shape == (1, 6, 6) and np.corrcoef(pixels[0].ravel(), blocks.ravel())[0, 1] > 0.9
    with pytest.raises(ValueError, match="power of 2"):
        ev.baselines.sobol_cells(two_class, IMAGE, fill, [0], jax.random.key(0), grid=3, designs=12)


# --- model-free controls -----------------------------------------------------------------------------

def test_controls_against_direct_formulas():
    img = np.random.default_rng(3).uniform(size=(5, 7, 3)).astype(np.float32)
    grey = img.sum(-1)
    np.testing.assert_allclose(ev.baselines.control_map("neg_x", img), -grey, rtol=1e-6)
    np.testing.assert_allclose(ev.baselines.control_map("neg_blur_x", img, sigma=1.2),
                               -np.asarray(uj.samplers.gaussian_blur(jnp.asarray(img), 1.2)).sum(-1), rtol=1e-5)
    import scipy.ndimage
    want = np.hypot(scipy.ndimage.sobel(grey, axis=0, mode="mirror"), scipy.ndimage.sobel(grey, axis=1, mode="mirror"))
    np.testing.assert_allclose(ev.baselines.control_map("sobel", img), want, rtol=1e-5, atol=1e-5)
    dist = np.asarray(ev.baselines.control_map("centre_distance", img))
    assert dist[2, 3] == 0 and dist[0, 0] == pytest.approx(np.hypot(2, 3)) and dist.argmax() in (0, 6, 28, 34)
    with pytest.raises(ValueError, match="name"):
        ev.baselines.control_map("edges", img)
