"""data/: images, preprocessing with its mapping back to the original, offline and tfds data sets."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from undesirable_jax import data
from undesirable_jax.data import Preprocessor


# ------------------------------------------------------------------------------------ images


def test_sample_images_are_rgb_uint8():
    shapes = {}
    for name in data.SAMPLE_IMAGES:
        im = data.sample_image(name)
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3, name
        assert im.std() > 10, name  # a real photograph, not a blank
        shapes[name] = im.shape
    assert shapes["chelsea"] == (300, 451, 3) and shapes["coffee"] == (400, 600, 3)
    assert shapes["grace_hopper"] == (600, 512, 3)
    with pytest.raises(ValueError, match="choose one of"):
        data.sample_image("lena")


def test_load_image_round_trip_and_modes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(data.load_image(tmp_path / "a.png"), rgb)
    grey = rng.integers(0, 256, (4, 6), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(data.load_image(tmp_path / "g.png"), np.repeat(grey[..., None], 3, 2))
    with pytest.raises(FileNotFoundError, match="no image file"):
        data.load_image(tmp_path / "missing.png")


def test_imagenet_classes_ship_with_the_package():
    assert len(data.IMAGENET_CLASSES) == 1000 == len(set(data.IMAGENET_CLASSES))
    assert data.short_name(data.IMAGENET_CLASSES[0]) == "tench"
    assert data.IMAGENET_CLASSES[967] == "espresso"
    assert data.short_name(data.IMAGENET_CLASSES[281]) == "tabby"


# ----------------------------------------------------------------------------- preprocessing


def test_imagenet_preprocess_matches_a_direct_pillow_pipeline():
    raw = data.sample_image("chelsea")  # 300 x 451
    p = data.EFFICIENTNET_LITE(raw)
    assert p.image.shape == (224, 224, 3) and p.image.dtype == np.float32
    # torchvision's Resize(256): long side int(256 * 451 / 300) = int(384.85) = 384 (truncated, not 385);
    # CenterCrop(224): corner int(round((384 - 224) / 2)) = 80.
    assert p.original_shape == (300, 451) and p.resized_shape == (256, 384)
    assert p.crop_box == (16, 80, 224, 224)
    im = Image.fromarray(raw).resize((384, 256), Image.BICUBIC)
    want = (np.asarray(im, np.float32)[16:240, 80:304] - 127.0) / 128.0
    np.testing.assert_array_equal(p.image, want)


def test_to_original_puts_model_pixels_back_where_they_came_from():
    """A linear ramp survives resize + crop; mapping the model's view back reproduces it inside the crop."""
    H, W = 60, 90
    yy, xx = np.mgrid[0:H, 0:W]
    ramp = np.stack([yy * 4, xx * 2, np.full_like(xx, 7)], -1).astype(np.uint8)  # y*4 <= 236, x*2 <= 178
    prep = Preprocessor(size=(32, 32), resize=40, mean=(0.0,) * 3, std=(1.0,) * 3, resample="bilinear")
    p = prep(ramp)
    assert p.resized_shape == (40, 60) and p.crop_box == (4, 14, 32, 32)
    back = p.to_original(np.moveaxis(p.image, -1, 0))  # [3, H, W], NaN outside the crop
    seen = ~np.isnan(back[0])
    # the crop covers resized rows 4..35 and cols 14..45 -> original rows 6..53, cols 21..68 (scale 1.5)
    rows, cols = np.flatnonzero(seen.any(1)), np.flatnonzero(seen.any(0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (6, 53, 21, 68)
    inner = np.zeros_like(seen)
    inner[8:52, 23:67] = True  # away from the crop edge, where bilinear sampling is exact for a ramp
    np.testing.assert_allclose(back[0][inner], ramp[..., 0][inner], atol=1.0)
    np.testing.assert_allclose(back[1][inner], ramp[..., 1][inner], atol=1.0)
    nearest = p.to_original(p.image[..., 1], order=0, fill=-1.0)
    assert nearest.shape == (H, W) and (nearest[~seen] == -1).all()
    assert np.abs(nearest[inner] - ramp[..., 1][inner]).max() <= 2.0  # one model pixel = 1.5 original pixels


def test_to_original_of_a_resize_only_preprocess_covers_everything():
    prep = Preprocessor(size=(8, 8), resize=None, mean=(0.0,), std=(255.0,), grayscale=True, resample="box")
    p = prep(np.full((24, 40), 200, np.uint8))
    np.testing.assert_allclose(p.image, 200 / 255, rtol=1e-6)
    m = np.arange(64, dtype=np.float32).reshape(8, 8)
    back = p.to_original(m, order=0)
    assert not np.isnan(back).any()
    np.testing.assert_array_equal(back[::3, ::5], m)  # original pixel (3i+1, 5j+2) lies in model pixel (i, j)


def test_preprocess_rejects_bad_input():
    with pytest.raises(TypeError, match="uint8"):
        data.EFFICIENTNET_LITE(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        data.EFFICIENTNET_LITE(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(ValueError, match="resize"):
        Preprocessor(size=(224, 224), resize=200, mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ValueError, match="map_hw"):
        data.EFFICIENTNET_LITE(data.sample_image("coffee")).to_original(np.zeros((10, 10)))


# --------------------------------------------------------------------------------- data sets


def test_digits_and_lfw_fixed_splits():
    for loader, n, k in ((data.digits, 1797, 10), (data.lfw, 200, 2)):
        test, train, every = loader("test"), loader("train"), loader("all")
        assert len(test) + len(train) == len(every) == n
        assert len(test) == len(range(0, n, 5))
        ids = [e.id for e in test] + [e.id for e in train]
        assert len(set(ids)) == n and {e.id for e in every} == set(ids)
        assert len(every.class_names) == k and set(every.labels) == set(range(k))
        e = test[1]
        assert isinstance(e, data.Example) and e.image.dtype == np.uint8 and e.id.endswith("/5")
    with pytest.raises(ValueError, match="split"):
        data.digits("val")


def test_digits_values_match_sklearn():
    from sklearn.datasets import load_digits

    d = load_digits()
    e = data.digits("all")[10]
    np.testing.assert_allclose(e.image / 255.0 * 16.0, d.images[10], atol=0.5 / 255 * 16)
    assert e.label == d.target[10]
    assert data.lfw("all")[99].label == 0 and data.lfw("all")[100].label == 1  # faces first


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls, n in (("dog", 2), ("cat", 3)):
        (tmp_path / cls / "sub").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "cat" / "sub" / "x.jpg")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = data.image_folder(tmp_path)
    assert ds.class_names == ("cat", "dog") and len(ds) == 6
    assert [e.label for e in ds] == [0, 0, 0, 0, 1, 1]
    assert ds[0].id == "cat/0.png" and ds[3].id == "cat/sub/x.jpg" and ds[-1].id == "dog/1.png"
    assert ds[3].image.shape == (2, 2, 3)
    assert ds.clusters == ds.ids and ds.groups == ("all",) * 6 and (ds[3].cluster, ds[3].group) == (ds.ids[3], "all")
    with pytest.raises(IndexError):
        ds[6]
    with pytest.raises(FileNotFoundError, match="not a directory"):
        data.image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        data.image_folder(tmp_path / "empty")


def _prepared(root, *parts):
    d = root.joinpath(*parts)
    d.mkdir(parents=True)
    (d / "dataset_info.json").write_text("{}")


def test_tfds_source_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    _prepared(tmp_path, "mnist", "3.0.1")
    _prepared(tmp_path, "imagenette", "full-size-v2", "1.0.0")
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.tfds_source("mnist", "test", data_dir=tmp_path)
        assert len(ds) == 6 and ds.class_names == tuple(str(i) for i in range(10))
        examples = list(ds)
        assert all(e.image.shape == (28, 28, 1) and e.image.dtype == np.uint8 for e in examples)
        assert all(0 <= e.label < 10 for e in examples)
        assert len({e.id for e in examples}) == 6 and examples[2].id == "mnist/test/2"
        assert examples[2].cluster == ds.clusters[2] == "mnist/test/2" and ds.groups == ("all",) * 6
        net = data.tfds_source("imagenette", "validation", data_dir=tmp_path)
        assert len(net.class_names) == 10 and net[0].image.shape[-1] == 3
        with pytest.raises(ValueError, match="no feature 'img'"):
            data.tfds_source("mnist", "test", data_dir=tmp_path, image_key="img")


def test_tfds_missing_data_fails_without_network_saying_how_to_prepare(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="(?s)does not exist.*tfds build imagenette"):
        data.tfds_source("imagenette", "train", data_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="(?s)downloads/manual.*array_record"):
        data.tfds_source("imagenet2012", "validation", data_dir=tmp_path)
    (tmp_path / "imagenet2012" / "5.1.0").mkdir(parents=True)  # an interrupted preparation
    with pytest.raises(FileNotFoundError, match="not prepared"):
        data.tfds_source("imagenet2012", "validation", data_dir=tmp_path)
    assert no_network == [], f"tried to connect to {no_network}"


def test_corrupted_adds_one_reproducible_copy_per_kind_with_stable_ids():
    base = data.digits("test")
    ds = data.corrupted(base, {"noise": 0.4, "blur": 1.2, "occlusion": 3})
    n = len(base)
    assert len(ds) == 4 * n and ds.ids[:n] == base.ids
    assert ds.ids[n] == f"{base.ids[0]}+noise0.4" and ds.ids[3 * n] == f"{base.ids[0]}+occlusion3"
    assert len(set(ds.ids)) == len(ds.ids)
    np.testing.assert_array_equal(ds.labels[n:2 * n], base.labels)
    again = data.corrupted(base, {"noise": 0.4, "blur": 1.2, "occlusion": 3})
    np.testing.assert_array_equal(ds.images, again.images)
    occluded = ds.images[3 * n:].astype(int)
    assert all((im == 0).sum() >= 9 for im in occluded)            # a 3×3 black square in every copy
    assert ds.images.dtype == np.uint8 and not np.array_equal(ds.images[n:2 * n], base.images)
    with pytest.raises(ValueError, match="levels"):
        data.corrupted(base, {"rain": 1.0})


def test_every_example_carries_its_source_as_cluster_and_its_kind_as_group():
    base = data.digits("test")
    n = len(base)
    assert base.clusters == base.ids and set(base.groups) == {"all"} and base[4].cluster == base.ids[4]
    ds = data.corrupted(base, {"noise": 0.4, "blur": 1.2, "occlusion": 3})
    for k, group in enumerate(("clean", "noise", "blur", "occlusion")):
        ex = ds[k * n + 7]
        assert (ex.cluster, ex.group) == (base.ids[7], group)
        assert ds.clusters[k * n + 7] == base.ids[7] and ds.groups[k * n + 7] == group
    assert len(set(ds.clusters)) == n
    sub = data.Subset(ds, 5)
    assert sub.clusters == ds.clusters[:5] and sub.groups == ("clean",) * 5
    faces = data.corrupted(data.lfw("test"), data.CORRUPTIONS["lfw"])
    assert faces[len(faces) - 1].cluster == data.lfw("test").ids[-1] and faces[len(faces) - 1].group == "occlusion"
    assert data.Example(id="x", image=np.zeros((2, 2)), label=0).cluster == "x"
    with pytest.raises(ValueError, match="clusters"):
        data.ArraySet("s", np.zeros((2, 2, 2)), np.zeros(2), ("a", "b"), ("0",), clusters=("a",))
