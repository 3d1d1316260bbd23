"""A knowledge memory opened memory-mapped (issue 26: memories larger than RAM).

* file format version 2, parsed here with struct/zlib (not metalearn's reader): the slabs
  start on 64-byte boundaries, hold the memory's float32 keys, labels, ages and payloads
  little-endian, and every CRC-32 is zlib's;
* ``open(path, mmap_mode="r")`` answers every search (exact scan and GEMM, label filter,
  compact keys, IVF), read, loss (and its gradients), state and save with the same bits as
  the memory loaded into RAM, at 1, 2 and 3 threads;
* version-1 files, written here by hand, still open (into RAM, read-only when mapped);
* every truncation and every flipped byte of a file is refused with a ValueError naming
  the file, mapped or not, and a refused load changes nothing;
* writes to a mapped memory raise ValueError and change nothing; close(), ``with`` and
  garbage collection unmap the file (checked in /proc/self/maps); saving over the mapped
  path leaves the map reading the file it opened.
"""

import gc
import os
import struct
import zlib

import numpy as np
import pytest

import metalearn as ml
from metalearn.memory import KnowledgeMemory


def filled(capacity=700, d=24, p=3, n=600, seed=0, removed=(5, 17, 300)):
    """A memory holding n seeded keys (100 labels), payloads, a few removed slots and
    capacity > n (empty slots after the file's rows)."""
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((n, d)).astype(np.float32)
    keys[n // 2 :: 7] = keys[: len(keys[n // 2 :: 7])]  # exact ties between slots
    mem = KnowledgeMemory.from_arrays(
        keys,
        rng.integers(0, 100, n),
        payloads=rng.standard_normal((n, p)).astype(np.float32),
        capacity=capacity,
        seed=seed,
    )
    if removed:
        mem.remove(list(removed))
    return mem


@pytest.fixture
def threads():
    before = ml.get_num_threads()
    yield
    ml.set_num_threads(before)


@pytest.fixture
def saved(tmp_path):
    mem = filled()
    path = tmp_path / "m.mlm"
    mem.save(str(path))
    return mem, path


def parse_v2(raw):
    """The fields and slabs of a version-2 file, by the layout in metalearn.h."""
    assert raw[:8] == b"MLMEMORY"
    version, header = struct.unpack_from("<II", raw, 8)
    cap, d, p, c, seed = struct.unpack_from("<5Q", raw, 16)
    crcs = struct.unpack_from("<4I", raw, 88)
    (hcrc,) = struct.unpack_from("<I", raw, 124)
    up = lambda x: (x + 63) // 64 * 64  # noqa: E731
    at, slabs = 128, []
    for nbytes in (c * d * 4, c * 8, c * 8, c * p * 4):
        slabs.append((at, nbytes))
        at += up(nbytes)
    return dict(
        version=version, header=header, cap=cap, d=d, p=p, c=c, seed=seed, crcs=crcs,
        hcrc=hcrc, slabs=slabs, end=at,
    )  # fmt: skip


def write_v1(path, cap, keys, labels, ages, payloads, seed=3, rng=(1, 2, 3, 4)):
    """A version-1 file as metalearn wrote it before version 2 (keys from byte 84)."""
    c, d = keys.shape
    p = payloads.shape[1] if payloads is not None else 0
    body = struct.pack("<QQQQQ4Q", cap, d, p, c, seed, *rng)
    body += keys.astype("<f4").tobytes() + labels.astype("<i8").tobytes()
    body += ages.astype("<i8").tobytes()
    if p:
        body += payloads.astype("<f4").tobytes()
    data = b"MLMEMORY" + struct.pack("<I", 1) + body
    path.write_bytes(data + struct.pack("<I", zlib.crc32(data)))


def maps_of(path):
    with open("/proc/self/maps") as f:
        return [line for line in f if line.rstrip().endswith(str(path))]


# ------------------------------------------------------------------ the file format


def test_saved_file_is_version_2_with_64_byte_aligned_slabs(saved):
    mem, path = saved
    raw = path.read_bytes()
    h = parse_v2(raw)
    keys, labels, ages, pays = mem.state()
    c = h["c"]
    assert (h["version"], h["header"], h["cap"], h["d"], h["p"]) == (2, 128, 700, 24, 3)
    assert c == 600 and len(raw) == h["end"]
    assert h["hcrc"] == zlib.crc32(raw[:124]) and raw[104:124] == bytes(20)
    for (at, n), crc, want in zip(
        h["slabs"],
        h["crcs"],
        [keys[:c].astype("<f4"), labels[:c].astype("<i8"), ages[:c].astype("<i8"), pays[:c]],
    ):
        assert at % 64 == 0
        assert raw[at : at + n] == np.ascontiguousarray(want, dtype=want.dtype).tobytes()
        assert zlib.crc32(raw[at : at + n]) == crc
        assert raw[at + n : (at + n + 63) // 64 * 64] == bytes((64 - n % 64) % 64)


def test_mapped_key_slab_is_aligned_in_memory(saved):
    """The keys are searched where they lie: the map holds the file and is not copied
    (the mapped memory's slabs are not in the process's heap)."""
    _, path = saved
    r = KnowledgeMemory.open(str(path), mmap_mode="r")
    assert r.read_only and len(maps_of(path)) >= 1
    r.close()
    assert maps_of(path) == []


# ------------------------------------------------------------- same bits as loaded


def _same(a, b):
    for x, y in zip(a, b):
        if x is None:
            assert y is None
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("n", [1, 5, 8, 9, 40])
def test_mapped_search_equals_loaded_at_every_thread_count(saved, threads, n):
    mem, path = saved
    loaded = KnowledgeMemory.open(str(path))
    mapped = KnowledgeMemory.open(str(path), mmap_mode="r")
    assert not loaded.read_only and mapped.read_only
    q = np.random.default_rng(n).standard_normal((n, 24)).astype(np.float32)
    ref = loaded.query(q, 8)
    _same(ref, mem.query(q, 8))
    where = loaded.query(q, 5, labels=[3, 4, 50, 99])
    for t in (1, 2, 3):
        ml.set_num_threads(t)
        _same(ref, mapped.query(q, 8))
        _same(where, mapped.query(q, 5, labels=[3, 4, 50, 99]))
        _same(loaded.predict(q), mapped.predict(q))
    assert mapped.size == loaded.size == 597 and mapped.capacity == 700
    _same(loaded.state(), mapped.state())


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_mapped_compact_keys_equal_loaded(saved, threads, dtype):
    _, path = saved
    loaded = KnowledgeMemory.open(str(path))
    mapped = KnowledgeMemory.open(str(path), mmap_mode="r")
    loaded.key_dtype = mapped.key_dtype = dtype
    q = np.random.default_rng(1).standard_normal((6, 24)).astype(np.float32)
    ref = loaded.query(q, 8)
    for t in (1, 2, 3):
        ml.set_num_threads(t)
        _same(ref, mapped.query(q, 8))


def test_mapped_index_equals_loaded(saved, threads):
    _, path = saved
    loaded = KnowledgeMemory.open(str(path))
    mapped = KnowledgeMemory.open(str(path), mmap_mode="r")
    a = loaded.build_index(12, nprobe=3, seed=4)
    b = mapped.build_index(12, nprobe=3, seed=4)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.lists, b.lists)
    q = np.random.default_rng(2).standard_normal((20, 24)).astype(np.float32)
    ref = [loaded.query(q[:1], 8), loaded.query(q[:7], 8), loaded.query(q, 8, labels=[1, 2])]
    for t in (1, 2, 3):
        ml.set_num_threads(t)
        got = [mapped.query(q[:1], 8), mapped.query(q[:7], 8), mapped.query(q, 8, labels=[1, 2])]
        for x, y in zip(ref, got):
            _same(x, y)
    assert mapped.index.nprobe == 3
    mapped.index = None  # back to exact: still allowed, nothing is written to the file
    _same(loaded.query(q, 8, nprobe="exact"), mapped.query(q, 8))


def test_mapped_read_loss_and_gradients_equal_loaded(saved):
    _, path = saved
    loaded = KnowledgeMemory.open(str(path))
    mapped = KnowledgeMemory.open(str(path), mmap_mode="r")
    q0 = np.random.default_rng(3).standard_normal((4, 24)).astype(np.float32)
    y = np.array([1, 2, 3, 4])
    outs = []
    for mem in (loaded, mapped):
        q = ml.tensor(q0, requires_grad=True)
        out, w = mem.read(q, 5, return_weights=True)
        loss = mem.loss(q, y, k=5)
        total = ml.reduce_sum(out) + loss
        (g,) = ml.grad(total, q, create_graph=True)
        (h,) = ml.grad(ml.reduce_sum(g * g), q)
        outs.append([np.asarray(v) for v in (out, w, loss, g, h)])
    assert np.abs(outs[0][3]).max() > 0 and np.abs(outs[0][4]).max() > 0
    _same(outs[0], outs[1])


# ------------------------------------------------------------------------ version 1


def test_version_1_files_still_open(tmp_path):
    rng = np.random.default_rng(5)
    keys = rng.standard_normal((9, 5)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    keys[4] = 0  # a removed slot: label -1, zero key
    labels = np.array([3, 1, 4, 1, -1, 9, 2, 6, 5])
    ages = np.arange(9)[::-1].copy()
    pays = rng.standard_normal((9, 2)).astype(np.float32)
    path = tmp_path / "v1.mlm"
    write_v1(path, 12, keys, labels, ages, pays)
    for mode in (None, "r"):
        mem = KnowledgeMemory.open(str(path), mmap_mode=mode)
        assert mem.read_only == (mode == "r")
        assert (mem.capacity, mem.key_size, mem.payload_size, mem.size) == (12, 5, 2, 8)
        k, lab, age, pay = mem.state()
        np.testing.assert_array_equal(k[:9], keys)
        np.testing.assert_array_equal(lab[:9], labels)
        np.testing.assert_array_equal(age[:9], ages)
        np.testing.assert_array_equal(pay[:9], pays)
        assert not k[9:].any() and not lab[9:].any()
        idx, sim, lab_q, _ = mem.query(keys[:3], 1)
        np.testing.assert_array_equal(idx[:, 0], [0, 1, 2])
    target = KnowledgeMemory(12, 5, 2)
    target.load(str(path))
    _same(target.state(), KnowledgeMemory.open(str(path)).state())
    # and saving it again writes version 2, which maps in place
    target.save(str(tmp_path / "v2.mlm"))
    assert parse_v2((tmp_path / "v2.mlm").read_bytes())["version"] == 2
    _same(target.state(), KnowledgeMemory.open(str(tmp_path / "v2.mlm"), mmap_mode="r").state())


# ---------------------------------------------------------------- corrupt files


def small_file(tmp_path, version):
    mem = filled(capacity=8, d=4, p=1, n=5, removed=(2,))
    path = tmp_path / f"small{version}.mlm"
    if version == 2:
        mem.save(str(path))
    else:
        k, lab, age, pay = mem.state()
        write_v1(path, 8, k[:5], lab[:5], age[:5], pay[:5])
    return mem, path.read_bytes()


@pytest.mark.parametrize("version", [1, 2])
def test_every_truncation_and_flipped_byte_is_refused(tmp_path, version):
    mem, good = small_file(tmp_path, version)
    target = KnowledgeMemory(8, 4, 1, seed=9)
    target.update(np.eye(4, dtype=np.float32)[:2], [7, 8])
    before = target.state()
    bad = tmp_path / "bad.mlm"

    def refused(data):
        bad.write_bytes(data)
        for mode in (None, "r"):
            with pytest.raises(ValueError, match="bad.mlm"):
                KnowledgeMemory.open(str(bad), mmap_mode=mode)
        with pytest.raises(ValueError, match="bad.mlm"):
            target.load(str(bad))
        assert maps_of(bad) == []

    for n in range(len(good)):
        refused(good[:n])
    refused(good + b"\0")
    for i in range(len(good)):
        for bit in (0x01, 0x80):
            flipped = bytearray(good)
            flipped[i] ^= bit
            refused(bytes(flipped))
    _same(before, target.state())
    bad.write_bytes(good)
    _same(mem.state(), KnowledgeMemory.open(str(bad), mmap_mode="r").state())


def test_checksummed_but_invalid_v2_files_are_refused(tmp_path):
    """Faults a CRC cannot see (the CRCs recomputed): non-finite keys, negative ages,
    impossible sizes, a capacity asking for gigabytes, an unknown version."""
    _, good = small_file(tmp_path, 2)
    h = parse_v2(good)
    bad = tmp_path / "bad.mlm"

    def refixed(raw):
        raw = bytearray(raw)
        for s, (at, n) in enumerate(parse_v2(bytes(raw))["slabs"]):
            struct.pack_into("<I", raw, 88 + 4 * s, zlib.crc32(bytes(raw[at : at + n])))
        struct.pack_into("<I", raw, 124, zlib.crc32(bytes(raw[:124])))
        return bytes(raw)

    cases = []
    raw = bytearray(good)
    struct.pack_into("<f", raw, h["slabs"][0][0] + 8, np.inf)
    cases.append((refixed(raw), "non-finite"))
    raw = bytearray(good)
    struct.pack_into("<f", raw, h["slabs"][0][0], np.nan)
    cases.append((refixed(raw), "non-finite"))
    raw = bytearray(good)
    struct.pack_into("<q", raw, h["slabs"][2][0] + 8, -1)
    cases.append((refixed(raw), "negative age"))
    raw = bytearray(good)
    struct.pack_into("<Q", raw, 40, 9)  # count > capacity
    cases.append((refixed(raw), "bad sizes"))
    raw = bytearray(good)
    struct.pack_into("<Q", raw, 16, 100)
    struct.pack_into("<Q", raw, 40, 50)  # more slots than the file holds
    cases.append((refixed(raw), "truncated"))
    raw = bytearray(good)
    struct.pack_into("<I", raw, 12, 64)
    cases.append((refixed(raw), "header"))
    raw = bytearray(good)
    struct.pack_into("<I", raw, 8, 3)
    cases.append((refixed(raw), "version 3"))
    # a file that holds nothing and asks for ~9 GiB of empty slots
    huge = bytearray(good[:128])
    struct.pack_into("<5Q", huge, 16, 1028, 2360064, 0, 0, 0)
    struct.pack_into("<4I", huge, 88, 0, 0, 0, 0)
    cases.append((refixed(huge), "GiB"))
    for data, match in cases:
        bad.write_bytes(data)
        for mode in (None, "r"):
            with pytest.raises(ValueError, match=match):
                KnowledgeMemory.open(str(bad), mmap_mode=mode)


def test_open_refuses_bad_modes_and_paths(tmp_path, saved):
    _, path = saved
    for mode in ("r+", "w+", "c", "", 1):
        with pytest.raises(ValueError, match="mmap_mode"):
            KnowledgeMemory.open(str(path), mmap_mode=mode)
    with pytest.raises(OSError):
        KnowledgeMemory.open(str(tmp_path / "missing.mlm"), mmap_mode="r")
    with pytest.raises(OSError, match="regular"):
        KnowledgeMemory.open(str(tmp_path), mmap_mode="r")
    (tmp_path / "empty.mlm").write_bytes(b"")
    with pytest.raises(ValueError, match="magic"):
        KnowledgeMemory.open(str(tmp_path / "empty.mlm"), mmap_mode="r")


# --------------------------------------------------------------- read-only, lifetime


def test_writes_to_a_mapped_memory_are_refused_and_change_nothing(saved, tmp_path):
    mem, path = saved
    mapped = KnowledgeMemory.open(str(path), mmap_mode="r")
    before = mapped.state()
    q = np.ones((2, 24), np.float32)
    other = tmp_path / "other.mlm"
    mem.save(str(other))
    writes = [
        lambda: mapped.update(q, [1, 2]),
        lambda: mapped.add(q, [1, 2]),
        lambda: mapped.remove([0]),
        lambda: mapped.clear(),
        lambda: mapped.load(str(other)),
    ]
    for write in writes:
        with pytest.raises(ValueError, match="read-only"):
            write()
        _same(before, mapped.state())
    # compact keys and an index live in RAM: allowed, and the keys stay as they were
    mapped.key_dtype = "float16"
    mapped.build_index(4, nprobe=4)
    _same(before, mapped.state())
    # a save writes a new file from the map
    mapped.save(str(tmp_path / "copy.mlm"))
    assert (tmp_path / "copy.mlm").read_bytes() == path.read_bytes()


def test_close_with_and_gc_unmap_the_file(saved):
    _, path = saved
    with KnowledgeMemory.open(str(path), mmap_mode="r") as m:
        assert len(maps_of(path)) >= 1 and m.size == 597
    assert maps_of(path) == []
    with pytest.raises(ValueError, match="closed"):
        m.query(np.ones((1, 24), np.float32), 1)
    with pytest.raises(ValueError, match="closed"):
        len(m)
    m.close()  # twice is fine, as a file's close
    m = KnowledgeMemory.open(str(path), mmap_mode="r")
    assert len(maps_of(path)) >= 1
    del m
    gc.collect()
    assert maps_of(path) == []
    # a loaded memory maps nothing once open returns
    loaded = KnowledgeMemory.open(str(path))
    assert maps_of(path) == [] and loaded.size == 597


def test_saving_over_the_mapped_path_keeps_the_old_file_mapped(saved):
    mem, path = saved
    mapped = KnowledgeMemory.open(str(path), mmap_mode="r")
    before = mapped.state()
    q = np.random.default_rng(7).standard_normal((3, 24)).astype(np.float32)
    ref = mapped.query(q, 8)
    other = filled(seed=11)
    other.save(str(path))  # atomic rename: the mapped inode is untouched
    _same(before, mapped.state())
    _same(ref, mapped.query(q, 8))
    _same(other.state(), KnowledgeMemory.open(str(path), mmap_mode="r").state())


def test_many_opens_leak_no_maps(saved):
    _, path = saved
    for _ in range(50):
        KnowledgeMemory.open(str(path), mmap_mode="r").query(np.ones((1, 24), np.float32), 1)
    gc.collect()
    assert maps_of(path) == []
    assert os.path.exists(path)
