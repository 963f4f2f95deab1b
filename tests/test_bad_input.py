"""Hostile and careless input: one clear error naming the file or argument, before any long work,
in bounded memory, and never a silently wrong value.

Every hostile file is made here (no binary fixtures). Classes: unreadable images, image modes,
memory bounds, damaged weight files, output paths, numbers out of range, classifiers that break the
evidence, and data sets whose classes are not the model's.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import undesirable_jax as uj
from undesirable_jax import checks, cli, data, engine, models, samplers
from undesirable_jax import throughput as benchmark
from undesirable_jax.checks import BadFileError
from undesirable_jax.models import checkpoints
from test_weights_torch_writer import state_dict_pickle, write_legacy, write_zip

ROOT = Path(__file__).resolve().parents[1]


def run_cli(argv, capsys) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


# ------------------------------------------------------------------------------ hostile files


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` grey pixels (the data is one empty row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0"))
            + png_chunk(b"IEND", b""))


def unreadable_images(folder: Path) -> dict[str, Path]:
    """Zero bytes, text named .png, truncated PNG and JPEG, a header claiming 10^10 pixels."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = {}
    for fmt in ("PNG", "JPEG"):
        b = io.BytesIO()
        Image.fromarray(pixels).save(b, format=fmt)
        buf[fmt] = b.getvalue()
    files = {"empty.png": b"", "text.png": b"this is not an image\n", "cut.png": buf["PNG"][: len(buf["PNG"]) // 2],
             "cut.jpg": buf["JPEG"][: len(buf["JPEG"]) // 2], "huge.png": png_claiming(100_000, 100_000)}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return {name: folder / name for name in files}


class _Declared:
    """Stands in for a storage array when only its dtype and element count go into the pickle."""

    def __init__(self, size: int):
        self.dtype, self.size = np.dtype(np.float32), size


def hostile_weights(folder: Path) -> dict[str, Path]:
    """Weight files that are damaged, truncated, or declare far more memory than they hold."""
    f = {}
    one = {"0": np.ones(1, np.float32)}
    f["stride0.pth"] = ("0", 0, (100_000, 100_000), (0, 0))  # 40 GB from one float
    write_zip(folder / "stride0.pth", {"w": f.pop("stride0.pth")}, one)
    big = {"0": np.arange(2**18, dtype=np.float32)}  # 1 MiB read 200 times
    write_zip(folder / "reused.pth", {f"w{i}": ("0", 0, (2**18,), (1,)) for i in range(200)}, big)
    n = 2**26  # a 256 MiB storage deflated to about 256 KB
    with zipfile.ZipFile(folder / "deflated.pth", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", state_dict_pickle({"w": ("0", 0, (n,), (1,))}, {"0": _Declared(n)}, False))
        with z.open("archive/data/0", "w") as member:
            for _ in range(n * 4 // 2**20):
                member.write(bytes(2**20))
    write_legacy(folder / "legacy_len.pth", {"w": ("0", 0, (1,), (1,))}, one)
    raw = bytearray((folder / "legacy_len.pth").read_bytes())
    raw[-12:-4] = struct.pack("<q", 2**60)
    (folder / "legacy_len.pth").write_bytes(bytes(raw))
    legacy_magic = (folder / "legacy_len.pth").read_bytes()[:15]  # the pickled magic number comes first
    assert legacy_magic.endswith(b".")
    (folder / "pickle_bytes8.pth").write_bytes(legacy_magic + b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc")
    good = {"w": ("0", 0, (4, 4), (4, 1))}
    sixteen = {"0": np.arange(16, dtype=np.float32)}
    write_zip(folder / "ok.pth", good, sixteen)
    (folder / "cut_zip.pth").write_bytes((folder / "ok.pth").read_bytes()[:-60])
    write_legacy(folder / "ok_legacy.pth", good, sixteen)
    whole = (folder / "ok_legacy.pth").read_bytes()
    for i, cut in enumerate((10, len(whole) // 2, len(whole) - 70, len(whole) - 8)):
        (folder / f"cut_legacy_{i}.pth").write_bytes(whole[:cut])
    checkpoints.save_safetensors(folder / "ok.safetensors", {"w": np.ones((4, 4), np.float32)})
    st = (folder / "ok.safetensors").read_bytes()
    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    bad_offsets = json.dumps({"w": {"dtype": "F32", "shape": [2**40, 2**20], "data_offsets": [0, 64]}}).encode()
    files = {"cut.safetensors": st[:-10], "header_too_large.safetensors": struct.pack("<Q", 2**40) + b"{}",
             "not_json.safetensors": struct.pack("<Q", 12) + b"not json !!!" + bytes(64),
             "bad_offsets.safetensors": struct.pack("<Q", len(bad_offsets)) + bad_offsets + bytes(64),
             "past_end.safetensors": struct.pack("<Q", len(header)) + header + bytes(16),
             "zip_named.safetensors": (folder / "ok.pth").read_bytes(),
             "pickle_named.safetensors": (folder / "ok_legacy.pth").read_bytes()}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    skip = {"ok.pth", "ok_legacy.pth", "ok.safetensors"}
    return {p.name: p for p in sorted(folder.iterdir()) if p.name not in skip}


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory) -> dict[str, Path]:
    return unreadable_images(tmp_path_factory.mktemp("bad_images"))


@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory) -> dict[str, Path]:
    return hostile_weights(tmp_path_factory.mktemp("bad_weights"))


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("digit") / "digit.png"
    Image.fromarray(data.digits("test")[3].image).save(path)
    return path


# ------------------------------------------------------------------ 1. unreadable images


def test_unreadable_images_name_the_file_in_the_api(bad_images):
    for name, path in bad_images.items():
        with pytest.raises(BadFileError) as info:
            data.load_image(path)
        assert str(path) in str(info.value) and info.value.path == str(path), name
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["empty.png", "text.png", "cut.png", "cut.jpg", "huge.png"])
def test_unreadable_images_are_one_error_line_in_explain_pool_and_benchmark(name, bad_images, digit_png, tmp_path,
                                                                            capsys):
    bad = bad_images[name]
    out = ["--out-dir", tmp_path, "--no-progress"]
    code, err = run_cli(["explain", bad, "--model", "digits_cnn"] + out, capsys)
    assert_one_line_error(code, err, "image:", str(bad))
    code, err = run_cli(["explain", digit_png, "--model", "digits_cnn", "--window", "2", "--sampler", "marginal",
                         "--pool", digit_png, bad] + out, capsys)
    assert_one_line_error(code, err, "--pool:", str(bad))
    code, err = run_cli(["benchmark", "--model", "digits_cnn", "--image", bad, "--window", "2", "--no-progress"],
                        capsys)
    assert_one_line_error(code, err, "--image:", str(bad))
    assert not list(tmp_path.iterdir()), "nothing is written"


def test_traceback_flag_shows_the_real_exception(bad_images):
    with pytest.raises(ValueError, match="cannot be read as an image"):
        cli.main(["explain", str(bad_images["text.png"]), "--model", "digits_cnn", "--traceback", "--no-progress"])


def test_cli_maps_pillow_errors_to_one_line(monkeypatch, digit_png, capsys):
    """Pillow's own errors, wherever they escape from, are input errors of the command line."""
    for exc in (Image.DecompressionBombError("too many pixels"), Image.UnidentifiedImageError("cannot identify"),
                OSError("broken data stream")):
        def boom(*_a, exc=exc, **_k):
            raise exc

        monkeypatch.setattr(cli, "load_raw_image", boom)
        code, err = run_cli(["explain", digit_png, "--model", "digits_cnn", "--no-progress"], capsys)
        assert_one_line_error(code, err, str(exc))


def image_folder_with_a_bad_file(root: Path, bad: Path) -> Path:
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        Image.fromarray(data.digits("test")[c].image).save(root / str(c) / "b.png")
    (root / "3" / "a.png").write_bytes(bad.read_bytes())
    return root / "3" / "a.png"


def test_a_bad_image_in_a_data_set_stops_the_run_naming_it(bad_images, tmp_path, capsys):
    bad = image_folder_with_a_bad_file(tmp_path / "set", bad_images["cut.png"])
    ds = data.image_folder(tmp_path / "set")
    i = ds.ids.index("3/a.png")
    with pytest.raises(BadFileError) as info:
        ds[i]
    assert str(bad) in str(info.value) and "--resume" in str(info.value)
    assert ds[i + 1].image.shape == (8, 8, 3)  # the other images still read
    code, err = run_cli(["evaluate", "--dataset", f"folder:{tmp_path / 'set'}", "--model", "digits_cnn", "--window",
                         "4", "--stride", "4", "--methods", "pda", "--limit", "5", "--out", tmp_path / "run",
                         "--no-progress"], capsys)
    assert_one_line_error(code, err, str(bad), "--resume")


# ---------------------------------------------------------------------------- 2. image modes


def test_sixteen_bit_png_keeps_its_values(tmp_path):
    ramp = (np.arange(64, dtype=np.uint32) * 1040).astype(np.uint16).reshape(4, 16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").mode == "I;16"
    got = data.load_image(tmp_path / "ramp.png")
    want = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, axis=2))
    assert len(np.unique(got)) == 64  # not clipped to 255


@pytest.mark.parametrize("array, suffix, mode", [
    (np.arange(16, dtype=np.int32).reshape(4, 4) * 1000, ".tif", "I"),
    (np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), ".tif", "F"),
])
def test_pixels_without_a_fixed_range_are_refused(array, suffix, mode, tmp_path, capsys):
    path = tmp_path / f"x{suffix}"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode == mode
    with pytest.raises(BadFileError, match=f"mode {mode}"):
        data.load_image(path)
    code, err = run_cli(["explain", path, "--model", "digits_cnn", "--out-dir", tmp_path / "o", "--no-progress"],
                        capsys)
    assert_one_line_error(code, err, str(path), f"mode {mode}", "convert")


def test_transparency_is_composited_on_white_and_opaque_alpha_is_exact(tmp_path):
    rgb = np.array([[[10, 20, 30], [200, 100, 0]]], np.uint8)
    alpha = np.array([[255, 0]], np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(data.load_image(tmp_path / "rgba.png"), [[[10, 20, 30], [255, 255, 255]]])
    Image.fromarray(np.dstack([rgb, np.full((1, 2), 255, np.uint8)])).save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(data.load_image(tmp_path / "opaque.png"), rgb)
    la = Image.fromarray(np.dstack([np.array([[40, 90]], np.uint8), np.array([[255, 51]], np.uint8)]), mode="LA")
    la.save(tmp_path / "la.png")
    half = round(90 * 0.2 + 255 * 0.8)
    np.testing.assert_array_equal(data.load_image(tmp_path / "la.png")[..., 0], [[40, half]])
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 9, 8, 7] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(data.load_image(tmp_path / "p.png"), [[[255, 255, 255], [9, 8, 7]]])


def test_cmyk_and_exif_orientation(tmp_path):
    cmyk = Image.new("CMYK", (3, 2), (0, 255, 255, 0))  # pure red ink, no ICC profile
    cmyk.save(tmp_path / "c.tif")
    np.testing.assert_array_equal(data.load_image(tmp_path / "c.tif"), np.full((2, 3, 3), [255, 0, 0]))
    tall = np.zeros((4, 2, 3), np.uint8)
    tall[0, 0] = 255  # top-left red
    im = Image.fromarray(tall)
    exif = im.getexif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90° clockwise
    im.save(tmp_path / "o.png", exif=exif)
    got = data.load_image(tmp_path / "o.png")
    np.testing.assert_array_equal(got, np.rot90(tall, k=-1))
    assert got.shape == (2, 4, 3) and got[0, -1, 0] == 255


# -------------------------------------------------------------------------- 3. memory bounds


def test_extreme_aspect_ratio_is_refused_before_resizing(tmp_path, capsys):
    wide = np.zeros((1, 20_000), np.uint8)
    with pytest.raises(ValueError, match=r"aspect ratio 20000:1.*5120000x256"):
        data.EFFICIENTNET_LITE(wide)
    assert data.EFFICIENTNET_LITE(np.zeros((1, 256), np.uint8)).image.shape == (224, 224, 3)  # 256:1 still works
    Image.fromarray(wide).save(tmp_path / "wide.png")
    code, err = run_cli(["explain", tmp_path / "wide.png", "--out-dir", tmp_path / "o", "--no-progress"], capsys)
    assert_one_line_error(code, err, "aspect ratio", "crop")


MEMORY_CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from undesirable_jax import data
    from undesirable_jax.models import checkpoints
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (vm + 4 * 2**30, hard))  # a regression fails, not the machine
    results = {}
    for kind, path in json.loads(sys.argv[1]):
        try:
            if kind == "image":
                data.load_image(path)
            elif kind == "wide":
                data.EFFICIENTNET_LITE(np.zeros((1, 20000), np.uint8))
            else:
                checkpoints.load_state_dict(path)
            results[path] = "accepted"
        except Exception as e:
            results[path] = f"{type(e).__name__}: {e}"
    # VmHWM is this program's own peak: ru_maxrss would start from the forking parent's size (Linux keeps
    # it across fork and execve), so a test run that had grown large made this check fail by itself.
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    print(json.dumps({"results": results, "peak": peak}))
""")


def test_every_hostile_file_is_refused_within_one_gib(bad_images, bad_weights):
    jobs = [("image", str(p)) for p in bad_images.values()] + [("weights", str(p)) for p in bad_weights.values()]
    jobs.append(("wide", "20000x1 image through the EfficientNet preprocessing"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, json.dumps(jobs)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for path, outcome in report["results"].items():
        assert outcome.startswith(("BadFileError", "ValueError")), (path, outcome)
        if "x1 image" not in path:
            assert path in outcome, outcome
    print(f"peak RSS of the loading process: {report['peak'] / 2**20:.0f} MiB")
    assert report["peak"] < 2**30, f"peak RSS {report['peak'] / 2**20:.0f} MiB"


# -------------------------------------------------------------------- 4. damaged weight files


@pytest.mark.parametrize("name, words", [
    ("stride0.pth", ["expanded view", "contiguous"]),
    ("reused.pth", ["overlapping views", "clone"]),
    ("deflated.pth", ["uncompressed", "more than the whole file"]),
    ("legacy_len.pth", ["1,152,921,504,606,846,976 elements", "truncated or damaged"]),
    ("cut_zip.pth", ["damaged or truncated"]),
    ("pickle_bytes8.pth", ["damaged or truncated"]),
    ("cut_legacy_0.pth", ["damaged or truncated"]),
    ("cut_legacy_1.pth", ["damaged or truncated"]),
    ("cut_legacy_2.pth", ["truncated"]),
    ("cut_legacy_3.pth", ["truncated"]),
    ("cut.safetensors", ["data offsets"]),
    ("header_too_large.safetensors", ["header length 1,099,511,627,776"]),
    ("not_json.safetensors", ["not JSON"]),
    ("bad_offsets.safetensors", ["'w'", "data offsets"]),
    ("past_end.safetensors", ["'w'", "data offsets"]),
    ("zip_named.safetensors", ["looks like a torch zip checkpoint"]),
    ("pickle_named.safetensors", ["looks like a pickle"]),
])
def test_damaged_weight_files_name_the_file(name, words, bad_weights, digit_png, capsys):
    path = bad_weights[name]
    with pytest.raises(BadFileError) as info:
        models.load_state_dict(path)
    msg = str(info.value)
    assert msg.startswith(repr(str(path))) and "again" in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    code, err = run_cli(["explain", digit_png, "--model", "digits_cnn", "--weights", path, "--no-progress"], capsys)
    assert_one_line_error(code, err, str(path))


def test_weights_that_do_not_fit_name_the_tensor_and_both_shapes(tmp_path, digit_png, capsys):
    flat = models.load_state_dict(models.small_cnn.shipped_weights_path("digits"))
    name = sorted(k for k in flat if k.endswith("kernel"))[0]
    flat[name] = np.zeros(flat[name].shape[:-1] + (flat[name].shape[-1] + 1,), np.float32)
    path = models.save_safetensors(tmp_path / "misfit.safetensors", flat)
    with pytest.raises(BadFileError, match=rf"tensor '{name}' has shape .* where the digits CNN needs"):
        models.load("digits_cnn", weights=path)
    code, err = run_cli(["explain", digit_png, "--model", "digits_cnn", "--weights", path, "--no-progress"], capsys)
    assert_one_line_error(code, err, str(path), name)


def test_efficientnet_with_a_ten_class_head_is_refused(tmp_path, digit_png, capsys):
    shapes = models.efficientnet.expected_shapes()
    shapes["_fc.weight"], shapes["_fc.bias"] = (10, 1280), (10,)
    path = models.save_safetensors(tmp_path / "ten.safetensors",
                                   {k: np.zeros(s, np.float32) for k, s in shapes.items()})
    with pytest.raises(BadFileError) as info:
        models.load("efficientnet_lite0", weights=path)
    for w in ("'_fc.weight'", "(10, 1280)", "(1000, 1280)", str(path)):
        assert w in str(info.value)
    code, err = run_cli(["explain", digit_png, "--weights", path, "--no-progress"], capsys)
    assert_one_line_error(code, err, "_fc.weight", "(1000, 1280)")


def test_a_user_model_whose_class_names_do_not_fit_its_logits(tmp_path, digit_png, monkeypatch, capsys):
    (tmp_path / "misnamed.py").write_text(textwrap.dedent("""
        import jax.numpy as jnp
        import undesirable_jax as uj
        from undesirable_jax.data import Preprocessor
        from undesirable_jax.models import LoadedModel

        def load():
            clf = uj.from_function(lambda x: jnp.zeros((x.shape[0], 10)))
            return LoadedModel(name="misnamed", classifier=clf, class_names=("a", "b", "c"), input_shape=(8, 8, 1),
                               weights="", preprocess=Preprocessor(size=(8, 8), resize=None, mean=(0.0,),
                                                                   std=(255.0,), grayscale=True))
    """))
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["explain", digit_png, "--model", "misnamed:load", "--no-progress"], capsys)
    assert_one_line_error(code, err, "3 class names", "(1, 10)")


# ------------------------------------------------------------------------ 5. output paths


def no_work(*_a, **_k):
    raise AssertionError("the computation started before the output path was checked")


@pytest.mark.parametrize("case", ["file", "under_file", "unwritable"])
def test_output_paths_are_checked_before_the_work(case, digit_png, tmp_path, monkeypatch, capsys):
    (tmp_path / "f").write_text("x")
    target = {"file": tmp_path / "f", "under_file": tmp_path / "f" / "out", "unwritable": tmp_path / "ro" / "o"}[case]
    needles = {"file": ["not a folder"], "under_file": ["is a file"], "unwritable": ["permission denied"]}[case]
    if case == "unwritable":
        (tmp_path / "ro").mkdir()
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == tmp_path / "ro" else real(p, m))
    monkeypatch.setattr(engine, "explain", no_work)
    monkeypatch.setattr(benchmark, "engine_throughput", no_work)
    code, err = run_cli(["explain", digit_png, "--model", "digits_cnn", "--out-dir", target, "--no-progress"], capsys)
    assert_one_line_error(code, err, "--out-dir", *needles)
    code, err = run_cli(["benchmark", "--model", "digits_cnn", "--window", "2", "--json", target / "b.json",
                         "--no-progress"], capsys)
    assert_one_line_error(code, err, "--json")
    code, err = run_cli(["evaluate", "--dataset", "digits", "--model", "digits_cnn", "--window", "2", "--stride", "2",
                         "--out", target, "--no-progress"], capsys)
    assert_one_line_error(code, err, "--out", *needles)


def test_benchmark_json_into_a_folder_is_refused_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "engine_throughput", no_work)
    code, err = run_cli(["benchmark", "--model", "digits_cnn", "--window", "2", "--json", tmp_path,
                         "--no-progress"], capsys)
    assert_one_line_error(code, err, "--json", "is a folder")
    with pytest.raises(ValueError, match="out: .* is a folder"):
        checks.output_file(tmp_path, "out")


# -------------------------------------------------------------------- 6. numbers out of range


@pytest.mark.parametrize("flags, needles", [
    (["--samples", "2147483648"], ["--samples", "2147483647"]),
    (["--seed", str(2**64)], ["--seed", str(2**63 - 1)]),
    (["--seed", str(-2**63 - 1)], ["--seed"]),
    (["--dpi", "100000"], ["--dpi", "1200"]),
    (["--blur-sigma", "inf"], ["--blur-sigma", "finite"]),
    (["--laplace-n", "nan"], ["--laplace-n"]),
    (["--chunk-size", str(2**40)], ["--chunk-size"]),
])
def test_numbers_out_of_range_are_refused_before_the_work(flags, needles, digit_png, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine, "explain", no_work)
    code, err = run_cli(["explain", digit_png, "--model", "digits_cnn", "--out-dir", tmp_path, "--no-progress"]
                        + flags, capsys)
    assert_one_line_error(code, err, *needles)


def test_evaluate_seed_and_samples_are_checked(tmp_path, capsys):
    for flags, needle in ((["--seed", "-1"], "--seed"), (["--samples", str(2**31)], "--samples")):
        code, err = run_cli(["evaluate", "--dataset", "digits", "--model", "digits_cnn", "--window", "2", "--stride",
                             "2", "--out", tmp_path / "o", "--no-progress"] + flags, capsys)
        assert_one_line_error(code, err, needle)


def linear(x):
    m = x.mean(axis=(1, 2, 3))
    return jnp.stack([m, -m], axis=1)


def test_api_numbers_out_of_range_name_the_argument():
    img = np.zeros((8, 8, 1), np.float32)
    kw = dict(window=2, stride=1, sampler=samplers.constant(0.0), key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_samples: must be <= 2147483647"):
        uj.explain(linear, img, num_samples=2**31, **kw)
    with pytest.raises(ValueError, match=r"num_samples: .* 49 windows .* int32"):
        uj.explain(linear, img, num_samples=2**30, **kw)
    with pytest.raises(ValueError, match="seed: must be <="):
        checks.seed("seed", 2**64)
    with pytest.raises(TypeError, match="dpi"):
        uj.visualize.save_figure(uj.visualize.Figure(), "x.png", dpi=2.5)
    with pytest.raises(ValueError, match="dpi: must be <= 1200"):
        uj.visualize.save_figure(uj.visualize.Figure(), "x.png", dpi=100_000)


def mirrored_blur_reference(line: np.ndarray, sigma: float) -> np.ndarray:
    """Slow, direct: every tap up to 3σ, the line mirrored as often as needed, weights normalised."""
    n, r = len(line), max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    out = np.zeros(n)
    for i in range(n):
        j = i + t
        while np.any((j < 0) | (j > n - 1)):  # reflect at 0 and at n - 1 until inside
            j = np.where(j < 0, -j, np.where(j > n - 1, 2 * (n - 1) - j, j))
        out[i] = np.sum(k * line[j]) / np.sum(k)
    return out


@pytest.mark.parametrize("sigma", [0.7, 1.5, 5.0, 13.0, 14.0, 1000.0])
def test_blur_matches_a_direct_reference_at_any_sigma(sigma):
    x = np.random.default_rng(1).normal(size=(8, 8, 1)).astype(np.float32)
    got = np.asarray(samplers.gaussian_blur(jnp.asarray(x), sigma))[..., 0]
    rows = np.stack([mirrored_blur_reference(col, sigma) for col in x[..., 0].T], axis=1)
    want = np.stack([mirrored_blur_reference(row, sigma) for row in rows])
    np.testing.assert_allclose(got, want, atol=1e-3 if sigma >= 14 else 2e-6)


def test_huge_blur_sigma_on_a_small_image_finishes_with_the_mirrored_mean(digit_png, tmp_path, capsys):
    x = np.random.default_rng(2).normal(size=(8, 8, 1)).astype(np.float32)
    w = np.array([1] + [2] * 6 + [1], np.float64) / 14  # each line mirrored: inner pixels count twice
    want = np.einsum("i,j,ij->", w, w, x[..., 0])
    np.testing.assert_allclose(np.asarray(samplers.gaussian_blur(jnp.asarray(x), 1e12)), want, atol=1e-5)
    code, err = run_cli(["explain", digit_png, "--model", "digits_cnn", "--blur-sigma", "1000", "--window", "4",
                         "--out-dir", tmp_path, "--no-progress"], capsys)
    assert code == 0, err


# ------------------------------------------------------- 7. classifiers that break the evidence


@pytest.mark.parametrize("classifier, exc, words", [
    (lambda x: x.mean(axis=(1, 2, 3))[:, None], ValueError, ["K = 1", "[0, z]"]),
    (uj.probabilities(lambda x: jnp.tile(jnp.array([[-0.5, 1.5]]), (x.shape[0], 1))), ValueError,
     ["not a distribution", "min -0.5"]),
    (uj.probabilities(lambda x: jnp.tile(jnp.array([[0.9, 0.9]]), (x.shape[0], 1))), ValueError,
     ["not a distribution", "sum 1.8"]),
    (lambda x: None, TypeError, ["classifier", "NoneType"]),
    (lambda x: (linear(x),), TypeError, ["classifier", "tuple"]),
])
def test_classifiers_that_would_give_nan_or_nonsense_are_refused(classifier, exc, words):
    with pytest.raises(exc) as info:
        uj.explain(classifier, np.zeros((8, 8, 1), np.float32), window=2, stride=2,
                   sampler=samplers.constant(0.0), num_samples=1, key=jax.random.key(0))
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_probabilities_out_of_range_only_on_perturbed_images_are_caught():
    def shaky(x):  # a distribution on the image, p > 1 once a window is filled with 5
        hot = jnp.any(x > 4.0, axis=(1, 2, 3))[:, None]
        return jnp.where(hot, jnp.array([[1.5, -0.5]]), jnp.array([[0.5, 0.5]]))

    with pytest.raises(ValueError, match="outside \\[0, 1\\].*perturbed image"):
        uj.explain(uj.probabilities(shaky), np.zeros((8, 8, 1), np.float32), window=2, stride=2,
                   sampler=samplers.constant(5.0), num_samples=1, key=jax.random.key(0))


# ---------------------------------------------------- 9. data sets whose classes are not the model's


def test_dataset_classes_must_be_the_models():
    check = data.check_model_classes
    with pytest.raises(ValueError, match=r"dataset: 'lfw' has 2 classes \(face, non-face\).*'digits_cnn' has 10"):
        check(data.lfw().class_names, data.digits().class_names, dataset="lfw", model="digits_cnn")
    with pytest.raises(ValueError, match="class 0 of 'folder:x' is 'dog' but class 0 of the model 'm' is 'cat'"):
        check(("dog", "cat"), ("cat", "dog"), dataset="folder:x", model="m")
    check(data.digits().class_names, data.digits().class_names, dataset="digits", model="digits_cnn")
    check(("Tabby",) + data.IMAGENET_CLASSES[1:], ("tabby, tabby cat",) + data.IMAGENET_CLASSES[1:],
          dataset="x", model="y")
    check(tuple(f"n{i:08d}" for i in range(1000)), data.IMAGENET_CLASSES, dataset="folder:in1k", model="y")
    check((), ("a", "b"), dataset="tfds:unnamed", model="m")  # no names to compare


def test_evaluate_lfw_on_the_digits_model_is_refused(tmp_path, capsys):
    code, err = run_cli(["evaluate", "--dataset", "lfw", "--model", "digits_cnn", "--window", "2", "--stride", "2",
                         "--out", tmp_path / "o", "--no-progress"], capsys)
    assert_one_line_error(code, err, "--dataset", "'lfw' has 2 classes", "'digits_cnn' has 10")
    assert not (tmp_path / "o" / "results").exists()
