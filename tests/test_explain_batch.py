"""explain_batch: many images in the same chunks equal one explain per image (keys fold_in(key, i))."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import undesirable_jax as uj
from undesirable_jax import engine, samplers
from undesirable_jax import conditional as cg

H, W, C, K = 10, 9, 2, 5


def _classifier(seed=0):
    rng = np.random.default_rng(seed)
    a = jnp.asarray(rng.normal(size=(H * W * C, K)).astype(np.float32) / 6)
    return uj.from_function(lambda p, x: jnp.tanh(x.reshape(x.shape[0], -1) @ p) * 3, a)


def _images(n, seed=1):
    """Mixed images: noise, a constant image, a smooth ramp."""
    rng = np.random.default_rng(seed)
    out = rng.normal(size=(n, H, W, C)).astype(np.float32)
    out[1 % n] = 0.5
    out[2 % n] = np.linspace(-1, 1, H * W * C).reshape(H, W, C)
    return out


def _close(batch, single, *, exact_counts=True):
    """Probabilities to 1e-6; the evidence (log-odds amplify rounding) to 1e-5 of its scale (at least 1 bit).

    The untouched images are classified in one batch, so p(c|x) may differ from a batch of one by float32
    rounding (~3e-7); the standard errors, a difference of two sums over 2 samples, inherit it as ~2e-6.
    """
    assert float(jnp.max(jnp.abs(batch.probs - single.probs))) < 1e-6
    assert float(jnp.max(jnp.abs(batch.window_probs - single.window_probs))) < 1e-6
    scale = float(jnp.max(jnp.abs(single.evidence)))
    assert float(jnp.max(jnp.abs(batch.evidence - single.evidence))) <= 1e-5 * max(scale, 1.0)
    np.testing.assert_array_equal(np.isnan(batch.window_probs_se), np.isnan(single.window_probs_se))
    np.testing.assert_allclose(np.nan_to_num(batch.window_probs_se), np.nan_to_num(single.window_probs_se),
                               atol=1e-5)
    if exact_counts:
        np.testing.assert_array_equal(batch.window_samples, single.window_samples)
    np.testing.assert_array_equal(batch.classes, single.classes)
    np.testing.assert_array_equal(batch.coverage, single.coverage)


def _conditional(window):
    pool = np.random.default_rng(3).normal(size=(6, 12, 12, C)).astype(np.float32)
    return cg.conditional_gaussian(pool, window=window, padding=2, num_patches=400, key=jax.random.key(2))


@pytest.mark.parametrize("name", ["constant", "blur", "marginal", "conditional"])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_batch_equals_one_explain_per_image(name, chunk):
    pool = np.random.default_rng(4).normal(size=(4, H, W, C))
    sampler = {"constant": samplers.constant(0.0), "blur": samplers.blur(2.0), "marginal": samplers.marginal(pool),
               "conditional": _conditional(3)}[name]
    clf, imgs, key = _classifier(), _images(3), jax.random.key(11)
    kw = dict(window=3, stride=2, sampler=sampler, num_samples=2, chunk_size=chunk)
    batch = uj.explain_batch(clf, imgs, key=key, **kw)
    assert batch.evidence.shape == (3, K, H, W) and batch.window_samples.shape == (3, 5, 4)
    for i, got in enumerate(batch.unstack()):
        _close(got, uj.explain(clf, imgs[i], key=jax.random.fold_in(key, i), **kw))


def test_conditional_state_shared_or_stacked():
    """Images as large as the fitted patch share the conditional matrices (stored once); smaller images
    (padded, their own matrices) get them stacked per image, and both still equal explain."""
    sampler = _conditional(2)   # patch side 2 + 2·2 = 6 <= 9: shared
    imgs = _images(2)
    states = [sampler.prepare(jnp.asarray(im), 2) for im in imgs]
    state, batched = engine.stack_states(states)
    assert sum(batched) == 1 and state.source.shape == (2, H, W, C)  # only the image itself differs
    assert state.weight is states[0].weight
    small = _conditional(3)    # patch side 7 <= 9 and <= 10: shared too; a 5x5 image is padded
    tiny = np.random.default_rng(5).normal(size=(2, 5, 5, C)).astype(np.float32)
    states = [small.prepare(jnp.asarray(im), 3) for im in tiny]
    state, batched = engine.stack_states(states)
    assert all(batched) and state.weight.shape[0] == 2  # padded images: their own matrices, stacked
    rng = np.random.default_rng(6)
    a = jnp.asarray(rng.normal(size=(5 * 5 * C, K)).astype(np.float32) / 4)
    clf = uj.from_function(lambda p, x: x.reshape(x.shape[0], -1) @ p, a)
    kw = dict(window=3, stride=1, sampler=small, num_samples=2, chunk_size=5)
    batch = uj.explain_batch(clf, tiny, key=jax.random.key(0), **kw)
    for i, got in enumerate(batch.unstack()):
        _close(got, uj.explain(clf, tiny[i], key=jax.random.fold_in(jax.random.key(0), i), **kw))


def test_an_image_does_not_depend_on_its_batch_mates():
    clf, key = _classifier(), jax.random.key(3)
    kw = dict(window=3, stride=1, sampler=samplers.marginal(_images(4, seed=9)), num_samples=2, chunk_size=16)
    a = _images(3, seed=1)
    b = a.copy()
    b[1:] = _images(3, seed=2)[1:] * 2 + 1  # same first image, different companions
    first = uj.explain_batch(clf, a, key=key, **kw).unstack()[0]
    other = uj.explain_batch(clf, b, key=key, **kw).unstack()[0]
    _close(first, other)


def test_adaptive_sampling_per_image_and_kept_classes():
    clf, imgs, key = _classifier(), _images(3), jax.random.key(5)
    kw = dict(window=3, stride=2, sampler=samplers.marginal(_images(6, seed=7)), num_samples=(2, 8),
              target_se=0.3, chunk_size=9, classes=[4, 1])
    batch = uj.explain_batch(clf, imgs, key=key, **kw)
    assert batch.evidence.shape == (3, 2, H, W)
    counts = np.asarray(batch.window_samples)
    assert counts.min() >= 2 and counts.max() <= 8
    for i, got in enumerate(batch.unstack()):
        _close(got, uj.explain(clf, imgs[i], key=jax.random.fold_in(key, i), **kw))


def test_one_compile_for_batches_of_one_shape():
    clf = _classifier()
    kw = dict(window=3, stride=2, sampler=samplers.constant(0.0), num_samples=1, key=jax.random.key(0),
              chunk_size=8)
    uj.explain_batch(clf, _images(3, seed=1), **kw)
    before = engine._step._cache_size()
    uj.explain_batch(clf, _images(3, seed=2), **kw)
    assert engine._step._cache_size() == before


def test_bad_batches_are_named():
    clf = _classifier()
    kw = dict(window=3, sampler=samplers.constant(0.0), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"images: expected a batch \[N, H, W, C\].*call explain"):
        uj.explain_batch(clf, _images(1)[0], **kw)
    with pytest.raises(ValueError, match="image: expected one image.*explain_batch"):
        uj.explain(clf, _images(2), **kw)
    bad = _images(2)
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="images: contains NaN"):
        uj.explain_batch(clf, bad, **kw)
    with pytest.raises(ValueError, match="unstack"):
        uj.explain(clf, _images(1)[0], **kw).unstack()


FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import undesirable_jax as uj
    from undesirable_jax import samplers
    sys.path.insert(0, "tests")
    from test_explain_batch import _classifier, _images
    assert jax.local_device_count() == 4, jax.devices()
    clf, imgs, key = _classifier(), _images(3), jax.random.key(8)
    out = {}
    for chunk in (4, 12, 40):
        kw = dict(window=3, stride=2, sampler=samplers.marginal(_images(4, seed=3)), num_samples=3)
        batch = uj.explain_batch(clf, imgs, key=key, chunk_size=chunk, mesh="local", **kw).unstack()
        for i, got in enumerate(batch):
            one = uj.explain(clf, imgs[i], key=jax.random.fold_in(key, i), chunk_size=8, **kw)
            out[f"{chunk}/{i}"] = [float(jnp.max(jnp.abs(got.window_probs - one.window_probs))),
                                   float(jnp.max(jnp.abs(got.probs - one.probs)))]
    print("RESULT" + json.dumps(out))
""")


def test_four_devices_equal_one_explain_per_image():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", FOUR_DEVICES], env=env, capture_output=True, text=True,
                          timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([line for line in proc.stdout.splitlines() if line.startswith("RESULT")][0][6:])
    assert len(out) == 9
    for name, (dp, d0) in out.items():
        assert dp < 1e-6 and d0 < 1e-6, (name, dp, d0)
