"""Initializers against Keras 3's tests and documented formulas.

Sources: ``keras/src/initializers/random_initializers_test.py``,
``constant_initializers_test.py``, and the formulas in the docstrings of
``keras/src/initializers/random_initializers.py`` (limits and standard deviations in
terms of the fans). Random values are seed-dependent and metalearn's generator is its own,
so random initializers are held to shapes, bounds and statistics, as Keras' own tests do.
"""

import numpy as np
import pytest

from metalearn.keras import initializers, layers

from ._helpers import all_close, assert_config_round_trip

TRUNC = 0.87962566103423978  # stddev of N(0, 1) truncated to [-2, 2] (Keras' constant)


def draw(init, shape):
    return np.asarray(init(shape=shape), dtype=np.float64)


class TestRandomInitializers:
    def test_random_normal(self):
        # random_initializers_test.py::RandomInitializersTest::test_random_normal
        init = initializers.RandomNormal(mean=0.0, stddev=1.0, seed=1234)
        values = draw(init, (25, 20))
        assert (init.mean, init.stddev, init.seed) == (0.0, 1.0, 1234)
        assert values.shape == (25, 20)
        all_close(np.std(values), 1.0, atol=1e-1)
        assert_config_round_trip(init, initializers.serialize, initializers.get)
        # a fixed seed gives the same values on every call, and after cloning
        seeded = initializers.RandomNormal(mean=0.0, stddev=1.0, seed=1337)
        all_close(draw(seeded, (25, 20)), draw(seeded, (25, 20)))
        clone = initializers.RandomNormal.from_config(seeded.get_config())
        all_close(draw(clone, (25, 20)), draw(seeded, (25, 20)))
        # no seed: a clone draws other values
        unseeded = initializers.RandomNormal(mean=0.0, stddev=1.0, seed=None)
        a = draw(unseeded, (25, 20))
        b = draw(initializers.RandomNormal.from_config(unseeded.get_config()), (25, 20))
        assert not np.allclose(a, b)

    def test_random_uniform(self):
        # random_initializers_test.py::RandomInitializersTest::test_random_uniform
        init = initializers.RandomUniform(minval=-1.0, maxval=1.0, seed=1234)
        values = draw(init, (5, 5))
        assert (init.minval, init.maxval, init.seed) == (-1.0, 1.0, 1234)
        assert values.shape == (5, 5)
        assert values.min() >= -1.0 and values.max() < 1.0
        assert_config_round_trip(init, initializers.serialize, initializers.get)

    def test_variance_scaling(self):
        # random_initializers_test.py::RandomInitializersTest::test_variance_scaling
        for mode, fan in (("fan_in", 25), ("fan_out", 20)):
            init = initializers.VarianceScaling(scale=2.0, seed=1234, mode=mode)
            values = draw(init, (25, 20))
            assert init.scale == 2.0 and init.seed == 1234 and values.shape == (25, 20)
            all_close(np.std(values), np.sqrt(2.0 / fan), atol=1e-1)
            assert_config_round_trip(init, initializers.serialize, initializers.get)

    def test_variance_scaling_receptive_field(self):
        # random_initializers_test.py::RandomInitializersTest::test_variance_scaling_with_axes
        # (its "without axes" half): a (32, 4, 16) kernel has fan_in 4 * 32 = 128
        init = initializers.VarianceScaling(scale=2.0, seed=1234, mode="fan_in")
        all_close(np.std(draw(init, (32, 4, 16))), np.sqrt(2.0 / 128), atol=1e-1)
        assert initializers.compute_fans((512, 8, 64)) == (8 * 512, 64 * 512)

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            (dict(scale=-1.0, mode="fan_in"), "scale"),
            (dict(scale=2.0, mode="invalid_mode"), "mode"),
            (dict(scale=2.0, mode="fan_in", distribution="invalid_dist"), "distribution"),
        ],
    )
    def test_variance_scaling_invalid_arguments(self, kwargs, match):
        # random_initializers_test.py::test_variance_scaling_invalid_scale / _mode /
        # _distribution
        with pytest.raises(ValueError, match=match):
            initializers.VarianceScaling(seed=1234, **kwargs)

    def test_get_method(self):
        # random_initializers_test.py::RandomInitializersTest::test_get_method
        assert isinstance(initializers.get("glorot_normal"), initializers.GlorotNormal)
        assert initializers.get(None) is None
        with pytest.raises(ValueError):
            initializers.get("typo")

    @pytest.mark.parametrize(
        "name,shape,stat",
        [
            # random_initializers.py docstrings: uniform in [-limit, limit]
            ("glorot_uniform", (300, 200), ("uniform", 6.0 / 500)),
            ("he_uniform", (300, 200), ("uniform", 6.0 / 300)),
            ("lecun_uniform", (300, 200), ("uniform", 3.0 / 300)),
            # truncated normal with the documented stddev (before truncation: / 0.8796...)
            ("glorot_normal", (300, 200), ("normal", 2.0 / 500)),
            ("he_normal", (300, 200), ("normal", 2.0 / 300)),
            ("lecun_normal", (300, 200), ("normal", 1.0 / 300)),
            # a conv kernel: both fans times the receptive field 3 * 3
            ("glorot_uniform", (3, 3, 16, 32), ("uniform", 6.0 / (9 * 16 + 9 * 32))),
            ("he_normal", (3, 3, 16, 32), ("normal", 2.0 / (9 * 16))),
        ],
    )
    def test_documented_formulas(self, name, shape, stat):
        # GlorotUniform: limit = sqrt(6 / (fan_in + fan_out)); HeUniform sqrt(6 / fan_in);
        # LecunUniform sqrt(3 / fan_in); GlorotNormal stddev sqrt(2 / (fan_in + fan_out));
        # HeNormal sqrt(2 / fan_in); LecunNormal sqrt(1 / fan_in) (Keras' docstrings).
        values = draw(initializers.get(name), shape)
        assert values.shape == shape
        kind, var = stat
        if kind == "uniform":
            limit = np.sqrt(var)
            assert np.abs(values).max() <= limit * (1 + 1e-6)
            all_close(np.std(values), limit / np.sqrt(3), rtol=0.05)
        else:
            # the documented stddev is that of the truncated draw; values stop at two
            # standard deviations of the untruncated normal
            assert np.abs(values).max() <= 2 * np.sqrt(var) / TRUNC * (1 + 1e-6)
            all_close(np.std(values), np.sqrt(var), rtol=0.05)
        all_close(np.mean(values), 0.0, atol=0.05 * np.sqrt(var))


class TestConstantInitializers:
    def test_zeros_ones_constant(self):
        # constant_initializers_test.py::test_zeros_initializer, test_ones_initializer,
        # test_constant_initializer
        for init, expected in (
            (initializers.Zeros(), 0.0),
            (initializers.Ones(), 1.0),
            (initializers.Constant(value=6.0), 6.0),
        ):
            all_close(draw(init, (3, 3)), np.full((3, 3), expected))
            assert_config_round_trip(init, initializers.serialize, initializers.get)

    def test_identity_initializer(self):
        # constant_initializers_test.py::test_identity_initializer
        init = initializers.Identity(gain=2)
        all_close(draw(init, (3, 3)), np.eye(3) * 2)
        assert_config_round_trip(init, initializers.serialize, initializers.get)

    def test_constant_array_value_is_refused(self):
        # DELIBERATE DIFFERENCE (constant_initializers_test.py::
        # test_constant_initializer_array_value fills from a (3, 3) array): metalearn's
        # Constant takes a scalar (documented); an array is refused with a TypeError
        # rather than broadcast.
        with pytest.raises(TypeError):
            initializers.Constant(value=np.random.random((3, 3)))


class TestLayerDefaults:
    def test_dense_defaults(self):
        # Keras' Dense: kernel_initializer="glorot_uniform", bias_initializer="zeros"
        layer = layers.Dense(32)
        layer.build((None, 48))
        kernel = np.asarray(layer.kernel)
        assert np.abs(kernel).max() <= np.sqrt(6.0 / 80) * (1 + 1e-6)
        assert np.abs(kernel).max() > 0.8 * np.sqrt(6.0 / 80)  # it is that wide, too
        all_close(np.asarray(layer.bias), np.zeros(32))

    def test_batch_normalization_defaults(self):
        # Keras' BatchNormalization: gamma ones, beta zeros, moving mean zeros, moving
        # variance ones
        layer = layers.BatchNormalization()
        layer.build((None, 4))
        for name, expected in (
            ("gamma", 1.0),
            ("beta", 0.0),
            ("moving_mean", 0.0),
            ("moving_variance", 1.0),
        ):
            all_close(np.asarray(getattr(layer, name)), np.full(4, expected))
