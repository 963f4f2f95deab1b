"""Tests for undesirable_jax.visualize: display scaling, colour limits, titles, PNG files."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

import undesirable_jax as uj
from undesirable_jax import visualize as vz
from undesirable_jax.engine import Explanation
from undesirable_jax.factors import factors

H = W = 12


def _logits(params, x):
    """Class 0 is lowered by the top-left block, class 1 raised by the bottom-right one."""
    a = jnp.mean(x[:, 1:5, 1:5, 0], axis=(1, 2))
    b = jnp.mean(x[:, 7:11, 7:11, 0], axis=(1, 2))
    z = jnp.broadcast_to(params, (x.shape[0], 4))
    return z.at[:, 0].add(-5.0 * a).at[:, 1].add(3.0 * b)


def _image():
    x = np.zeros((H, W, 1), np.float32)
    x[1:5, 1:5] = 1.0
    x[7:11, 7:11] = 1.0
    return x


@pytest.fixture(scope="module")
def expl() -> Explanation:
    clf = uj.from_function(_logits, jnp.array([8.0, -1.0, 0.0, -0.5]))
    return uj.explain(clf, _image(), window=3, stride=3, sampler=uj.samplers.constant(0.0),
                      num_samples=1, key=jax.random.key(0))


def _png(path):
    arr = np.asarray(Image.open(path).convert("RGB"), np.float64)
    return arr


def test_display_image_scaling():
    u8 = np.array([[[0, 128, 255]]], np.uint8)
    np.testing.assert_allclose(vz.display_image(u8), [[[0.0, 128 / 255, 1.0]]], rtol=1e-6)
    unit = np.random.default_rng(0).uniform(0.2, 0.7, (4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(vz.display_image(unit), unit, rtol=1e-6)      # [0, 1] passes through
    normed = (unit - 0.45) / 0.2                                                # mean/std normalised
    out = vz.display_image(normed)
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.max() - out.min() > 0.9
    # Monotone: the order of pixel values is kept (joint scaling over channels).
    flat_in, flat_out = normed.ravel(), out.ravel()
    assert np.all(np.diff(flat_out[np.argsort(flat_in)]) >= -1e-6)
    assert np.all(vz.display_image(np.full((3, 3), 7.5)) == 0.5)               # constant: mid-grey
    grey = vz.display_image(np.arange(9.0).reshape(3, 3, 1))
    assert grey.shape == (3, 3, 3) and np.all(grey[..., 0] == grey[..., 2])


def test_display_image_errors():
    with pytest.raises(ValueError, match="NaN"):
        vz.display_image(np.full((2, 2, 3), np.nan))
    with pytest.raises(ValueError, match="shape"):
        vz.display_image(np.zeros((2, 2, 5)))
    with pytest.raises(TypeError, match="dtype"):
        vz.display_image(np.array([["a"]]))


def test_greyed_is_grey_and_compressed():
    g = vz.greyed(np.random.default_rng(1).uniform(size=(5, 5, 3)))
    assert np.all(g[..., 0] == g[..., 1]) and g.min() >= 0.3 - 1e-6 and g.max() <= 0.85 + 1e-6


def test_class_label():
    assert vz.class_label(3, None) == "class 3"
    assert vz.class_label(1, ["cat", "dog"]) == "dog"
    with pytest.raises(ValueError, match="class_names"):
        vz.class_label(5, ["cat", "dog"])


def test_evidence_map_is_symmetric_around_zero():
    fig = Figure()
    ax = fig.add_subplot()
    r = np.array([[-1.0, 0.5], [3.0, 0.0]])
    im = vz.plot_evidence(ax, r)
    assert im.get_clim() == (-3.0, 3.0)
    cmap = im.get_cmap()
    assert cmap(1.0)[0] > cmap(1.0)[2] and cmap(0.0)[2] > cmap(0.0)[0]    # top red, bottom blue
    assert len(fig.axes) == 2                                             # the colour bar


def test_plot_heat_rejects_bad_maps():
    fig = Figure()
    ax = fig.add_subplot()
    with pytest.raises(ValueError, match=">= 0"):
        vz.plot_heat(ax, _image(), -np.ones((H, W)))
    with pytest.raises(ValueError, match="does not match"):
        vz.plot_heat(ax, _image(), np.ones((H + 1, W)))


def test_factor_figure_titles_and_png(expl, tmp_path):
    f = factors(expl, top_k=2)
    names = ["zero", "one", "two", "three"]
    fig = vz.factor_figure(_image(), f, names, panel_size=2.0)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0].startswith("input") and "zero" in titles[0]
    assert titles[1].startswith("U_t: against zero") and f"p = {float(f.target_prob):.2f}" in titles[1]
    competitor = names[int(f.non_target_classes[0])]
    assert titles[2].startswith(f"U_c: for {competitor}")
    assert titles[-1].startswith("combined U_c") and len(titles) == 5
    path = vz.save_figure(fig, tmp_path / "sub" / "factors.png", dpi=50)
    png = _png(path)
    assert png.shape == (int(round(1.25 * 2.0 * 50)), int(round(5 * 2.0 * 50)), 3)
    assert png.var() > 100.0                                      # not blank
    assert os.listdir(tmp_path / "sub") == ["factors.png"]        # no temporary left behind


def test_factor_figure_default_names_and_options(expl):
    f = factors(expl, top_k=1, decouple=False)
    fig = vz.factor_figure(np.asarray(_image() * 255, np.uint8), f, show_combined=False, shared_scale=True)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3 and "class 0" in titles[1]
    assert "plain PDA" in fig._suptitle.get_text()


def test_factor_figure_errors(expl):
    stacked = jax.tree.map(lambda *a: jnp.stack(a), expl, expl)
    with pytest.raises(ValueError, match="one explanation"):
        vz.factor_figure(_image(), factors(stacked, top_k=1))
    nan = jax.jit(factors, static_argnames=("top_k",))(expl, jnp.int32(9), top_k=1)
    with pytest.raises(ValueError, match="NaN"):
        vz.factor_figure(_image(), nan)
    with pytest.raises(TypeError, match="factors"):
        vz.factor_figure(_image(), {"target": 1})


def test_evidence_figure_png(expl, tmp_path):
    fig = vz.evidence_figure(expl, image=_image(), class_names=["a", "b", "c", "d"])
    assert [ax.get_title().split("\n")[0] for ax in fig.axes if ax.get_title()][1:] == ["R: a", "R: b", "R: c"]
    png = _png(vz.save_figure(fig, tmp_path / "evidence.png", dpi=40))
    assert png.shape == (int(round(1.25 * 3.0 * 40)), int(round(4 * 3.0 * 40)), 3) and png.var() > 100.0
    with pytest.raises(ValueError, match="class 9 is not in"):
        vz.evidence_figure(expl, class_ids=[9])


def test_save_figure_errors(tmp_path):
    with pytest.raises(ValueError, match=".png"):
        vz.save_figure(Figure(), tmp_path / "x.jpg")
    with pytest.raises(TypeError, match="Figure"):
        vz.save_figure("not a figure", tmp_path / "x.png")


def test_explain_figure_one_call(tmp_path):
    clf = uj.from_function(_logits, jnp.array([8.0, -1.0, 0.0, -0.5]))
    display = np.asarray(_image()[..., 0] * 200, np.uint8)
    report = vz.explain_figure(clf, _image(), display=display, class_names=list("abcd"), top_k=2,
                               path=tmp_path / "fig.png", dpi=30, window=3, stride=3,
                               sampler=uj.samplers.constant(0.0), num_samples=1, key=jax.random.key(0))
    assert isinstance(report.figure, Figure) and int(report.factors.target_class) == 0
    assert report.explanation.evidence.shape == (4, H, W)
    png = _png(tmp_path / "fig.png")
    assert png.shape == (int(round(1.25 * 3.0 * 30)), int(round(5 * 3.0 * 30)), 3) and png.var() > 100.0
