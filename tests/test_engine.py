"""The PDA engine against an independent per-window loop, analytic classifiers and invariances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import undesirable_jax as uj
from undesirable_jax import samplers


def linear_classifier(h, w, c, k, seed=0):
    """A fixed random linear classifier on flattened images: logits = x·A + b."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(h * w * c, k)).astype(np.float32) / np.sqrt(h * w * c)
    b = rng.normal(size=(k,)).astype(np.float32)
    aj, bj = jnp.asarray(a), jnp.asarray(b)

    def clf(x):
        return x.reshape(x.shape[0], -1) @ aj + bj

    return clf, a, b


def reference_pda(logits_fn, image, window, stride, fill, laplace_n=100_000):
    """Slow, independent PDA: a Python loop over windows in float64 numpy (METHOD.md §1)."""
    h, w, _ = image.shape

    def starts(n):
        s = list(range(0, n - window + 1, stride))
        return s if s[-1] == n - window else s + [n - window]

    def probs(x):
        z = np.asarray(logits_fn(x[None].astype(np.float32)), np.float64)[0]
        e = np.exp(z - z.max())
        return e / e.sum()

    def lodds(p, k):
        p = (p * laplace_n + 1) / (laplace_n + k)
        return np.log2(p / (1 - p))

    p0 = probs(image)
    k = p0.size
    total = np.zeros((k, h, w))
    count = np.zeros((h, w))
    for y in starts(h):
        for x in starts(w):
            pert = image.copy()
            pert[y:y + window, x:x + window, :] = fill
            we = lodds(p0, k) - lodds(probs(pert), k)
            total[:, y:y + window, x:x + window] += we[:, None, None]
            count[y:y + window, x:x + window] += 1
    return total / count, count, p0


@pytest.mark.parametrize("shape,window,stride", [
    ((9, 9, 1), 3, 1),
    ((12, 10, 3), 3, 2),     # stride does not divide H - k or W - k
    ((11, 7, 2), 4, 3),      # non-square, last position appended on both axes
    ((8, 13, 3), 8, 5),      # window as tall as the image
])
def test_matches_plain_loop_with_constant_fill(shape, window, stride):
    h, w, c = shape
    clf, _, _ = linear_classifier(h, w, c, 5)
    img = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    expl = uj.explain(clf, img, window=window, stride=stride, sampler=samplers.constant(0.3),
                      num_samples=1, key=jax.random.key(0), chunk_size=4)
    ref, count, p0 = reference_pda(clf, img, window, stride, 0.3)
    np.testing.assert_allclose(np.asarray(expl.evidence), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(expl.coverage), count)
    np.testing.assert_allclose(np.asarray(expl.probs), p0, rtol=1e-5)
    assert np.abs(ref).max() > 1e-2  # the comparison is not between two zero maps


def test_per_channel_constant_matches_loop():
    clf, _, _ = linear_classifier(8, 8, 3, 4)
    img = np.random.default_rng(2).normal(size=(8, 8, 3)).astype(np.float32)
    colour = np.array([0.1, -0.5, 0.9], np.float32)
    expl = uj.explain(clf, img, window=3, stride=2, sampler=samplers.constant(colour),
                      num_samples=1, key=jax.random.key(0))
    ref, _, _ = reference_pda(clf, img, 3, 2, colour)
    np.testing.assert_allclose(np.asarray(expl.evidence), ref, rtol=1e-5, atol=1e-5)


def test_window_probs_are_per_window_means():
    clf, _, _ = linear_classifier(6, 6, 1, 3)
    img = np.random.default_rng(3).normal(size=(6, 6, 1)).astype(np.float32)
    expl = uj.explain(clf, img, window=2, stride=2, sampler=samplers.constant(0.0),
                      num_samples=1, key=jax.random.key(0))
    assert expl.window_probs.shape == (3, 3, 3)
    pert = img.copy()
    pert[2:4, 4:6] = 0.0
    direct = np.asarray(jax.nn.softmax(clf(jnp.asarray(pert[None]))[0]))
    np.testing.assert_allclose(np.asarray(expl.window_probs[:, 1, 2]), direct, rtol=1e-5)


@pytest.mark.parametrize("sampler", [
    samplers.constant(0.0),
    samplers.marginal(np.random.default_rng(4).normal(size=(5, 10, 9, 2))),
    samplers.blur(1.5),
], ids=["constant", "marginal", "blur"])
def test_chunk_size_invariance(sampler):
    clf, _, _ = linear_classifier(10, 9, 2, 6)
    img = np.random.default_rng(5).normal(size=(10, 9, 2)).astype(np.float32)
    kwargs = dict(window=3, stride=2, sampler=sampler, num_samples=3, key=jax.random.key(7))
    total = 4 * 4 * 3
    maps = [uj.explain(clf, img, chunk_size=c, **kwargs) for c in (1, 7, 64, total)]
    for e in maps[1:]:
        np.testing.assert_allclose(np.asarray(e.evidence), np.asarray(maps[0].evidence), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(e.window_probs), np.asarray(maps[0].window_probs), rtol=1e-5)


def test_same_key_same_result_different_key_differs_only_for_random_samplers():
    clf, _, _ = linear_classifier(8, 8, 1, 4)
    img = np.random.default_rng(6).normal(size=(8, 8, 1)).astype(np.float32)
    pool = np.random.default_rng(7).normal(size=(6, 8, 8, 1))
    run = lambda s, k: np.asarray(uj.explain(clf, img, window=2, stride=2, sampler=s, num_samples=2,
                                             key=jax.random.key(k)).evidence)
    m = samplers.marginal(pool)
    np.testing.assert_array_equal(run(m, 1), run(m, 1))
    assert np.abs(run(m, 1) - run(m, 2)).max() > 1e-3
    c = samplers.constant(0.0)
    np.testing.assert_array_equal(run(c, 1), run(c, 2))


def test_classes_subset_equals_rows_of_full_result():
    clf, _, _ = linear_classifier(8, 8, 1, 6)
    img = np.random.default_rng(8).normal(size=(8, 8, 1)).astype(np.float32)
    kwargs = dict(window=3, stride=1, sampler=samplers.constant(0.0), num_samples=1, key=jax.random.key(0))
    full = uj.explain(clf, img, **kwargs)
    sub = uj.explain(clf, img, classes=[4, 1], **kwargs)
    np.testing.assert_array_equal(np.asarray(sub.classes), [4, 1])
    np.testing.assert_allclose(np.asarray(sub.evidence), np.asarray(full.evidence)[[4, 1]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sub.probs), np.asarray(full.probs)[[4, 1]], rtol=1e-6)
    assert sub.num_classes == full.num_classes == 6


def region_classifier(h, w, region, k=4, boosted=2, gain=3.0):
    """Logits depend only on pixels inside ``region``: their mean raises class ``boosted``."""
    y0, y1, x0, x1 = region
    base = jnp.linspace(-0.5, 0.5, k)

    def clf(x):
        m = x[:, y0:y1, x0:x1, :].mean(axis=(1, 2, 3))
        return base[None, :] + gain * m[:, None] * (jnp.arange(k) == boosted)[None, :]

    return clf


def test_ignored_region_has_zero_evidence_and_region_supports_its_class():
    h = w = 16
    region = (4, 8, 4, 8)
    clf = region_classifier(h, w, region)
    img = np.zeros((h, w, 1), np.float32)
    img[4:8, 4:8] = 1.0
    expl = uj.explain(clf, img, window=3, stride=1, sampler=samplers.constant(0.0), num_samples=1,
                      key=jax.random.key(0))
    ev = np.asarray(expl.evidence)
    # Pixels whose every covering window lies outside the region: exactly zero for every class.
    grid = expl.grid
    touches = np.zeros((h, w), bool)
    for iy in range(grid.shape[0]):
        for ix in range(grid.shape[1]):
            wm = grid.mask(iy, ix)
            if wm[4:8, 4:8].any():
                touches |= wm
    assert (~touches).sum() > 50
    np.testing.assert_array_equal(ev[:, ~touches], 0.0)
    # Inside the region: evidence for the boosted class, against all others.
    inside = ev[:, 4:8, 4:8]
    assert (inside[2] > 0.01).all()
    assert (inside[[0, 1, 3]] < -0.01).all()


def test_window_grid_positions_cover_every_pixel():
    for length, window, stride in [(10, 3, 1), (10, 3, 3), (7, 7, 2), (13, 4, 3), (9, 4, 4)]:
        pos = uj.windows.positions(length, window, stride)
        assert pos[0] == 0 and pos[-1] == length - window
        assert np.all(np.diff(pos) > 0) and np.all(np.diff(pos) <= stride)
        covered = np.zeros(length, int)
        for p in pos:
            covered[p:p + window] += 1
        assert covered.min() >= 1
        np.testing.assert_array_equal(uj.windows.membership(length, window, pos).sum(0), covered)


def test_flax_linen_and_nnx_adapters_and_probability_wrapper():
    import flax.linen as nn
    from flax import nnx

    class Lin(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    img = np.random.default_rng(9).normal(size=(6, 6, 1)).astype(np.float32)
    mod = Lin()
    variables = mod.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))
    kwargs = dict(window=2, stride=2, sampler=samplers.constant(0.0), num_samples=1, key=jax.random.key(0))
    a = uj.explain(uj.flax_linen(mod, variables), img, **kwargs)
    b = uj.explain(lambda x: mod.apply(variables, x), img, **kwargs)
    np.testing.assert_allclose(np.asarray(a.evidence), np.asarray(b.evidence), rtol=1e-6)
    probs_fn = uj.probabilities(lambda x: jax.nn.softmax(mod.apply(variables, x)))
    c = uj.explain(probs_fn, img, **kwargs)
    np.testing.assert_allclose(np.asarray(c.evidence), np.asarray(a.evidence), rtol=1e-4, atol=1e-6)

    class NLin(nnx.Module):
        def __init__(self, rngs):
            self.d = nnx.Linear(36, 3, rngs=rngs)

        def __call__(self, x):
            return self.d(x.reshape(x.shape[0], -1))

    model = NLin(nnx.Rngs(0))
    d = uj.explain(uj.flax_nnx(model), img, **kwargs)
    e = uj.explain(lambda x: model(x), img, **kwargs)
    np.testing.assert_allclose(np.asarray(d.evidence), np.asarray(e.evidence), rtol=1e-6)


def test_one_compile_across_images_and_weights():
    from undesirable_jax import engine

    clf1 = uj.from_function(lambda p, x: x.reshape(x.shape[0], -1) @ p, jnp.ones((16, 3)))
    clf2 = clf1.replace(params=jnp.full((16, 3), 0.5, jnp.float32))
    before = engine._step._cache_size()
    for clf, seed in [(clf1, 0), (clf2, 1), (clf1, 2)]:
        img = np.random.default_rng(seed).normal(size=(4, 4, 1)).astype(np.float32)
        uj.explain(clf, img, window=2, stride=1, sampler=samplers.constant(0.0), num_samples=2,
                   key=jax.random.key(0), chunk_size=5)
    assert engine._step._cache_size() - before == 1


def test_non_target_distribution_stays_a_probability_when_target_rounds_to_one():
    p_t = jnp.float32(1.0)           # a confident target rounded to 1 in float32
    p_c = jnp.float32(3e-8)
    q = uj.evidence.non_target_distribution(p_c, p_t)
    assert 0.0 <= float(q) <= 1.0
    assert np.isfinite(float(uj.evidence.log_odds(uj.evidence.laplace(q, 100_000, 9))))
    np.testing.assert_allclose(float(uj.evidence.non_target_distribution(jnp.float32(0.1), jnp.float32(0.6))), 0.25, rtol=1e-6)


def test_plan_chunk_balances_steps_and_respects_devices():
    from undesirable_jax.engine import plan_chunk

    assert plan_chunk(32, 196, 1) == 28          # 7 steps of 28 instead of 6×32 + a 4-pair step
    assert plan_chunk(None, 196, 1) == 196
    assert plan_chunk(None, 462_250, 1) == 256   # full-size steps when there is plenty of work
    assert plan_chunk(20, 48, 4) == 16           # a multiple of the device count, no larger than asked
    for total in range(1, 60):
        for limit in (1, 4, 7, 16):
            chunk = plan_chunk(limit, total, 1)
            steps = -(-total // chunk)
            assert chunk <= limit and steps == -(-total // limit) and steps * chunk - total < steps
