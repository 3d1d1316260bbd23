"""Whole-model files: ``model.save(path)`` / ``keras.models.load_model(path)``.

Two formats, chosen by the name's extension:

``.keras`` -- Keras 3's own format, interchangeable with Keras 3 both ways: a zip of
``config.json`` (Keras 3's serialization schema: ``module``, ``class_name``, ``config``,
``registered_name``, ``build_config``, ``compile_config``; Sequential and Functional
configs as Keras writes them, functional ``inbound_nodes`` with ``__keras_tensor__`` /
``keras_history``), ``metadata.json`` and ``model.weights.h5`` (Keras' HDF5 layout:
``layers/<class in snake case>[_k]/vars/<i>``, the optimizer's variables under
``optimizer/vars`` as Keras keeps them: iterations, learning rate, then its slots).
HDF5 goes through h5py, an optional extra (``pip install 'metalearn[keras-io]'``).
Keras 3 reads what we write, and we read what Keras 3 writes, for every layer both have.

``.metalearn`` -- metalearn's own whole model, without h5py: a folder in the library's one
checkpoint format (``metalearn/checkpoint.py``: a manifest with its SHA-256 and a CRC-32
checked tensor file, each written atomically) holding the configuration, the compile
configuration, the weights, the optimizer's state and the core generator's state, so that
``fit`` for N epochs, ``save``, ``load_model``, ``fit`` for M more gives the same bits as
N + M epochs in one go.

Any other name is refused with a message saying what we write; a corrupt, truncated or
foreign file raises ``ValueError`` naming it, and nothing is changed (``load_weights``
checks the whole file against the model before it assigns anything; a failed ``save``
leaves no partial file).
"""

from __future__ import annotations

import datetime
import inspect
import json
import os
import re
import warnings
import zipfile
from typing import Any, Dict, Optional, Union

import numpy as np

from metalearn import _core

__all__ = ["save_model", "load_model"]

CONFIG = "config.json"
METADATA = "metadata.json"
KERAS_WEIGHTS = "model.weights.h5"
LEGACY_WEIGHTS = "model.weights.mlw"  # what metalearn's '.keras' held before Keras' layout
KERAS_VERSION = "3.15.1"  # the Keras 3 release whose layout these files follow

WRITES = (
    "metalearn writes whole models to '.keras' (Keras 3's format, through h5py: pip "
    "install 'metalearn[keras-io]') or '.metalearn' (its own checked format, with the "
    "optimizer's state, no h5py needed), and weights alone with save_weights to "
    "'.weights.h5' (Keras 3's layout) or '.mlw' (its own checked format)"
)
HDF5_REFUSAL = (
    "metalearn reads and writes HDF5 only as Keras 3's '.weights.h5' weight files (through "
    "h5py: pip install 'metalearn[keras-io]'), not other '.h5' files (Keras 2's format). "
    "Save weights to a 'name.weights.h5' or a '.mlw' file, or the whole model to a "
    "'.keras' or '.metalearn' file."
)
H5_MISSING = (
    "'.weights.h5' and '.keras' files (Keras 3's formats) are read and written through "
    "h5py, which is not installed: pip install 'metalearn[keras-io]' (or pip install h5py); "
    "or use metalearn's own formats, which need no h5py: model.save('m.metalearn') for the "
    "whole model, save_weights('m.mlw') for the weights"
)
# extensions that promise a format metalearn does not write (TensorFlow, PyTorch, ...)
_FOREIGN = (".tf", ".pb", ".ckpt", ".pt", ".pth", ".safetensors", ".npz", ".npy", ".onnx")
_FOREIGN += (".json", ".pkl", ".pickle", ".joblib", ".zip", ".savedmodel")


def _is_hdf5_name(path: str) -> bool:
    return path.lower().endswith((".h5", ".hdf5"))


def _model_format(filepath: str, what: str) -> str:
    """``"keras"`` or ``"metalearn"`` for a whole-model name; ValueError for any other."""
    low = filepath.lower()
    if low.endswith(".keras"):
        return "keras"
    if low.endswith(".metalearn"):
        return "metalearn"
    if _is_hdf5_name(filepath):
        raise ValueError(f"{what}: {filepath!r}: {HDF5_REFUSAL}")
    raise ValueError(f"{what}: {filepath!r} is not a name metalearn writes: {WRITES}")


def _check_weights_name(filepath: str, what: str) -> str:
    """``"h5"`` for ``.weights.h5``, ``"mlw"`` for metalearn's format (``.mlw``,
    ``.weights`` or no extension, as before); ValueError for a name that promises a
    format metalearn does not write."""
    low = filepath.lower()
    if low.endswith(".weights.h5"):
        return "h5"
    if _is_hdf5_name(filepath):
        raise ValueError(f"{what}: {filepath!r}: {HDF5_REFUSAL}")
    if low.endswith((".keras", ".metalearn")):
        raise ValueError(
            f"{what}: {filepath!r} names a whole model; use model.save / "
            "keras.models.load_model for it, or a '.mlw' or '.weights.h5' name for the "
            "weights alone"
        )
    if low.endswith(_FOREIGN):
        raise ValueError(f"{what}: {filepath!r} is not a name metalearn writes: {WRITES}")
    return "mlw"


def _h5py(what):
    try:
        import h5py  # optional: only Keras 3's formats need it
    except ImportError as e:
        raise ImportError(f"{what}: {H5_MISSING}") from e
    return h5py


# ------------------------------------------------------------- Keras 3's schema
_DTYPE = {
    "module": "keras",
    "class_name": "DTypePolicy",
    "config": {"name": "float32"},
    "registered_name": None,
}
# Keras' canonical class names where metalearn's class goes by an alias
_KERAS_CLASS = {
    "MaxPool2D": "MaxPooling2D",
    "AvgPool2D": "AveragePooling2D",
    "GlobalAvgPool2D": "GlobalAveragePooling2D",
}
_NESTED = (
    ("_initializer", "keras.initializers"),
    ("_regularizer", "keras.regularizers"),
    ("_constraint", "keras.constraints"),
)
# Keras-only arguments that metalearn drops when they hold Keras' default (any other value
# is refused: the model would compute something else)
_KERAS_DEFAULTS = {
    "dilation_rate": ((1, 1), 1, (1,)),
    "groups": (1,),
    "renorm_momentum": (0.99,),
    "ema_momentum": (0.99,),
    "data_format": ("channels_last",),
    "autocast": (True,),
}


# Keras 3.15 writes a build_config for Flatten too, though it has no build() of its own
_BUILD_CONFIG_ALWAYS = {"Flatten"}
# layers whose built Keras twin keeps `axis` as a list (LayerNormalization.build)
_AXIS_LIST_WHEN_BUILT = {"LayerNormalization"}


def _keras_class(obj) -> str:
    name = type(obj).__name__
    return _KERAS_CLASS.get(name, name)


def _shipped(obj) -> bool:
    return type(obj).__module__.startswith("metalearn.")


def _keras_object(module, value):
    """metalearn's ``{"class_name", "config"}`` as Keras 3 serializes an object."""
    if not isinstance(value, dict) or "class_name" not in value:
        return value
    return {
        "module": module,
        "class_name": value["class_name"],
        "config": value.get("config", {}),
        "registered_name": None,
    }


def _shape(shape):
    """A build shape as Keras writes it: a list, the batch dim None."""
    if isinstance(shape, list) or (
        isinstance(shape, tuple) and shape and isinstance(shape[0], (tuple, list))
    ):
        return [_shape(s) for s in shape]
    return [None] + [None if d is None else int(d) for d in tuple(shape)[1:]]


def _keras_layer_config(layer) -> Dict[str, Any]:
    """A layer (or a nested model) as Keras 3's ``serialize_keras_object`` writes it."""
    from .layers import InputLayer, Layer
    from .models import Model

    if isinstance(layer, Model):
        entry = _keras_model_config(layer)
        entry["compile_config"] = _keras_compile_config(layer)  # ({} when not compiled)
        return entry
    cfg = dict(layer.get_config())
    cls = _keras_class(layer)
    module, registered = (
        ("keras.layers", None) if _shipped(layer) else (type(layer).__module__, cls)
    )
    if isinstance(layer, InputLayer):
        cfg["batch_shape"] = [None if d is None else int(d) for d in layer._batch_input_shape]
        return {"module": module, "class_name": cls, "config": cfg, "registered_name": registered}
    cfg.pop("batch_input_shape", None)  # Keras writes the input as an InputLayer instead
    out = {"name": cfg.pop("name"), "trainable": cfg.pop("trainable", True), "dtype": _DTYPE}
    cfg.pop("dtype", None)
    for key, value in cfg.items():
        for suffix, mod in _NESTED:
            if key.endswith(suffix):
                value = _keras_object(mod, value)
        out[key] = value
    if "data_format" in out and out["data_format"] is None:
        out["data_format"] = "channels_last"  # Keras writes the resolved default
    if cls in _AXIS_LIST_WHEN_BUILT and layer.built and isinstance(out.get("axis"), int):
        out["axis"] = [out["axis"]]
    entry = {"module": module, "class_name": cls, "config": out, "registered_name": registered}
    shape = getattr(layer, "_build_input_shape", None)
    # Keras records the build shape of the layers that have a build() of their own
    own_build = type(layer).build is not Layer.build or cls in _BUILD_CONFIG_ALWAYS
    if layer.built and shape is not None and own_build:
        entry["build_config"] = {"input_shape": _shape(shape)}
    return entry


def _keras_model_config(model) -> Dict[str, Any]:
    """``config.json`` without ``compile_config``: a Sequential or Functional model as
    Keras 3 serializes it."""
    from .models import Functional, Model, Sequential

    if isinstance(model, Sequential):
        layers = [_keras_layer_config(l) for l in model.layers]
        shape = model._batch_input_shape
        if shape is not None:
            first = model._input_layer
            layers.insert(
                0,
                {
                    "module": "keras.layers",
                    "class_name": "InputLayer",
                    "config": {
                        "batch_shape": [None if d is None else int(d) for d in shape],
                        "dtype": "float32",
                        "sparse": False,
                        "ragged": False,
                        "name": first.name if first is not None else "input_layer",
                        "optional": False,
                    },
                    "registered_name": None,
                },
            )
        config = {"name": model.name, "trainable": model.trainable, "dtype": _DTYPE}
        config["layers"] = layers
        out = {"module": "keras", "class_name": "Sequential", "config": config}
        out["registered_name"] = None
        built = getattr(model, "_build_input_shape", None)
        if shape is None and built is not None:  # built by a call, without an Input
            shape = (None,) + tuple(built[1:])
        if shape is not None:
            config["build_input_shape"] = _shape(shape)
            out["build_config"] = {"input_shape": _shape(shape)}
        return out
    if isinstance(model, Functional):
        config = model.get_config()  # Keras 3's functional layout already
        by_name = {l.name: l for l in model.layers}
        entries = []
        for entry in config["layers"]:
            k = _keras_layer_config(by_name[entry["name"]])
            k["name"] = entry["name"]
            k["inbound_nodes"] = entry["inbound_nodes"]
            if isinstance(by_name[entry["name"]], Model):  # Keras records a model's mask
                k["inbound_nodes"] = [
                    dict(n, kwargs={"mask": None, **n["kwargs"]}) for n in k["inbound_nodes"]
                ]
            entries.append(k)
        config = dict(config, layers=entries)
        return {
            "module": "keras.src.models.functional",
            "class_name": "Functional",
            "config": config,
            "registered_name": "Functional",
            "build_config": {"input_shape": None},
        }
    raise ValueError(
        f"save: {model.name} is a subclassed model ({type(model).__name__}); the '.keras' "
        "format holds Sequential and functional models (save the weights with save_weights)"
    )


def _keras_compile_config(model) -> Dict[str, Any]:
    cc = _compile_config(model)
    if cc is None:
        return {}

    def nested(value, module):
        if isinstance(value, dict) and "class_name" in value:
            return _keras_object(module, value)
        if isinstance(value, dict):
            return {k: nested(v, module) for k, v in value.items()}
        if isinstance(value, list):
            return [nested(v, module) for v in value]
        return value

    return {
        "optimizer": _keras_object("keras.optimizers", cc["optimizer"]),
        "loss": nested(cc["loss"], "keras.losses"),
        "loss_weights": cc.get("loss_weights"),
        "metrics": nested(cc["metrics"], "keras.metrics"),
        "weighted_metrics": nested(cc["weighted_metrics"], "keras.metrics"),
        "run_eagerly": bool(cc["run_eagerly"]),
        "steps_per_execution": 1,
        "jit_compile": False,
    }


# ------------------------------------------------- Keras 3's schema, read back
def _init_params(cls):
    """The keyword arguments `cls` accepts (following ``**kwargs`` up the classes)."""
    names, has_var = set(), False
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        names.update(p for p, v in params.items() if p != "self" and v.kind != v.VAR_KEYWORD)
        # metalearn's Layer takes **kwargs only to refuse them with its own message
        base = klass.__module__.startswith("metalearn.") and klass.__name__ == "Layer"
        has_var = not base and any(p.kind == p.VAR_KEYWORD for p in params.values())
        if not has_var:
            break
    return names, has_var


def _is_float32(dtype) -> bool:
    if dtype is None or dtype == "float32":
        return True
    return isinstance(dtype, dict) and dtype.get("config", {}).get("name") == "float32"


def _plain_object(value, lookup=None):
    """A Keras-serialized object (``module``, ``registered_name``) as metalearn's
    ``{"class_name", "config"}``; arguments our class lacks are dropped when unset."""
    if not isinstance(value, dict) or "class_name" not in value:
        return value
    config = dict(value.get("config") or {})
    cls = lookup(value["class_name"]) if lookup else None
    if cls is not None:
        names, has_var = _init_params(cls)
        if not has_var:
            for key in [k for k in config if k not in names]:
                if config[key] is None or config[key] is False:
                    del config[key]
    return {"class_name": value["class_name"], "config": config}


def _fit_arguments(cls, config, where):
    """`config` (Keras') cut to what `cls` accepts: Keras-only arguments at their default
    are dropped, any other is refused (the layer would compute something else)."""
    names, has_var = _init_params(cls)
    out = {}
    for key, value in config.items():
        if key == "dtype":
            if not _is_float32(value):
                raise ValueError(f"{where}: dtype {value!r}; metalearn computes in float32 only")
            continue
        if key in names:
            out[key] = value
            continue
        default = _KERAS_DEFAULTS.get(key, ())
        if (
            value is None
            or value is False
            or value == {}
            or value in default
            or (isinstance(value, list) and tuple(value) in default)
        ):
            continue
        if not has_var:
            raise ValueError(
                f"{where}: metalearn's {cls.__name__} has no argument {key}={value!r} "
                "(Keras 3 has; the model would compute something else)"
            )
        out[key] = value
    return out


def _layer_from_keras(entry, custom_objects, where):
    """A ``config.json`` entry of a layer, as metalearn's ``{"class_name", "config"}``."""
    from . import initializers, layers, regularizers

    cn = entry.get("class_name")
    if cn in ("Sequential", "Functional", "Model"):
        return _model_from_keras(entry, custom_objects, where)
    registry = layers._shipped_layers()
    registry.update(custom_objects or {})
    cls = registry.get(cn)
    if cls is None:
        raise ValueError(
            f"{where}: layer class {cn!r} is not one metalearn has; pass your own class in "
            "custom_objects"
        )
    config = dict(entry.get("config") or {})
    lookups = {
        "_initializer": lambda n: getattr(initializers, n, None),
        "_regularizer": lambda n: getattr(regularizers, n, None),
        "_constraint": None,
    }
    for key in list(config):
        for suffix, lookup in lookups.items():
            if key.endswith(suffix):
                config[key] = _plain_object(config[key], lookup)
    if isinstance(config.get("activity_regularizer"), dict):
        config["activity_regularizer"] = _plain_object(
            config["activity_regularizer"], lambda n: getattr(regularizers, n, None)
        )
    if cn != "InputLayer":
        config = _fit_arguments(cls, config, f"{where}: layer {config.get('name', cn)!r}")
    return {"class_name": cn, "config": config}


def _model_from_keras(entry, custom_objects, where):
    """A Sequential or Functional ``config.json`` (Keras 3's) as metalearn's config."""
    cn = entry.get("class_name")
    config = entry.get("config") or {}
    if cn == "Sequential":
        out = {
            "name": config.get("name"),
            "trainable": config.get("trainable", True),
            "layers": [
                _layer_from_keras(l, custom_objects, where) for l in config.get("layers", [])
            ],
        }
        shape = config.get("build_input_shape") or (entry.get("build_config") or {}).get(
            "input_shape"
        )
        return {"class_name": "Sequential", "config": out, "build_input_shape": shape}
    layers = []
    for layer in config.get("layers", []):
        plain = _layer_from_keras(layer, custom_objects, where)
        plain["name"] = layer.get("name", plain["config"].get("name"))
        # Keras writes the arguments a call left unset (a nested model's mask=None)
        plain["inbound_nodes"] = [
            dict(
                node, kwargs={k: v for k, v in (node.get("kwargs") or {}).items() if v is not None}
            )
            if isinstance(node, dict)
            else node
            for node in layer.get("inbound_nodes", [])
        ]
        layers.append(plain)
    out = {
        "name": config.get("name"),
        "trainable": config.get("trainable", True),
        "layers": layers,
        "input_layers": config.get("input_layers"),
        "output_layers": config.get("output_layers"),
    }
    return {"class_name": "Functional", "config": out}


def _model_from_keras_config(config, custom_objects=None, where="load_model"):
    """A model from Keras 3's ``config.json`` dict (without weights)."""
    from .models import Functional, Sequential

    plain = _model_from_keras(config, custom_objects, where)
    try:
        if plain["class_name"] == "Sequential":
            model = Sequential.from_config(plain["config"], custom_objects)
            shape = plain.get("build_input_shape")
            if not model.built and shape is not None:
                model.build(tuple(shape))
        else:
            model = Functional.from_config(plain["config"], custom_objects)
    except (TypeError, KeyError, IndexError) as e:
        raise ValueError(f"{where}: the model's configuration cannot be rebuilt: {e}") from e
    return model


def _compile_from_keras(model, cc, custom_objects, where):
    from . import losses, metrics, optimizers

    opt = cc.get("optimizer")
    if isinstance(opt, dict):
        cls = optimizers._BY_NAME.get(str(opt.get("class_name", "")).lower())
        if cls is None:
            raise ValueError(
                f"{where}: optimizer {opt.get('class_name')!r} is not one metalearn has"
            )
        ocfg = _fit_arguments(cls, dict(opt.get("config") or {}), f"{where}: optimizer")
        opt = cls.from_config(ocfg)

    def each(value, fn):
        if isinstance(value, dict) and "class_name" not in value:
            return {k: each(v, fn) for k, v in value.items()}
        if isinstance(value, list):
            return [each(v, fn) for v in value]
        return None if value is None else fn(value)

    def one_loss(l):
        return l if isinstance(l, str) else losses.get(_plain_object(l))

    def one_metric(m):
        return m if isinstance(m, str) else metrics.deserialize(_plain_object(m), custom_objects)

    model.compile(
        optimizer=opt,
        loss=each(cc.get("loss"), one_loss),
        loss_weights=cc.get("loss_weights"),
        metrics=each(cc.get("metrics"), one_metric),
        weighted_metrics=each(cc.get("weighted_metrics"), one_metric),
        run_eagerly=cc.get("run_eagerly") or None,
    )


# ------------------------------------------------------------ metalearn's config
def _compile_config(model) -> Optional[Dict[str, Any]]:
    from . import losses, metrics, optimizers

    if not getattr(model, "_is_compiled", False):
        return None

    def metric_spec(m):
        if isinstance(m, str):
            return m
        if isinstance(m, metrics.Metric):
            return metrics.serialize(m)
        raise ValueError(
            f"save: the compiled metric {m!r} cannot be saved (a function or object that is "
            "not a Metric); compile with names or Metric instances"
        )

    def loss_spec(loss):
        if loss is None or isinstance(loss, str):
            return loss
        spec = losses.serialize(loss)
        if isinstance(spec, str):
            try:
                losses.get(spec)
            except (ValueError, TypeError):
                raise ValueError(
                    f"save: the compiled loss {loss!r} is not one metalearn can rebuild "
                    "by name; compile with a loss name or a Loss instance"
                ) from None
        return spec

    if getattr(model, "_multi_out", False):  # several outputs: lists or dicts, as given
        args = model._compile_args

        def each(value, fn):
            if isinstance(value, dict):
                return {k: each(v, fn) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [each(v, fn) for v in value]
            return None if value is None else fn(value)

        return {
            "optimizer": optimizers.serialize(model.optimizer),
            "loss": each(model.loss, loss_spec),
            "loss_weights": args["loss_weights"],
            "metrics": each(args["metrics"], metric_spec),
            "weighted_metrics": each(args["weighted_metrics"], metric_spec),
            "run_eagerly": model._run_eagerly,
        }
    return {
        "optimizer": optimizers.serialize(model.optimizer),
        "loss": loss_spec(model.loss),
        "metrics": [metric_spec(m) for m in model._metric_specs] or None,
        "weighted_metrics": [metric_spec(m) for m in model._weighted_metric_specs] or None,
        "run_eagerly": model._run_eagerly,
    }


def _compile_from_config(model, cc, custom_objects):
    from . import losses, metrics, optimizers

    def each(value, fn):
        if isinstance(value, dict) and "class_name" not in value:
            return {k: each(v, fn) for k, v in value.items()}
        if isinstance(value, list):
            return [each(v, fn) for v in value]
        return None if value is None else fn(value)

    def one_metric(s):
        return s if isinstance(s, str) else metrics.deserialize(s, custom_objects)

    model.compile(
        optimizer=optimizers.deserialize(cc["optimizer"]),
        loss=each(cc.get("loss"), lambda l: l if isinstance(l, str) else losses.get(l)),
        loss_weights=cc.get("loss_weights"),
        metrics=each(cc.get("metrics"), one_metric),
        weighted_metrics=each(cc.get("weighted_metrics"), one_metric),
        run_eagerly=cc.get("run_eagerly"),
    )


# ------------------------------------------------------------- Keras 3's HDF5 layout
def _keras_snake(name: str) -> str:
    """Keras 3's naming.to_snake_case (``Conv2D`` -> ``conv2d``), which names the groups."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras_groups(model, prefix=""):
    """``[(group, layer, nested model)]``: where Keras 3 keeps each layer's variables in a
    weights file (saving_lib: a list's entries are named by their class in snake case,
    ``dense``, ``dense_1``, ... in the model's order; a nested model nests)."""
    from .layers import InputLayer

    out, used = [], {}
    for layer in model.layers:
        name = _keras_snake(_keras_class(layer))
        if name in used:
            used[name] += 1
            name = f"{name}_{used[name]}"
        else:
            used[name] = 0
        path = f"{prefix}layers/{name}"
        if hasattr(layer, "layers") and not isinstance(layer, InputLayer):
            out.append((path, None, layer))
            out.extend(_keras_groups(layer, path + "/"))
        else:  # a recurrent layer's weights are its cell's in Keras: <path>/cell/vars
            out.append((path + getattr(layer, "_keras_vars_under", ""), layer, None))
    return out


def _slot_groups(opt):
    """Keras 3's optimizer variables after iterations and learning rate, as lists of our
    slot indices written interleaved per model variable (``add_optimizer_variables`` with
    several names interleaves them; each call adds a block): None for an optimizer whose
    variables we do not map."""
    from . import optimizers

    if type(opt) is optimizers.SGD:
        return [[0]] if opt.momentum != 0 else []
    if type(opt) in (optimizers.Adam, optimizers.AdamW):
        return [[0, 1]] + ([[2]] if opt.amsgrad else [])
    if type(opt) is optimizers.RMSprop:
        groups, k = [[0]], 1
        if opt.momentum > 0:
            groups.append([k])
            k += 1
        if opt.centered:
            groups.append([k])
        return groups
    if type(opt) is optimizers.Adagrad:
        return [[0]]  # accumulator
    if type(opt) is optimizers.Nadam:
        return [[0, 1]]  # momentum, velocity; then _u_product (see _trailing_arrays)
    return None


def _trailing_arrays(opt):
    """Keras 3's optimizer variables after the per-variable blocks: Nadam's scalar
    ``_u_product`` (prod over steps t of beta_1 (1 - 0.5 * 0.96^t)), which our C optimizer
    keeps out of the slots and recomputes from ``iterations`` on restore: written as
    Keras multiplies it, in float32, ``(u * beta_1) * (1 - 0.5 * 0.96^t)``."""
    from . import optimizers

    if type(opt) is not optimizers.Nadam:
        return []
    f32 = np.float32
    u, b1 = f32(1.0), f32(opt.beta_1)
    for t in range(1, int(opt._iterations) + 1):
        u = f32(u * b1) * f32(f32(1.0) - f32(0.5) * f32(f32(0.96) ** f32(t)))
    return [np.asarray(u, np.float32)]


def _optimizer_arrays(model):
    """The optimizer's variables in Keras 3's order, or None when there is no optimizer."""
    opt = getattr(model, "optimizer", None)
    if not getattr(model, "_is_compiled", False) or opt is None:
        return None
    # int32, as Keras 3 keeps its iteration count
    out = [np.asarray(int(opt._iterations), np.int32), np.asarray(opt.learning_rate, np.float32)]
    groups = _slot_groups(opt)
    params = list(model.trainable_weights)
    entry = opt._cores.get(tuple(map(id, params)))
    if groups is None or entry is None or not entry[0].n_params:
        return out  # not stepped yet (or not a layout we map): as Keras' unbuilt optimizer
    slots = entry[0].slots()
    for group in groups:
        for p in range(len(params)):
            out.extend(np.asarray(slots[p][s], np.float32) for s in group)
    return out + _trailing_arrays(opt)


def _write_h5(h5file, model, with_optimizer):
    h5file.create_group("layers")
    for path, layer, sub in _keras_groups(model):
        if sub is not None:
            h5file.require_group(path).create_group("vars").attrs["name"] = sub.name
            continue
        g = h5file.require_group(path).create_group("vars")
        g.attrs["name"] = layer.name
        for i, w in enumerate(layer.weights):
            g.create_dataset(str(i), data=np.asarray(w, np.float32))
    arrays = _optimizer_arrays(model) if with_optimizer else None
    if arrays is not None:
        g = h5file.create_group("optimizer").create_group("vars")
        g.attrs["name"] = model.optimizer.name
        for i, a in enumerate(arrays):
            g.create_dataset(str(i), data=a)
    h5file.create_group("vars").attrs["name"] = model.name


def _weights_plan(model, h5file, filepath, what):
    """[(tensor, array)] for every layer variable, all checked (count, shapes)."""
    plan = []
    for path, layer, _ in _keras_groups(model):
        if layer is None or not layer.weights:
            continue
        g = h5file.get(path + "/vars")
        if g is None:
            raise ValueError(
                f"{what}: {filepath!r} has no variables for layer {layer.name!r} "
                f"(expected at {path}/vars, Keras 3's layout)"
            )
        if len(g) != len(layer.weights):
            raise ValueError(
                f"{what}: {filepath!r}: layer {layer.name!r} has {len(layer.weights)} "
                f"variables, the file {len(g)} at {path}"
            )
        for i, w in enumerate(layer.weights):
            if str(i) not in g:
                raise ValueError(f"{what}: {filepath!r}: {path}/vars has no variable {i}")
            a = np.asarray(g[str(i)], dtype=np.float32)
            if a.shape != tuple(w.shape):
                raise ValueError(
                    f"{what}: {filepath!r}: variable {i} of layer {layer.name!r} has "
                    f"shape {a.shape} in the file, {tuple(w.shape)} in the model"
                )
            plan.append((w, np.ascontiguousarray(a)))
    return plan


def _optimizer_plan(model, h5file, filepath, what):
    """A function that sets the optimizer to the file's variables (all read and checked
    now), or None when the file or the model holds no optimizer state. Variables that do
    not fit the optimizer (another class or configuration) are skipped with a warning, as
    Keras 3 skips them."""
    opt = getattr(model, "optimizer", None)
    g = h5file.get("optimizer/vars")
    if g is None or opt is None or not getattr(model, "_is_compiled", False) or len(g) < 2:
        return None
    iterations, lr = int(np.asarray(g["0"])), float(np.asarray(g["1"]))
    if iterations < 0 or not np.isfinite(lr) or lr < 0:
        raise ValueError(f"{what}: {filepath!r}: bad optimizer iterations or learning rate")
    groups = _slot_groups(opt)
    params = list(model.trainable_weights)
    n_slots = None if groups is None else sum(len(gr) for gr in groups)
    # Nadam's u_product follows the slots; restore recomputes it from iterations
    n_trailing = len(_trailing_arrays(opt)) if n_slots else 0
    if n_slots is None or len(g) != 2 + n_slots * len(params) + n_trailing:
        if len(g) > 2 or n_slots is None:
            warnings.warn(
                f"{what}: {filepath!r}: the {len(g)} saved optimizer variables do not fit "
                f"{type(opt).__name__}'s for this model; its state starts afresh (as Keras "
                "3 skips them)",
                stacklevel=4,
            )
        # (two variables: an optimizer that never stepped, as Keras 3 saves it)

        def set_rate():
            opt.learning_rate = lr

        return set_rate
    slots = [[None] * n_slots for _ in params]
    k = 2
    for group in groups:  # Keras' blocks, each interleaved per model variable
        for p, w in enumerate(params):
            for s in group:
                a = np.asarray(g[str(k)], dtype=np.float32)
                if a.shape != tuple(w.shape):
                    raise ValueError(
                        f"{what}: {filepath!r}: optimizer variable {k} has shape {a.shape}, "
                        f"the model's variable {w.name!r} {tuple(w.shape)}"
                    )
                slots[p][s] = np.ascontiguousarray(a)
                k += 1

    def restore():
        if n_slots:
            opt._core_for(params).restore(params, iterations, slots)
        opt._iterations = iterations
        opt.learning_rate = lr

    return restore


def save_weights_h5(model, filepath: str) -> None:
    """Writes the weights in Keras 3's ``.weights.h5`` layout (``layers/<name>/vars/<i>``),
    through h5py, made in memory and written atomically by the core's safe writer."""
    import io

    h5py = _h5py("save_weights")
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        _write_h5(f, model, with_optimizer=False)
    _core.write_file(filepath, buf.getvalue())


def _open_h5(h5py, source, filepath, what):
    try:
        return h5py.File(source, "r")
    except OSError as e:
        raise ValueError(f"{what}: {filepath!r} is not an HDF5 file (or a corrupt one): {e}") from e


def load_weights_h5(model, filepath: str) -> None:
    """Reads a ``.weights.h5`` file in Keras 3's layout (written by Keras 3 or by
    ``save_weights``): every layer's variables are found and checked (count, shapes)
    before any is assigned."""
    h5py = _h5py("load_weights")
    if not os.path.exists(filepath):
        raise FileNotFoundError(f"load_weights: no such file: {filepath!r}")
    f = _open_h5(h5py, filepath, filepath, "load_weights")
    try:
        with f:
            plan = _weights_plan(model, f, filepath, "load_weights")
    except (KeyError, OSError, RuntimeError) as e:  # h5py's errors on damaged contents
        raise ValueError(f"load_weights: {filepath!r} is corrupt: {e}") from e
    for w, a in plan:  # everything checked: now assign
        _core.assign(w, a)


# ------------------------------------------------------------------ .keras files
def _atomic_zip(filepath, members):
    """The archive, made in memory and written by the core's safe writer (a temporary
    file beside the target, fsync, rename, fsync of the folder): never a partial file."""
    import io

    buf = io.BytesIO()
    # stored, not deflated, as Keras 3 writes them
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in members:
            z.writestr(name, data)
    _core.write_file(filepath, buf.getvalue())


def _save_keras(model, filepath):
    import io

    h5py = _h5py("save")
    config = _keras_model_config(model)
    config["compile_config"] = _keras_compile_config(model)
    config_text = json.dumps(config)  # refuses what JSON cannot hold, before any file
    metadata = json.dumps(
        {
            "keras_version": KERAS_VERSION,
            "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        }
    )
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        _write_h5(f, model, with_optimizer=True)
    _atomic_zip(
        filepath, [(METADATA, metadata), (CONFIG, config_text), (KERAS_WEIGHTS, buf.getvalue())]
    )


def _read_keras(filepath, what):
    """(config dict, weights bytes) of a ``.keras`` archive, checked."""
    if not zipfile.is_zipfile(filepath):
        raise ValueError(
            f"{what}: {filepath!r} is not a '.keras' archive (not a zip file, or a corrupt one)"
        )
    try:
        with zipfile.ZipFile(filepath) as z:
            names = set(z.namelist())
            if CONFIG not in names:
                raise ValueError(f"{what}: {filepath!r} has no {CONFIG}: not a '.keras' archive")
            member = KERAS_WEIGHTS if KERAS_WEIGHTS in names else None
            if member is None and LEGACY_WEIGHTS in names:
                member = LEGACY_WEIGHTS  # an archive of metalearn before Keras' layout
            if member is None:
                raise ValueError(f"{what}: {filepath!r} holds no {KERAS_WEIGHTS}")
            config = json.loads(z.read(CONFIG).decode("utf-8"))
            weights = z.read(member)
    except zipfile.BadZipFile as e:  # a CRC error in a member, a truncated archive
        raise ValueError(f"{what}: {filepath!r} is corrupt: {e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what}: {filepath!r}: {CONFIG} is not valid JSON: {e}") from e
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise ValueError(f"{what}: {filepath!r}: {CONFIG} has no class_name/config")
    return config, weights


def _is_legacy(filepath):
    """Whether `filepath` is a '.keras' archive of an older metalearn (its weights in
    metalearn's own format, its configuration in metalearn's schema): read without h5py."""
    try:
        with zipfile.ZipFile(filepath) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return LEGACY_WEIGHTS in names and KERAS_WEIGHTS not in names


def _load_legacy_weights(model, data, filepath, what):
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".metalearn-load-", suffix=".mlw")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            model.load_weights(tmp)
        except ValueError as e:
            raise ValueError(f"{what}: {filepath!r}: {str(e).replace(tmp, LEGACY_WEIGHTS)}") from e
    finally:
        os.remove(tmp)


def _load_legacy(filepath, custom_objects, compile):
    from . import layers

    config, weights = _read_keras(filepath, "load_model")
    try:
        model = layers.deserialize(
            {"class_name": config["class_name"], "config": config["config"]}, custom_objects
        )
        if not model.built and not model._weight_paths():
            shape = (config.get("build_config") or {}).get("input_shape")
            if shape is None:
                raise ValueError("the model declares no input shape and has no build_config")
            model.build(tuple(shape))
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"load_model: {filepath!r}: {e}") from e
    _load_legacy_weights(model, weights, filepath, "load_model")
    if compile and config.get("compile_config"):
        _compile_from_config(model, config["compile_config"], custom_objects)
    return model


def _load_keras(filepath, custom_objects, compile):
    import io

    if _is_legacy(filepath):
        return _load_legacy(filepath, custom_objects, compile)
    h5py = _h5py("load_model")
    config, weights = _read_keras(filepath, "load_model")
    where = f"load_model: {filepath!r}"
    model = _model_from_keras_config(config, custom_objects, where)
    cc = config.get("compile_config") or {}
    if compile and cc:
        try:
            _compile_from_keras(model, cc, custom_objects, where)
        except TypeError as e:
            raise ValueError(f"{where}: its compile_config cannot be rebuilt: {e}") from e
    f = _open_h5(h5py, io.BytesIO(weights), filepath, "load_model")
    try:
        with f:
            plan = _weights_plan(model, f, filepath, "load_model")
            restore = _optimizer_plan(model, f, filepath, "load_model") if compile else None
    except (KeyError, OSError, RuntimeError) as e:
        raise ValueError(f"load_model: {filepath!r}: its weights are corrupt: {e}") from e
    for w, a in plan:
        _core.assign(w, a)
    if restore is not None:
        restore()
    return model


def _load_weights_keras(model, filepath):
    """``load_weights`` of a ``.keras`` archive: its layer weights (checked first)."""
    import io

    if _is_legacy(filepath):
        _, weights = _read_keras(filepath, "load_weights")
        return _load_legacy_weights(model, weights, filepath, "load_weights")
    h5py = _h5py("load_weights")
    _, weights = _read_keras(filepath, "load_weights")
    f = _open_h5(h5py, io.BytesIO(weights), filepath, "load_weights")
    try:
        with f:
            plan = _weights_plan(model, f, filepath, "load_weights")
    except (KeyError, OSError, RuntimeError) as e:
        raise ValueError(f"load_weights: {filepath!r}: its weights are corrupt: {e}") from e
    for w, a in plan:
        _core.assign(w, a)


# --------------------------------------------------------------- .metalearn files
MODEL_KIND = "metalearn.keras.model"


class _NoOptimizer:
    """An uncompiled model's stand-in for the checkpoint's optimizer: no state."""

    _cores: Dict[Any, Any] = {}
    _iterations = 0
    _learning_rate = 0.0
    learning_rate = 0.0


class _ModelState:
    """A model as ``metalearn.checkpoint`` sees a learner: its model and optimizer."""

    def __init__(self, model):
        self.model = model
        opt = model.optimizer if getattr(model, "_is_compiled", False) else None
        self.meta_optimizer = opt if opt is not None else _NoOptimizer()


def _fingerprint(model):
    return {
        "kind": MODEL_KIND,
        "class_name": type(model).__name__,
        "weights": [[str(w.name), [int(d) for d in w.shape]] for w in model.weights],
    }


def _save_metalearn(model, filepath):
    from metalearn import checkpoint
    from . import layers

    if os.path.exists(filepath) and not os.path.isdir(filepath):
        raise ValueError(
            f"save: {filepath!r} exists and is a file; a '.metalearn' model is a folder in "
            "metalearn's checkpoint format"
        )
    step = 0
    if os.path.isdir(filepath):
        if checkpoint.exists(filepath):
            try:
                with open(os.path.join(filepath, checkpoint.MANIFEST), "rb") as f:
                    step = int(json.loads(f.read()).get("step", -1)) + 1
            except (ValueError, OSError, TypeError, AttributeError):
                step = 0
        elif any(not checkpoint._TENSORS.match(f) for f in os.listdir(filepath)):
            # (tensor files alone are what a save killed before its manifest leaves)
            raise ValueError(
                f"save: {filepath!r} is a folder that holds no metalearn model; refusing to "
                "write into it"
            )
    state = {
        "config": layers.serialize(model),
        "build_input_shape": _build_shape(model),
        "compile_config": _compile_config(model),
        "dropout_streams": [l._seed_calls for l in _seeded_dropouts(model)],
        "metalearn_version": _version(),
    }
    json.dumps(state)  # refuses what JSON cannot hold, before any file
    checkpoint.save(
        filepath, _ModelState(model), step=step, fingerprint=_fingerprint(model), state=state
    )


def _build_shape(model):
    shape = getattr(model, "_batch_input_shape", None)
    if shape is None or not isinstance(shape, tuple):
        shape = getattr(model, "_build_input_shape", None)
    if shape is None or not isinstance(shape, tuple):
        return None
    return [None] + [None if d is None else int(d) for d in shape[1:]]


def _seeded_dropouts(model):
    from .layers import Dropout

    out, seen, stack = [], set(), [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, Dropout) and layer.seed is not None:
            out.append(layer)
        stack.extend(sub for _, sub in reversed(layer._sublayers))
    return out


def _version():
    from metalearn import __version__

    return __version__


def _load_metalearn(filepath, custom_objects, compile):
    from metalearn import checkpoint
    from . import layers

    if not os.path.isdir(filepath) or not checkpoint.exists(filepath):
        raise ValueError(
            f"load_model: {filepath!r} is not a '.metalearn' model (a folder in metalearn's "
            "checkpoint format, with a checkpoint.json)"
        )
    try:
        ckpt = checkpoint.load(filepath)
    except checkpoint.CheckpointError as e:
        raise ValueError(f"load_model: {filepath!r}: {e}") from e
    if ckpt.fingerprint.get("kind") != MODEL_KIND:
        raise ValueError(
            f"load_model: {filepath!r} is a meta-learner's fit checkpoint, not a model saved "
            "by model.save"
        )
    state = ckpt.state
    try:
        model = layers.deserialize(state["config"], custom_objects)
        if not model.built and not model._weight_paths():
            shape = state.get("build_input_shape")
            if shape is None:
                raise ValueError("the model declares no input shape")
            model.build(tuple(shape))
        if compile and state.get("compile_config"):
            _compile_from_config(model, state["compile_config"], custom_objects)
        expected = _fingerprint(model)
        expected["class_name"] = ckpt.fingerprint.get("class_name")  # (a custom class' name)
        ckpt.check(expected)
        streams = state.get("dropout_streams", [])
        seeded = _seeded_dropouts(model)
        if len(streams) != len(seeded):
            raise ValueError(f"{len(streams)} seeded Dropout streams for {len(seeded)} layers")
        if not getattr(model, "_is_compiled", False):  # compile=False: no optimizer to set
            ckpt.state = dict(state, optimizer={"iterations": 0, "lists": []})
        ckpt.restore(_ModelState(model), {})
    except (KeyError, TypeError) as e:
        raise ValueError(f"load_model: {filepath!r}: cannot rebuild the model: {e!r}") from e
    except ValueError as e:
        raise ValueError(f"load_model: {filepath!r}: {e}") from e
    for layer, calls in zip(seeded, streams):
        layer._seed_calls = int(calls)
    return model


def _load_weights_metalearn(model, filepath):
    """``load_weights`` of a ``.metalearn`` model folder: its weights (checked first)."""
    from metalearn import checkpoint

    if not os.path.isdir(filepath) or not checkpoint.exists(filepath):
        raise ValueError(f"load_weights: {filepath!r} is not a '.metalearn' model")
    try:
        ckpt = checkpoint.load(filepath)
    except checkpoint.CheckpointError as e:
        raise ValueError(f"load_weights: {filepath!r}: {e}") from e
    weights = list(model.weights)
    arrays = []
    for i, w in enumerate(weights):
        a = ckpt.tensors.get(f"model/{i}")
        if a is None or tuple(a.shape) != tuple(w.shape):
            raise ValueError(
                f"load_weights: {filepath!r}: weight {i} ({w.name!r}) is "
                f"{None if a is None else tuple(a.shape)} in the file, {tuple(w.shape)} in "
                "the model"
            )
        arrays.append(np.ascontiguousarray(a))
    if f"model/{len(weights)}" in ckpt.tensors:
        raise ValueError(f"load_weights: {filepath!r} holds more weights than the model")
    for w, a in zip(weights, arrays):
        _core.assign(w, a)


# ------------------------------------------------------------------ entry points
def save_model(model, filepath: Union[str, "os.PathLike[str]"], overwrite: bool = True) -> None:
    """Writes `model` to a ``.keras`` archive or a ``.metalearn`` folder (see the
    module's docstring).

    Raises:
        ValueError: a name that is neither (the message says what we write), a model with
            no weights yet, or a configuration that cannot be saved.
        ImportError: a ``.keras`` name without h5py (the message says what to install).
        FileExistsError: the file exists and ``overwrite`` is False.
    """
    filepath = os.fspath(filepath)
    kind = _model_format(filepath, "save")
    if not overwrite and os.path.exists(filepath):
        raise FileExistsError(f"save: {filepath} exists and overwrite=False")
    if not model._weight_paths():
        raise ValueError(f"save: {model.name} has no weights yet; build it first")
    if kind == "keras":
        _save_keras(model, filepath)
    else:
        _save_metalearn(model, filepath)


def load_model(
    filepath: Union[str, "os.PathLike[str]"],
    custom_objects: Optional[Dict[str, Any]] = None,
    compile: bool = True,
    safe_mode: bool = True,
):
    """A model from a ``.keras`` archive (written by Keras 3 or by ``model.save``) or a
    ``.metalearn`` folder, as Keras 3's ``load_model``: rebuilt from its configuration
    (your own classes in `custom_objects`), its weights loaded, compiled again from
    ``compile_config`` when `compile`, with the optimizer's saved state.

    A ``.metalearn`` model also restores the core generator's state (``metalearn.random``)
    saved with it, so that training resumes with the same bits as an uninterrupted run.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a name we do not read, a corrupt or foreign file, a layer or argument
            metalearn does not have, or weights that do not match the model.
        ImportError: a ``.keras`` file without h5py (the message says what to install).
    """
    filepath = os.fspath(filepath)
    kind = _model_format(filepath, "load_model")
    if not os.path.exists(filepath):
        raise FileNotFoundError(f"load_model: no such file: {filepath!r}")
    if kind == "keras":
        return _load_keras(filepath, custom_objects, compile)
    return _load_metalearn(filepath, custom_objects, compile)
