"""Exact resume for ``MetaLearner.fit``: the algorithm's checkpoint (``FitSession``) plus
the system's own state -- the predictor's weights and optimizer, its training buffer, the
embedding centre, the knowledge memory (its own checked file inside the checkpoint
folder), the system's NumPy generator, the stored tasks' count and information."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from metalearn import _core
from metalearn import checkpoint as _ckpt

from ._base import check_flag
from ._session import FitSession


def _encode_info(value):
    """A task's info value as JSON that reads back to the same array (dtype, shape, bits:
    floats go through repr, which round-trips)."""
    a = np.asarray(value)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "values": a.reshape(-1).tolist()}


def _decode_info(entry):
    return np.asarray(entry["values"], dtype=np.dtype(entry["dtype"])).reshape(entry["shape"])


class SystemFitSession(FitSession):
    """``FitSession`` for a ``MetaLearner``: the learner it checkpoints is the system's
    algorithm; ``_extra`` and ``resume`` add the system's state."""

    def __init__(
        self,
        system: Any,
        tasks: Any,
        iterations: int,
        meta_batch_size: int,
        checkpoint_dir: Any = None,
        checkpoint_every: Any = None,
        remember: bool = True,
        write_checkpoints: bool = True,
    ) -> None:
        remember = check_flag(remember, "remember", "MetaLearner.fit")
        super().__init__(
            system.algorithm,
            tasks,
            iterations,
            meta_batch_size,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            write_checkpoints=write_checkpoints,
        )
        self.system = system
        self.remember = remember

    def _fingerprint(self):
        from .system import _PREDICTOR_FEATURES

        fp = super()._fingerprint()
        s = self.system
        fp["system"] = _ckpt._jsonable(
            {
                "config": s.get_config(),
                "remember": self.remember,
                # (the predictor's features of another metalearn version mean other things)
                "predictor_features": _PREDICTOR_FEATURES,
                "predictor_standardize": s._STANDARDIZE,
                "encoder": None if s.encoder is None else type(s.encoder).__name__,
                "predictor": [[int(d) for d in w.shape] for w in s.predictor.weights],
            }
        )
        return fp

    # ------------------------------------------------------------ saving
    def _extra(self, history):
        s = self.system
        opt_state, opt_names, opt_slots = _ckpt._optimizer_state(
            s.predictor_optimizer, list(s.predictor.weights), prefix="system/predictor_optimizer"
        )
        tensors = {f"system/predictor/{i}": w for i, w in enumerate(s.predictor.weights)}
        tensors.update(zip(opt_names, opt_slots))
        tensors["system/center"] = s.center
        if s._buffer_t:  # (arrays of no rows are not stored)
            tensors["system/buffer_x"] = np.stack(s._buffer_x)
            tensors["system/buffer_l"] = np.stack(s._buffer_l)
        state = {
            # the lists as they are (memory_size stays an int)
            "history": {k: list(v) for k, v in history.items()},
            "system": {
                "predictor_optimizer": opt_state,
                # the targets are Python floats (float64): kept in JSON, bit for bit
                "buffer_t": [float(t) for t in s._buffer_t],
                # each row's accuracy after 1..auto_max_steps steps (the predictor's targets)
                "buffer_c": [[float(a) for a in c] for c in s._buffer_c],
                "center_count": int(s._center_count),
                "tasks_stored": int(s.tasks_stored),
                "task_info": [
                    [int(k), {n: _encode_info(v) for n, v in info.items()}]
                    for k, info in s.task_info.items()
                ],
                "rng": s._rng.bit_generator.state,
            },
        }
        files = {"memory": ("mlmem", s.memory.save)}
        return state, tensors, files

    def finish(self, step, history):
        if self.system._chain is None:
            return  # nothing ran (iterations=0 on a system never built): nothing to save
        super().finish(step, history)

    # ------------------------------------------------------------ resuming
    def resume(self, history: Dict[str, list]) -> int:
        """Restores the checkpoint, if there is one, into the algorithm and the system;
        returns the iteration to start at. Everything is checked before anything is set:
        on an error the weights, optimizers, buffers, memory and generators are as they
        were (a system never fitted is left built, as the algorithms' ``fit`` leaves it)."""
        if self.dir is None or not _ckpt.exists(self.dir):
            return 0
        ck = _ckpt.load(self.dir)  # checked whole: corrupt files raise here
        s = self.system
        rng = _core.rng_state()
        streams = {k: _ckpt.sampler_state(t) for k, t in self.samplers.items()}
        try:
            from ._base import _next_batch

            # the model, the memory and the predictor, built from a first batch
            s._setup(_next_batch(self.tasks, 1, s.model))
            s._build_predictor()
            self._check_features(ck)
            ck.check(self._fingerprint())
            apply_system = self._plan_system(ck)
            ck.restore(self.learner, self.samplers)  # checks all, then sets
        except BaseException:
            _core.rng_set_state(rng)
            for k, t in self.samplers.items():
                _ckpt.set_sampler_state(t, streams[k])
            raise
        apply_system()
        self.learner.iterations = int(ck.state.get("learner_iterations", 0))
        for k, v in ck.state.get("history", {}).items():
            history[k] = list(v)
        self.saved_step = ck.step
        return ck.step

    def _check_features(self, ck):
        """A checkpoint whose predictor saw other features (another feature version, or
        another ``query_features``) is refused with a message that says so; the generic
        fingerprint check below would name the whole system entry only."""
        from .system import _PREDICTOR_FEATURES

        old = ck.fingerprint.get("system")
        if not isinstance(old, dict):
            return  # (not a MetaLearner's checkpoint: the fingerprint check refuses it)
        if old.get("predictor_features") != _PREDICTOR_FEATURES:
            raise _ckpt.CheckpointError(
                f"checkpoint in {ck.directory} was saved by a metalearn whose predictor "
                f"takes other features: predictor_features {old.get('predictor_features')!r}, "
                f"this one {_PREDICTOR_FEATURES!r}; use another checkpoint_dir, or remove "
                "this one to start afresh"
            )
        was = (old.get("config") or {}).get("query_features", False)
        if bool(was) != self.system.query_features:
            raise _ckpt.CheckpointError(
                f"checkpoint in {ck.directory} was saved with query_features={bool(was)}, "
                f"this MetaLearner has query_features={self.system.query_features} (its "
                "predictor takes other features); make it with the checkpoint's setting, "
                "or use another checkpoint_dir"
            )

    def _plan_system(self, ck):
        """Checks the system's part of `ck`; returns a function that sets it (cannot fail)."""
        s = self.system
        st = ck.state.get("system")
        if not isinstance(st, dict):
            raise _ckpt.CheckpointError("checkpoint: no MetaLearner state in it")
        pw = list(s.predictor.weights)
        arrays = []
        for i, w in enumerate(pw):
            a = ck.tensors.get(f"system/predictor/{i}")
            if a is None or tuple(a.shape) != tuple(w.shape):
                raise _ckpt.CheckpointError(
                    f"checkpoint: predictor tensor {i} missing or misshapen"
                )
            arrays.append(a)
        n_pred = sum(1 for n in ck.tensors if n.startswith("system/predictor/"))
        if n_pred != len(pw):
            raise _ckpt.CheckpointError(
                f"checkpoint: {n_pred} predictor tensors, the predictor has {len(pw)}"
            )
        ostate = st.get("predictor_optimizer", {})
        plans = ck._optimizer_plans(ostate, pw, prefix="system/predictor_optimizer")
        center = ck.tensors.get("system/center")
        if center is None or center.shape != (s.embedding_size,):
            raise _ckpt.CheckpointError("checkpoint: the embedding centre is missing or misshapen")
        buffer_t = [float(t) for t in st.get("buffer_t", [])]
        n = len(buffer_t)
        if n:
            bx, bl = ck.tensors.get("system/buffer_x"), ck.tensors.get("system/buffer_l")
            # the buffer's features are stored without the step count (the last input)
            want_x, want_l = (n, s.feature_size - 1), (n, s.support_size * s.n_way)
            if bx is None or bl is None or bx.shape != want_x or bl.shape != want_l:
                raise _ckpt.CheckpointError(
                    f"checkpoint: the predictor's buffer is not {want_x} and {want_l}"
                )
        else:
            bx = bl = np.zeros((0, 0), np.float32)
        try:
            buffer_c = [np.asarray(c, np.float64) for c in st.get("buffer_c", [])]
        except (TypeError, ValueError):
            buffer_c = None
        if (
            buffer_c is None
            or len(buffer_c) != n
            or any(c.shape != (s.auto_max_steps,) for c in buffer_c)
        ):
            raise _ckpt.CheckpointError(
                f"checkpoint: the predictor's accuracy curves are not {n} rows of "
                f"{s.auto_max_steps} (auto_max_steps)"
            )
        gen = st.get("rng") or {}
        if gen.get("bit_generator") != s._rng.bit_generator.state["bit_generator"]:
            raise _ckpt.CheckpointError(
                f"checkpoint: the system's generator was {gen.get('bit_generator')!r}"
            )
        try:
            info = {int(k): {n: _decode_info(v) for n, v in d.items()} for k, d in st["task_info"]}
            counts = int(st["center_count"]), int(st["tasks_stored"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _ckpt.CheckpointError(f"checkpoint: bad MetaLearner state ({exc})") from None
        path = ck.files.get("memory")
        if path is None:
            raise _ckpt.CheckpointError("checkpoint: the knowledge memory's file is not listed")
        mem = s.memory
        try:
            with type(mem).open(str(path)) as probe:  # the whole file checked
                sizes = (probe.capacity, probe.key_size, probe.payload_size)
        except (ValueError, OSError) as exc:
            raise _ckpt.CheckpointError(f"checkpoint: {path}: {exc}") from None
        if sizes != (mem.capacity, mem.key_size, mem.payload_size):
            raise _ckpt.CheckpointError(
                f"checkpoint: the memory is {sizes}, this system's "
                f"{(mem.capacity, mem.key_size, mem.payload_size)} (capacity, key, payload)"
            )

        def apply():
            mem.load(str(path))
            for w, a in zip(pw, arrays):
                _core.assign(w, np.ascontiguousarray(a))
            _ckpt._apply_optimizer(s.predictor_optimizer, ostate, plans)
            s.center = np.array(center, np.float32)
            s._center_count, s.tasks_stored = counts
            s._buffer_x = [np.array(r, np.float32) for r in bx[:n]]
            s._buffer_l = [np.array(r, np.float32) for r in bl[:n]]
            s._buffer_t = buffer_t
            s._buffer_c = buffer_c
            if n:  # (the predictor's standardisation: a function of the buffer)
                s._fit_standardization()
            s.task_info = info
            s._rng.bit_generator.state = gen

        return apply
