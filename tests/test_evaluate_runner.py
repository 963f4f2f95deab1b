"""Runs over data sets: resume after a crash, refused resumes, process splits, merge, summaries."""

import csv
import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

import undesirable_jax as uj
from undesirable_jax import evaluate as ev
from undesirable_jax.data import Example, image_folder
from undesirable_jax.evaluate import runner, summary
from undesirable_jax.evaluate.methods import CONTROLS

H = W = 8
K = 3


def toy(x):
    """Three classes seen in three bands of an 8×8 RGB image (a bit of non-linearity via the square)."""
    top = x[:, :3].mean((1, 2, 3))
    mid = (x[:, 3:5] ** 2).mean((1, 2, 3))
    low = x[:, 5:, :, 1].mean((1, 2))
    return jnp.stack([4 * top - 2 * low, 3 * mid, 4 * low - top], axis=-1)


def toy_images(n):
    """Pairs of images from one source (cluster ``src/<i // 2>``), a clean and a noisy one (the group)."""
    rng = np.random.default_rng(0)
    return [Example(id=f"img/{i}", image=rng.uniform(size=(H, W, 3)).astype(np.float32), label=int(i % K),
                    cluster=f"src/{i // 2}", group=("clean", "noise")[i % 2]) for i in range(n)]


CONFIG = ev.EvalConfig(model="toy", window=2, stride=2, num_samples=2, seed=3, dataset="toy6",
                       percents=(5.0, 25.0), curve_steps=4, rise_masks=16, rise_cells=2, num_seeds=2,
                       scoring_draws=2)
SAMPLER = uj.samplers.marginal(np.random.default_rng(5).uniform(size=(4, H, W, 3)))   # random fills


class Crash(RuntimeError):
    pass


class CrashAfter:
    """A data set that raises after yielding ``n`` examples (an interrupted run)."""

    def __init__(self, examples, n):
        self.examples, self.n = examples, n

    def __len__(self):
        return len(self.examples)

    def __iter__(self):
        for i, ex in enumerate(self.examples):
            if i == self.n:
                raise Crash("injected")
            yield ex


def results_by_id(out):
    return {r["id"]: r for r in runner.load_results(out)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    ids = ev.run(out, toy_images(6), toy, CONFIG, SAMPLER, progress=False)
    return out, ids


def test_uninterrupted_run_writes_one_result_per_image_and_a_summary(reference):
    out, ids = reference
    assert ids == [f"img/{i}" for i in range(6)]
    res = results_by_id(out)
    assert sorted(res) == sorted(ids)
    assert len(list((out / "results").glob("*.json"))) == 6
    r = res["img/1"]
    assert len(r["seeds"]) == 2 and all(set(s) == set(ev.METHODS) for s in r["seeds"])
    pda = r["seeds"][0]["pda"]
    assert len(pda["removal_gain"]) == 2 and len(pda["curve_morf"]) == 5 and len(pda["lerf_gain"]) == 2
    assert set(pda["corrected"]) == {"ut", "signed", "uc", "uc_plain", "union"}
    assert set(r["seeds"][0]["rise"]["corrected"]) == {"ut", "signed", "uc", "union"}
    assert len(pda["ut_gain"]) == 2 and len(pda["ut_curve"]) == 5 and len(pda["ut_within"]) == 2
    assert pda["ut_within"] == [round(q / 100 * H * W) <= pda["positive"] for q in CONFIG.percents]
    assert (r["cluster"], r["group"]) == ("src/0", "noise") and res["img/4"]["cluster"] == "src/2"
    assert r["seeds"][0]["random"]["own_gain"] is None and len(pda["own_gain"]) == 2
    stored = json.loads((out / "config.json").read_text())
    assert stored["window"] == 2 and stored["version"] == uj.__version__ and stored["sampler"].startswith("Marginal(")
    assert stored["scoring"] == "road(noise=0.01)" and stored["num_seeds"] == 2
    for name in ("summary.md", "summary.csv", "removal_gain.png", "comparisons.md", "comparisons.csv", "sanity.md"):
        assert (out / name).stat().st_size > 0
    assert (out / "removal_gain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interrupted_run_resumes_to_exactly_the_uninterrupted_results(reference, tmp_path):
    ref_out, _ = reference
    with pytest.raises(Crash):
        ev.run(tmp_path, CrashAfter(toy_images(6), 4), toy, CONFIG, SAMPLER, progress=False)
    assert len(list((tmp_path / "results").glob("*.json"))) == 4      # finished images kept
    assert not (tmp_path / "summary.md").exists()
    ev.run(tmp_path, toy_images(6), toy, CONFIG, SAMPLER, progress=False)
    got = results_by_id(tmp_path)
    assert len(list((tmp_path / "results").glob("*.json"))) == 6
    assert got == results_by_id(ref_out)
    assert (tmp_path / "summary.csv").read_text() == (ref_out / "summary.csv").read_text()


def test_resume_skips_finished_images(reference, tmp_path, monkeypatch):
    ev.run(tmp_path, toy_images(6)[:3], toy, CONFIG, SAMPLER, progress=False, summarize=False)
    calls = []
    original = runner.evaluate_images
    monkeypatch.setattr(runner, "evaluate_images", lambda *a, **k: calls.extend(a[5]) or original(*a, **k))
    ev.run(tmp_path, toy_images(6), toy, CONFIG, SAMPLER, progress=False)
    assert calls == ["img/3", "img/4", "img/5"]   # the unfinished images only, each once


def test_resume_with_a_different_configuration_is_refused(reference):
    out, _ = reference
    before = sorted(p.name for p in (out / "results").iterdir())
    other = dataclasses.replace(CONFIG, window=4, seed=4)
    with pytest.raises(ValueError, match=r"different configuration.*seed.*window"):
        ev.run(out, toy_images(6), toy, other, SAMPLER, progress=False)
    with pytest.raises(ValueError, match="sampler"):
        ev.run(out, toy_images(6), toy, CONFIG, uj.samplers.constant(0.0), progress=False)
    with pytest.raises(ValueError, match="model_params_sha256"):
        ev.run(out, toy_images(6), uj.from_function(lambda p, x: toy(x) * p, jnp.float32(2.0)), CONFIG,
               SAMPLER, progress=False)
    assert sorted(p.name for p in (out / "results").iterdir()) == before


def test_two_process_split_and_merge_equal_the_one_process_run(reference, tmp_path):
    ref_out, _ = reference
    ids = ev.run(tmp_path, toy_images(6), toy, CONFIG, SAMPLER, process_index=1, process_count=2,
                 progress=False)
    assert sorted(results_by_id(tmp_path)) == ["img/1", "img/3", "img/5"]
    assert not (tmp_path / "summary.md").exists()
    with pytest.raises(ValueError, match=r"3 ids missing: img/0, img/2, img/4"):
        ev.merge(tmp_path, ids)
    assert len(list((tmp_path / "results").glob("*.json"))) == 3      # nothing lost
    ev.run(tmp_path, toy_images(6), toy, CONFIG, SAMPLER, process_index=0, process_count=2, progress=False)
    ev.merge(tmp_path, ids)
    assert results_by_id(tmp_path) == results_by_id(ref_out)
    assert (tmp_path / "summary.md").read_text() == (ref_out / "summary.md").read_text()


def test_merge_reports_unexpected_and_duplicate_results(reference, tmp_path):
    ref_out, ids = reference
    (tmp_path / "results").mkdir()
    (tmp_path / "config.json").write_text((ref_out / "config.json").read_text())
    for p in (ref_out / "results").glob("*.json"):
        (tmp_path / "results" / p.name).write_text(p.read_text())
    rec = json.loads(next((ref_out / "results").glob("*.json")).read_text())
    (tmp_path / "results" / "copy.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="more than one result"):
        ev.merge(tmp_path, ids)
    with pytest.raises(ValueError, match="not in the data set"):
        ev.merge(tmp_path, ids[1:])


def test_summary_table_matches_the_results(reference):
    out, _ = reference
    by_id = results_by_id(out)
    res = list(by_id.values())
    rows = list(csv.DictReader((out / "summary.csv").open()))
    row = next(r for r in rows if r["metric"] == "removal_gain" and r["method"] == "pda" and float(r["q"]) == 25.0
               and r["split"] == "")
    vals = {r["id"]: np.mean([s["pda"]["removal_gain"][1] for s in r["seeds"]]) for r in res}
    per_source = [(vals[f"img/{2 * k}"] + vals[f"img/{2 * k + 1}"]) / 2 for k in range(3)]   # the unit: the cluster
    assert (int(row["n"]), int(row["n_clusters"])) == (6, 3)
    assert float(row["mean"]) == pytest.approx(np.mean(per_source), rel=1e-6)
    from scipy import stats
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(per_source), scale=stats.sem(per_source))
    assert float(row["ci_low"]) == pytest.approx(lo, rel=1e-6) and float(row["ci_high"]) == pytest.approx(hi, rel=1e-6)
    wrong = [r for r in res if r["prediction"] != r["label"]]
    corr = next(r for r in rows if r["metric"] == "correction_rate:ut" and r["method"] == "rise" and float(r["q"]) == 5.0
                and r["split"] == "")
    assert int(corr["n"]) == len(wrong)
    competing = [r for r in res if r["p_competitor"] >= summary.COMPETITOR_FLOOR]
    supp = next(r for r in rows if r["metric"] == "margin_gain:uc" and r["method"] == "pda" and r["split"] == "")
    assert int(supp["n"]) == len(competing)
    noisy = next(r for r in rows if r["metric"] == "ut_gain" and r["method"] == "pda" and r["split"] == "group=noise"
                 and float(r["q"]) == 25.0)
    assert int(noisy["n"]) == 3 and float(noisy["mean"]) == pytest.approx(
        np.mean([np.mean([s["pda"]["ut_gain"][1] for s in by_id[f"img/{i}"]["seeds"]]) for i in (1, 3, 5)]), rel=1e-6)
    md = (out / "summary.md").read_text()
    assert "after Kang et al." in md and "| pda |" in md and "q = 25%" in md and "OWN construction" in md
    assert "## U_t on its own support" in md and "| pda −R_t (full signed order) |" in md
    for split in ("| group=clean |", "| group=noise |", "| class=0 |", "| misclassified |" if wrong else "| correct |",
                  "3 clusters / 6 images"):
        assert split in md, split
    m = len(summary.findings_family(json.loads((out / "config.json").read_text())))
    assert m == 2 * ((len(ev.METHODS) - len(CONTROLS) - 1) + (len(ev.METHODS) - len(CONTROLS)))   # pda vs rest, rest vs best control
    assert f"Holm family (m = {m})" in md and "- `area_between`: pda − occlusion" in md
    comp = list(csv.DictReader((out / "comparisons.csv").open()))
    pair = next(r for r in comp if r["metric"] == "removal_gain" and r["method"] == "pda" and r["versus"] == "random"
                and float(r["q"]) == 25.0)
    rand = {r["id"]: np.mean([s["random"]["removal_gain"][1] for s in r["seeds"]]) for r in res}
    diff = [np.mean([vals[f"img/{i}"] - rand[f"img/{i}"] for i in (2 * k, 2 * k + 1)]) for k in range(3)]
    assert float(pair["mean"]) == pytest.approx(np.mean(diff), rel=1e-6, abs=1e-9) and int(pair["n_clusters"]) == 3
    assert pair["in_family"] == "False" and pair["p_holm"] == "nan"
    fam = [r for r in comp if r["in_family"] == "True"]
    rest = [m for m in ev.METHODS if m not in CONTROLS and m != "pda"]
    assert {(r["metric"], r["method"], r["versus"]) for r in fam} == {
        (m, a, b) for m in ("ut_area", "area_between")
        for a, b in [("pda", v) for v in rest] + [(v, summary.BEST_CONTROL) for v in ["pda", *rest]]}


def test_runner_on_an_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for cls in ("a", "b", "c"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    data = image_folder(tmp_path / "data")
    config = dataclasses.replace(CONFIG, dataset="folder", methods=("pda", "random"))
    ids = ev.run(tmp_path / "out", data, toy, config, uj.samplers.constant(0.5),
                 preprocess=lambda im: np.asarray(im, np.float32) / 255.0, progress=False)
    assert ids == [f"{c}/{i}.png" for c in "abc" for i in range(2)]
    res = results_by_id(tmp_path / "out")
    assert sorted(res) == sorted(ids) and res["b/1.png"]["label"] == 1
    assert (tmp_path / "out" / "summary.md").exists()


def test_result_paths_are_safe_and_distinct(tmp_path):
    a, b = runner.result_path(tmp_path, "a/b"), runner.result_path(tmp_path, "a_b")
    assert a != b and a.parent == b.parent == tmp_path / "results"
    assert runner.result_path(tmp_path, "../x").parent == tmp_path / "results"


def test_config_validation():
    with pytest.raises(ValueError, match="methods"):
        ev.EvalConfig(model="m", window=2, stride=1, methods=("pda", "lime"))
    with pytest.raises(ValueError, match="percents"):
        ev.EvalConfig(model="m", window=2, stride=1, percents=(0.0,))
    with pytest.raises(ValueError, match="window"):
        ev.EvalConfig(model="m", window=0, stride=1)
    with pytest.raises(ValueError, match="process_index"):
        ev.run("unused", [], toy, CONFIG, SAMPLER, process_index=2, process_count=2)


def test_merge_refuses_results_made_under_another_configuration(reference, tmp_path):
    ref_out, ids = reference
    (tmp_path / "results").mkdir()
    (tmp_path / "config.json").write_text((ref_out / "config.json").read_text())
    for p in (ref_out / "results").glob("*.json"):
        rec = json.loads(p.read_text())
        if rec["id"] == "img/2":
            rec["config_sha256"] = "0" * 16          # as if a process ran with other settings
        (tmp_path / "results" / p.name).write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=r"1 ids computed under another configuration.*img/2"):
        ev.merge(tmp_path, ids)


@pytest.mark.slow
def test_runner_on_mock_imagenet_from_tfds(tmp_path):
    """The ImageNet path (a prepared tfds directory) with tfds' mock data and a 1000-class analytic model."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from PIL import Image

    from undesirable_jax.data import tfds_source

    (tmp_path / "tfds" / "imagenet2012" / "5.1.0").mkdir(parents=True)
    (tmp_path / "tfds" / "imagenet2012" / "5.1.0" / "dataset_info.json").write_text("{}")
    w = jnp.asarray(np.random.default_rng(0).normal(size=(3 * 4 * 4, 1000)).astype(np.float32))

    def thousand(x):   # 16×16 RGB → 4×4 block means → 1000 logits
        blocks = x.reshape(x.shape[0], 4, 4, 4, 4, 3).mean((2, 4))
        return blocks.reshape(x.shape[0], -1) @ w

    def prep(raw):
        return np.asarray(Image.fromarray(raw).resize((16, 16), Image.BILINEAR), np.float32) / 255.0

    config = dataclasses.replace(CONFIG, dataset="tfds:imagenet2012:validation", methods=("pda", "random"))
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = tfds_source("imagenet2012", "validation", data_dir=tmp_path / "tfds")
        assert len(ds.class_names) == 1000
        ids = ev.run(tmp_path / "out", ds, thousand, config, uj.samplers.constant(0.5), preprocess=prep,
                     progress=False)
    res = results_by_id(tmp_path / "out")
    assert sorted(res) == sorted(ids) and len(ids) == 3
    assert all(0 <= r["label"] < 1000 and 0 <= r["competitor"] < 1000 for r in res.values())
    assert (tmp_path / "out" / "summary.csv").exists()


class Indexed:
    """Random-access set with ``ids`` that counts how many images it loads."""

    def __init__(self, examples):
        self.examples, self.loads = examples, []
        self.ids = tuple(e.id for e in examples)

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        self.loads.append(i)
        return self.examples[i]


def test_random_access_sets_load_only_this_process_unfinished_images(reference, tmp_path):
    ref_out, _ = reference
    ds = Indexed(toy_images(6))
    ids = ev.run(tmp_path, ds, toy, CONFIG, SAMPLER, process_index=1, process_count=2, progress=False)
    assert ids == list(ds.ids) and ds.loads == [1, 3, 5]
    ds.loads.clear()
    ev.run(tmp_path, ds, toy, CONFIG, SAMPLER, process_index=0, process_count=2, progress=False)
    ev.run(tmp_path, ds, toy, CONFIG, SAMPLER, progress=False)          # all finished: loads nothing
    assert ds.loads == [0, 2, 4]
    assert results_by_id(tmp_path) == results_by_id(ref_out)
    bad = Indexed(toy_images(3))
    bad.ids = ("img/0", "img/0", "img/2")
    with pytest.raises(ValueError, match="unique"):
        ev.run(tmp_path / "bad", bad, toy, CONFIG, SAMPLER, progress=False)


def test_run_folder_is_locked_per_share_and_damaged_files_are_named(tmp_path):
    """Two processes with the same share are refused (the lock names the first); a damaged result names
    its file; a deleted config.json comes back from the results on resume."""
    import os
    import socket

    from undesirable_jax.checks import BadFileError

    out = tmp_path / "run"
    images = toy_images(3)
    runner.run(out, images, toy, CONFIG, SAMPLER, progress=False)
    lock = out / ".lock-0-of-1"
    assert not lock.exists()                                   # released after the run
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": 0}))
    with pytest.raises(ValueError, match=f"being evaluated by process {os.getpid()}"):
        runner.run(out, images, toy, CONFIG, SAMPLER, progress=False)
    with pytest.raises(ValueError, match="share 0 of 1, which has images in common"):   # overlaps it
        runner.run(out, images, toy, CONFIG, SAMPLER, process_index=1, process_count=2, progress=False,
                   summarize=False)
    lock.unlink()
    (out / "config.json").unlink()
    runner.run(out, images, toy, CONFIG, SAMPLER, progress=False)   # restored from the matching results
    assert (out / "config.json").exists()
    victim = sorted((out / "results").glob("*.json"))[0]
    kept = victim.read_text()
    victim.write_text("{}")
    with pytest.raises(BadFileError, match=f"(?s){victim.name}.*lacks.*--resume"):
        runner.merge(out, [ex.id for ex in images])
    runner.run(out, images, toy, CONFIG, SAMPLER, progress=False)   # moved to rejected/, computed again
    assert victim.read_text() == kept and len(list((out / "rejected").glob("*.json"))) == 1


def test_sanity_images_are_spread_over_groups_and_clusters_and_agree_everywhere():
    ds = uj.data.corrupted(uj.data.digits("test"), uj.data.CORRUPTIONS["digits"])
    picked = runner.sanity_ids(ds.ids, ds.clusters, ds.groups, 20, seed=0)
    assert len(picked) == 20
    where = {i: k for k, i in enumerate(ds.ids)}
    groups = [ds.groups[where[i]] for i in picked]
    assert {g: groups.count(g) for g in set(groups)} == {"clean": 5, "noise": 5, "blur": 5, "occlusion": 5}
    assert len({ds.clusters[where[i]] for i in picked}) == 20                 # one image per source digit
    assert picked == runner.sanity_ids(list(ds.ids), list(ds.clusters), list(ds.groups), 20, seed=0)
    assert picked != runner.sanity_ids(ds.ids, ds.clusters, ds.groups, 20, seed=1)
    # more picks than clusters: each cluster gives a second image only once every cluster gave one
    small = runner.sanity_ids(["a1", "a2", "b1", "b2", "c1"], ["a", "a", "b", "b", "c"], ["x"] * 5, 4, seed=0)
    assert len(small) == 4 and {i[0] for i in small} == {"a", "b", "c"}
    assert runner.sanity_ids(["a"], ["a"], ["x"], 5, seed=0) == {"a"}
