"""Omniglot loader: real data, splits, search order, the official PNG/zip layout."""

import hashlib
import shutil
import struct
import zipfile
import zlib

import numpy as np
import pytest

from metalearn.datasets import (
    DataNotFoundError,
    load_omniglot_arrays,
    omniglot,
    omniglot_search_paths,
    vinyals_split,
)
from PIL import Image  # a test dependency (pyproject's test extra)

from metalearn.datasets._omniglot import resize_area, _CACHE
from metalearn.datasets.png import decode_png, encode_png
import metalearn.datasets._locate as locate_module
from tests.helpers import omniglot_file, requires_omniglot


@pytest.fixture
def no_default(monkeypatch, tmp_path):
    """No METALEARN_DATA, a user data folder that does not exist, no checkout's shared data."""
    monkeypatch.delenv("METALEARN_DATA", raising=False)
    monkeypatch.setenv("METALEARN_DATA_HOME", str(tmp_path / "no_default_here"))
    monkeypatch.setattr(locate_module, "_checkout_shared", lambda: None)
    _CACHE.clear()
    yield
    _CACHE.clear()


@requires_omniglot
def test_real_sets_sizes_and_values():
    x, y = omniglot(split="background")
    assert x.shape == (19280, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (19280,) and np.issubdtype(y.dtype, np.integer)
    assert len(np.unique(y)) == 964 and np.all(np.bincount(y) == 20)
    assert x.min() == 0.0 and x.max() == 1.0
    # ink-positive: most pixels are background (0)
    assert 0.02 < x.mean() < 0.3
    xe, ye = omniglot(split="evaluation")
    assert xe.shape == (13180, 28, 28, 1) and len(np.unique(ye)) == 659


@requires_omniglot
@pytest.mark.parametrize(
    "split,chars",
    [
        ("vinyals_trainval", 1200),
        ("vinyals_test", 423),
        ("vinyals_train", 1028),
        ("vinyals_val", 172),
    ],
)
def test_vinyals_splits(split, chars):
    x, y, names = omniglot(split=split, return_names=True)
    assert len(names) == chars and len(np.unique(y)) == chars and len(x) == 20 * chars
    np.testing.assert_array_equal(np.unique(y), np.arange(chars))
    wanted = vinyals_split(split[len("vinyals_") :])
    assert list(names) == wanted
    # label 0's images are the 20 drawings of the first listed character, from the right set
    first = wanted[0]
    for which in ("background", "evaluation"):
        a = load_omniglot_arrays(which)
        hit = np.nonzero(a["char_names"] == first)[0]
        if len(hit):
            ref = a["images"][a["labels"] == hit[0]].astype(np.float32) / 255
            np.testing.assert_array_equal(x[y == 0][..., 0], ref)
            break
    else:
        pytest.fail(f"{first} in neither set")


@requires_omniglot
def test_trainval_and_test_partition_all_characters():
    _, _, a = omniglot(split="vinyals_trainval", return_names=True)
    _, _, b = omniglot(split="vinyals_test", return_names=True)
    assert not set(a) & set(b) and len(set(a) | set(b)) == 1623


@requires_omniglot
def test_nearest_is_binary_and_lanczos_is_not():
    xn, yn = omniglot(split="evaluation", resample="nearest")
    xl, yl = omniglot(split="evaluation")
    assert set(np.unique(xn)) == {0.0, 1.0}
    assert len(np.unique(xl)) > 10
    np.testing.assert_array_equal(yn, yl)


def test_missing_data_error_lists_every_place(no_default, tmp_path, monkeypatch):
    env = tmp_path / "env_dir"
    env.mkdir()
    monkeypatch.setenv("METALEARN_DATA", str(env))
    given = tmp_path / "given"
    given.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        omniglot(path=given)
    msg = str(info.value)
    home = tmp_path / "no_default_here"
    places = [given, given / "omniglot", env, env / "omniglot", home, home / "omniglot"]
    listed = [ln[4:] for ln in msg.splitlines() if ln.startswith("  - ")]
    assert listed == [str(p) for p in places]  # each once, in the search order
    assert omniglot_search_paths(given) == places
    # self-contained: how to point at the files, which files, where they come from
    for needed in (
        "--data",
        "METALEARN_DATA",
        "omniglot_background.npz",
        "images_background.zip",
        "images_evaluation.zip",
        "https://github.com/brendenlake/omniglot",
        "python/",
    ):
        assert needed in msg, needed
    assert "README" not in msg and "shared/data" not in msg
    with pytest.raises(ValueError):
        omniglot(split="training")


def test_a_given_path_that_does_not_exist_is_an_error(no_default, tmp_path, monkeypatch):
    # data is findable through METALEARN_DATA, but an explicit wrong path must not fall
    # back to it silently
    env = tmp_path / "env_dir"
    _write_zip(env / "images_background.zip")
    monkeypatch.setenv("METALEARN_DATA", str(env))
    assert omniglot(split="background")[0].shape == (6, 28, 28, 1)
    with pytest.raises(DataNotFoundError, match="does not exist") as info:
        omniglot(path=tmp_path / "typo", split="background")
    assert str(tmp_path / "typo") in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_user_data_folder_is_searched_after_metalearn_data(no_default, tmp_path, monkeypatch):
    home = tmp_path / "home"
    _write_zip(home / "omniglot" / "images_background.zip")
    monkeypatch.setenv("METALEARN_DATA_HOME", str(home))
    assert load_omniglot_arrays("background")["source"] == str(
        home / "omniglot" / "images_background.zip"
    )
    _CACHE.clear()
    env = tmp_path / "env"
    _write_zip(env / "images_background.zip", layout={"Gamma": 1})
    monkeypatch.setenv("METALEARN_DATA", str(env))
    assert load_omniglot_arrays("background")["source"] == str(env / "images_background.zip")
    order = omniglot_search_paths()
    assert order == [env, env / "omniglot", home, home / "omniglot"]


def test_default_user_data_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("METALEARN_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert locate_module.user_data_dir() == tmp_path / ".cache" / "metalearn" / "data"


# ------------------------------------------------------------- PNG and zip layout


def _glyph(seed):
    """A 105x105 bool image (True = white paper) with a black block and a stroke."""
    rng = np.random.default_rng(seed)
    img = np.ones((105, 105), bool)
    r, c = rng.integers(5, 60, 2)
    img[r : r + 30, c : c + 20] = False
    img[50, :] = False
    return img


def _write_zip(path, top="images_background", layout=None):
    layout = layout or {"Alpha": 2, "Beta_(x)": 1}
    truth = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        char_id = 1
        for alphabet, n_chars in layout.items():
            for c in range(1, n_chars + 1):
                name = f"{alphabet}/character{c:02d}"
                imgs = []
                for s in (2, 1):  # written out of order on purpose
                    img = _glyph(char_id * 10 + s)
                    z.writestr(
                        f"{top}/{name}/{char_id:04d}_{s:02d}.png", encode_png(img, bit_depth=1)
                    )
                    imgs.append((s, img))
                truth[name] = [img for _, img in sorted(imgs, key=lambda t: t[0])]
                char_id += 1
    return truth


def test_zip_layout_is_read(no_default, tmp_path):
    truth = _write_zip(tmp_path / "images_background.zip")
    x, y, names = omniglot(path=tmp_path, split="background", return_names=True)
    assert list(names) == ["Alpha/character01", "Alpha/character02", "Beta_(x)/character01"]
    assert x.shape == (6, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 2, 2])
    for i, name in enumerate(names):
        for s in range(2):
            # the packaged arrays' recipe: Pillow's LANCZOS on the ink-positive image
            ink = Image.fromarray((~truth[name][s]).astype(np.uint8) * 255)
            want = np.asarray(ink.resize((28, 28), Image.LANCZOS)) / np.float32(255)
            np.testing.assert_array_equal(x[2 * i + s, :, :, 0], want.astype(np.float32))
    xn, _ = omniglot(path=tmp_path, split="background", resample="nearest")
    idx = np.floor((np.arange(28) + 0.5) * 105 / 28).astype(int)
    np.testing.assert_array_equal(xn[0, :, :, 0], (~truth[names[0]][0])[np.ix_(idx, idx)])
    arr = load_omniglot_arrays("background", path=tmp_path)
    assert arr["source"] == str(tmp_path / "images_background.zip")
    # the evaluation set is absent from this folder and from everywhere else
    with pytest.raises(FileNotFoundError, match="evaluation"):
        omniglot(path=tmp_path, split="evaluation")


def test_extracted_folder_layout_and_env_var(no_default, tmp_path, monkeypatch):
    _write_zip(tmp_path / "z.zip", top="images_evaluation")
    root = tmp_path / "data" / "omniglot"
    root.mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "z.zip") as z:
        z.extractall(root)
    monkeypatch.setenv("METALEARN_DATA", str(tmp_path / "data"))  # finds data/omniglot
    x, y = omniglot(split="evaluation")
    assert x.shape == (6, 28, 28, 1) and y.max() == 2
    assert load_omniglot_arrays("evaluation")["source"] == str(root / "images_evaluation")


@requires_omniglot
def test_official_pngs_match_the_packaged_arrays(no_default, tmp_path):
    # the official images_background_small1.zip (PNG folders) read as a background set
    src = omniglot_file("raw/brendenlake/images_background_small1.zip")
    shutil.copy(src, tmp_path / "images_background.zip")
    xs, ys, names = omniglot(
        path=tmp_path, split="background", resample="nearest", return_names=True
    )
    assert len(names) > 100 and len(xs) == 20 * len(names)
    _CACHE.clear()
    ref = np.load(omniglot_file("omniglot_background_nearest.npz"))
    index = {n: i for i, n in enumerate(ref["char_names"].tolist())}
    for lab in (0, len(names) // 2, len(names) - 1):
        c = index[names[lab]]
        want = ref["images"][ref["labels"] == c].astype(np.float32) / 255
        np.testing.assert_array_equal(xs[ys == lab][..., 0], want)


def _png_with_filters(img):
    """8-bit gray PNG whose rows cycle through the five filter types."""
    h, w = img.shape
    prev = np.zeros(w, np.int32)
    raw = b""
    for r in range(h):
        cur = img[r].astype(np.int32)
        f = r % 5
        left = np.concatenate([[0], cur[:-1]])
        upleft = np.concatenate([[0], prev[:-1]])
        if f == 0:
            pred = np.zeros(w, np.int32)
        elif f == 1:
            pred = left
        elif f == 2:
            pred = prev
        elif f == 3:
            pred = (left + prev) >> 1
        else:
            p = left + prev - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        raw += bytes([f]) + ((cur - pred) & 255).astype(np.uint8).tobytes()
        prev = cur

    def chunk(t, b):
        return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_png_decoder_all_filters_and_bit_depths():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (11, 13)).astype(np.uint8)
    np.testing.assert_array_equal(decode_png(_png_with_filters(img)), img)
    np.testing.assert_array_equal(decode_png(encode_png(img)), img)
    b = rng.random((7, 19)) < 0.5
    np.testing.assert_array_equal(decode_png(encode_png(b, bit_depth=1)), b.astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="PNG"):
        decode_png(b"not a png at all")


def test_resize_area_preserves_mean():
    rng = np.random.default_rng(1)
    img = rng.random((2, 105, 105))
    small = resize_area(img, 28)
    assert small.shape == (2, 28, 28)
    np.testing.assert_allclose(small.mean(axis=(1, 2)), img.mean(axis=(1, 2)), rtol=1e-10)
    np.testing.assert_allclose(resize_area(np.ones((1, 105, 105))), 1.0)


# ------------------------------------------------------------- the shipped Vinyals split

# the sha256 of the split files as published with the data (../shared/data/omniglot's
# SHA256SUMS, made from prototypical-networks' lists): the package ships them unchanged
SPLIT_SHA256 = {
    "train": "189c10b6479a07e808302b5f1ada00d995589557373e68ebe3e718780196ed0a",
    "val": "8b1baec8706cbc2c2f1d23874a30a50ac8f589502ea36e213c3c3cf14d30a189",
    "trainval": "18dad46dff5b2ea072d964c1d58b365e8a04d7f413fc2459b4bdc93a8ea1de69",
    "test": "af119b10f318ddb7afdf5108b360887823cf06da68d846c7e5de7286492976d7",
}
# Lake et al.'s evaluation set: 20 alphabets, 659 characters (the other 30 are background)
EVALUATION_ALPHABETS = {
    "Angelic": 20,
    "Atemayar_Qelisayer": 26,
    "Atlantean": 26,
    "Aurek-Besh": 26,
    "Avesta": 26,
    "Ge_ez": 26,
    "Glagolitic": 45,
    "Gurmukhi": 45,
    "Kannada": 41,
    "Keble": 26,
    "Malayalam": 47,
    "Manipuri": 40,
    "Mongolian": 30,
    "Old_Church_Slavonic_(Cyrillic)": 45,
    "Oriya": 46,
    "Sylheti": 28,
    "Syriac_(Serto)": 23,
    "Tengwar": 25,
    "Tibetan": 42,
    "ULOG": 26,
}


def test_vinyals_split_lists_ship_with_the_package():
    from importlib import resources

    folder = resources.files("metalearn.datasets") / "splits"
    for part, digest in SPLIT_SHA256.items():
        data = (folder / f"vinyals_{part}.txt").read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, part
    train, val, trainval, test = (vinyals_split(p) for p in ("train", "val", "trainval", "test"))
    assert (len(train), len(val), len(trainval), len(test)) == (1028, 172, 1200, 423)
    assert sorted(train + val) == sorted(trainval) and not set(trainval) & set(test)
    every = set(trainval) | set(test)
    assert len(every) == 1623
    alphabets = {n.split("/")[0] for n in every}
    assert len(alphabets) == 50 and set(EVALUATION_ALPHABETS) <= alphabets
    assert sum(n.split("/")[0] in EVALUATION_ALPHABETS for n in every) == 659
    credit = (folder / "README.md").read_text()  # the lists' source is credited beside them
    assert "jakesnell/prototypical-networks" in credit and "Vinyals" in credit
    with pytest.raises(ValueError, match="which"):
        vinyals_split("training")


def _official_zips(folder):
    """images_background.zip and images_evaluation.zip in the official layout holding every
    character of the Vinyals lists, one drawing each (a small glyph that encodes the
    character's number); returns {name: 105x105 bool image}."""
    every = sorted(set(vinyals_split("trainval")) | set(vinyals_split("test")))
    truth = {}
    zips = {
        which: zipfile.ZipFile(folder / f"images_{which}.zip", "w")
        for which in ("background", "evaluation")
    }
    with zips["background"], zips["evaluation"]:
        for char_id, name in enumerate(every, 1):
            which = "evaluation" if name.split("/")[0] in EVALUATION_ALPHABETS else "background"
            img = np.ones((105, 105), bool)
            for b in range(11):  # the character's number in binary, 12x12 blocks of ink
                if (char_id >> b) & 1:
                    r, c = 4 + 24 * (b % 4), 4 + 32 * (b // 4)
                    img[r : r + 12, c : c + 12] = False
            zips[which].writestr(
                f"images_{which}/{name}/{char_id:04d}_01.png", encode_png(img, bit_depth=1)
            )
            truth[name] = img
    return truth


def test_vinyals_splits_from_the_official_zips_alone(no_default, tmp_path):
    # a newcomer's folder: only the two official zips, no split files, no .npz
    truth = _official_zips(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "images_background.zip",
        "images_evaluation.zip",
    ]
    idx = np.floor((np.arange(28) + 0.5) * 105 / 28).astype(int)
    for part, chars in (("trainval", 1200), ("test", 423)):
        x, y, names = omniglot(
            path=tmp_path, split=f"vinyals_{part}", resample="nearest", return_names=True
        )
        assert list(names) == vinyals_split(part) and len(x) == chars
        np.testing.assert_array_equal(y, np.arange(chars))
        for lab in (0, chars // 2, chars - 1):
            want = (~truth[names[lab]])[np.ix_(idx, idx)].astype(np.float32)
            np.testing.assert_array_equal(x[lab, :, :, 0], want)
