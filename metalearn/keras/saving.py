"""Whole-model files, as Keras 3's ``model.save("m.keras")`` / ``keras.models.load_model``.

A ``.keras`` file is a zip archive in Keras 3's layout: ``config.json`` (``module``,
``class_name``, ``config``, ``build_config``, ``compile_config``), ``metadata.json`` and
the weights. Keras 3 keeps its weights in ``model.weights.h5`` (HDF5, through h5py);
metalearn has no HDF5 writer, so its archive holds ``model.weights.mlw`` instead, in
metalearn's CRC-checked weight format (``save_weights``). Keras 3 therefore cannot read
metalearn's weights, and a ``.keras`` file written by Keras 3 is refused here with a
message saying so. The archive is written to a temporary file and renamed into place, so
a failed save leaves no partial file. Optimizer state is not saved (a loaded model is
compiled afresh from ``compile_config``).
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import zipfile
from typing import Any, Dict, Optional, Union

from metalearn import _core

__all__ = ["save_model", "load_model"]

CONFIG = "config.json"
METADATA = "metadata.json"
WEIGHTS = "model.weights.mlw"
KERAS_WEIGHTS = "model.weights.h5"

HDF5_REFUSAL = (
    "metalearn reads and writes HDF5 only as Keras 3's '.weights.h5' weight files (through "
    "h5py: pip install 'metalearn[keras-io]'), not other '.h5' files. Save weights to a "
    "'name.weights.h5' or a '.mlw' file (metalearn's checked weight format), or the whole "
    "model to a '.keras' file."
)


def _is_hdf5_name(path: str) -> bool:
    return path.lower().endswith((".h5", ".hdf5"))


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
            "loss": each(model.loss, lambda l: l if isinstance(l, str) else losses.serialize(l)),
            "loss_weights": args["loss_weights"],
            "metrics": each(args["metrics"], metric_spec),
            "weighted_metrics": each(args["weighted_metrics"], metric_spec),
            "run_eagerly": model._run_eagerly,
        }
    loss = model.loss
    if loss is not None and not isinstance(loss, str):
        loss = losses.serialize(loss)
        if isinstance(loss, str):
            try:
                losses.get(loss)
            except (ValueError, TypeError):
                raise ValueError(
                    f"save: the compiled loss {model.loss!r} is not one metalearn can rebuild "
                    "by name; compile with a loss name or a Loss instance"
                ) from None
    return {
        "optimizer": optimizers.serialize(model.optimizer),
        "loss": loss,
        "metrics": [metric_spec(m) for m in model._metric_specs] or None,
        "weighted_metrics": [metric_spec(m) for m in model._weighted_metric_specs] or None,
        "run_eagerly": model._run_eagerly,
    }


def _build_config(model) -> Optional[Dict[str, Any]]:
    shape = getattr(model, "_build_input_shape", None)
    if shape is None or not isinstance(shape, tuple):
        return None
    return {"input_shape": [None] + [None if d is None else int(d) for d in shape[1:]]}


def save_model(model, filepath: Union[str, "os.PathLike[str]"], overwrite: bool = True) -> None:
    """Writes `model` to a ``.keras`` archive (see the module's docstring).

    Raises:
        ValueError: a name that does not end in ``.keras`` (``.h5`` names get the HDF5
            message), a model with no weights yet, or a configuration that cannot be saved.
        FileExistsError: the file exists and ``overwrite`` is False.
    """
    from . import layers

    filepath = os.fspath(filepath)
    if _is_hdf5_name(filepath):
        raise ValueError(f"save: {filepath!r}: {HDF5_REFUSAL}")
    if not filepath.endswith(".keras"):
        raise ValueError(
            f"save: invalid filepath extension for saving: {filepath!r}. metalearn writes the "
            "'.keras' format (a zip of config.json, metadata.json and the weights); for "
            "weights alone use save_weights('....mlw')"
        )
    if not overwrite and os.path.exists(filepath):
        raise FileExistsError(f"save: {filepath} exists and overwrite=False")
    paths = model._weight_paths()
    if not paths:
        raise ValueError(f"save: {model.name} has no weights yet; build it first")
    serialized = layers.serialize(model)
    config = {
        "module": "keras",
        "class_name": serialized["class_name"],
        "config": serialized["config"],
        "registered_name": None,
        "build_config": _build_config(model),
        "compile_config": _compile_config(model),
    }
    from metalearn import __version__

    metadata = {
        "keras_version": "3 (layout)",
        "metalearn_version": __version__,
        "weights": WEIGHTS,
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
    }
    config_text = json.dumps(config)  # refuses what JSON cannot hold, before any file
    directory = os.path.dirname(os.path.abspath(filepath))
    fd, tmp = tempfile.mkstemp(prefix=".metalearn-save-", suffix=".tmp", dir=directory)
    os.close(fd)
    weights_tmp = tmp + ".mlw"
    try:
        _core.save_tensors(weights_tmp, [p for p, _ in paths], [v for _, v in paths])
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr(CONFIG, config_text)
            z.writestr(METADATA, json.dumps(metadata))
            z.write(weights_tmp, WEIGHTS)
        os.replace(tmp, filepath)
    finally:
        for p in (tmp, weights_tmp):
            if os.path.exists(p):
                os.remove(p)


def _read_archive(filepath: str, what: str):
    """(config dict, weights bytes) of a metalearn ``.keras`` archive, checked."""
    if not os.path.exists(filepath):
        raise FileNotFoundError(f"{what}: no such file: {filepath!r}")
    if _is_hdf5_name(filepath):
        raise ValueError(f"{what}: {filepath!r}: {HDF5_REFUSAL}")
    if not zipfile.is_zipfile(filepath):
        raise ValueError(
            f"{what}: {filepath!r} is not a '.keras' archive (not a zip file, or a corrupt one)"
        )
    try:
        with zipfile.ZipFile(filepath) as z:
            names = set(z.namelist())
            if CONFIG not in names:
                raise ValueError(f"{what}: {filepath!r} has no {CONFIG}: not a '.keras' archive")
            if WEIGHTS not in names:
                if KERAS_WEIGHTS in names:
                    raise ValueError(
                        f"{what}: {filepath!r} was written by Keras 3 (its weights are HDF5, "
                        f"{KERAS_WEIGHTS}); {HDF5_REFUSAL}"
                    )
                raise ValueError(f"{what}: {filepath!r} holds no weights ({WEIGHTS})")
            config = json.loads(z.read(CONFIG).decode("utf-8"))
            weights = z.read(WEIGHTS)
    except zipfile.BadZipFile as e:  # a CRC error in a member, a truncated archive
        raise ValueError(f"{what}: {filepath!r} is corrupt: {e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what}: {filepath!r}: {CONFIG} is not valid JSON: {e}") from e
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise ValueError(f"{what}: {filepath!r}: {CONFIG} has no class_name/config")
    return config, weights


def _load_weights_bytes(model, data: bytes, filepath: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".metalearn-load-", suffix=".mlw")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            model.load_weights(tmp)
        except ValueError as e:
            raise ValueError(f"{filepath!r}: {str(e).replace(tmp, WEIGHTS)}") from e
    finally:
        os.remove(tmp)


def load_model(
    filepath: Union[str, "os.PathLike[str]"],
    custom_objects: Optional[Dict[str, Any]] = None,
    compile: bool = True,
    safe_mode: bool = True,
):
    """A model from a ``.keras`` archive that ``model.save`` wrote, as Keras 3's
    ``load_model``: rebuilt from its configuration (your own classes in
    `custom_objects`), its weights loaded, compiled again from ``compile_config`` when
    `compile` (optimizer state starts afresh).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a zip archive, a corrupt one, one without config or weights, one
            written by Keras 3 (HDF5 weights), or weights that do not match the model.
    """
    from . import layers, losses, metrics, optimizers

    filepath = os.fspath(filepath)
    config, weights = _read_archive(filepath, "load_model")
    try:
        model = layers.deserialize(
            {"class_name": config["class_name"], "config": config["config"]}, custom_objects
        )
    except ValueError as e:
        raise ValueError(f"load_model: {filepath!r}: {e}") from e
    if not model.built and not model._weight_paths():
        build = config.get("build_config") or {}
        shape = build.get("input_shape")
        if shape is None:
            raise ValueError(
                f"load_model: {filepath!r}: the model declares no input shape and the "
                "archive has no build_config"
            )
        model.build(tuple(shape))
    _load_weights_bytes(model, weights, filepath)
    cc = config.get("compile_config")
    if compile and cc:

        def metric_list(specs):
            if not specs:
                return None
            return [
                s if isinstance(s, str) else metrics.deserialize(s, custom_objects) for s in specs
            ]

        loss = cc.get("loss")
        if getattr(model, "_multi_out", False):

            def each(value, fn):
                if isinstance(value, dict):
                    return {k: each(v, fn) for k, v in value.items()}
                if isinstance(value, list):
                    return [each(v, fn) for v in value]
                return None if value is None else fn(value)

            def one_metric(s):
                return s if isinstance(s, str) else metrics.deserialize(s, custom_objects)

            model.compile(
                optimizer=optimizers.deserialize(cc["optimizer"]),
                loss=each(loss, lambda l: l if isinstance(l, str) else losses.get(l)),
                loss_weights=cc.get("loss_weights"),
                metrics=each(cc.get("metrics"), one_metric),
                weighted_metrics=each(cc.get("weighted_metrics"), one_metric),
                run_eagerly=cc.get("run_eagerly"),
            )
            return model
        model.compile(
            optimizer=optimizers.deserialize(cc["optimizer"]),
            loss=loss if isinstance(loss, str) or loss is None else losses.get(loss),
            metrics=metric_list(cc.get("metrics")),
            weighted_metrics=metric_list(cc.get("weighted_metrics")),
            run_eagerly=cc.get("run_eagerly"),
        )
    return model


# ------------------------------------------------------------- Keras 3's .weights.h5
H5_MISSING = (
    "'.weights.h5' files (Keras 3's HDF5 weight format) are read and written through h5py, "
    "which is not installed: pip install 'metalearn[keras-io]' (or pip install h5py); or "
    "save to a '.mlw' file, metalearn's own checked weight format"
)


def _h5py(what):
    try:
        import h5py  # optional: only the .weights.h5 format needs it
    except ImportError as e:
        raise ImportError(f"{what}: {H5_MISSING}") from e
    return h5py


def _keras_snake(name: str) -> str:
    """Keras 3's naming.to_snake_case (``Conv2D`` -> ``conv2d``), which names the groups."""
    import re

    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras_groups(model, prefix=""):
    """``[(group, layer)]``: where Keras 3 keeps each layer's variables in a
    ``.weights.h5`` file (saving_lib: a list's entries are named by their class in snake
    case, ``dense``, ``dense_1``, ... in the model's order; a nested model nests)."""
    from .layers import InputLayer

    out, used = [], {}
    for layer in model.layers:
        name = _keras_snake(type(layer).__name__)
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


def save_weights_h5(model, filepath: str) -> None:
    """Writes the weights in Keras 3's ``.weights.h5`` layout (``layers/<name>/vars/<i>``),
    through h5py, atomically."""
    h5py = _h5py("save_weights")
    import numpy as np

    directory = os.path.dirname(os.path.abspath(filepath))
    fd, tmp = tempfile.mkstemp(prefix=".metalearn-save-", suffix=".h5", dir=directory)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_group("layers")
            for path, layer, sub in _keras_groups(model):
                if sub is not None:
                    f.require_group(path).create_group("vars").attrs["name"] = sub.name
                    continue
                g = f.require_group(path).create_group("vars")
                g.attrs["name"] = layer.name
                for i, w in enumerate(layer.weights):
                    g.create_dataset(str(i), data=np.asarray(w, np.float32))
            f.create_group("vars").attrs["name"] = model.name
        os.replace(tmp, filepath)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_weights_h5(model, filepath: str) -> None:
    """Reads a ``.weights.h5`` file in Keras 3's layout (written by Keras 3 or by
    ``save_weights``): every layer's variables are found and checked (count, shapes)
    before any is assigned."""
    h5py = _h5py("load_weights")
    import numpy as np

    if not os.path.exists(filepath):
        raise FileNotFoundError(f"load_weights: no such file: {filepath!r}")
    try:
        f = h5py.File(filepath, "r")
    except OSError as e:
        raise ValueError(f"load_weights: {filepath!r} is not an HDF5 file: {e}") from e
    plan = []
    with f:
        for path, layer, _ in _keras_groups(model):
            if layer is None or not layer.weights:
                continue
            g = f.get(path + "/vars")
            if g is None:
                raise ValueError(
                    f"load_weights: {filepath!r} has no variables for layer {layer.name!r} "
                    f"(expected at {path}/vars, Keras 3's layout)"
                )
            if len(g) != len(layer.weights):
                raise ValueError(
                    f"load_weights: {filepath!r}: layer {layer.name!r} has "
                    f"{len(layer.weights)} variables, the file {len(g)} at {path}"
                )
            for i, w in enumerate(layer.weights):
                a = np.asarray(g[str(i)], dtype=np.float32)
                if a.shape != tuple(w.shape):
                    raise ValueError(
                        f"load_weights: {filepath!r}: variable {i} of layer {layer.name!r} has "
                        f"shape {a.shape} in the file, {tuple(w.shape)} in the model"
                    )
                plan.append((w, np.ascontiguousarray(a)))
    for w, a in plan:  # everything checked: now assign
        _core.assign(w, a)
