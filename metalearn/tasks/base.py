"""The task tuple shared by every sampler."""

from collections import namedtuple
from typing import Any, List, Optional, Sequence, Union

import numpy as np

__all__ = ["Task", "as_generator"]


class Task(namedtuple("Task", ["support_x", "support_y", "query_x", "query_y"])):
    """One task (or a batch of tasks): ``(support_x, support_y, query_x, query_y)``.

    A single task has arrays ``support_x (n_support, ...)``, ``support_y (n_support, ...)``
    and likewise for the query; a batch (``sample_batch``) adds a leading task axis
    ``(meta_batch_size, n_support, ...)``. Unpacks like a tuple::

        support_x, support_y, query_x, query_y = sampler.sample()

    A batch made by hand: ``Task.batch([task_a, task_b, ...])`` stacks single tasks of the
    same shapes into one. (``fit`` and ``evaluate`` also take a list of tasks, and tell a
    batch from a task by the model's input rank when a Task is not marked.)

    ``task.info`` holds what generated the task (a sinusoid's amplitude and phase, the
    classes and rotations of an N-way task), for plots and checks.
    """

    def __new__(
        cls, support_x: Any, support_y: Any, query_x: Any, query_y: Any, info: Optional[dict] = None
    ) -> "Task":
        self = super().__new__(cls, support_x, support_y, query_x, query_y)
        self.info = {} if info is None else info
        return self

    def __getnewargs__(self):
        return tuple(self) + (self.info,)

    @property
    def is_batch(self) -> bool:
        """Whether the arrays carry a leading task axis (set by ``sample_batch`` and
        ``Task.batch``)."""
        return bool(self.info.get("batched", False))

    @classmethod
    def batch(cls, tasks: Sequence["Task"]) -> "Task":
        """One batch of tasks from single tasks: each array stacked on a new leading axis.

        Every task must have the same shapes (the same number of support and query
        examples). ``info`` entries that all tasks have are stacked too (so
        ``batch.task(i).info`` gives task i's back); ``batch.is_batch`` is True.

        Args:
            tasks: single Tasks (a list, a tuple or any iterable; not batches).

        Raises:
            TypeError: an element is not a Task. ValueError: no task, a batch among them,
                or shapes that differ (named by field).
        """
        tasks = list(tasks)
        if not tasks:
            raise ValueError("Task.batch: no tasks given")
        for i, t in enumerate(tasks):
            if not isinstance(t, Task):
                raise TypeError(f"Task.batch: element {i} is a {type(t).__name__}, not a Task")
            if t.is_batch:
                raise ValueError(f"Task.batch: element {i} is already a batch of tasks")
        arrays = []
        for f, name in enumerate(cls._fields):
            parts = [np.asarray(t[f]) for t in tasks]
            shapes = {p.shape for p in parts}
            if len(shapes) > 1:
                raise ValueError(
                    f"Task.batch: the tasks' {name} differ in shape ({sorted(shapes)}); "
                    "a batch needs tasks of the same shapes"
                )
            arrays.append(np.stack(parts))
        info: dict = {"batched": True}
        for key in set.intersection(*(set(t.info) for t in tasks)):
            try:
                info[key] = np.stack([np.asarray(t.info[key]) for t in tasks])
            except ValueError:  # entries of different shapes: not carried
                continue
        return cls(*arrays, info=info)

    def task(self, i: int) -> "Task":
        """Task `i` of a batch, as a single Task."""
        if not self.is_batch:
            raise ValueError("Task.task(i): this is a single task, not a batch")
        info = {
            k: (v[i] if isinstance(v, np.ndarray) and v.ndim and k != "batched" else v)
            for k, v in self.info.items()
            if k != "batched"
        }
        return Task(self.support_x[i], self.support_y[i], self.query_x[i], self.query_y[i], info)

    def tasks(self) -> List["Task"]:
        """The single tasks of a batch (or ``[self]`` for a single task)."""
        if not self.is_batch:
            return [self]
        return [self.task(i) for i in range(len(self.support_x))]


def as_generator(seed: Union[int, np.random.Generator, None]) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a seed, a Generator (used as is) or None."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)
