"""Tests for undesirable_jax.factors: hand-computed values, planted regions, batch, jit, errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import undesirable_jax as uj
from undesirable_jax.engine import Explanation
from undesirable_jax.factors import Factors, factors


# ---------------------------------------------------------------- hand-made explanations

def _grid_loop(h, w, window, stride):
    """Window corners by the METHOD.md rule, written independently of windows.py."""
    def pos(n):
        p = list(range(0, n - window + 1, stride))
        return p if p[-1] == n - window else p + [n - window]
    return pos(h), pos(w)


def _to_pixels_loop(per_window, h, w, window, stride):
    """Mean over covering windows by an explicit loop (float64)."""
    ys, xs = _grid_loop(h, w, window, stride)
    total = np.zeros((h, w))
    count = np.zeros((h, w))
    for iy, y in enumerate(ys):
        for ix, x in enumerate(xs):
            total[y:y + window, x:x + window] += per_window[iy, ix]
            count[y:y + window, x:x + window] += 1
    return total / count


def _we_ref(p_full, p_removed, n, k):
    lap = lambda p: (p * n + 1.0) / (n + k)
    lo = lambda p: np.log2(p) - np.log2(1.0 - p)
    return lo(lap(p_full)) - lo(lap(p_removed))


def _make(evidence, probs, classes, window_probs, *, window=2, stride=1, num_classes=None, laplace_n=10.0):
    evidence = np.asarray(evidence, np.float32)
    h, w = evidence.shape[-2:]
    cov = np.ones((h, w), np.int32)
    return Explanation(
        evidence=jnp.asarray(evidence), probs=jnp.asarray(probs, jnp.float32),
        classes=jnp.asarray(classes, jnp.int32), coverage=jnp.asarray(cov),
        window_probs=jnp.asarray(window_probs, jnp.float32), window=window, stride=stride,
        num_samples=1, num_classes=len(classes) if num_classes is None else num_classes,
        laplace_n=laplace_n)


# Four kept classes of ten, ids deliberately unsorted; classes 5 and 2 tie at p = 0.2.
CLASSES = [7, 5, 2, 9]
PROBS = [0.4, 0.2, 0.2, 0.1]
EVIDENCE = np.array([
    [[1.0, -2.0, 0.5], [-0.25, 0.0, 3.0], [-1.5, 2.0, -0.75]],   # class 7
    [[-1.0, 0.5, 2.0], [0.0, -3.0, 1.0], [0.25, -0.5, 1.5]],      # class 5
    [[2.0, -1.0, 0.0], [1.0, 1.0, -2.0], [-0.5, 0.75, 0.5]],      # class 2
    [[0.0, 0.0, -1.0], [4.0, -4.0, 0.5], [1.0, 1.0, 1.0]],        # class 9
], np.float32)
# 3×3 image, window 2, stride 1: a 2×2 grid of windows.
WINDOW_PROBS = np.array([
    [[0.50, 0.30], [0.45, 0.42]],
    [[0.10, 0.25], [0.20, 0.15]],
    [[0.25, 0.15], [0.05, 0.22]],
    [[0.05, 0.20], [0.12, 0.08]],
], np.float32)


def _hand():
    return _make(EVIDENCE, PROBS, CLASSES, WINDOW_PROBS, num_classes=10, laplace_n=10.0)


def test_plain_factors_match_hand_values():
    f = factors(_hand(), top_k=3, decouple=False)
    assert isinstance(f, Factors) and f.decoupled is False
    assert int(f.target_class) == 7 and float(f.target_prob) == pytest.approx(0.4)
    np.testing.assert_array_equal(f.target, np.maximum(0.0, -EVIDENCE[0]))
    # target excluded; tie between 5 and 2 at p = 0.2: lower id (2) first; then 9.
    np.testing.assert_array_equal(f.non_target_classes, [2, 5, 9])
    np.testing.assert_allclose(f.non_target_probs, [0.2, 0.2, 0.1])
    expect = np.maximum(0.0, EVIDENCE[[2, 1, 3]])
    np.testing.assert_array_equal(f.non_target, expect)
    w = np.array([0.2, 0.2, 0.1])
    np.testing.assert_allclose(f.combined, np.tensordot(w / w.sum(), expect, axes=1), rtol=1e-6)
    assert np.all(np.asarray(f.target) >= 0) and np.all(np.asarray(f.non_target) >= 0)


def test_given_target_is_excluded_and_top_k_truncates():
    f = factors(_hand(), target=5, top_k=2, decouple=False)
    assert int(f.target_class) == 5
    np.testing.assert_array_equal(f.target, np.maximum(0.0, -EVIDENCE[1]))
    np.testing.assert_array_equal(f.non_target_classes, [7, 2])       # 7 (0.4), then 2 (0.2); 5 is the target
    np.testing.assert_array_equal(f.non_target, np.maximum(0.0, EVIDENCE[[0, 2]]))
    np.testing.assert_allclose(f.combined, (0.4 * f.non_target[0] + 0.2 * f.non_target[1]) / 0.6, rtol=1e-6)


def test_top1_tie_goes_to_lower_class_id():
    e = _make(EVIDENCE, [0.3, 0.3, 0.3, 0.1], CLASSES, WINDOW_PROBS, num_classes=10)
    f = factors(e, top_k=3, decouple=False)
    assert int(f.target_class) == 2
    np.testing.assert_array_equal(f.non_target_classes, [5, 7, 9])


def _decoupled_ref(expl, t_row, rows, k):
    """The decoupled U_c by an explicit per-window loop in float64, with k Laplace classes."""
    p = np.asarray(expl.probs, np.float64)
    wp = np.asarray(expl.window_probs, np.float64)
    h, w = expl.evidence.shape[-2:]
    out = []
    for r in rows:
        q_full = p[r] / (1.0 - p[t_row])
        per_window = np.zeros(wp.shape[1:])
        for iy in range(wp.shape[1]):
            for ix in range(wp.shape[2]):
                q_w = wp[r, iy, ix] / (1.0 - wp[t_row, iy, ix])
                per_window[iy, ix] = _we_ref(q_full, q_w, expl.laplace_n, k)
        out.append(np.maximum(0.0, _to_pixels_loop(per_window, h, w, expl.window, expl.stride)))
    return np.stack(out)


def test_decoupled_matches_per_window_loop_with_k_minus_1_classes():
    e = _hand()
    f = factors(e, top_k=3, decouple=True)
    assert f.decoupled is True
    np.testing.assert_array_equal(f.non_target_classes, [2, 5, 9])
    ref = _decoupled_ref(e, 0, [2, 1, 3], k=9)
    np.testing.assert_allclose(f.non_target, ref, rtol=1e-5, atol=1e-6)
    assert np.any(ref > 0) and np.any(ref == 0)   # the clamp matters on this example
    # The test can tell K from K − 1: with laplace_n = 10 the two corrections differ visibly.
    assert np.max(np.abs(_decoupled_ref(e, 0, [2, 1, 3], k=10) - ref)) > 1e-3
    # U_t never depends on decoupling, and combined weights by p(c|x).
    np.testing.assert_array_equal(f.target, np.maximum(0.0, -EVIDENCE[0]))
    w = np.array([0.2, 0.2, 0.1])
    np.testing.assert_allclose(f.combined, np.tensordot(w / w.sum(), ref, axes=1), rtol=1e-5, atol=1e-6)


def test_decoupled_all_classes_kept_matches_loop():
    # Every class kept (K = 4): the denominator is the others' sum, equal to 1 − p(t) in exact arithmetic.
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4,))
    zw = z[:, None, None] + rng.normal(size=(4, 2, 2))
    p = np.exp(z) / np.exp(z).sum()
    wp = np.exp(zw) / np.exp(zw).sum(0)
    e = _make(rng.normal(size=(4, 3, 3)), p, [2, 0, 3, 1], wp, laplace_n=50.0)
    f = factors(e, target=3, top_k=3, decouple=True)
    rows = [r for r in np.lexsort((np.array([2, 0, 3, 1]), -p)) if r != 2]
    np.testing.assert_array_equal(f.non_target_classes, np.array([2, 0, 3, 1])[rows])
    np.testing.assert_allclose(f.non_target, _decoupled_ref(e, 2, rows, k=3), rtol=1e-4, atol=1e-5)


def test_combined_when_all_competitors_underflow_to_zero():
    e = _make(EVIDENCE, [1.0, 0.0, 0.0, 0.0], CLASSES, WINDOW_PROBS, num_classes=10)
    f = factors(e, top_k=2, decouple=False)
    np.testing.assert_array_equal(f.non_target_classes, [2, 5])
    np.testing.assert_allclose(f.combined, np.asarray(f.non_target).mean(0), rtol=1e-6)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("top_k", [0, -1, 4, 10])
def test_top_k_out_of_range_is_a_clear_error(top_k):
    with pytest.raises(ValueError, match=r"top_k: must lie in \[1, 3\]"):
        factors(_hand(), top_k=top_k)


@pytest.mark.parametrize("top_k", [True, 2.0, "3"])
def test_top_k_wrong_type(top_k):
    with pytest.raises(TypeError, match="top_k"):
        factors(_hand(), top_k=top_k)


def test_target_errors():
    with pytest.raises(ValueError, match="class 3 is not among"):
        factors(_hand(), target=3)
    with pytest.raises(TypeError, match="target"):
        factors(_hand(), target=7.0)
    with pytest.raises(TypeError, match="target"):
        factors(_hand(), target=True)
    with pytest.raises(ValueError, match="one class id"):
        factors(_hand(), target=[7, 5])
    with pytest.raises(TypeError, match="explanation"):
        factors({"evidence": EVIDENCE})
    with pytest.raises(TypeError, match="decouple"):
        factors(_hand(), decouple="yes")


def test_traced_missing_target_gives_nan_not_a_wrong_answer():
    f = jax.jit(factors, static_argnames=("top_k", "decouple"))(_hand(), jnp.int32(3), top_k=2)
    assert int(f.target_class) == -1
    assert np.all(np.isnan(np.asarray(f.target))) and np.all(np.isnan(np.asarray(f.combined)))


# ---------------------------------------------------------------- batch and jit

def _random_expl(seed, classes=(4, 1, 0, 3, 2)):
    rng = np.random.default_rng(seed)
    k = len(classes)
    z = rng.normal(size=(k,)) * 2
    p = np.exp(z) / np.exp(z).sum()
    wp = np.exp(z[:, None, None] + rng.normal(size=(k, 4, 4)))
    wp /= wp.sum(0)
    return _make(rng.normal(size=(k, 6, 6)), p, classes, wp, window=3, stride=1, laplace_n=1000.0)


def _stack(es):
    return jax.tree.map(lambda *a: jnp.stack(a), *es)


def _assert_factors_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("decouple", [True, False])
def test_batch_equals_per_explanation(decouple):
    es = [_random_expl(s, c) for s, c in [(0, (4, 1, 0, 3, 2)), (1, (0, 1, 2, 3, 4)), (2, (2, 3, 4, 0, 1))]]
    stacked = _stack(es)
    for target in (None, 3, np.array([0, 4, 2])):
        fb = factors(stacked, target=target, top_k=2, decouple=decouple)
        assert fb.non_target.shape == (3, 2, 6, 6) and fb.target_class.shape == (3,)
        for i, e in enumerate(es):
            t = target if target is None or np.ndim(target) == 0 else int(target[i])
            _assert_factors_equal(jax.tree.map(lambda a: a[i], fb), factors(e, target=t, top_k=2, decouple=decouple))


def test_batch_target_checks():
    stacked = _stack([_random_expl(0), _random_expl(1, (5, 1, 0, 3, 2))])
    with pytest.raises(ValueError, match="explanation 1 of the stack"):
        factors(stacked, target=4)
    with pytest.raises(ValueError, match=r"int array \[2\]"):
        factors(stacked, target=np.array([0, 1, 2]))


def test_jit_matches_eager():
    stacked = _stack([_random_expl(3), _random_expl(4)])
    jf = jax.jit(factors, static_argnames=("top_k", "decouple"))
    _assert_factors_equal(jf(stacked, jnp.array([1, 2]), top_k=3), factors(stacked, np.array([1, 2]), top_k=3))
    _assert_factors_equal(jf(_random_expl(5), None, top_k=1), factors(_random_expl(5), None, top_k=1))


# ---------------------------------------------------------------- planted regions through explain

H = W = 16
WIN = 4
A = np.zeros((H, W), bool)
A[2:6, 2:6] = True           # lowers the target's logit
B = np.zeros((H, W), bool)
B[10:14, 10:14] = True       # raises competitor C's logit
T, C = 0, 2


def _dilate(mask, r):
    ys, xs = np.nonzero(mask)
    out = np.zeros_like(mask)
    out[max(ys.min() - r, 0):ys.max() + r + 1, max(xs.min() - r, 0):xs.max() + r + 1] = True
    return out


A_WIDE, B_WIDE = _dilate(A, WIN), _dilate(B, WIN)


def _planted_logits(bias, x):
    a = jnp.mean(x[:, A, 0], axis=1)
    b = jnp.mean(x[:, B, 0], axis=1)
    z = jnp.broadcast_to(bias, (x.shape[0], 4))
    return z.at[:, T].add(-6.0 * a).at[:, C].add(3.0 * b)


def _planted_classifier(target_bias):
    # One module-level function with the biases as parameters: one compiled engine step for all.
    return uj.from_function(_planted_logits, jnp.array([target_bias, 0.0, -1.5, -0.5]))


def _image(with_a=True):
    x = np.zeros((H, W, 1), np.float32)
    x[B] = 1.0
    if with_a:
        x[A] = 1.0
    return jnp.asarray(x)


@functools.lru_cache(maxsize=None)
def _planted(with_a=True, target_bias=8.0, classes=None):
    return uj.explain(_planted_classifier(target_bias), _image(with_a), window=WIN, stride=2,
                      sampler=uj.samplers.constant(0.0), num_samples=1, key=jax.random.key(0),
                      classes=classes)


def _mass_and_peak_inside(u, region):
    u = np.asarray(u)
    return u[region].sum() / u.sum(), bool(region[np.unravel_index(np.argmax(u), u.shape)])


def test_planted_target_factor_sits_in_a_and_decoupled_competitor_in_b():
    e = _planted()
    f = factors(e, top_k=2, decouple=True)
    assert int(f.target_class) == T                      # top-1 (p ≈ 0.55)
    assert int(f.non_target_classes[0]) == C
    mass, peak = _mass_and_peak_inside(f.target, A_WIDE)
    assert mass > 0.7 and peak
    mass, peak = _mass_and_peak_inside(f.non_target[0], B_WIDE)
    assert mass > 0.99 and peak
    assert float(np.max(np.asarray(f.non_target[0])[A])) < 1e-4   # no echo of A in U_c
    assert float(np.max(np.asarray(f.non_target[0]))) > 1.0


def test_decoupled_competitor_ignores_a_but_plain_one_does_not():
    with_a, without_a = _planted(True), _planted(False)
    dec = [factors(e, target=T, top_k=2, decouple=True) for e in (with_a, without_a)]
    plain = [factors(e, target=T, top_k=2, decouple=False) for e in (with_a, without_a)]
    np.testing.assert_array_equal(dec[0].non_target_classes, dec[1].non_target_classes)
    # Decoupled: planting A changes nothing in the competitors' maps.
    np.testing.assert_allclose(dec[0].non_target, dec[1].non_target, atol=1e-5)
    # U_t does respond to A (sanity: A is really there) ...
    assert float(np.asarray(dec[0].target)[A].mean()) > 1.0 > float(np.asarray(dec[1].target)[A].mean())
    # ... and so do the plain competitor maps, as the softmax implies: A's removal lowers every p(c).
    u_c = np.asarray(plain[0].non_target[0])
    assert float(u_c[A].mean()) > 1.0 and float(np.asarray(plain[1].non_target[0])[A].max()) < 1e-4
    assert not _mass_and_peak_inside(u_c, B_WIDE)[1]


def test_decoupled_competitor_ignores_target_confidence_even_at_p_one():
    # q(c) does not depend on the target's logit: U_c is the same when p(t) rounds to 1 in float32.
    confident = _planted(True, target_bias=30.0)
    assert float(confident.probs[T]) == 1.0
    f_conf = factors(confident, target=T, top_k=2, decouple=True)
    f_base = factors(_planted(True), target=T, top_k=2, decouple=True)
    np.testing.assert_array_equal(f_conf.non_target_classes, f_base.non_target_classes)
    np.testing.assert_allclose(f_conf.non_target, f_base.non_target, atol=1e-4)


def test_decoupled_with_kept_subset_agrees_with_all_classes():
    # A subset of classes uses 1 − p(t) as the denominator; all classes use the others' sum.
    full = factors(_planted(), top_k=2, decouple=True)
    sub = factors(_planted(classes=(0, 1, 2)), top_k=2, decouple=True)
    np.testing.assert_array_equal(full.non_target_classes, sub.non_target_classes)
    np.testing.assert_allclose(full.non_target, sub.non_target, atol=1e-4)
