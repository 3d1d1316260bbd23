"""Task samplers: shapes, seeding, relabelling, rotation classes."""

import math

import numpy as np
import pytest

from metalearn.tasks import Augment, NWayKShot, Sinusoid, Task


def _toy_dataset(n_classes=12, per_class=6, size=5):
    rng = np.random.default_rng(0)
    x = rng.random((n_classes * per_class, size, size, 1)).astype(np.float32)
    y = np.repeat(np.arange(n_classes), per_class)
    # make each image identify its class and sample: pixel (0,0) = class, (0,1) = sample
    x[:, 0, 0, 0] = y
    x[:, 0, 1, 0] = np.tile(np.arange(per_class), n_classes)
    return x, y


def test_sinusoid_shapes_and_ranges():
    s = Sinusoid(k_shot=10, q_queries=7, seed=0)
    t = s.sample()
    assert isinstance(t, Task)
    assert t.support_x.shape == (10, 1) and t.support_y.shape == (10, 1)
    assert t.query_x.shape == (7, 1) and t.query_y.shape == (7, 1)
    assert t.support_x.dtype == np.float32
    b = s.sample_batch(25)
    assert b.support_x.shape == (25, 10, 1) and b.query_y.shape == (25, 7, 1)
    assert b.is_batch and len(b.tasks()) == 25
    amp, ph = b.info["amplitude"], b.info["phase"]
    assert amp.min() >= 0.1 and amp.max() <= 5.0 and ph.min() >= 0 and ph.max() <= math.pi
    assert np.abs(b.support_x).max() <= 5.0
    # targets really are A sin(x - phase) of the recorded parameters
    want = amp[:, None, None] * np.sin(b.support_x - ph[:, None, None])
    np.testing.assert_allclose(b.support_y, want, rtol=1e-5, atol=1e-5)
    # different tasks in a batch
    assert len(np.unique(np.round(amp, 6))) == 25


def test_sinusoid_seeded_reproducible():
    a, b, c = Sinusoid(seed=3), Sinusoid(seed=3), Sinusoid(seed=4)
    ta, tb, tc = a.sample_batch(4), b.sample_batch(4), c.sample_batch(4)
    for u, v in zip(ta, tb):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(ta.support_x, tc.support_x)
    # consecutive samples differ
    assert not np.array_equal(a.sample_batch(4).support_x, ta.support_x)


def test_sinusoid_custom_ranges_and_errors():
    t = Sinusoid(k_shot=3, q_queries=2, amplitude=(1.0, 1.0), phase=(0.0, 0.0), seed=1).sample()
    np.testing.assert_allclose(t.support_y, np.sin(t.support_x), atol=1e-6)
    with pytest.raises(ValueError):
        Sinusoid(k_shot=0)
    with pytest.raises(ValueError):
        Sinusoid(amplitude=(5.0, 0.1))


def _ulps32(a, b):
    """Distance in float32 ulps (same-sign finite values)."""
    ia = np.asarray(a, np.float32).view(np.int32).astype(np.int64)
    ib = np.asarray(b, np.float32).view(np.int32).astype(np.int64)
    return np.abs(ia - ib)


@pytest.mark.parametrize("bits", [np.random.PCG64, np.random.Philox, np.random.MT19937])
def test_sinusoid_batch_draws_what_generator_uniform_draws(bits):
    """The C sampler takes b amplitudes, b phases, then b rows of k + q inputs, each as
    Generator.uniform(low, high) would, and leaves the Generator where those three calls
    leave it; targets are the float32 formula with a correctly rounded sine."""
    b, k, q = 7, 5, 4
    got = Sinusoid(k_shot=k, q_queries=q, seed=np.random.Generator(bits(11))).sample_batch(b)
    r = np.random.Generator(bits(11))
    amp = r.uniform(0.1, 5.0, b).astype(np.float32)
    ph = r.uniform(0.0, math.pi, b).astype(np.float32)
    x = r.uniform(-5.0, 5.0, (b, k + q)).astype(np.float32)
    np.testing.assert_array_equal(got.info["amplitude"], amp)
    np.testing.assert_array_equal(got.info["phase"], ph)
    np.testing.assert_array_equal(got.support_x[..., 0], x[:, :k])
    np.testing.assert_array_equal(got.query_x[..., 0], x[:, k:])
    arg = (x - ph[:, None]).astype(np.float32)  # float32 subtraction, as before
    y = amp[:, None] * np.sin(arg.astype(np.float64)).astype(np.float32)
    y_got = np.concatenate([got.support_y[..., 0], got.query_y[..., 0]], axis=1)
    assert _ulps32(y_got, y).max() <= 1
    # the stream goes on where NumPy's would
    s = Sinusoid(k_shot=k, q_queries=q, seed=np.random.Generator(bits(11)))
    s.sample_batch(b)
    assert s.rng.random() == r.random()


def test_sinusoid_sine_over_a_wide_range():
    """Reduction by pi/2 in three parts up to 2^19, the C library's sine past it (and for
    inf): within an ulp of float64 sin rounded to float32 everywhere."""
    for lo, hi in ((-7.0, 7.0), (-600.0, 600.0), (-5.0e5, 5.0e5), (5.0e5, 6.0e5), (1e9, 1e12)):
        t = Sinusoid(
            k_shot=4000,
            q_queries=0,
            amplitude=(1.0, 1.0),
            phase=(0.0, 0.0),
            x_range=(lo, hi),
            seed=2,
        ).sample_batch(3)
        x = t.support_x[..., 0]
        want = np.sin(x.astype(np.float64)).astype(np.float32)
        d = _ulps32(t.support_y[..., 0], want)
        # both are float32 roundings of nearly the same double: equal or one ulp apart,
        # and only rarely one apart
        assert d.max() <= 1 and (d > 0).mean() < 0.01, (lo, hi, d.max(), (d > 0).mean())
    # points at multiples of pi/2, where the reduction cancels most (x_range (v, v): x is v)
    from metalearn import _core

    r = np.random.default_rng(0)
    for v in np.float32(np.arange(-300000, 300000, 49850) * (math.pi / 2)):
        with r.bit_generator.lock:
            out = _core.sinusoid_batch(
                r.bit_generator, 1, 1, 0, 1.0, 1.0, 0.0, 0.0, float(v), float(v)
            )
        assert out[0][0, 0, 0] == v
        assert _ulps32(out[1][0, 0, 0], np.float32(np.sin(np.float64(v)))) <= 1


def test_sinusoid_batch_rejects_bad_input():
    from metalearn import _core

    bits = np.random.default_rng(0).bit_generator
    with pytest.raises(ValueError, match="b=0"):
        _core.sinusoid_batch(bits, 0, 10, 10, 0.1, 5.0, 0.0, 1.0, -5.0, 5.0)
    with pytest.raises(ValueError, match="k=0"):
        _core.sinusoid_batch(bits, 2, 0, 10, 0.1, 5.0, 0.0, 1.0, -5.0, 5.0)
    with pytest.raises(ValueError, match="q=4611686018427387904"):
        _core.sinusoid_batch(bits, 2, 3, 2**62, 0.1, 5.0, 0.0, 1.0, -5.0, 5.0)
    with pytest.raises(OverflowError, match="not finite"):
        _core.sinusoid_batch(bits, 2, 3, 1, 0.1, 5.0, 0.0, 1.0, -math.inf, 5.0)
    with pytest.raises(AttributeError):  # not a bit generator
        _core.sinusoid_batch(object(), 2, 3, 1, 0.1, 5.0, 0.0, 1.0, -5.0, 5.0)
    with pytest.raises(ValueError):  # a capsule of another kind
        _core.sinusoid_batch(
            type("Fake", (), {"capsule": None})(), 2, 3, 1, 0.1, 5.0, 0.0, 1.0, -5.0, 5.0
        )
    # an infinite range through the sampler: the error names the ranges, and nothing is
    # drawn from the Generator
    s = Sinusoid(x_range=(-math.inf, 0.0), seed=0)
    state = s.rng.bit_generator.state
    with pytest.raises(OverflowError, match=r"not finite: .*x \(-inf, 0\)"):
        s.sample_batch(2)
    assert s.rng.bit_generator.state == state


def test_nway_shapes_and_relabelled_labels():
    x, y = _toy_dataset()
    s = NWayKShot((x, y + 100), n_way=4, k_shot=2, q_queries=3, augment_rotations=False, seed=0)
    t = s.sample()
    assert t.support_x.shape == (8, 5, 5, 1) and t.query_x.shape == (12, 5, 5, 1)
    np.testing.assert_array_equal(t.support_y, np.repeat(np.arange(4), 2))
    np.testing.assert_array_equal(t.query_y, np.repeat(np.arange(4), 3))
    # the support and query of a class come from the same dataset class, all distinct
    for c in range(4):
        orig = t.info["classes"][c] - 100
        assert np.all(t.support_x[t.support_y == c][:, 0, 0, 0] == orig)
        assert np.all(t.query_x[t.query_y == c][:, 0, 0, 0] == orig)
        samples = np.concatenate(
            [t.support_x[t.support_y == c][:, 0, 1, 0], t.query_x[t.query_y == c][:, 0, 1, 0]]
        )
        assert len(np.unique(samples)) == 5
    assert len(set(t.info["classes"].tolist())) == 4
    b = s.sample_batch(3)
    assert b.support_x.shape == (3, 8, 5, 5, 1) and b.support_y.shape == (3, 8)
    assert b.query_x.shape == (3, 12, 5, 5, 1)
    # relabelling is random: label 0 is not always the smallest dataset class
    firsts = [s.sample().info["classes"] for _ in range(20)]
    assert any(f[0] != f.min() for f in firsts)


def test_nway_seeded_reproducible():
    x, y = _toy_dataset()
    a = NWayKShot((x, y), 5, 1, 2, seed=7).sample_batch(3)
    b = NWayKShot((x, y), 5, 1, 2, seed=7).sample_batch(3)
    c = NWayKShot((x, y), 5, 1, 2, seed=8).sample_batch(3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.support_x, c.support_x)


def test_rotations_make_new_classes():
    x, y = _toy_dataset(n_classes=2, per_class=6)
    s = NWayKShot((x, y), n_way=8, k_shot=1, q_queries=1, augment_rotations=True, seed=0)
    assert s.num_classes == 8
    t = s.sample()  # 2 classes x 4 rotations: every (class, rotation) once
    pairs = set(zip(t.info["classes"].tolist(), t.info["rotations"].tolist()))
    assert pairs == {(c, r) for c in range(2) for r in range(4)}
    for i in range(8):
        c, r = t.info["classes"][i], t.info["rotations"][i]
        img = t.support_x[t.support_y == i][0]
        src = x[(y == c)]
        # the image is one of the class's images rotated by r * 90 degrees
        assert any(np.array_equal(np.rot90(s_img, r, axes=(0, 1)), img) for s_img in src)
    # without rotations only 2 classes exist
    with pytest.raises(ValueError):
        NWayKShot((x, y), n_way=3, k_shot=1, q_queries=1, augment_rotations=False)


def test_nway_errors():
    x, y = _toy_dataset(per_class=3)
    with pytest.raises(ValueError, match="k_shot"):
        NWayKShot((x, y), 2, 2, 2)
    with pytest.raises(TypeError):
        NWayKShot(x, 2, 1, 1)
    with pytest.raises(ValueError):
        NWayKShot((x, y[:-1]), 2, 1, 1)


def test_sample_batch_gathered_by_the_core_matches_numpy():
    """float32 images are gathered by the core into pooled memory (a NumPy view of it);
    other dtypes by NumPy: same draws, same images, and batches alive together never share
    memory (a pooled block is reused only once its batch is gone)."""
    rng = np.random.default_rng(4)
    x = rng.random((5 * 6, 3, 3, 1)).astype(np.float32)
    y = np.repeat(np.arange(5), 6)
    fast = NWayKShot((x, y), n_way=3, k_shot=2, q_queries=2, seed=7)
    slow = NWayKShot((x.astype(np.float64), y), n_way=3, k_shot=2, q_queries=2, seed=7)
    a, b = fast.sample_batch(4), slow.sample_batch(4)
    assert a.support_x.dtype == np.float32 and b.support_x.dtype == np.float64
    np.testing.assert_array_equal(a.support_x, b.support_x.astype(np.float32))
    np.testing.assert_array_equal(a.query_x, b.query_x.astype(np.float32))
    a2 = fast.sample_batch(4)
    assert not np.shares_memory(a.query_x, a2.query_x)
    assert not np.shares_memory(a.query_x, x)
    a.query_x[:] = -1.0  # writable, and writing it leaves the dataset alone
    assert x.min() >= 0.0 and a2.query_x.min() >= 0.0


@pytest.mark.parametrize("rotations", [False, True])
@pytest.mark.parametrize("equal_sizes", [True, False])
def test_sample_batch_contents(rotations, equal_sizes):
    """sample_batch (one gather for the whole meta-batch when every class has the same
    number of examples, an episode loop otherwise): each task's images are distinct members
    of the class its label stands for, turned by the recorded rotation."""
    rng = np.random.default_rng(3)
    n_classes, per = 6, 7
    x = rng.random((n_classes * per + (0 if equal_sizes else 2), 4, 4, 1)).astype(np.float32)
    y = np.concatenate([np.repeat(np.arange(n_classes), per), [] if equal_sizes else [0, 1]])
    s = NWayKShot(
        (x, y.astype(int)), n_way=3, k_shot=2, q_queries=3, augment_rotations=rotations, seed=1
    )
    assert (s._member_table is not None) == equal_sizes
    b = s.sample_batch(8)
    assert b.support_x.shape == (8, 6, 4, 4, 1) and b.query_x.shape == (8, 9, 4, 4, 1)
    seen_rot = set()
    for t in range(8):
        np.testing.assert_array_equal(b.support_y[t], np.repeat(np.arange(3), 2))
        np.testing.assert_array_equal(b.query_y[t], np.repeat(np.arange(3), 3))
        for c in range(3):
            cls, rt = int(b.info["classes"][t][c]), int(b.info["rotations"][t][c])
            seen_rot.add(rt)
            imgs = list(b.support_x[t][b.support_y[t] == c]) + list(b.query_x[t][b.query_y[t] == c])
            found = []
            for im in imgs:
                back = np.rot90(im, -rt, axes=(0, 1))
                hit = [i for i in np.flatnonzero(y == cls) if np.array_equal(x[i], back)]
                assert len(hit) == 1
                found.append(hit[0])
            assert len(set(found)) == 5  # k + q distinct examples
        assert len(set(b.info["classes"][t].tolist())) == 3 or rotations
    assert (max(seen_rot) > 0) == rotations


def _reference_batch(x, y, n_way, k_shot, q_queries, b, rng, rotations):
    """What NWayKShot.sample_batch draws, from the same generator calls, written with
    NumPy's plain indexing and np.rot90, one image at a time: the images of class c of
    episode t are x[idx[t, c]], turned by rot[t, c] quarter turns."""
    classes = np.unique(y)
    members = np.stack([np.flatnonzero(y == c) for c in classes])
    r4 = 4 if rotations else 1
    picks = np.stack([rng.choice(len(classes) * r4, n_way, replace=False) for _ in range(b)])
    base, rot = picks // r4, picks % r4
    mem = members[base]
    order = np.argsort(rng.random(mem.shape), axis=-1)[..., : k_shot + q_queries]
    idx = np.take_along_axis(mem, order, axis=-1)
    sx = np.empty((b, n_way * k_shot) + x.shape[1:], x.dtype)
    qx = np.empty((b, n_way * q_queries) + x.shape[1:], x.dtype)
    for t in range(b):
        for c in range(n_way):
            for j, row in enumerate(idx[t, c]):
                img = np.rot90(x[row], rot[t, c], axes=(0, 1))
                if j < k_shot:
                    sx[t, c * k_shot + j] = img
                else:
                    qx[t, c * q_queries + j - k_shot] = img
    return sx, qx, classes[base], rot


@pytest.mark.parametrize("rotations", [True, False])
def test_sample_batch_images_are_the_reference_draws(rotations):
    """The batch's images, gathered and turned a rotation group at a time, are the ones a
    plain per-image loop over the same random draws gives (np.rot90 of x[row])."""
    rng = np.random.default_rng(3)
    x = rng.random((30 * 7, 6, 6, 1), dtype=np.float32)
    y = np.repeat(np.arange(30), 7)
    s = NWayKShot((x, y), 5, 2, 3, augment_rotations=rotations, seed=11)
    ref = np.random.default_rng(11)
    for _ in range(3):
        got = s.sample_batch(8)
        sx, qx, cls, rot = _reference_batch(x, y, 5, 2, 3, 8, ref, rotations)
        assert np.array_equal(got.support_x, sx) and np.array_equal(got.query_x, qx)
        assert np.array_equal(got.info["classes"], cls)
        assert np.array_equal(got.info["rotations"], rot)


@pytest.mark.parametrize("rotations", [True, False])
@pytest.mark.parametrize("equal_sizes", [True, False])
def test_a_block_of_a_batch_is_the_whole_batch_s_rows_and_moves_the_stream_alike(
    rotations, equal_sizes
):
    """sample_batch(b, block=(lo, hi)) (DataParallel's draw of one process's tasks): the
    whole batch's rows lo..hi-1 (and their info), the block named in info, and the next
    batch is the same as after a whole draw (the same random numbers were used)."""
    rng = np.random.default_rng(0)
    x = rng.random((30 * 6, 5, 5, 1), dtype=np.float32)
    y = np.repeat(np.arange(30), 6)
    if not equal_sizes:
        x, y = x[1:], y[1:]  # class 0 one example short
    whole = NWayKShot((x, y), 4, 2, 3, augment_rotations=rotations, seed=7)
    part = NWayKShot((x, y), 4, 2, 3, augment_rotations=rotations, seed=7)
    for lo, hi in [(2, 5), (0, 6), (0, 1), (5, 6)]:
        a, b = whole.sample_batch(6), part.sample_batch(6, block=(lo, hi))
        for f in ("support_x", "query_x", "support_y", "query_y"):
            assert np.array_equal(getattr(a, f)[lo:hi], getattr(b, f)), f
            assert getattr(b, f).shape == getattr(a, f)[lo:hi].shape
        for key in ("rotations", "classes"):
            assert np.array_equal(a.info[key][lo:hi], b.info[key])
        assert b.info["block"] == (lo, hi, 6) and b.is_batch
    # the stream moved alike
    assert np.array_equal(whole.sample_batch(6).query_x, part.sample_batch(6).query_x)


def test_a_block_with_augmentation_moves_the_stream_as_the_whole_batch():
    """Augment draws per image from the sampler's stream: a block gathers (and augments)
    the whole batch, so its rows and the next batches are a whole draw's."""
    rng = np.random.default_rng(0)
    x = (rng.random((20 * 6, 8, 8, 3)) * 255).astype(np.uint8)
    y = np.repeat(np.arange(20), 6)
    aug = Augment(pad=1, flip=True, brightness=0.3)
    whole = NWayKShot((x, y), 3, 1, 2, augment_rotations=False, seed=5, augment=aug)
    part = NWayKShot((x, y), 3, 1, 2, augment_rotations=False, seed=5, augment=aug)
    a, b = whole.sample_batch(4), part.sample_batch(4, block=(1, 3))
    assert np.array_equal(a.query_x[1:3], b.query_x)
    assert np.array_equal(whole.sample_batch(4).support_x, part.sample_batch(4).support_x)


def test_a_bad_block_is_refused_and_draws_nothing():
    rng = np.random.default_rng(0)
    x = rng.random((10 * 4, 3), dtype=np.float32)
    y = np.repeat(np.arange(10), 4)
    s = NWayKShot((x, y), 3, 1, 2, augment_rotations=False, seed=1)
    ref = NWayKShot((x, y), 3, 1, 2, augment_rotations=False, seed=1)
    for bad in [(2, 2), (-1, 2), (0, 5), (3, 1)]:
        with pytest.raises(ValueError, match="block"):
            s.sample_batch(4, block=bad)
    assert np.array_equal(s.sample_batch(4).support_x, ref.sample_batch(4).support_x)
