"""Few-shot on a user's own data (issue 27): image folders, arrays, class-level splits,
and the one preprocessing (resize filters checked against Pillow and formulas, the
Omniglot arrays' recipe against the packaged arrays)."""

import json
import sys

import numpy as np
import pytest
from PIL import Image  # a test dependency (pyproject's test extra); the library's is lazy

from metalearn.datasets import LabeledData, Preprocess, from_arrays, image_folder, omniglot
from metalearn.datasets.png import encode_png
from metalearn.datasets.preprocess import resize
from metalearn.tasks import NWayKShot
from tests.helpers import data_missing, find_omniglot

SHAPES = [(105, 105, 28, 28), (37, 53, 11, 29), (20, 30, 50, 41), (7, 9, 7, 4), (64, 48, 30, 48)]


# ------------------------------------------------------------------ resize filters


@pytest.mark.parametrize("H, W, h, w", SHAPES)
def test_lanczos_has_pillows_bits(H, W, h, w):
    rng = np.random.default_rng(H * W)
    a = rng.integers(0, 256, (H, W), dtype=np.uint8)
    want = np.asarray(Image.fromarray(a).resize((w, h), Image.LANCZOS))
    np.testing.assert_array_equal(resize(a, (h, w), "lanczos"), want)
    f = a.astype(np.float32) / 255
    want_f = np.asarray(Image.fromarray(f, mode="F").resize((w, h), Image.LANCZOS))
    np.testing.assert_allclose(resize(f, (h, w), "lanczos"), want_f, atol=1e-6)
    # nearest: Pillow's NEAREST
    want_n = np.asarray(Image.fromarray(a).resize((w, h), Image.NEAREST))
    np.testing.assert_array_equal(resize(a, (h, w), "nearest"), want_n)


def test_area_is_the_mean_of_the_covered_area():
    a = np.array([[0.0, 3.0, 6.0], [3.0, 6.0, 9.0], [6.0, 9.0, 12.0]], np.float32)
    # 3 -> 2: output pixel 0 covers [0, 1.5): input 0 whole, input 1 half: weights (1, .5)/1.5
    w = np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]]) / 1.5
    np.testing.assert_allclose(resize(a, (2, 2), "area"), w @ a @ w.T, rtol=1e-6)
    # 4 -> 2 is the mean of 2x2 blocks; uint8 rounds
    b = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    np.testing.assert_array_equal(
        resize(b, (2, 2), "area"), np.rint(b.reshape(2, 2, 2, 2).mean(axis=(1, 3)))
    )
    with pytest.raises(ValueError, match="filter must be one of"):
        resize(b, (2, 2), "bicubic")


def test_lanczos_is_not_the_area_filter():
    # the old PNG path's "lanczos" was an area filter: on a sharp edge Lanczos rings
    # (overshoot clipped, values beyond the two levels), area only blends
    a = np.zeros((30, 30), np.float32)
    a[:, 15:] = 1.0
    lz = resize(a, (10, 10), "lanczos")
    ar = resize(a, (10, 10), "area")
    assert lz.min() < -0.01 and lz.max() > 1.01  # the windowed sinc's lobes
    assert ar.min() >= 0.0 and ar.max() <= 1.0


# ------------------------------------------------------------------ Omniglot recipe


@pytest.mark.requires_omniglot
def test_omniglot_recipe_reproduces_the_packaged_arrays():
    folder, _ = find_omniglot()
    raw_dir = folder / "raw" / "bitsandscraps"
    if not (raw_dir / "images_evaluation.npz").exists():
        data_missing(f"no raw 105x105 Omniglot arrays (raw/bitsandscraps) in {folder}")
    packed = np.load(folder / "omniglot_evaluation.npz")
    raw = np.load(raw_dir / "images_evaluation.npz")["images"]
    big = raw[packed["char_ids"] - 965].reshape(-1, 105, 105)  # True = white paper
    x = omniglot.preprocess(big)
    assert x.shape == (13180, 28, 28, 1) and x.dtype == np.float32
    # bit for bit, in uint8 and as omniglot() gives them (uint8 / 255)
    np.testing.assert_array_equal(np.rint(x[..., 0] * 255).astype(np.uint8), packed["images"])
    xs, _ = omniglot(path=folder, split="evaluation")
    np.testing.assert_array_equal(x, xs)
    # the same recipe on PNG-polarity uint8 images (what a user's PNGs give)
    png_like = big[:40].astype(np.uint8) * np.uint8(255)
    one = np.stack([omniglot.preprocess.one(im) for im in png_like])
    np.testing.assert_array_equal(one, x[:40])


# ------------------------------------------------------------------ Preprocess


def test_preprocess_config_round_trip_and_options():
    p = Preprocess(size=(12, 10), channels=3, resize="area", polarity="auto", normalize=(0.5, 0.25))
    cfg = json.loads(json.dumps(p.get_config()))
    q = Preprocess.from_config(cfg)
    assert q == p and q.output_shape == (12, 10, 3)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (31, 17, 3), dtype=np.uint8)
    np.testing.assert_array_equal(p.one(img), q.one(img))
    with pytest.raises(ValueError, match="unknown keys"):
        Preprocess.from_config({**cfg, "colour": 1})
    for bad in [
        dict(channels=2),
        dict(resize="bilinear"),
        dict(polarity="dark"),
        dict(normalize=(0.5, 0.0)),
        dict(size=0),
        dict(size="big"),
    ]:
        with pytest.raises(ValueError):
            Preprocess(**bad)


def test_preprocess_polarity_channels_and_normalisation():
    paper = np.full((8, 8), 255, np.uint8)
    paper[2:6, 3:5] = 0  # dark ink on white paper
    auto = Preprocess(channels=None, polarity="auto")
    np.testing.assert_array_equal(auto.one(paper), (255 - paper) / np.float32(255))
    bright = 255 - paper  # already ink-positive: auto leaves it
    np.testing.assert_array_equal(auto.one(bright), bright / np.float32(255))
    np.testing.assert_array_equal(
        Preprocess(channels=None, polarity="invert", normalize=None).one(paper), 255 - paper
    )
    # RGB to gray by ITU-R 601 luma; gray to 3 channels repeats
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 200
    np.testing.assert_array_equal(
        Preprocess(normalize=None).one(rgb)[..., 0], np.full((2, 2), round(0.299 * 200))
    )
    three = Preprocess(channels=3, normalize=None).one(paper)
    assert three.shape == (8, 8, 3) and (three == paper[..., None]).all()
    ms = Preprocess(channels=None, normalize=(0.5, 0.5)).one(paper)
    np.testing.assert_allclose(ms, (paper / 255.0 - 0.5) / 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match="different sizes"):
        Preprocess()([paper, paper[:4]])


# ------------------------------------------------------------------ image folders


def _glyph(rng, h, w):
    img = np.full((h, w), 255, np.uint8)
    r0, c0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    img[r0 : r0 + h // 3, c0 : c0 + w // 4] = 0
    return img


def _write_folder(root, rng):
    """3 classes, 3 images each: 8-bit gray PNGs of odd sizes, a 1-bit PNG, an RGB PNG
    and an RGBA PNG (Pillow), and a JPEG; plus a text file that is ignored."""
    files = {}
    for c, name in enumerate(["alpha", "beta", "gamma"]):
        d = root / name
        d.mkdir(parents=True)
        for i in range(3):
            h, w = 17 + 7 * i + c, 23 + 5 * i
            img = _glyph(rng, h, w)
            f = d / f"{i}.png"
            if (c, i) == (0, 1):
                f.write_bytes(encode_png(img > 127, bit_depth=1))
            elif (c, i) == (1, 2):
                rgb = np.stack([img, img // 2, 255 - img // 3], axis=-1)
                Image.fromarray(rgb, "RGB").save(f)
            elif (c, i) == (2, 0):
                f = d / f"{i}.jpg"
                Image.fromarray(img).save(f, quality=95)
            else:
                f.write_bytes(encode_png(img))
            files[str(f)] = c
    (root / "alpha" / "notes.txt").write_text("not an image")
    return files


def test_image_folder_reads_classes_of_odd_sizes(tmp_path):
    files = _write_folder(tmp_path, np.random.default_rng(0))
    data = image_folder(tmp_path, size=14)
    assert isinstance(data, LabeledData)
    assert data.x.shape == (9, 14, 14, 1) and data.x.dtype == np.float32
    assert data.class_names == ["alpha", "beta", "gamma"]
    np.testing.assert_array_equal(data.y, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert [files[f] for f in data.files] == list(data.y)
    # each image as Pillow makes it: gray ("L", ITU-R 601), LANCZOS, / 255
    for f, x in zip(data.files, data.x):
        want = np.asarray(Image.open(f).convert("L").resize((14, 14), Image.LANCZOS))
        np.testing.assert_array_equal(x[..., 0], want / np.float32(255))
    # x, y unpack; NWayKShot samples from it
    x, y = data
    task = NWayKShot(data, n_way=3, k_shot=1, q_queries=2, augment_rotations=False, seed=0).sample()
    assert task.support_x.shape == (3, 14, 14, 1)
    # colour: 3 channels, Pillow's RGB
    rgb = image_folder(tmp_path, size=(9, 11), channels=3)
    assert rgb.x.shape == (9, 9, 11, 3)
    f = rgb.files[5]
    want = np.asarray(Image.open(f).convert("RGB").resize((11, 9), Image.LANCZOS))
    np.testing.assert_array_equal(rgb.x[5], want / np.float32(255))
    # without a size the sizes must agree: the error names two files
    with pytest.raises(ValueError, match=r"different sizes .*\.(png|jpg).*pass size"):
        image_folder(tmp_path)


def test_image_folder_refuses_corrupt_files_naming_them(tmp_path):
    _write_folder(tmp_path, np.random.default_rng(1))
    bad = tmp_path / "beta" / "0.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    with pytest.raises(ValueError, match=r"corrupt or unsupported PNG .*beta/0\.png"):
        image_folder(tmp_path, size=8)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ValueError, match=r"beta/0\.png"):
        image_folder(tmp_path, size=8)
    bad.unlink()
    (tmp_path / "gamma" / "0.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ValueError, match=r"corrupt or unsupported image .*gamma/0\.jpg"):
        image_folder(tmp_path, size=8)


def test_image_folder_without_pillow(tmp_path, monkeypatch):
    _write_folder(tmp_path, np.random.default_rng(2))
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now fails
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ValueError, match=r"gamma/0\.jpg needs Pillow.*metalearn\[images\]"):
        image_folder(tmp_path, size=8)
    (tmp_path / "gamma" / "0.jpg").unlink()
    data = image_folder(tmp_path, size=8)  # PNGs need no Pillow
    assert data.x.shape == (8, 8, 8, 1)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class folders"):
        image_folder(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(encode_png(np.zeros((4, 4), np.uint8)))
    with pytest.raises(ValueError, match="class 'a' has 1 images, fewer than min_per_class=2"):
        image_folder(tmp_path, min_per_class=2)


# ------------------------------------------------------------------ arrays and splits


def test_from_arrays_tabular_and_series():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = np.repeat(["cat", "ant", "bee", "dog", "eel", "fox"], 10)
    data = from_arrays(x, y)
    assert data.class_names == ["ant", "bee", "cat", "dog", "eel", "fox"]
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    np.testing.assert_array_equal(np.array(data.class_names)[data.y], y)
    task = NWayKShot(data, n_way=4, k_shot=2, q_queries=3, augment_rotations=False, seed=0).sample()
    assert task.support_x.shape == (8, 5) and task.query_x.shape == (12, 5)
    # windows of a series: (N, T, 1)
    series = from_arrays(rng.normal(size=(20, 16, 1)), np.arange(20) % 4)
    assert series.x.shape == (20, 16, 1) and series.num_classes == 4
    for bad_x, bad_y, msg in [
        (x, y[:10], "same length"),
        (x, y.reshape(6, 10), "1-D"),
        (np.full((4, 2), np.nan), [0, 1, 0, 1], "NaN or inf"),
        (np.array([["a"], ["b"]]), [0, 1], "numbers"),
        (x[:3], [1, 1, 1], "at least 2 classes"),
    ]:
        with pytest.raises(ValueError, match=msg):
            from_arrays(bad_x, bad_y)


def test_class_level_splits_are_disjoint_and_seeded():
    x = np.arange(200, dtype=np.float32).reshape(100, 2)
    y = np.arange(100) // 5  # 20 classes, 5 examples each
    data = from_arrays(x, y, class_names=[f"c{i}" for i in range(20)])
    train, val, test = data.split((0.6, 0.2, 0.2), seed=3)
    assert (train.num_classes, val.num_classes, test.num_classes) == (12, 4, 4)
    names = [set(s.class_names) for s in (train, val, test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert set.union(*names) == set(data.class_names)
    for s in (train, val, test):  # relabelled 0..C-1, examples kept with their class
        assert set(s.y.tolist()) == set(range(s.num_classes))
        for xi, yi in zip(s.x, s.y):
            assert data.class_names[int(xi[0]) // 10] == s.class_names[yi]
    again = data.split((0.6, 0.2, 0.2), seed=3)
    assert [s.class_names for s in again] == [s.class_names for s in (train, val, test)]
    other = data.split((0.6, 0.2, 0.2), seed=4)
    assert other[0].class_names != train.class_names
    with pytest.raises(ValueError, match="at least 3 classes"):
        from_arrays(x[:10], y[:10]).split((0.5, 0.3, 0.2))
    with pytest.raises(ValueError, match="non-negative"):
        data.split((0.5, -0.1))
