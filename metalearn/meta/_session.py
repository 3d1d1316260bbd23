"""What ``fit`` does around its meta-steps: checkpoints (exact resume), validation and
keeping the best weights. Kept apart from the loop itself (``_base.BaseMetaLearner.fit``)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from metalearn import _core
from metalearn import checkpoint as _ckpt

from ._base import check_flag


def _positive(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"fit: {name} must be a positive integer, got {value!r}")
    return int(value)


class FitSession:
    """Checkpointing, validation and model selection for one ``fit`` call. Every argument
    is checked in the constructor, before the run changes anything."""

    def __init__(
        self,
        learner: Any,
        tasks: Any,
        iterations: int,
        meta_batch_size: int,
        checkpoint_dir: Any = None,
        checkpoint_every: Optional[int] = None,
        validation: Any = None,
        validate_every: Optional[int] = None,
        validation_episodes: Optional[int] = None,
        keep_best: bool = False,
        write_checkpoints: bool = True,
    ) -> None:
        self.learner = learner
        # under a distributed strategy only rank 0 writes (every rank holds the same
        # state); every rank reads the checkpoint to resume
        self.write_checkpoints = bool(write_checkpoints)
        keep_best = check_flag(keep_best, "keep_best", "fit")
        self.tasks = tasks
        self.iterations = iterations
        self.meta_batch_size = meta_batch_size
        self.checkpoint_every = _positive("checkpoint_every", checkpoint_every)
        self.validate_every = _positive("validate_every", validate_every)
        self.validation_episodes = _positive("validation_episodes", validation_episodes)
        if checkpoint_every is not None and checkpoint_dir is None:
            raise ValueError("fit: checkpoint_every needs a checkpoint_dir")
        if keep_best and validation is None:
            raise ValueError("fit: keep_best=True needs validation tasks to choose the best by")
        if validation is None and (validate_every is not None or validation_episodes is not None):
            raise ValueError("fit: validate_every / validation_episodes need validation=tasks")
        self.validation = validation
        self.keep_best = keep_best
        if validation is not None and self.validate_every is None:
            self.validate_every = max(1, iterations // 10)
        self.dir = None if checkpoint_dir is None else checkpoint_dir
        if self.dir is not None:
            if self.checkpoint_every is None:
                self.checkpoint_every = max(1, iterations // 10)
            self.samplers = {"tasks": tasks}
            if validation is not None:
                self.samplers["validation"] = validation
            for t in self.samplers.values():
                _ckpt.sampler_state(t)  # a stream whose position cannot be saved: TypeError
        self.best_score = None
        self.best_step = None
        self.best = None
        self.saved_step = None

    # ------------------------------------------------------------ checkpoints
    def _fingerprint(self):
        learner = self.learner
        return _ckpt._jsonable(
            {
                "algorithm": type(learner).__name__,
                "hyperparameters": _ckpt.hyperparameters(learner),
                "weights": [shape for _, shape in _ckpt._describe_weights(learner)],
                "meta_batch_size": self.meta_batch_size,
                "tasks": type(self.tasks).__name__,
                "validation": None
                if self.validation is None
                else {
                    "tasks": type(self.validation).__name__,
                    "every": self.validate_every,
                    "episodes": self.validation_episodes,
                    "keep_best": self.keep_best,
                },
            }
        )

    def resume(self, history: Dict[str, list]) -> int:
        """Restores the checkpoint in checkpoint_dir, if there is one, into the learner,
        its optimizer, the generators and the samplers; returns the iteration to start at.
        On any error nothing is changed."""
        if self.dir is None or not _ckpt.exists(self.dir):
            return 0
        ck = _ckpt.load(self.dir)  # checked whole: corrupt files raise here
        learner = self.learner
        rng = _core.rng_state()
        streams = {k: _ckpt.sampler_state(t) for k, t in self.samplers.items()}
        try:
            learner._build_with(self.tasks)  # the model and its loss, from a first batch
            ck.check(self._fingerprint())
            best = ck.restore(learner, self.samplers)
        except BaseException:
            # building drew a batch (and perhaps initial weights): put the streams back
            _core.rng_set_state(rng)
            for k, t in self.samplers.items():
                _ckpt.set_sampler_state(t, streams[k])
            raise
        state = ck.state
        learner.iterations = int(state.get("learner_iterations", learner.iterations))
        for k, v in state.get("history", {}).items():
            history[k] = list(v)
        b = state.get("best")
        if b is not None:
            self.best_score, self.best_step = b["score"], b["step"]
        self.best = best
        self.saved_step = ck.step
        return ck.step

    def _extra(self, history):
        """(state entries, tensors, files) a checkpoint holds beyond the learner's (a
        ``MetaLearner``'s predictor and memory); none here."""
        return {}, None, None

    def _save(self, step, history):
        if not self.write_checkpoints:
            self.saved_step = step
            return
        state = {
            "learner_iterations": int(self.learner.iterations),
            "history": {
                k: [float(x) if x is not None else None for x in v] for k, v in history.items()
            },
            "samplers": {k: _ckpt.sampler_state(t) for k, t in self.samplers.items()},
            "best": None
            if self.best_score is None
            else {"score": self.best_score, "step": self.best_step},
        }
        more, extra, files = self._extra(history)
        state.update(more)
        _ckpt.save(
            self.dir,
            self.learner,
            step=step,
            fingerprint=self._fingerprint(),
            state=_ckpt._jsonable(state),
            best=self.best,
            extra=extra,
            files=files,
        )
        self.saved_step = step

    # ------------------------------------------------------------ validation
    def _validate(self, step, history):
        learner = self.learner
        kwargs = {}
        if self.validation_episodes is not None:
            kwargs["episodes"] = self.validation_episodes
        result = learner.evaluate(self.validation, **kwargs)
        name = learner.metric_name
        score = float(result[name])
        history.setdefault("val_iteration", []).append(step)
        history.setdefault("val_loss", []).append(float(result["loss"]))
        history.setdefault("val_" + name, []).append(score)
        if not self.keep_best:
            return
        better = self.best_score is None or (
            score > self.best_score if name == "accuracy" else score < self.best_score
        )
        if better:
            _, tensors = _ckpt._learner_tensors(learner)
            self.best = [np.array(t, dtype=np.float32, copy=True) for t in tensors]
            self.best_score, self.best_step = score, step

    # ------------------------------------------------------------ the loop's hooks
    def after_step(self, step: int, history: Dict[str, list]) -> None:
        """After meta-iteration `step` (1-based): validate, then checkpoint, when due."""
        if self.validation is not None and step % self.validate_every == 0:
            self._validate(step, history)
        if self.dir is not None and step % self.checkpoint_every == 0:
            self._save(step, history)

    def finish(self, step: int, history: Dict[str, list]) -> None:
        """At the end of the run: the last checkpoint, then the best weights put back."""
        if self.dir is not None and self.saved_step != step:
            self._save(step, history)
        if self.keep_best and self.best is not None:
            _, tensors = _ckpt._learner_tensors(self.learner)
            for t, b in zip(tensors, self.best):
                _core.assign(t, np.ascontiguousarray(b, dtype=np.float32))
            self.learner.best_validation = {
                "iteration": self.best_step,
                "val_" + self.learner.metric_name: self.best_score,
            }
