"""explain_adaptive against the exhaustive stride-1 explanation it approximates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import undesirable_jax as uj
from undesirable_jax import samplers

H, W, C, K = 14, 12, 1, 4


def blob_classifier():
    """Logits from smooth Gaussian 'detectors': window probabilities vary smoothly with position,
    with one sharp peak (a narrow detector) that refinement has to find."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    centres = [(4, 3, 3.0), (9, 8, 4.0), (7, 6, 1.0), (2, 9, 2.5)]
    maps = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)) for cy, cx, s in centres], -1)
    a = jnp.asarray(maps.reshape(H * W, K) * 0.08)

    def clf(x):
        return x.reshape(x.shape[0], -1) @ a

    return clf


def image_pool():
    rng = np.random.default_rng(0)
    return rng.uniform(0.5, 1.0, (H, W, C)).astype(np.float32), rng.uniform(0, 1, (6, H, W, C)).astype(np.float32)


@pytest.mark.parametrize("sampler_name", ["marginal", "constant"])
@pytest.mark.parametrize("method", [dict(refine=True), dict(refine=False, interpolation="cubic"),
                                    dict(refine=False, interpolation="linear")])
def test_full_budget_equals_exhaustive(sampler_name, method):
    img, pool = image_pool()
    sampler = samplers.marginal(pool) if sampler_name == "marginal" else samplers.constant(0.0)
    s = 3 if sampler_name == "marginal" else 1
    kw = dict(window=3, sampler=sampler, num_samples=s, key=jax.random.key(4))
    full = uj.explain(blob_classifier(), img, stride=1, chunk_size=20, **kw)
    adapt = uj.explain_adaptive(blob_classifier(), img, budget=1.0, chunk_size=20, **method, **kw)
    assert adapt.stride == 1 and adapt.window == 3 and adapt.num_samples == s
    np.testing.assert_array_equal(np.asarray(adapt.window_samples), s)
    for name in ("evidence", "window_probs", "probs", "evidence_se", "window_probs_se"):
        np.testing.assert_allclose(np.asarray(getattr(adapt, name)), np.asarray(getattr(full, name)),
                                   rtol=1e-6, atol=1e-6, equal_nan=True, err_msg=name)
    np.testing.assert_array_equal(np.asarray(adapt.coverage), np.asarray(full.coverage))


@pytest.mark.parametrize("interpolation,space", [("cubic", "probability"), ("linear", "probability"),
                                                 ("cubic", "log-odds")])
def test_uniform_stride_1_is_explain_stride_1(interpolation, space):
    img, pool = image_pool()
    kw = dict(window=3, sampler=samplers.marginal(pool), num_samples=2, key=jax.random.key(5))
    full = uj.explain(blob_classifier(), img, stride=1, **kw)
    uni = uj.adaptive.explain_uniform(blob_classifier(), img, stride=1, interpolation=interpolation, space=space, **kw)
    for name in ("evidence", "window_probs", "evidence_se", "window_probs_se", "window_samples"):
        np.testing.assert_allclose(np.asarray(getattr(uni, name)), np.asarray(getattr(full, name)),
                                   rtol=1e-6, atol=1e-6, equal_nan=True, err_msg=name)


@pytest.mark.parametrize("stride", [2, 3, 5])
def test_uniform_evaluates_the_stride_grid_exactly_and_interpolates_the_rest(stride):
    img, pool = image_pool()
    kw = dict(window=3, sampler=samplers.marginal(pool), num_samples=2, key=jax.random.key(1))
    full = uj.explain(blob_classifier(), img, stride=1, **kw)
    uni = uj.adaptive.explain_uniform(blob_classifier(), img, stride=stride, **kw)
    done = np.asarray(uni.window_samples) > 0
    ny, nx = done.shape           # 0, c, 2c, … and the last position on each axis (as explain(stride=c))
    expect = np.zeros_like(done)
    expect[np.ix_(sorted({*range(0, ny, stride), ny - 1}), sorted({*range(0, nx, stride), nx - 1}))] = True
    if stride <= 3:
        grid = uj.WindowGrid(H, W, 3, stride)
        assert expect[np.ix_(grid.ys, grid.xs)].all() and expect.sum() == grid.num_windows
    np.testing.assert_array_equal(done, expect)
    wp, wf = np.asarray(uni.window_probs), np.asarray(full.window_probs)
    np.testing.assert_allclose(wp[:, done], wf[:, done], rtol=1e-6, atol=1e-7)
    assert np.all((wp >= 0) & (wp <= 1)) and np.all(np.isfinite(np.asarray(uni.evidence)))
    r = np.corrcoef(np.asarray(uni.evidence).ravel(), np.asarray(full.evidence).ravel())[0, 1]
    assert r > 0.8, r


def test_axis_interpolation_is_exact_on_polynomials_of_its_degree():
    known = np.array([0, 3, 6, 9, 11])
    x = np.arange(12, dtype=np.float64)
    cubic = 0.02 * x ** 3 - 0.3 * x ** 2 + x - 2
    np.testing.assert_allclose(uj.adaptive.axis_matrix(known, 12, "cubic") @ cubic[known], cubic, atol=1e-9)
    line = 0.5 * x - 1
    np.testing.assert_allclose(uj.adaptive.axis_matrix(known, 12, "linear") @ line[known], line, atol=1e-12)
    np.testing.assert_allclose(uj.adaptive.axis_matrix(known, 12, "cubic").sum(1), 1.0, atol=1e-12)


@pytest.mark.parametrize("rule", uj.adaptive.RULES)
@pytest.mark.parametrize("interpolation", uj.adaptive.INTERPOLATIONS)
def test_refine_evaluated_positions_are_exact_and_the_rest_interpolated(rule, interpolation):
    img, pool = image_pool()
    kw = dict(window=3, sampler=samplers.marginal(pool), num_samples=2, key=jax.random.key(1))
    full = uj.explain(blob_classifier(), img, stride=1, **kw)
    adapt = uj.explain_adaptive(blob_classifier(), img, budget=0.4, refine=True, coarse_stride=3, rule=rule,
                                interpolation=interpolation, **kw)
    done = np.asarray(adapt.window_samples) > 0
    ny, nx = done.shape
    assert 0 < done.sum() <= int(0.4 * ny * nx) and not done.all()
    assert done[0, 0] and done[-1, -1] and done[::3, ::3].all()   # the coarse grid, with its last row/column
    wp, wf = np.asarray(adapt.window_probs), np.asarray(full.window_probs)
    np.testing.assert_allclose(wp[:, done], wf[:, done], rtol=1e-6, atol=1e-7)
    assert np.all(np.isfinite(np.asarray(adapt.evidence)))
    if interpolation == "linear":   # piecewise linear stays within the range of the evaluated values
        assert wp.min() >= wf[:, done].min() - 1e-6 and wp.max() <= wf[:, done].max() + 1e-6
    r = np.corrcoef(np.asarray(adapt.evidence).ravel(), np.asarray(full.evidence).ravel())[0, 1]
    assert r > 0.9, r


@pytest.mark.parametrize("refine", [False, True])
@pytest.mark.parametrize("budget", [0.034, 0.1, 0.33, 0.77])
def test_budget_accounting(refine, budget):
    """Passes spent (Σ window_samples) never exceed budget × the stride-1 passes."""
    img, pool = image_pool()
    s = 2
    e = uj.explain_adaptive(blob_classifier(), img, window=3, sampler=samplers.marginal(pool), num_samples=s,
                            key=jax.random.key(0), budget=budget, refine=refine)
    counts = np.asarray(e.window_samples)
    assert set(np.unique(counts)) <= {0, s}
    assert counts.sum() <= budget * counts.size * s + 1e-9
    assert counts.sum() >= 4 * s    # at least the four corners


def test_uniform_stride_is_the_finest_grid_that_fits():
    for ny, nx in ((12, 10), (22, 22), (105, 105), (1, 9)):
        for budget in (0.04, 0.1, 0.3, 0.6, 1.0):
            try:
                c = uj.adaptive.uniform_stride(budget, ny, nx)
            except ValueError:
                continue
            size = lambda c: uj.adaptive._axis(ny, c).size * uj.adaptive._axis(nx, c).size  # noqa: E731
            assert size(c) <= budget * ny * nx + 1e-9
            assert c == 1 or size(c - 1) > budget * ny * nx


def test_deterministic_and_chunk_invariant():
    img, pool = image_pool()
    kw = dict(window=3, sampler=samplers.marginal(pool), num_samples=2, key=jax.random.key(7), budget=0.35,
              coarse_stride=3, refine=True)
    a = uj.explain_adaptive(blob_classifier(), img, chunk_size=8, **kw)
    b = uj.explain_adaptive(blob_classifier(), img, chunk_size=8, **kw)
    c = uj.explain_adaptive(blob_classifier(), img, chunk_size=33, **kw)
    np.testing.assert_array_equal(np.asarray(a.evidence), np.asarray(b.evidence))
    np.testing.assert_array_equal(np.asarray(a.window_samples), np.asarray(c.window_samples))
    np.testing.assert_allclose(np.asarray(a.evidence), np.asarray(c.evidence), rtol=1e-6, atol=1e-6)


def test_factors_and_alpha_work_on_adaptive_explanations():
    img, pool = image_pool()
    e = uj.explain_adaptive(blob_classifier(), img, window=3, sampler=samplers.marginal(pool), num_samples=3,
                            key=jax.random.key(0), budget=0.5, classes=[0, 1, 2, 3])
    f = uj.factors(e, top_k=2, alpha=0.05)
    assert np.asarray(f.target).shape == (H, W) and np.all(np.isfinite(np.asarray(f.target)))


@pytest.mark.parametrize("kw,match", [
    (dict(budget=0.0), "budget"), (dict(budget=1.5), "budget"), (dict(budget=0.01), "corners"),
    (dict(budget=0.04, refine=True, coarse_stride=1), "coarse grid"),
    (dict(refine=True, coarse_stride=0), "coarse_stride"),
    (dict(refine=True, focus=0), "focus"), (dict(num_samples=(1, 2)), "target_se"),
    (dict(interpolation="spline"), "interpolation"), (dict(refine=True, rule="gradient"), "rule"),
])
def test_errors(kw, match):
    img, pool = image_pool()
    args = dict(window=3, sampler=samplers.constant(0.0), num_samples=1, key=jax.random.key(0), budget=0.5)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        uj.explain_adaptive(blob_classifier(), img, **args)


def test_tiny_budget_message_names_only_the_budget():
    """1e-9 of 120 positions: the message asks for a budget that works and suggests nothing else."""
    with pytest.raises(ValueError) as err:
        uj.adaptive.check_budget(1e-9, 12, 10)
    msg = str(err.value)
    assert "coarse_stride" not in msg and msg.startswith("budget:"), msg
    least = float(msg.split("use budget ")[1].split()[0])
    assert uj.adaptive.check_budget(least, 12, 10) == least       # the suggested value is accepted
    with pytest.raises(ValueError, match="--budget"):
        uj.adaptive.check_budget(1e-9, 12, 10, name="--budget")
    with pytest.raises(ValueError, match="stride"):
        uj.adaptive.explain_uniform(blob_classifier(), image_pool()[0], window=3, stride=0,
                                    sampler=samplers.constant(0.0), num_samples=1, key=jax.random.key(0))


MESH_SCRIPT = """
import json
import jax, jax.numpy as jnp, numpy as np
import undesirable_jax as uj
from undesirable_jax import samplers
assert jax.local_device_count() == 4
rng = np.random.default_rng(0)
a = jnp.asarray(rng.normal(size=(10 * 9, 3)).astype(np.float32) * 0.3)
clf = lambda x: x.reshape(x.shape[0], -1) @ a
img = rng.normal(size=(10, 9, 1)).astype(np.float32)
kw = dict(window=3, sampler=samplers.marginal(rng.normal(size=(5, 10, 9, 1))), key=jax.random.key(2))
out = {}
one = uj.explain_adaptive(clf, img, budget=0.5, num_samples=2, chunk_size=8, **kw)
many = uj.explain_adaptive(clf, img, budget=0.5, num_samples=2, chunk_size=8, mesh="local", **kw)
out["adaptive"] = float(jnp.max(jnp.abs(many.evidence - one.evidence)))
out["samples"] = bool(jnp.all(many.window_samples == one.window_samples))
one = uj.explain(clf, img, stride=1, num_samples=(2, 8), target_se=0.01, chunk_size=8, **kw)
many = uj.explain(clf, img, stride=1, num_samples=(2, 8), target_se=0.01, chunk_size=8, mesh="local", **kw)
out["sampling"] = float(jnp.nanmax(jnp.abs(many.evidence_se - one.evidence_se)))
out["sampling_counts"] = bool(jnp.all(many.window_samples == one.window_samples))
print(json.dumps(out))
"""


def test_mesh_gives_the_same_adaptive_results():
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", MESH_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["adaptive"] < 1e-5 and out["samples"], out
    assert out["sampling"] < 1e-5 and out["sampling_counts"], out
