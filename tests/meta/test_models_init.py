"""conv4's initializer options (issue 20, docs/GAP.md): Keras names and "torch", PyTorch's
Conv2d/Linear default (kaiming_uniform_(a=sqrt(5)): kernel and bias uniform in
+-1/sqrt(fan_in)). Reference bounds and variances come from the formulas."""

import math

import numpy as np
import pytest

from metalearn.keras import conv_layers, layers
from metalearn.keras.models import Sequential
from metalearn.meta import models

pytestmark = pytest.mark.skipif(not models.has_conv(), reason="no conv ops in this build")


def _weighted(model):
    """(layer, kernel, bias, fan_in) of the conv and Dense layers, in order."""
    out = []
    for layer in model.layers:
        if isinstance(layer, (conv_layers.Conv2D, layers.Dense)):
            k = np.asarray(layer.kernel.numpy())
            b = np.asarray(layer.bias.numpy())
            out.append((layer, k, b, int(np.prod(k.shape[:-1]))))
    return out


def _check_uniform(values, bound):
    """Within [-bound, bound], reaching near it, with the uniform's variance bound^2 / 3."""
    assert np.all(np.abs(values) <= bound * (1 + 1e-6))
    assert np.abs(values).max() > 0.9 * bound
    var = bound**2 / 3.0
    # the sample variance of n uniforms has relative std sqrt(0.8 / n); 6 of them
    assert abs(values.var() / var - 1.0) < 6.0 * math.sqrt(0.8 / values.size)


def test_torch_init_is_pytorchs_default_per_layer():
    import metalearn as ml

    ml.random.set_seed(0)
    model = models.conv4(5, kernel_initializer="torch", bias_initializer="torch")
    found = _weighted(model)
    # 4 convs (fan_in 9, 576, 576, 576) and the head (fan_in 64)
    assert [f for *_, f in found] == [9, 576, 576, 576, 64]
    for layer, k, b, fan_in in found:
        bound = 1.0 / math.sqrt(fan_in)  # PyTorch: kaiming_uniform_(a=sqrt(5)) and its bias
        _check_uniform(k, bound)
        assert np.all(np.abs(b) <= bound * (1 + 1e-6))
        assert np.abs(b).max() > 0.5 * bound  # drawn, not zeros


def test_default_is_keras_glorot_uniform_and_zero_biases():
    model = models.conv4(5)
    for layer, k, b, fan_in in _weighted(model):
        fan_out = fan_in // k.shape[-2] * k.shape[-1]
        _check_uniform(k, math.sqrt(6.0 / (fan_in + fan_out)))
        assert not b.any()


def test_a_keras_name_applies_to_every_conv_and_the_head():
    model = models.conv4(5, kernel_initializer="he_uniform", bias_initializer="ones")
    found = _weighted(model)
    assert len(found) == 5
    for layer, k, b, fan_in in found:
        _check_uniform(k, math.sqrt(6.0 / fan_in))
        assert np.all(b == 1.0)


def test_embedding_without_head_and_other_input_shapes():
    model = models.conv4(None, filters=8, input_shape=(32, 32, 3), kernel_initializer="torch")
    found = _weighted(model)
    assert [f for *_, f in found] == [27, 72, 72, 72]
    for layer, k, b, fan_in in found:
        assert np.all(np.abs(k) <= 1.0 / math.sqrt(fan_in) * (1 + 1e-6))
        assert not b.any()  # bias_initializer stays "zeros"


def test_get_config_round_trip_keeps_the_initializers():
    model = models.conv4(5, kernel_initializer="torch", bias_initializer="torch")
    config = model.get_config()
    again = Sequential.from_config(config)
    assert again.get_config() == config
    first, head = _weighted(again)[0], _weighted(again)[-1]
    assert first[0].get_config()["kernel_initializer"]["class_name"] == "VarianceScaling"
    assert first[0].get_config()["kernel_initializer"]["config"]["scale"] == pytest.approx(1 / 3)
    assert head[0].get_config()["bias_initializer"]["config"]["maxval"] == pytest.approx(1 / 8)
    _check_uniform(first[1], 1.0 / 3.0)  # the rebuilt model draws with the same bounds


@pytest.mark.parametrize("what", ["kernel_initializer", "bias_initializer"])
def test_unknown_initializer_name_is_refused_naming_it(what):
    with pytest.raises(ValueError, match=f"{what}='kaiming_torchish'"):
        models.conv4(5, **{what: "kaiming_torchish"})
    with pytest.raises(TypeError, match=what):
        models.conv4(5, **{what: 3})
