"""Frozen test episodes (metalearn.tasks.EpisodeSet): drawn once, saved as a checked file,
replayed exactly by evaluate; refused for other data or when damaged."""

import io
import json
import zipfile

import numpy as np
import pytest

import metalearn as ml
from metalearn.keras import layers
from metalearn.meta import MAML, ProtoNet
from metalearn.tasks import EpisodeSet, NWayKShot, Task
from metalearn.tasks.episodes import EpisodeSetError, dataset_checksum
from tests.helpers import needs_omniglot


def _data(seed=0, classes=9, per=7, side=6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(classes * per, side, side, 1)).astype(np.float32)
    y = np.repeat(np.arange(classes), per)
    order = rng.permutation(len(y))  # classes interleaved: rows are not grouped by class
    return x[order], y[order]


def _same_task(a, b):
    for u, v in zip(a, b):
        assert np.array_equal(np.asarray(u), np.asarray(v))
    assert np.array_equal(a.info["classes"], b.info["classes"])
    assert np.array_equal(a.info["rotations"], b.info["rotations"])


@pytest.mark.parametrize("rotations", [True, False])
def test_the_episodes_are_those_the_seeded_sampler_gives(rotations):
    data = _data()
    sampler = NWayKShot(data, n_way=4, k_shot=2, q_queries=3, augment_rotations=rotations)
    frozen = EpisodeSet.draw(sampler, episodes=25, seed=7)
    reference = NWayKShot(data, n_way=4, k_shot=2, q_queries=3, augment_rotations=rotations, seed=7)
    for i in range(25):
        _same_task(frozen.task(i), reference.sample())
    assert len(frozen) == 25 and len(list(frozen)) == 25


def test_save_load_same_episodes_same_hash(tmp_path):
    data = _data()
    sampler = NWayKShot(data, n_way=3, k_shot=1, q_queries=2)
    frozen = EpisodeSet.draw(sampler, episodes=40, seed=3, name="toy")
    h = frozen.save(tmp_path / "a.npz")
    assert h == frozen.hash and len(h) == 64
    again = EpisodeSet.load(tmp_path / "a.npz", dataset=data)
    assert again.hash == h and again.meta == frozen.meta
    for a, b in zip(frozen, again):
        _same_task(a, b)
    # the hash names the content: the same draw saved elsewhere has it, another seed not
    assert EpisodeSet.draw(sampler, episodes=40, seed=3, name="toy").save(tmp_path / "b.npz") == h
    assert EpisodeSet.draw(sampler, episodes=40, seed=4, name="toy").hash != h
    assert "3-way 1-shot" in repr(again)


def test_a_set_for_other_data_is_refused(tmp_path):
    x, y = _data()
    path = tmp_path / "s.npz"
    EpisodeSet.draw(NWayKShot((x, y), n_way=3, k_shot=1, q_queries=2), 10, seed=0).save(path)
    other = x.copy()
    other[5, 2, 2, 0] += 1.0  # one pixel
    with pytest.raises(EpisodeSetError, match="drawn from a dataset"):
        EpisodeSet.load(path, dataset=(other, y))
    with pytest.raises(EpisodeSetError, match="drawn from a dataset"):
        EpisodeSet.load(path, dataset=_data(seed=1))
    loaded = EpisodeSet.load(path)  # unbound: readable, but no tasks without its data
    with pytest.raises(ValueError, match="not bound"):
        loaded.task(0)
    assert dataset_checksum((x, y)) == loaded.meta["dataset"]["sha256"]


def _rewrite(path, **changes):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("damage", ["members", "meta", "version", "bytes", "truncated", "empty"])
def test_a_damaged_file_is_refused(tmp_path, damage):
    data = _data()
    path = tmp_path / "s.npz"
    frozen = EpisodeSet.draw(NWayKShot(data, n_way=3, k_shot=1, q_queries=2), 10, seed=0)
    frozen.save(path)
    if damage == "members":  # an edited episode, the stored hash kept
        m = frozen.members.copy()
        m[0, 0, 0] = (m[0, 0, 0] + 1) % 7
        _rewrite(path, members=m)
    elif damage in ("meta", "version"):
        meta = dict(frozen.meta)
        if damage == "meta":
            meta["seed"] = 99
        else:
            meta["version"] = 2
        _rewrite(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    elif damage == "bytes":
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 3] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-30])
    else:
        path.write_bytes(b"")
    with pytest.raises(EpisodeSetError):
        EpisodeSet.load(path, dataset=data)


def test_a_pickle_inside_is_not_loaded(tmp_path):
    path = tmp_path / "p.npz"
    with zipfile.ZipFile(path, "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        z.writestr("meta.npy", buf.getvalue())
    with pytest.raises(EpisodeSetError):
        EpisodeSet.load(path)


def _protonet():
    ml.random.set_seed(0)
    enc = ml.keras.models.Sequential([layers.Flatten(input_shape=(6, 6, 1)), layers.Dense(5)])
    enc(np.zeros((1, 6, 6, 1), np.float32))
    return ProtoNet(enc)


def test_evaluate_replays_exactly_the_frozen_episodes(tmp_path):
    data = _data()
    sampler = NWayKShot(data, n_way=3, k_shot=2, q_queries=2, seed=123)
    path = tmp_path / "s.npz"
    EpisodeSet.draw(sampler, 30, seed=5).save(path)
    learner = _protonet()
    a = learner.evaluate(sampler, episodes=EpisodeSet.load(path))
    b = learner.evaluate(sampler, episodes=EpisodeSet.load(path))
    c = learner.evaluate(episodes=EpisodeSet.load(path, dataset=data))
    assert a == b == c and a["episodes"] == 30
    # the same numbers as the episodes NWayKShot(seed=5) gives, handed over as a Task batch
    ref = NWayKShot(data, n_way=3, k_shot=2, q_queries=2, seed=5)
    tasks = [ref.sample() for _ in range(30)]
    batch = Task(*(np.stack([t[i] for t in tasks]) for i in range(4)), info={"batched": True})
    assert learner.evaluate(batch) == a
    # the sampler's own stream is neither used nor moved
    fresh = NWayKShot(data, n_way=3, k_shot=2, q_queries=2, seed=123)
    assert sampler.rng.bit_generator.state == fresh.rng.bit_generator.state
    with pytest.raises(EpisodeSetError):
        learner.evaluate(
            NWayKShot(_data(seed=2), n_way=3, q_queries=2), episodes=EpisodeSet.load(path)
        )
    with pytest.raises(ValueError, match="not bound"):
        learner.evaluate(episodes=EpisodeSet.load(path))


def test_maml_evaluates_a_frozen_set_with_a_step_curve(tmp_path):
    data = _data(side=4)
    sampler = NWayKShot(data, n_way=2, k_shot=1, q_queries=2, augment_rotations=False)
    frozen = EpisodeSet.draw(sampler, 6, seed=1)
    ml.random.set_seed(0)
    model = ml.keras.models.Sequential([layers.Flatten(input_shape=(4, 4, 1)), layers.Dense(2)])
    learner = MAML(model, inner_lr=0.1)
    out = learner.evaluate(sampler, episodes=frozen, steps=[0, 1])
    assert out[0]["episodes"] == out[1]["episodes"] == 6
    assert learner.evaluate(frozen, episodes=4)["episodes"] == 4


# the shipped standard sets: their hashes as made by make_omniglot_sets() from the shared
# Omniglot arrays (seed 0, 600 episodes, 15 queries, rotations as classes)
STANDARD = {
    "omniglot-vinyals_test-5way-1shot": "e73404cc1fce4465497e3c1d72b2a0a6a1a8b25e001c0879d059522bc41e6956",
    "omniglot-vinyals_test-5way-5shot": "0808e71d9693397d23c221962cdb160d861853ac9cabd317f02ebcc666827252",
    "omniglot-vinyals_test-20way-1shot": "e5b200d409d9b5ec2969faa3d7bfaa00244d54c4fb1d7ba1a3b98a9413b9cfd2",
    "omniglot-vinyals_test-20way-5shot": "542fc24309a53301b403b6903c518512250724cc9a5c66e0bff7d5b573cad979",
}


@pytest.mark.parametrize("name", sorted(STANDARD))
def test_the_shipped_standard_sets_load_with_their_hashes(name):
    from metalearn.tasks.episodes import OMNIGLOT_STANDARD, standard

    s = standard(name)
    assert s.hash == STANDARD[name] and len(s) == 600
    cfg = OMNIGLOT_STANDARD[name]
    assert (s.meta["n_way"], s.meta["k_shot"], s.meta["q_queries"]) == (
        cfg["n_way"],
        cfg["k_shot"],
        cfg["q_queries"],
    )
    assert s.meta["dataset"]["classes"] == 423 and s.meta["augment_rotations"]
    with pytest.raises(ValueError, match="shipped"):
        standard("omniglot-vinyals_test-7way-1shot")


@needs_omniglot
def test_the_standard_sets_are_the_seeded_sampler_s_episodes_of_vinyals_test():
    from metalearn.datasets import omniglot
    from metalearn.tasks.episodes import OMNIGLOT_STANDARD, standard

    data = omniglot(split="vinyals_test")
    for name, cfg in OMNIGLOT_STANDARD.items():
        s = standard(name, dataset=data)
        ref = NWayKShot(data, seed=0, **cfg)
        for i in (0, 1, 2):
            _same_task(s.task(i), ref.sample())
        rows = s.rows()
        per_class = rows.reshape(-1, rows.shape[-1])  # k + q distinct drawings of a class
        assert all(len(set(r)) == len(r) for r in per_class)
