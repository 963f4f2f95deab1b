"""Metrics of undesirable_jax.evaluate against hand-computed values, and the planted-region check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import undesirable_jax as uj
from undesirable_jax import evaluate as ev
from undesirable_jax.evidence import laplace, log_odds
from undesirable_jax.factors import factors

# A tiny linear classifier: 2×3×1 images, 3 classes, logits = flat(x) @ WEIGHTS.
WEIGHTS = np.array([[0.5, -0.2, 0.1], [-0.3, 0.4, 0.0], [0.2, 0.1, -0.5],
                    [-0.6, 0.3, 0.2], [0.1, -0.1, 0.3], [0.4, 0.2, -0.2]], np.float32)
IMAGE = np.arange(1, 7, dtype=np.float32).reshape(2, 3, 1) / 6.0


def linear(x):
    return x.reshape(x.shape[0], -1) @ jnp.asarray(WEIGHTS)


def np_probs(x):
    z = x.reshape(-1).astype(np.float64) @ WEIGHTS.astype(np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def removed(image, fill, pixels):
    """The image with the listed flat pixel indices taken from ``fill``."""
    out = image.copy().reshape(-1, image.shape[-1])
    out[list(pixels)] = fill.reshape(-1, image.shape[-1])[list(pixels)]
    return out.reshape(image.shape)


def test_ranks_and_masks_break_ties_by_pixel_index():
    m = jnp.array([[0.9, 0.1, 0.5], [0.5, 0.0, 0.5]])
    np.testing.assert_array_equal(ev.ranks(m), [0, 4, 1, 2, 5, 3])   # flattened, row-major
    masks = np.asarray(ev.top_masks(m, [20.0, 50.0, 100.0]))   # 1, 3 and 6 pixels
    assert masks.shape == (3, 2, 3)
    np.testing.assert_array_equal(masks[0], [[1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(masks[1], [[1, 0, 1], [1, 0, 0]])
    assert masks[2].all()


def test_fill_image_per_sampler():
    img = jax.random.uniform(jax.random.key(0), (7, 9, 2))
    const = ev.fill_image(uj.samplers.constant([0.25, -1.0]), img, 3, jax.random.key(1))
    np.testing.assert_array_equal(const[..., 0], 0.25)
    np.testing.assert_array_equal(const[..., 1], -1.0)
    blurred = ev.fill_image(uj.samplers.blur(1.5), img, 3, jax.random.key(1))
    np.testing.assert_allclose(blurred, uj.samplers.gaussian_blur(img, 1.5), rtol=1e-6)
    pool = jax.random.uniform(jax.random.key(2), (3, 7, 9, 2))
    marg = uj.samplers.marginal(pool, shuffle=False)
    for s in range(4):
        np.testing.assert_array_equal(ev.fill_image(marg, img, 3, jax.random.key(1), s), pool[s % 3])


def test_metrics_match_hand_computed_values():
    undesirable = np.array([[0.9, 0.1, 0.5], [0.5, 0.0, 0.2]], np.float32)   # ranks 0 4 1 / 2 5 3
    competitor = np.array([[0.0, 0.0, 0.3], [0.0, 0.8, 0.1]], np.float32)    # ranks 3 4 1 / 5 0 2
    support = np.array([[0.0, 0.7, 0.2], [0.1, 0.3, 0.0]], np.float32)       # ranks 4 0 2 / 3 1 5
    maps = ev.MethodMaps(*(jnp.asarray(a)[None, None] for a in (support, undesirable, competitor)))
    fills = np.stack([np.zeros_like(IMAGE), np.full_like(IMAGE, 0.5)])       # S = 2 fills
    t, c, label = 0, 1, 2
    res = ev.evaluate_maps(linear, IMAGE[None], maps, [t], [c], [label], fills[None],
                           percents=[20.0, 50.0], curve_steps=2, laplace_n=100.0)

    def after(pixels, keep=IMAGE, put=fills):
        return np.mean([np_probs(removed(keep if keep.ndim == 3 else keep[i], put[i], pixels))
                        for i in range(2)], axis=0)

    p0 = np_probs(IMAGE)
    top_u = [[0], [0, 2, 3]]             # top 1 and top 3 pixels of U_t (tie 0.5: index 2 before 3)
    top_c = [[4], [4, 2, 5]]             # of U_c
    union = np.maximum(undesirable, competitor).reshape(-1)   # 0.9 .1 .5 .5 .8 .2
    top_union = [[0], [0, 4, 2]]
    assert list(np.argsort(-union, kind="stable")[:3]) == top_union[1]
    exp_p = [after(p)[t] for p in top_u]
    np.testing.assert_allclose(res.p_target, [p0[t]], rtol=1e-5)
    np.testing.assert_allclose(res.removal_p[0, 0], exp_p, rtol=1e-5)
    np.testing.assert_allclose(res.removal_gain[0, 0], np.array(exp_p) - p0[t], atol=1e-6)
    lo = lambda p: np.log2((p * 100 + 1) / 103) - np.log2(1 - (p * 100 + 1) / 103)
    np.testing.assert_allclose(res.log_odds_gain[0, 0], [lo(p) - lo(p0[t]) for p in exp_p], rtol=1e-4)
    np.testing.assert_allclose(res.suppression[0, 0], [p0[c] - after(p)[c] for p in top_c], rtol=1e-4)
    np.testing.assert_array_equal(res.corrected[0, 0], [np.argmax(after(p)) == label for p in top_union])
    # Curves at f = 0, 0.5, 1 over the support ranking (top 3 = pixels 1, 4, 2).
    order = [1, 4, 2, 3, 0, 5]
    dele = [after(order[:n])[t] for n in (0, 3, 6)]
    ins = [np.mean([np_probs(removed(fills[i], IMAGE, order[:n])) for i in range(2)], axis=0)[t]
           for n in (0, 3, 6)]
    np.testing.assert_allclose(res.fractions, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(res.deletion[0, 0], dele, rtol=1e-5)
    np.testing.assert_allclose(res.insertion[0, 0], ins, rtol=1e-5)
    np.testing.assert_allclose(res.deletion_auc[0, 0], 0.25 * (dele[0] + 2 * dele[1] + dele[2]), rtol=1e-5)
    np.testing.assert_allclose(res.insertion_auc[0, 0], 0.25 * (ins[0] + 2 * ins[1] + ins[2]), rtol=1e-5)
    assert dele[0] == pytest.approx(p0[t], rel=1e-6) and ins[-1] == pytest.approx(p0[t], rel=1e-6)


def test_metrics_vectorise_over_images_and_methods_and_ignore_batch_size():
    k = jax.random.split(jax.random.key(3), 4)
    images = jax.random.uniform(k[0], (3, 2, 3, 1))
    maps = ev.MethodMaps(*(jax.random.uniform(k[i + 1], (3, 2, 2, 3)) for i in range(3)))
    fills = jnp.zeros((3, 1, 2, 3, 1))
    a = ev.evaluate_maps(linear, images, maps, [0, 1, 2], [1, 2, 0], [0, 0, 1], fills, batch_size=5)
    b = ev.evaluate_maps(linear, images, maps, [0, 1, 2], [1, 2, 0], [0, 0, 1], fills, batch_size=64)
    assert a.removal_gain.shape == (3, 2, 4) and a.deletion.shape == (3, 2, 11)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=2e-6)   # matmul rounding per batch
    # Image 1, method 1 alone gives the same numbers as inside the batch.
    one = ev.evaluate_maps(linear, images[1:2], jax.tree.map(lambda m: m[1:2, 1:2], maps), [1], [2], [0],
                           fills[1:2])
    np.testing.assert_allclose(one.removal_gain[0, 0], a.removal_gain[1, 1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(one.insertion_auc[0, 0], a.insertion_auc[1, 1], rtol=1e-5)


def planted(x):
    """Class 0 is seen in region A (top left); the hindering region H (bottom right) speaks against it."""
    a = x[:, 1:4, 1:4, 0].mean((1, 2))
    h = x[:, 6:11, 6:11, 0].mean((1, 2))
    return jnp.stack([2.0 * a - 3.0 * h + 1.0, jnp.full_like(a, 0.5), 0.5 * h], axis=-1)


def test_removing_top_undesirable_pixels_beats_random_for_every_q():
    img = jnp.ones((12, 12, 1))
    sampler = uj.samplers.constant(0.0)
    expl = uj.explain(planted, img, window=2, stride=1, sampler=sampler, num_samples=1, key=jax.random.key(0))
    f = factors(expl, target=0, top_k=2)
    u_t = np.asarray(f.target)
    assert u_t[6:11, 6:11].min() > 0 and u_t[:5, :5].max() == 0    # the planted region, only it
    n_random = 8
    rand = [ev.random_maps(jax.random.key(i), 12, 12).undesirable for i in range(n_random)]
    und = jnp.stack([f.target] + rand)[None]
    maps = ev.MethodMaps(support=jnp.zeros_like(und), undesirable=und, competitor=jnp.zeros_like(und))
    fills = ev.fill_image(sampler, img, 2, jax.random.key(0))[None, None]
    res = ev.evaluate_maps(planted, img[None], maps, [0], [2], [0], fills)
    gain = np.asarray(res.removal_gain[0])
    lgain = np.asarray(res.log_odds_gain[0])
    assert np.all(gain[0] > 0)
    assert np.all(gain[0] > gain[1:].mean(axis=0)), gain
    assert np.all(lgain[0] > lgain[1:].mean(axis=0)), lgain
    # Past 25 pixels (the whole region) more removal cannot help U_t: q = 20% (29 px) ≈ q = 10% + 15 px.
    assert gain[0, 3] >= gain[0, 2] > gain[0, 1] > gain[0, 0]


def test_log_odds_gain_uses_the_evidence_convention():
    img = jnp.ones((12, 12, 1))
    und = jnp.zeros((1, 1, 12, 12)).at[0, 0, 6:11, 6:11].set(1.0)
    maps = ev.MethodMaps(support=und, undesirable=und, competitor=und)
    res = ev.evaluate_maps(planted, img[None], maps, [0], [2], [0], jnp.zeros((1, 1, 12, 12, 1)),
                           percents=[25 / 144 * 100], laplace_n=1000.0)
    p0, p1 = float(res.p_target[0]), float(res.removal_p[0, 0, 0])
    expected = log_odds(laplace(p1, 1000.0, 3)) - log_odds(laplace(p0, 1000.0, 3))
    np.testing.assert_allclose(res.log_odds_gain[0, 0, 0], expected, rtol=1e-5)
    z0, z1 = np.array([0.0, 0.5, 0.5]), np.array([3.0, 0.5, 0.0])     # logits before / after by hand
    np.testing.assert_allclose(p1, np.exp(z1[0]) / np.exp(z1).sum(), rtol=1e-5)
    np.testing.assert_allclose(p0, np.exp(z0[0]) / np.exp(z0).sum(), rtol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (dict(percents=[0.0]), "percents"), (dict(percents=[120.0]), "percents"),
    (dict(curve_steps=0), "curve_steps"), (dict(targets=[0, 1]), "targets"),
])
def test_evaluate_maps_rejects_bad_input(bad, match):
    maps = ev.MethodMaps(*(jnp.zeros((1, 1, 2, 3)) for _ in range(3)))
    args = dict(targets=[0], competitors=[1], labels=[0])
    kwargs = {k: v for k, v in bad.items() if k not in args}
    args.update({k: v for k, v in bad.items() if k in args})
    with pytest.raises(ValueError, match=match):
        ev.evaluate_maps(linear, IMAGE[None], maps, args["targets"], args["competitors"], args["labels"],
                         np.zeros((1, 1, 2, 3, 1)), **kwargs)


def test_evaluate_maps_rejects_nan_maps_and_wrong_shapes():
    nan = ev.MethodMaps(jnp.zeros((1, 1, 2, 3)), jnp.full((1, 1, 2, 3), jnp.nan), jnp.zeros((1, 1, 2, 3)))
    with pytest.raises(ValueError, match="maps.undesirable"):
        ev.evaluate_maps(linear, IMAGE[None], nan, [0], [1], [0], np.zeros((1, 1, 2, 3, 1)))
    wrong = ev.MethodMaps(*(jnp.zeros((1, 1, 3, 2)) for _ in range(3)))
    with pytest.raises(ValueError, match="maps.support"):
        ev.evaluate_maps(linear, IMAGE[None], wrong, [0], [1], [0], np.zeros((1, 1, 2, 3, 1)))
    with pytest.raises(ValueError, match="fills"):
        ev.evaluate_maps(linear, IMAGE[None], ev.MethodMaps(*(jnp.zeros((1, 1, 2, 3)),) * 3), [0], [1], [0],
                         np.zeros((1, 2, 3, 1)))


def test_fill_image_with_the_conditional_sampler_stays_in_range_and_is_reproducible():
    from undesirable_jax.conditional import conditional_gaussian

    imgs = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))
    s = conditional_gaussian(imgs, window=2, key=jax.random.key(1), num_patches=500)
    a = ev.fill_image(s, imgs[0], 2, jax.random.key(2), 0)
    b = ev.fill_image(s, imgs[0], 2, jax.random.key(2), 0)
    c = ev.fill_image(s, imgs[0], 2, jax.random.key(3), 0)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, imgs[0])
    assert float(a.min()) >= float(imgs.min()) - 1e-6 and float(a.max()) <= float(imgs.max()) + 1e-6
