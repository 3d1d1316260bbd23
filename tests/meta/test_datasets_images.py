"""The datasets published as compressed images: tiered-ImageNet's PNG pickles, CUB-200-2011's
official folder and mini-ImageNet's CSV + JPEG layout, and the decoded-image cache they
share. Fixtures are written here in each published format (the official file names and
structures, a few generated images per class); expected images come from Pillow decoding
the same files, the split from the published rule."""

import io
import os
import pickle
import sys

import numpy as np
import pytest
from PIL import Image  # a test dependency (pyproject's test extra)

from metalearn.datasets import cub, mini_imagenet, tiered_imagenet
from metalearn.datasets._locate import DataNotFoundError
from metalearn.datasets.cub import split_of_class


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METALEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("METALEARN_DATA", raising=False)
    monkeypatch.setenv("METALEARN_DATA_HOME", str(tmp_path / "no-data-home"))


def _png(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), np.uint8)


# ------------------------------------------------------------------ tiered-ImageNet


def _tiered(folder, split="train", classes=4, per=3, cats=2, seed=0):
    rng = np.random.default_rng(seed)
    n = classes * per
    x = rng.integers(0, 256, size=(n, 84, 84, 3), dtype=np.uint8)
    y = rng.permutation(np.repeat(np.arange(classes), per))
    cat_of = np.arange(classes) % cats
    labels = {
        "label_specific": y,
        "label_general": cat_of[y],
        "label_specific_str": [f"n{2000000 + c:08d}" for c in range(classes)],
        "label_general_str": [f"category{k}" for k in range(cats)],
    }
    # the authors' files are Python 2 pickles (protocol 2)
    with open(folder / f"{split}_images_png.pkl", "wb") as f:
        pickle.dump([_png(im) for im in x], f, protocol=2)
    with open(folder / f"{split}_labels.pkl", "wb") as f:
        pickle.dump(labels, f, protocol=2)
    return x, y, cat_of[y]


def test_tiered_imagenet_reads_the_authors_pickles(tmp_path):
    x, y, cat = _tiered(tmp_path)
    gx, gy, gcat, wnids, class_cat = tiered_imagenet(
        tmp_path, "train", strict=False, return_names=True
    )
    np.testing.assert_array_equal(gx, x)  # PNG is lossless: the very pixels, RGB order
    np.testing.assert_array_equal(gy, y)
    np.testing.assert_array_equal(gcat, cat)
    assert list(wnids) == [f"n{2000000 + c:08d}" for c in range(4)]
    np.testing.assert_array_equal(class_cat, np.arange(4) % 2)


def test_tiered_imagenet_is_cached_memory_mapped_and_rebuilt_when_the_source_changes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    x, _, _ = _tiered(data, seed=0)
    first = tiered_imagenet(data, "train", strict=False)[0]
    assert isinstance(first, np.memmap) and not first.flags.writeable
    entries = list((tmp_path / "cache" / "decoded").iterdir())
    assert len(entries) == 1
    again = tiered_imagenet(data, "train", strict=False)[0]
    np.testing.assert_array_equal(again, x)
    assert len(list((tmp_path / "cache" / "decoded").iterdir())) == 1  # reused
    x2, _, _ = _tiered(data, seed=1)  # new images in the same file names
    os.utime(data / "train_images_png.pkl", ns=(1, 1))  # a different mtime for sure
    changed = tiered_imagenet(data, "train", strict=False)[0]
    np.testing.assert_array_equal(changed, x2)
    assert len(list((tmp_path / "cache" / "decoded").iterdir())) == 2


def test_tiered_imagenet_without_a_cache_stores_nothing(tmp_path):
    _tiered(tmp_path)
    gx = tiered_imagenet(tmp_path, "train", strict=False, cache=False)[0]
    assert not isinstance(gx, np.memmap)
    assert not (tmp_path / "cache").exists()


def test_tiered_imagenet_decodes_without_pillow(tmp_path, monkeypatch):
    x, _, _ = _tiered(tmp_path, classes=2, per=1)
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now fails
    gx = tiered_imagenet(tmp_path, "train", strict=False, cache=False)[0]
    np.testing.assert_array_equal(gx, x)


def test_tiered_imagenet_strict_wants_the_published_counts(tmp_path):
    _tiered(tmp_path)
    with pytest.raises(ValueError, match="351 classes in 20 categories"):
        tiered_imagenet(tmp_path, "train")


def _rewrite(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.mark.parametrize(
    "damage, match",
    [
        ("truncate", "truncated or damaged"),
        ("no_key", "expected a dict with"),
        ("two_categories", "spans categories"),
        ("count", "holds 11 images but the labels file labels 12"),
        ("not_png", "image 0 is not a PNG"),
        ("wrong_size", r"image 0 is \(8, 8, 3\)"),
        ("evil", "only NumPy arrays"),
    ],
)
def test_tiered_imagenet_refuses_a_wrong_file(tmp_path, damage, match):
    _tiered(tmp_path)
    images, labels = tmp_path / "train_images_png.pkl", tmp_path / "train_labels.pkl"
    with open(images, "rb") as f:
        pngs = pickle.load(f)
    with open(labels, "rb") as f:
        lab = pickle.load(f)
    if damage == "truncate":
        images.write_bytes(images.read_bytes()[:200])
    elif damage == "no_key":
        del lab["label_general"]
        _rewrite(labels, lab)
    elif damage == "two_categories":
        lab["label_general"] = lab["label_general"].copy()
        lab["label_general"][np.flatnonzero(lab["label_specific"] == 0)[0]] = 1
        _rewrite(labels, lab)
    elif damage == "count":
        _rewrite(images, pngs[:-1])
    elif damage == "not_png":
        pngs[0] = np.frombuffer(b"not a png at all", np.uint8)
        _rewrite(images, pngs)
    elif damage == "wrong_size":
        pngs[0] = _png(np.zeros((8, 8, 3), np.uint8))
        _rewrite(images, pngs)
    elif damage == "evil":
        images.write_bytes(pickle.dumps(os.getcwd, protocol=2))  # names posix.getcwd
    with pytest.raises(ValueError, match=match) as info:
        tiered_imagenet(tmp_path, "train", strict=False)
    assert "tiered_imagenet" in str(info.value)


def test_tiered_imagenet_not_found_says_where_it_looked(tmp_path):
    with pytest.raises(DataNotFoundError, match="val_images_png.pkl"):
        tiered_imagenet(tmp_path, "val")
    with pytest.raises(ValueError, match="split must be one of"):
        tiered_imagenet(tmp_path, "dev")


# ------------------------------------------------------------------ CUB-200-2011


def _cub(root, classes=8, per=2, seed=0):
    rng = np.random.default_rng(seed)
    cub_root = root / "CUB_200_2011"
    (cub_root / "images").mkdir(parents=True)
    names = [f"{c + 1:03d}.Bird_{chr(65 + c)}" for c in range(classes)]
    # classes.txt in id order; the listing is shuffled to show the split follows names
    (cub_root / "classes.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    images, labels, files = [], [], {}
    image_id = 1
    for c, n in enumerate(names):
        (cub_root / "images" / n).mkdir()
        for k in range(per):
            h, w = 100 + 7 * k, 130 - 5 * c  # any size: resized to 96 and cropped to 84
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            mode = "L" if (c, k) == (1, 0) else "RGB"  # CUB holds a few gray JPEGs
            im = Image.fromarray(arr).convert(mode)
            rel = f"{n}/{n.split('.')[1]}_{k:04d}.jpg"
            im.save(cub_root / "images" / rel, quality=90)
            images.append(f"{image_id} {rel}\n")
            labels.append(f"{image_id} {c + 1}\n")
            files[rel] = c
            image_id += 1
    (cub_root / "images.txt").write_text("".join(images))
    (cub_root / "image_class_labels.txt").write_text("".join(labels))
    return cub_root, names, files


def _closer_look_transform(path):
    """Chen et al.'s evaluation transform, as torchvision applies it to a PIL image:
    convert RGB, Resize([96, 96]) (bilinear), CenterCrop(84)."""
    with Image.open(path) as im:
        im = im.convert("RGB").resize((96, 96), Image.BILINEAR)
    return np.asarray(im.crop((6, 6, 90, 90)))


def test_the_cub_split_is_chen_et_al_s_rule():
    splits = [split_of_class(i) for i in range(200)]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (100, 50, 50)
    assert splits[:8] == ["train", "val", "train", "test"] * 2


def test_cub_reads_the_official_folder(tmp_path):
    cub_root, names, files = _cub(tmp_path)
    for split, expect in (("train", [0, 2, 4, 6]), ("val", [1, 5]), ("test", [3, 7])):
        x, y, got_names = cub(tmp_path, split, strict=False, return_names=True)
        assert list(got_names) == [names[c] for c in expect]
        assert x.shape == (2 * len(expect), 84, 84, 3) and x.dtype == np.uint8
        rels = sorted((r for r, c in files.items() if c in expect), key=lambda r: (files[r], r))
        for k, rel in enumerate(rels):
            np.testing.assert_array_equal(x[k], _closer_look_transform(cub_root / "images" / rel))
            assert y[k] == expect.index(files[rel])
    # the folder itself may be given too
    x2, _ = cub(cub_root, "val", strict=False)
    np.testing.assert_array_equal(x2, cub(tmp_path, "val", strict=False)[0])


def test_cub_strict_wants_the_published_counts_and_refuses_bad_listings(tmp_path):
    cub_root, names, _ = _cub(tmp_path)
    with pytest.raises(ValueError, match="200 and 11788"):
        cub(tmp_path, "train")
    lines = (cub_root / "image_class_labels.txt").read_text().splitlines()
    lines[0] = "1 2"  # image 1 lies in class 1's folder
    (cub_root / "image_class_labels.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="another class's folder"):
        cub(tmp_path, "train", strict=False)
    (cub_root / "image_class_labels.txt").write_text("one two\n")
    with pytest.raises(ValueError, match="image_class_labels.txt line 1"):
        cub(tmp_path, "train", strict=False)


def test_cub_names_a_corrupt_image(tmp_path):
    cub_root, names, files = _cub(tmp_path)
    rel = sorted(r for r, c in files.items() if c == 0)[0]
    (cub_root / "images" / rel).write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="cannot decode .*" + rel.split("/")[1]):
        cub(tmp_path, "train", strict=False)
    assert not (tmp_path / "cache" / "decoded").exists() or not any(
        p.name.startswith("cub-") for p in (tmp_path / "cache" / "decoded").iterdir()
    )


# ------------------------------------------------------------------ mini-ImageNet CSV


def _mini_csv(folder, split="train", classes=3, per=2, seed=0):
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(exist_ok=True)
    rows = ["filename,label"]
    for c in range(classes):
        wnid = f"n{1000000 + c:08d}"
        for k in range(per):
            name = f"{wnid}{k:08d}.jpg"
            size = (84, 84) if k == 0 else (120, 96)  # the published images are larger
            arr = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
            Image.fromarray(arr).save(folder / "images" / name, quality=95)
            rows.append(f"{name},{wnid}")
    (
        folder / {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}[split]
    ).write_text("\n".join(rows) + "\n")


def test_mini_imagenet_reads_the_csv_layout(tmp_path):
    _mini_csv(tmp_path, "validation")
    x, y, wnids = mini_imagenet(tmp_path, "val", strict=False, return_names=True)
    assert x.shape == (6, 84, 84, 3)
    assert list(y) == [0, 0, 1, 1, 2, 2] and list(wnids) == [
        f"n{1000000 + c:08d}" for c in range(3)
    ]
    for k, name in enumerate(sorted(os.listdir(tmp_path / "images"))):
        with Image.open(tmp_path / "images" / name) as im:
            im = im.convert("RGB")
            if im.size != (84, 84):  # MAML's proc_images.py: LANCZOS to 84x84
                im = im.resize((84, 84), resample=Image.LANCZOS)
            np.testing.assert_array_equal(x[k], np.asarray(im))
    with pytest.raises(ValueError, match="the published validation split has 16"):
        mini_imagenet(tmp_path, "val")


@pytest.mark.parametrize(
    "damage, match",
    [("header", "expected 'filename,label'"), ("missing", "does not exist"), ("row", "line 2")],
)
def test_mini_imagenet_csv_refuses_a_wrong_listing(tmp_path, damage, match):
    _mini_csv(tmp_path)
    csv_file = tmp_path / "train.csv"
    lines = csv_file.read_text().splitlines()
    if damage == "header":
        lines[0] = "file,class"
    elif damage == "missing":
        lines[1] = "n9999999900000000.jpg,n99999999"
    else:
        lines[1] = "only-one-field"
    csv_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match):
        mini_imagenet(tmp_path, "train", strict=False)


# ------------------------------------------------------------------ episodes of uint8 images


def test_episodes_of_uint8_images_are_float32_in_0_1_and_read_from_the_map(tmp_path):
    from metalearn.tasks import NWayKShot

    x, y, _ = _tiered(tmp_path, classes=5, per=3)
    mx, my, _ = tiered_imagenet(tmp_path, "train", strict=False)
    assert isinstance(mx, np.memmap)
    for batched in (False, True):
        a = NWayKShot((mx, my), 3, 1, 2, augment_rotations=False, seed=4)
        b = NWayKShot((x.astype(np.float32) / 255, y), 3, 1, 2, augment_rotations=False, seed=4)
        ta, tb = (a.sample_batch(2), b.sample_batch(2)) if batched else (a.sample(), b.sample())
        assert ta.support_x.dtype == np.float32 and ta.query_x.dtype == np.float32
        np.testing.assert_allclose(ta.support_x, tb.support_x, rtol=1e-6, atol=0)
        np.testing.assert_allclose(ta.query_x, tb.query_x, rtol=1e-6, atol=0)
        np.testing.assert_array_equal(ta.support_y, tb.support_y)


# ------------------------------------------------------------------ python -m metalearn --dataset


def test_the_demo_runs_on_a_dataset_from_its_published_files(tmp_path, monkeypatch, capsys):
    import functools

    import metalearn.datasets as ds
    from metalearn.__main__ import main

    data = tmp_path / "data"
    data.mkdir()
    _tiered(data, "train", classes=6, per=4)
    _tiered(data, "test", classes=5, per=4, seed=1)
    # the published counts are refused on a fixture: the error names the split
    assert main(["--dataset", "tiered-imagenet", "--data", str(data), "--verbose", "0"]) == 1
    assert "published train split" in capsys.readouterr().err
    monkeypatch.setattr(ds, "tiered_imagenet", functools.partial(ds.tiered_imagenet, strict=False))
    argv = ["--dataset", "tiered-imagenet", "--data", str(data), "--algorithm", "protonet"]
    argv += ["--ways", "3", "--queries", "2", "--iterations", "3", "--episodes", "2"]
    assert main(argv + ["--verbose", "0"]) == 0
    out = capsys.readouterr().out
    assert "PROTONET on tiered-imagenet 3-way 1-shot (conv4)" in out and "prototypes" in out
    argv = ["--dataset", "tiered-imagenet", "--data", str(data), "--algorithm", "fomaml"]
    argv += ["--ways", "2", "--queries", "1", "--iterations", "1", "--episodes", "1"]
    argv += ["--inner-steps", "1", "--meta-batch-size", "1", "--verbose", "0"]
    assert main(argv) == 0
    assert "after 1 step" in capsys.readouterr().out


def test_the_demo_refuses_dataset_with_mlp_or_task(capsys):
    from metalearn.__main__ import main

    for extra in (["--model", "mlp"], ["--task", "omniglot"]):
        with pytest.raises(SystemExit) as info:
            main(["--dataset", "cub", *extra])
        assert info.value.code == 2
    assert "conv4" in capsys.readouterr().err


# ------------------------------------------------------------------ augmentation in C


def _augment_reference(x, rows, rng, a, mean=None, std=None):
    """Augment's documented recipe, in NumPy float32, drawing as documented."""
    out = []
    f32 = np.float32
    for r in rows:
        img = x[r].astype(f32) * f32(1 / 255)
        h, w, c = img.shape
        dy = dx = 0
        mirror = False
        fb = fc = fs = f32(1)
        if a.pad:
            dy = int(rng.random() * (2 * a.pad + 1))
            dx = int(rng.random() * (2 * a.pad + 1))
        if a.flip:
            mirror = rng.random() < 0.5
        if a.brightness > 0:
            fb = f32(1 - a.brightness + 2 * a.brightness * rng.random())
        if a.contrast > 0:
            fc = f32(1 - a.contrast + 2 * a.contrast * rng.random())
        if a.saturation > 0:
            fs = f32(1 - a.saturation + 2 * a.saturation * rng.random())
        p = a.pad
        v = np.pad(img, ((p, p), (p, p), (0, 0)))[dy : dy + h, dx : dx + w]
        if mirror:
            v = v[:, ::-1]
        if fb != 1:
            v = np.clip(v * fb, 0, 1)
        if fc != 1:
            d = v.astype(np.float64)
            mu = f32((0.299 * d[..., 0] + 0.587 * d[..., 1] + 0.114 * d[..., 2]).mean())
            v = np.clip(v * fc + mu * (f32(1) - fc), 0, 1)
        if fs != 1:
            g = f32(0.299) * v[..., 0] + f32(0.587) * v[..., 1] + f32(0.114) * v[..., 2]
            v = np.clip(v * fs + (g * (f32(1) - fs))[..., None], 0, 1)
        if mean is not None:
            v = (v - np.asarray(mean, f32)) * (f32(1) / np.asarray(std, f32))
        out.append(v)
    return np.stack(out)


def test_augmented_episodes_follow_the_documented_recipe():
    from metalearn import _core
    from metalearn.tasks import Augment

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(6, 10, 9, 3), dtype=np.uint8)
    rows = np.array([4, 0, 4, 5, 2, 1, 3, 3])
    a = Augment(pad=3, flip=True, brightness=0.4, contrast=0.4, saturation=0.4)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    got = _core.episode_images(
        x, rows, np.random.default_rng(9).bit_generator, 3, True, 0.4, 0.4, 0.4, mean, std
    )
    want = _augment_reference(x, rows, np.random.default_rng(9), a, mean, std)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # no augmentation: x / 255 exactly as NumPy's float32 product
    plain = _core.episode_images(x, rows, None, 0, False, 0.0, 0.0, 0.0, None, None)
    np.testing.assert_array_equal(plain, x[rows].astype(np.float32) * np.float32(1 / 255))


def test_nwaykshot_augments_training_episodes_reproducibly(tmp_path):
    from metalearn.tasks import Augment, NWayKShot

    x, y, _ = _tiered(tmp_path, classes=4, per=3)
    a = Augment(pad=8, flip=True, brightness=0.4, contrast=0.4, saturation=0.4)
    norm = ((0.47, 0.45, 0.40), (0.28, 0.27, 0.28))
    s1 = NWayKShot((x, y), 3, 1, 2, augment_rotations=False, seed=5, augment=a, normalize=norm)
    s2 = NWayKShot((x, y), 3, 1, 2, augment_rotations=False, seed=5, augment=a, normalize=norm)
    plain = NWayKShot((x, y), 3, 1, 2, augment_rotations=False, seed=5)
    t1, t2, tp = s1.sample_batch(2), s2.sample_batch(2), plain.sample_batch(2)
    np.testing.assert_array_equal(t1.support_x, t2.support_x)  # same seed, same episodes
    np.testing.assert_array_equal(t1.query_y, tp.query_y)  # the same classes were drawn
    assert not np.allclose(t1.support_x * norm[1][0] + norm[0][0], tp.support_x)
    assert t1.support_x.shape == tp.support_x.shape == (2, 3, 84, 84, 3)


def test_augment_and_normalize_refuse_bad_settings():
    from metalearn import _core
    from metalearn.tasks import Augment, NWayKShot

    for bad in ({"pad": -1}, {"pad": 1.5}, {"brightness": 1.5}, {"contrast": -0.1}):
        with pytest.raises(ValueError, match="Augment"):
            Augment(**bad)
    gray = np.zeros((4, 8, 8), np.uint8)
    y = np.repeat(np.arange(2), 2)
    with pytest.raises(ValueError, match="uint8"):
        NWayKShot((gray.astype(np.float32), y), 2, 1, 1, augment=Augment(flip=True))
    with pytest.raises(ValueError, match="normalize needs 1 mean"):
        NWayKShot((gray, y), 2, 1, 1, normalize=((0.5, 0.5), (0.2, 0.2)))
    with pytest.raises(TypeError, match="Augment"):
        NWayKShot((gray, y), 2, 1, 1, augment={"flip": True})
    s = NWayKShot((gray, y), 2, 1, 1, augment=Augment(saturation=0.4), augment_rotations=False)
    with pytest.raises(ValueError, match="saturation needs 3 channels"):
        s.sample()
    x = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(IndexError, match="row 2 is outside"):
        _core.episode_images(x, np.array([2]), None, 0, False, 0.0, 0.0, 0.0, None, None)
    with pytest.raises(ValueError, match="C-contiguous uint8"):
        _core.episode_images(x[:, ::2], np.array([0]), None, 0, False, 0.0, 0.0, 0.0, None, None)
    with pytest.raises(ValueError, match="needs a bit generator"):
        _core.episode_images(x, np.array([0]), None, 1, False, 0.0, 0.0, 0.0, None, None)
