"""Sampler fills of undesirable_jax.evaluate.removal, and the superseded fill-based metric being gone."""

import importlib
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

import undesirable_jax as uj
from undesirable_jax import evaluate as ev

ROOT = Path(__file__).resolve().parents[1]
REMOVED = ("evaluate_maps", "MapMetrics", "top_masks")


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


@pytest.mark.parametrize("module", ["undesirable_jax", "undesirable_jax.evaluate",
                                    "undesirable_jax.evaluate.metrics", "undesirable_jax.evaluate.removal"])
def test_the_superseded_fill_based_metric_is_gone(module):
    mod = importlib.import_module(module)
    for name in (*REMOVED, "ranks"):
        assert not hasattr(mod, name), f"{module}.{name} should be removed"
    for name in REMOVED:
        with pytest.raises(ImportError):
            exec(f"from {module} import {name}", {})


def test_nothing_references_the_superseded_metric():
    pattern = r"evaluate_maps\|MapMetrics\|top_masks\|removal\.ranks\|ev\.ranks(\|deletion_auc\|insertion_auc"
    files = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.ipynb", "*.toml"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    me = Path(__file__).resolve().relative_to(ROOT).as_posix()
    files = [f for f in files if f != me and (ROOT / f).is_file() and not f.startswith("benchmarks/HISTORY")]
    hits = subprocess.run(["grep", "-n", pattern, *files], cwd=ROOT, capture_output=True, text=True).stdout
    assert hits == "", hits
