"""Several images per evaluation step: an image's record does not depend on its batch-mates, and the
passes each result records are the images the classifier was actually given."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import undesirable_jax as uj
from undesirable_jax import evaluate as ev
from undesirable_jax.data import Example
from undesirable_jax.evaluate import methods, passes, runner

H = W = 6


def planted(x):
    """Three classes from two patches of channel 0 (a bit of non-linearity via the square)."""
    a = x[:, 1:4, 1:4, 0].mean((1, 2))
    b = (x[:, 2:6, 3:6, 0] ** 2).mean((1, 2))
    return jnp.stack([3.0 * a - b, 2.0 * b, jnp.full_like(a, 0.4)], axis=-1)


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(size=(H, W, 1)).astype(np.float32) for _ in range(n)]


BATCHED = ("pda", "occlusion", "rise", "random", "sobel", "gradient_ref")
CONFIG = ev.EvalConfig(model="planted", window=2, stride=1, num_samples=3, methods=BATCHED, num_seeds=1,
                       scoring_draws=2, percents=(10.0, 40.0), curve_steps=3, rise_masks=8, rise_cells=2)
SAMPLER = uj.samplers.marginal(np.random.default_rng(5).uniform(size=(4, H, W, 1)))   # random fills: keys matter


def numbers(obj):
    """Every number of a record, in a fixed order (bools as 0/1)."""
    if isinstance(obj, dict):
        return [x for k in sorted(obj) for x in numbers(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in numbers(v)]
    if isinstance(obj, (bool, int, float)):
        return [float(obj)]
    return []


def test_an_images_record_does_not_depend_on_its_batch_mates():
    a, b, c, d = images(4)
    kw = dict(chunk_size=5, batch_size=7)   # chunks cut the images' windows at different places
    alone = runner.evaluate_images(planted, [a], [0], CONFIG, SAMPLER, ["a"], **kw)[0]
    first = runner.evaluate_images(planted, [a, b, c], [0, 1, 2], CONFIG, SAMPLER, ["a", "b", "c"], **kw)
    last = runner.evaluate_images(planted, [d, c, a], [1, 2, 0], CONFIG, SAMPLER, ["d", "c", "a"], **kw)
    assert set(alone["seeds"][0]) == set(BATCHED) and alone["skipped"] == {}
    for rec in (first[0], last[2]):
        assert np.allclose(numbers(rec), numbers(alone), rtol=1e-5, atol=1e-6)
        assert rec["seeds"][0]["pda"]["positive"] == alone["seeds"][0]["pda"]["positive"]
    assert np.allclose(numbers(first[2]), numbers(last[1]), rtol=1e-5, atol=1e-6)   # c, at two places
    assert not np.allclose(numbers(first[1]), numbers(alone))                        # b is another image


def test_a_run_gives_the_same_results_for_any_images_per_batch(tmp_path):
    data = [Example(id=f"i{n}", image=im, label=n % 3) for n, im in enumerate(images(5, seed=1))]
    config = ev.EvalConfig(model="planted", window=2, stride=2, num_samples=2, methods=("pda", "occlusion"),
                           num_seeds=1, scoring_draws=1, percents=(20.0,), curve_steps=2)
    for n in (1, 3):                    # one a step; then a batch of 3 and one of 2
        ev.run(tmp_path / f"b{n}", data, planted, config, SAMPLER, batch_images=n, progress=False)
    for d in data:
        recs = [json.loads((tmp_path / f"b{n}" / "results" / f"{d.id}.json").read_text()) for n in (1, 3)]
        for rec in recs[1:]:
            assert np.allclose(numbers(rec), numbers(recs[0]), rtol=1e-5, atol=1e-6), d.id


def test_images_per_batch_bounds_the_pda_accumulators():
    config = ev.EvalConfig(model="m", window=1, stride=1)
    assert runner.images_per_batch(8, config, (H, W, 1), planted) == 8        # 36 windows × 3 classes: tiny
    k = 1000
    wide = lambda x: jnp.zeros((x.shape[0], k))                                # noqa: E731
    per_image = 2 * 4 * 224 * 224 * k                                          # two float32 [windows, K]
    assert runner.images_per_batch(8, config, (224, 224, 3), wide) == runner.BATCH_BYTES // per_image == 2
    with pytest.raises(ValueError, match="batch_images"):
        ev.run("unused", [], planted, config, SAMPLER, batch_images=0)


SEEN: list[int] = []   # images per forward pass of `counted`, cleared by each test that reads it


def counted(x):
    """``planted``, recording the batch size of every forward pass it runs (one function for every test,
    so the compiled steps are shared)."""
    jax.debug.callback(lambda a: SEEN.append(a.shape[0]), x)
    return planted(x)


@pytest.mark.parametrize("method", ["pda", "occlusion", "rise", "sobol", "random", "sobel", "gradient_ref",
                                    "integrated_gradients", "smoothgrad"])
def test_recorded_passes_are_the_images_the_classifier_was_given(method):
    SEEN.clear()
    config = ev.EvalConfig(model="planted", window=2, stride=2, num_samples=2, methods=(method,), num_seeds=2,
                           scoring_draws=2, percents=(10.0, 40.0), curve_steps=3, rise_masks=5, rise_cells=2,
                           sobol_grid=2, sobol_designs=4, ig_steps=3, smoothgrad_samples=2)
    rec = runner.evaluate_image(counted, images(1)[0], 0, config, SAMPLER, "x", chunk_size=1, batch_size=1)
    p = rec["passes"]
    assert set(p) == {method, "shared"}
    forward, backward = passes.build_passes(method, config, (H, W, 1))
    assert p[method]["build"] == 2 * forward and p[method]["gradient"] == 2 * backward
    assert sum(SEEN) == sum(v["build"] + v["score"] for v in p.values())        # chunks of 1: no padding
    assert p[method]["score"] == 2 * passes.score_passes(config, 2 + (method == "pda"),
                                                         {"pda": 2, "occlusion": 1, "rise": 2, "sobol": 2}.get(method))


def test_every_method_declares_its_build_passes():
    classify = set(methods.BUILDERS) - set(methods.CONTROLS) - {"random"}
    assert set(passes.BUILD_PASSES) == classify | {"random"}
