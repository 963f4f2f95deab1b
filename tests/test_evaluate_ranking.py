"""rank_pixels: exact descending order for distinct scores, uniform random order among exact ties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from undesirable_jax.evaluate import rank_pixels
from undesirable_jax.evaluate.ranking import pixel_ranks, top_mask


def test_distinct_scores_give_the_exact_descending_order():
    rng = np.random.default_rng(0)
    score = rng.standard_normal((7, 9)).astype(np.float32)
    expect = np.argsort(-score.ravel(), kind="stable")
    for k in range(3):
        assert np.array_equal(np.asarray(rank_pixels(score, jax.random.key(k))), expect)


def test_scores_one_ulp_apart_keep_their_order():
    base = np.float32(0.3)
    vals = [base]
    for _ in range(15):
        vals.append(np.nextafter(vals[-1], np.float32(np.inf), dtype=np.float32))
    vals = np.array(vals, np.float32)                      # strictly increasing by one ulp each
    rng = np.random.default_rng(1)
    perm = rng.permutation(16)
    score = vals[perm].reshape(4, 4)
    for k in range(5):
        order = np.asarray(rank_pixels(score, jax.random.key(k)))
        assert np.all(np.diff(score.ravel()[order]) < 0)


def test_int_scores_and_signed_zero_tie():
    score = np.array([[3, -2], [7, 3]], np.int32)
    order = np.asarray(rank_pixels(score, jax.random.key(0)))
    assert order[0] == 2 and set(order[1:3]) == {0, 3} and order[3] == 1
    z = jnp.array([[0.0, -0.0]])
    firsts = {int(rank_pixels(z, jax.random.key(k))[0]) for k in range(20)}
    assert firsts == {0, 1}                                # -0.0 and 0.0 tie


def test_ties_are_key_dependent_and_not_row_major():
    score = np.zeros((6, 6), np.float32)
    score[0, 0] = 1.0                                      # one clear winner, 35 tied pixels
    orders = [np.asarray(rank_pixels(score, jax.random.key(k))) for k in range(10)]
    assert all(o[0] == 0 for o in orders)
    assert len({tuple(o) for o in orders}) == 10
    assert not any(np.array_equal(o[1:], np.arange(1, 36)) for o in orders)


def test_ties_are_unbiased():
    """Four tied top pixels among lower ones: each is first ~1/4 of the time over 2000 fixed keys."""
    score = np.linspace(0.0, 0.5, 16, dtype=np.float32).reshape(4, 4)
    tied = np.array([0, 5, 10, 15])
    score.ravel()[tied] = 1.0
    keys = jax.random.split(jax.random.key(123), 2000)
    orders = np.asarray(jax.jit(jax.vmap(rank_pixels))(jnp.broadcast_to(score, (2000, 4, 4)), keys))
    assert np.all(np.isin(orders[:, :4], tied))
    counts = np.array([(orders[:, 0] == t).sum() for t in tied])
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    # and the full within-tie permutation: the 24 orders are all reached, none more than expected
    perms = {tuple(o) for o in orders[:, :4]}
    assert len(perms) == 24


def test_pixel_ranks_and_top_mask_invert_the_order():
    score = np.random.default_rng(2).random((5, 6)).astype(np.float32)
    order = rank_pixels(score, jax.random.key(0))
    ranks = np.asarray(pixel_ranks(order))
    assert np.array_equal(ranks[np.asarray(order)], np.arange(30))
    mask = np.asarray(top_mask(order, 7, (5, 6)))
    assert mask.sum() == 7 and score[mask].min() > score[~mask].max()


def test_nan_is_refused_and_bad_shapes():
    with pytest.raises(ValueError, match="NaN"):
        rank_pixels(jnp.array([[0.0, jnp.nan]]), jax.random.key(0))
    with pytest.raises(ValueError, match="score"):
        rank_pixels(jnp.zeros(4), jax.random.key(0))
    with pytest.raises(TypeError, match="score"):
        rank_pixels(jnp.zeros((2, 2), bool), jax.random.key(0))


def test_float_noise_around_zero_changes_neither_order_nor_positive_count():
    """Two runs whose maps differ by 1e-7 noise: the same order and positive count (ZERO_TOLERANCE)."""
    from undesirable_jax.evaluate.ranking import ZERO_TOLERANCE, positive_count, snap_zero

    rng = np.random.default_rng(3)
    one = np.zeros(64, np.float32)
    one[:20] = rng.uniform(0.05, 1.0, 20)                  # 20 clearly positive pixels
    one[20:34] = -rng.uniform(0.05, 1.0, 14)               # 14 clearly negative ones, 30 exact zeros
    one = one[rng.permutation(64)].reshape(8, 8)
    two = one + (1e-7 * rng.standard_normal((8, 8))).astype(np.float32)   # the same map, other rounding
    assert int(np.sum(two > 0)) != int(np.sum(one > 0))   # without the rule the positive sets differ
    assert int(positive_count(one)) == int(positive_count(two)) == 20
    for k in range(5):
        key = jax.random.key(k)
        assert np.array_equal(np.asarray(rank_pixels(one, key)), np.asarray(rank_pixels(two, key)))
    naive = [np.asarray(jnp.argsort(-jnp.asarray(m).ravel(), stable=True)) for m in (one, two)]
    assert not np.array_equal(*naive)                      # the raw order does depend on the noise
    # the tolerance is relative to the map's scale, and values beyond it keep their sign
    tiny = np.array([[1e-3, 1e-10, -1e-10, -1e-3]], np.float32)
    np.testing.assert_array_equal(np.asarray(snap_zero(tiny)), np.array([[1e-3, 0.0, 0.0, -1e-3]], np.float32))
    assert int(positive_count(tiny * 1e-20)) == 1 and ZERO_TOLERANCE == 1e-6
    assert int(positive_count(np.zeros((2, 2), np.float32))) == 0
