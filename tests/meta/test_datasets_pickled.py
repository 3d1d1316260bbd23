"""The pickled datasets: the restricted unpickler, mini-ImageNet's cache files, CIFAR-FS and
FC100 from cifar-100-python. Each reader is fed fixtures written here in the published
format (the official file names and structures, a few generated images per class)."""

import io
import json
import os
import pickle

import numpy as np
import pytest

from metalearn.datasets import cifar_fs, fc100, mini_imagenet
from metalearn.datasets._locate import DataNotFoundError
from metalearn.datasets._pickle import UnsafePickleError, restricted_loads
from metalearn.datasets.cifar import split_classes


# ------------------------------------------------------------------ the unpickler


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    for payload in (
        pickle.dumps(_Evil(marker)),
        pickle.dumps({"image_data": [_Evil(marker)]}, protocol=2),
    ):
        with pytest.raises(UnsafePickleError, match="system"):
            restricted_loads(payload)
    assert not marker.exists()
    # the same bytes through pickle.loads would run it: the test's payload is live
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.exists()


@pytest.mark.parametrize(
    "obj",
    [
        {"a": np.arange(6, dtype=np.uint8).reshape(2, 3), "b": [1, 2.5, "s", b"x", None]},
        ([np.float32(1.5), np.int64(3)], {"nested": {"k": (True, False)}}),
        np.zeros((2, 2), np.float64),
    ],
)
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_arrays_containers_strings_and_numbers_load(obj, protocol):
    got = restricted_loads(pickle.dumps(obj, protocol=protocol))
    assert pickle.dumps(got, protocol=4) == pickle.dumps(obj, protocol=4)


def test_object_arrays_and_other_classes_are_refused():
    with pytest.raises(UnsafePickleError):
        restricted_loads(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(UnsafePickleError, match="set"):
        restricted_loads(pickle.dumps({1, 2}))  # builtins.set: not on the list
    with pytest.raises(UnsafePickleError):
        restricted_loads(pickle.dumps(io.BytesIO(b"x")))


# ------------------------------------------------------------------ mini-ImageNet


def _mini_fixture(folder, split="train", classes=3, per=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(classes * per, 84, 84, 3), dtype=np.uint8)
    order = rng.permutation(len(x))
    wnids = [f"n{1000000 + 17 * c + seed:08d}" for c in range(classes)]
    class_dict = {w: sorted(order[c * per : (c + 1) * per].tolist()) for c, w in enumerate(wnids)}
    with open(folder / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
        pickle.dump({"image_data": x, "class_dict": class_dict}, f, protocol=4)
    return x, class_dict


def test_mini_imagenet_reads_the_cache_format(tmp_path):
    x, class_dict = _mini_fixture(tmp_path, "validation")
    got_x, y, names = mini_imagenet(tmp_path, split="val", strict=False, return_names=True)
    assert got_x.dtype == np.uint8 and got_x.shape == (12, 84, 84, 3)
    assert np.array_equal(got_x, x)
    assert list(names) == sorted(class_dict)
    for label, wnid in enumerate(names):
        assert sorted(np.nonzero(y == label)[0].tolist()) == class_dict[wnid]
    # deterministic, and found through METALEARN_DATA with the dataset's folder name
    again = mini_imagenet(tmp_path, split="validation", strict=False)
    assert np.array_equal(again[1], y)


def test_mini_imagenet_is_found_by_the_search_order(tmp_path, monkeypatch):
    (tmp_path / "mini-imagenet").mkdir()
    _mini_fixture(tmp_path / "mini-imagenet", "test")
    monkeypatch.setenv("METALEARN_DATA", str(tmp_path))
    x, y = mini_imagenet(split="test", strict=False)
    assert len(x) == 12
    with pytest.raises(DataNotFoundError, match="mini-imagenet-cache-train.pkl"):
        mini_imagenet(split="train", strict=False)


def test_mini_imagenet_strict_wants_the_published_counts(tmp_path):
    _mini_fixture(tmp_path, "train")
    with pytest.raises(ValueError, match="64 classes of 600"):
        mini_imagenet(tmp_path, split="train")


def _write(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


@pytest.mark.parametrize(
    "damage, match",
    [
        ("truncated", "not a readable pickle"),
        ("keys", "expected a dict with 'image_data'"),
        ("shape", r"expected uint8 \(N, 84, 84, 3\)"),
        ("rows", "outside image_data"),
        ("overlap", "shares images"),
        ("orphan", "belong to no class"),
        ("evil", "only NumPy arrays"),
    ],
)
def test_mini_imagenet_refuses_a_wrong_file(tmp_path, damage, match):
    x, cd = _mini_fixture(tmp_path, "train")
    file = tmp_path / "mini-imagenet-cache-train.pkl"
    w = sorted(cd)
    if damage == "truncated":
        file.write_bytes(file.read_bytes()[:5000])
    elif damage == "keys":
        _write(file, {"images": x, "labels": [0]})
    elif damage == "shape":
        _write(file, {"image_data": x[:, :32], "class_dict": cd})
    elif damage == "rows":
        _write(file, {"image_data": x, "class_dict": {**cd, w[0]: cd[w[0]] + [99]}})
    elif damage == "overlap":
        _write(file, {"image_data": x, "class_dict": {**cd, w[1]: cd[w[1]] + cd[w[0]][:1]}})
    elif damage == "orphan":
        _write(file, {"image_data": x, "class_dict": {k: v for k, v in cd.items() if k != w[2]}})
    else:
        file.write_bytes(pickle.dumps({"image_data": _Evil(tmp_path / "m"), "class_dict": {}}))
    with pytest.raises(ValueError, match=match):
        mini_imagenet(tmp_path, split="train", strict=False)
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------ CIFAR-FS and FC100


def _cifar_fixture(folder, per=(2, 1), seed=0):
    """cifar-100-python/ with every class: `per` = images per class in train and test.
    Fine and coarse names sorted, as CIFAR-100's meta lists them; written as Python 2's
    cPickle wrote them (protocol 2, byte-string keys and names)."""
    fs = json.loads(
        (
            __import__("metalearn.datasets.cifar", fromlist=["x"])._splits_file("cifar_fs")
        ).read_text()
    )
    parent = fs["superclass"]
    fine_names = sorted(parent)
    coarse_names = sorted(set(parent.values()))
    rng = np.random.default_rng(seed)
    d = folder / "cifar-100-python"
    d.mkdir(parents=True)
    images = {}
    for part, n in zip(("train", "test"), per):
        fine = np.repeat(np.arange(100), n)
        rng.shuffle(fine)
        coarse = np.array([coarse_names.index(parent[fine_names[f]]) for f in fine])
        data = rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
        images[part] = (data, fine)
        with open(d / part, "wb") as f:
            pickle.dump(
                {
                    b"data": data,
                    b"fine_labels": fine.tolist(),
                    b"coarse_labels": coarse.tolist(),
                    b"batch_label": part.encode(),
                    b"filenames": [b"img.png"] * len(fine),
                },
                f,
                protocol=2,
            )
    with open(d / "meta", "wb") as f:
        pickle.dump(
            {
                b"fine_label_names": [n.encode() for n in fine_names],
                b"coarse_label_names": [n.encode() for n in coarse_names],
            },
            f,
            protocol=2,
        )
    return images, fine_names, parent


def test_the_shipped_split_lists_are_the_published_counts():
    fs = {s: split_classes("cifar_fs", s) for s in ("train", "val", "test")}
    assert [len(fs[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert len(set(sum(fs.values(), []))) == 100
    fc = {s: split_classes("fc100", s) for s in ("train", "val", "test")}
    assert [len(fc[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    assert len(set(sum(fc.values(), []))) == 20


def test_cifar_fs_reads_cifar_100_python(tmp_path):
    images, fine_names, _ = _cifar_fixture(tmp_path)
    for split, count in (("train", 64), ("val", 16), ("test", 20)):
        x, y, names = cifar_fs(tmp_path, split=split, strict=False, return_names=True)
        assert list(names) == split_classes("cifar_fs", split)
        assert x.shape == (count * 3, 32, 32, 3) and x.dtype == np.uint8
        assert np.array_equal(np.bincount(y), np.full(count, 3))
    # one image followed from the file: row r of train's data, as (32, 32, 3) RGB
    data, fine = images["train"]
    x, y, names = cifar_fs(tmp_path, split="test", strict=False, return_names=True)
    r = int(np.nonzero(fine == fine_names.index(names[0]))[0][0])
    expect = np.stack([data[r, :1024], data[r, 1024:2048], data[r, 2048:]], -1).reshape(32, 32, 3)
    assert any(np.array_equal(expect, img) for img in x[y == 0])
    with pytest.raises(ValueError, match="600"):
        cifar_fs(tmp_path, split="train")


def test_fc100_splits_by_superclass(tmp_path):
    _, _, parent = _cifar_fixture(tmp_path)
    seen = set()
    for split, count in (("train", 60), ("val", 20), ("test", 20)):
        x, y, names = fc100(tmp_path, split=split, strict=False, return_names=True)
        assert len(names) == count and len(x) == count * 3
        assert {parent[n] for n in names} == set(split_classes("fc100", split))
        seen |= set(names)
    assert len(seen) == 100


@pytest.mark.parametrize("damage", ["truncated", "meta", "shape", "evil", "missing"])
def test_cifar_refuses_a_wrong_folder(tmp_path, damage):
    _cifar_fixture(tmp_path)
    d = tmp_path / "cifar-100-python"
    if damage == "truncated":
        (d / "train").write_bytes((d / "train").read_bytes()[:1000])
    elif damage == "meta":
        _write(d / "meta", {b"fine_label_names": [b"a"] * 10, b"coarse_label_names": []})
    elif damage == "shape":
        _write(
            d / "test",
            {
                b"data": np.zeros((3, 100), np.uint8),
                b"fine_labels": [0] * 3,
                b"coarse_labels": [0] * 3,
            },
        )
    elif damage == "evil":
        (d / "meta").write_bytes(pickle.dumps(_Evil(tmp_path / "m"), protocol=2))
    else:
        (d / "test").unlink()
    err = DataNotFoundError if damage == "missing" else ValueError
    with pytest.raises(err):
        cifar_fs(tmp_path, split="val", strict=False)
    assert not (tmp_path / "m").exists()
