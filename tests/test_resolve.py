"""The library's resolvers the command line is a shell over: samplers, models, images, data sets, ranking."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from undesirable_jax import classifiers, data, models, samplers
from undesirable_jax.data import Preprocessor


def test_rank_classes_highest_first_lowest_id_on_ties_numpy_and_jax():
    p = [0.2, 0.5, 0.2, 0.1]
    assert classifiers.rank_classes(np.asarray(p)).tolist() == [1, 0, 2, 3]
    assert classifiers.rank_classes(jnp.asarray(p)).tolist() == [1, 0, 2, 3]
    # with class ids: the tie between ids 7 and 3 goes to 3, wherever it sits
    assert classifiers.rank_classes(np.asarray([0.3, 0.3, 0.4]), np.asarray([7, 3, 9])).tolist() == [2, 1, 0]
    jitted = jax.jit(classifiers.rank_classes)(jnp.asarray([0.3, 0.3, 0.4]), jnp.asarray([7, 3, 9]))
    assert jitted.tolist() == [2, 1, 0]


def test_from_name_builds_each_sampler_and_reads_the_pool_only_when_needed():
    calls = []

    def pool():
        calls.append(1)
        return np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)

    assert isinstance(samplers.from_name("blur", pool=pool, blur_sigma=2.0), samplers.Blur)
    assert isinstance(samplers.from_name("constant", pool=pool, fill_value=0.5), samplers.Constant)
    assert calls == []
    assert isinstance(samplers.from_name("marginal", pool=pool), samplers.Marginal) and calls == [1]
    with pytest.raises(ValueError, match="unknown sampler 'gibbs'"):
        samplers.from_name("gibbs")
    with pytest.raises(ValueError, match="--sampler-file: only used with --sampler conditional"):
        samplers.from_name("blur", sampler_file="x.safetensors")
    with pytest.raises(ValueError, match="pool"):
        samplers.from_name("marginal")


def test_resolve_built_in_and_refusals(tmp_path):
    m = models.resolve("digits_cnn")
    assert m.name == "digits_cnn" and len(m.class_names) == 10
    with pytest.raises(ValueError, match="--model: unknown model 'nope'"):
        models.resolve("nope")
    with pytest.raises(ValueError, match="--weights: no file"):
        models.resolve("digits_cnn", tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="--class-names: only for --model"):
        models.resolve("digits_cnn", external=models.ExternalOptions(class_names=tmp_path / "c.txt"))


def test_resolve_image_and_data_specs(tmp_path):
    pixels, name = data.resolve_image("chelsea")
    assert name == "chelsea" and pixels.dtype == np.uint8
    with pytest.raises(ValueError, match="--pool: no file at 'nowhere.png'"):
        data.resolve_image("nowhere.png", "--pool")
    evaluated, pool = data.from_spec("digits+corrupt", "test")
    base = data.digits("test")
    assert len(evaluated) > len(base) and evaluated.ids[:len(base)] == base.ids and len(pool) == len(data.digits("train"))
    assert data.dataset_label("digits+corrupt", "test", 5).startswith("digits+corrupt:test[:5] {")
    with pytest.raises(ValueError, match="dataset: unknown data set 'mnist'"):
        data.from_spec("mnist")
    subset = data.Subset(evaluated, 3)
    assert len(subset) == 3 and subset.ids == evaluated.ids[:3] and subset[2].id == evaluated.ids[2]
    with pytest.raises(IndexError):
        subset[3]


def test_spread_subset_takes_every_version_of_a_corrupted_set_evenly():
    evaluated, _ = data.from_spec("digits+corrupt", "test")
    n = len(evaluated)                                   # 360 digits × (clean, noise, blur, occlusion)
    first = data.Subset(evaluated, 8)
    assert all("+" not in i for i in first.ids)          # the first 8 by position: clean digits only
    spread = data.Subset(evaluated, spread=8)
    assert spread.positions == tuple(i * n // 8 for i in range(8)) == (0, 180, 360, 540, 720, 900, 1080, 1260)
    assert spread.ids == tuple(evaluated.ids[p] for p in spread.positions)
    assert [spread[i].id for i in range(8)] == list(spread.ids) == [ex.id for ex in spread]
    versions = [i.split("+")[1][:5] if "+" in i else "clean" for i in spread.ids]
    assert versions == ["clean", "clean", "noise", "noise", "blur1", "blur1", "occlu", "occlu"]
    assert {i.split("+")[0] for i in spread.ids} == {evaluated.ids[0], evaluated.ids[180]}   # same two digits
    assert len(set(spread.clusters)) == 2 and spread.clusters == tuple(evaluated.clusters[p] for p in spread.positions)
    assert spread.groups == tuple(evaluated.groups[p] for p in spread.positions)
    assert data.Subset(evaluated, spread=10 * n).positions == tuple(range(n))
    with pytest.raises(ValueError, match="limit, spread"):
        data.Subset(evaluated, 3, spread=3)
    with pytest.raises(IndexError):
        spread[8]
    assert data.dataset_label("digits+corrupt", "test", spread=8).startswith("digits+corrupt:test[spread 8] {")


def test_display_is_the_model_crop_without_normalisation():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    pre = Preprocessor(size=(16, 16), resize=20, mean=(120.0, 110.0, 100.0), std=(50.0, 60.0, 70.0))
    shown = pre.display(raw)
    model_input = pre(raw).image
    assert shown.dtype == np.uint8 and shown.shape == (16, 16, 3)
    undone = model_input * np.asarray(pre.std) + np.asarray(pre.mean)   # the same pixels, de-normalised
    np.testing.assert_allclose(shown, np.clip(undone, 0, 255).astype(np.uint8), atol=1)
