"""Regression tasks: sinusoids (Finn, Abbeel & Levine 2017, "Model-Agnostic
Meta-Learning for Fast Adaptation of Deep Networks", §5.1) and your own functions or
time series (``Regression``)."""

import math
from typing import Any, Iterator, Tuple, Union

import numpy as np

from .. import _core
from .base import Task, as_generator

__all__ = ["Sinusoid", "Regression"]


class Sinusoid:
    """Tasks ``y = amplitude * sin(x - phase)``, as in MAML's regression experiment.

    Each task draws ``amplitude ~ U[0.1, 5.0]`` and ``phase ~ U[0, pi]``; its points draw
    ``x ~ U[-5, 5]``. The support set has `k_shot` points, the query set `q_queries`
    (the paper uses K = 5, 10, 20 and evaluates MSE on held-out points).

    Args:
        k_shot: support points per task (K).
        q_queries: query points per task.
        amplitude: ``(low, high)`` of the uniform amplitude.
        phase: ``(low, high)`` of the uniform phase.
        x_range: ``(low, high)`` of the uniform inputs.
        seed: int, None or ``numpy.random.Generator``; same seed, same tasks.

    Shapes:
        ``sample()``: ``support_x, support_y (k_shot, 1)``, ``query_x, query_y
        (q_queries, 1)`` float32. ``sample_batch(B)`` adds a leading axis of B.
        ``task.info`` holds ``amplitude`` and ``phase``.
    """

    def __init__(
        self,
        k_shot: int = 10,
        q_queries: int = 10,
        amplitude: Tuple[float, float] = (0.1, 5.0),
        phase: Tuple[float, float] = (0.0, math.pi),
        x_range: Tuple[float, float] = (-5.0, 5.0),
        seed: Union[int, np.random.Generator, None] = None,
    ) -> None:
        k_shot, q_queries = int(k_shot), int(q_queries)
        if k_shot < 1 or q_queries < 0:
            raise ValueError(
                f"Sinusoid: k_shot must be >= 1 and q_queries >= 0, got "
                f"k_shot={k_shot}, q_queries={q_queries}"
            )
        for name, rng in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if len(rng) != 2 or rng[0] > rng[1]:
                raise ValueError(
                    f"Sinusoid: {name} must be (low, high) with low <= high, got {rng!r}"
                )
        self.k_shot, self.q_queries = k_shot, q_queries
        self.amplitude = tuple(float(a) for a in amplitude)
        self.phase = tuple(float(p) for p in phase)
        self.x_range = tuple(float(x) for x in x_range)
        self.seed = seed
        self.rng = as_generator(seed)

    def __repr__(self):
        return (
            f"Sinusoid(k_shot={self.k_shot}, q_queries={self.q_queries}, "
            f"amplitude={self.amplitude}, phase={self.phase}, x_range={self.x_range})"
        )

    @staticmethod
    def function(x: Any, amplitude: Any, phase: Any) -> np.ndarray:
        """The task's function ``amplitude * sin(x - phase)`` (float32)."""
        return (np.asarray(amplitude) * np.sin(np.asarray(x) - np.asarray(phase))).astype(
            np.float32
        )

    def sample_batch(self, meta_batch_size: int) -> Task:
        """`meta_batch_size` tasks: arrays of shape ``(B, k_shot, 1)`` and ``(B, q_queries, 1)``."""
        b = int(meta_batch_size)
        if b < 1:
            raise ValueError(f"sample_batch: meta_batch_size must be >= 1, got {meta_batch_size}")
        # one C pass (metalearn._core.sinusoid_batch) through the Generator's bit generator,
        # instead of NumPy's pass per array (the sampler runs every meta-iteration): the
        # draws and the float32 formula of Generator.uniform(amplitude, b),
        # uniform(phase, b), uniform(x_range, (b, k_shot + q_queries)) (every NumPy bit
        # generator has the C interface it uses); a range that is not finite raises
        # OverflowError there, before any draw
        bits = self.rng.bit_generator
        with bits.lock:
            sx, sy, qx, qy, amp32, ph32 = _core.sinusoid_batch(
                bits, b, self.k_shot, self.q_queries, *self.amplitude, *self.phase, *self.x_range
            )
        return Task(sx, sy, qx, qy, {"batched": True, "amplitude": amp32, "phase": ph32})

    def sample(self) -> Task:
        """One task: ``support_x, support_y (k_shot, 1)``, ``query_x, query_y (q_queries, 1)``."""
        return self.sample_batch(1).task(0)

    def __iter__(self) -> Iterator[Task]:
        while True:
            yield self.sample()


class Regression:
    """Regression tasks from your own functions or time series (support/query per task).

    Exactly one source:

    * ``functions``: a list of callables ``f(x) -> y``; each task picks one at random.
      Inputs ``x`` are drawn ``U[x_range]`` with `input_dim` features; the support gets
      `k_shot` points, the query `q_queries` other points of the same function.
    * ``family``: a callable ``family(rng) -> f`` making a new function per task from the
      sampler's ``numpy.random.Generator`` (e.g. random coefficients), inputs as above.
    * ``series``: a list of arrays ``(T,)`` or ``(T, d)``; each task is a stretch of one
      series cut into windows: an example's input is `window` consecutive values, its target
      the next `horizon`. The support is `k_shot` consecutive windows and the query the
      `q_queries` windows after them, starting after the support's last target (with
      ``horizon - 1`` windows left out between), so a query's target is never in the
      support: the model predicts the future from the past.

    Args:
        k_shot, q_queries: support and query examples per task.
        x_range, input_dim: the input distribution of `functions` / `family`.
        window, horizon: the series' example length and prediction length.
        seed: int, None or ``numpy.random.Generator``; same seed, same tasks.

    Shapes:
        functions: ``support_x (k_shot, input_dim)``, ``support_y (k_shot, out)`` (``out``
        1 for a scalar function); series: ``x (k_shot, window * d)``, ``y (k_shot, horizon
        * d)``. float32. ``sample_batch(B)`` adds a leading axis of B. ``task.info`` holds
        ``function`` (the index, for `functions`) or ``series`` and ``start``.
    """

    def __init__(
        self,
        functions: Any = None,
        *,
        family: Any = None,
        series: Any = None,
        k_shot: int = 10,
        q_queries: int = 10,
        x_range: Tuple[float, float] = (-5.0, 5.0),
        input_dim: int = 1,
        window: Any = None,
        horizon: int = 1,
        seed: Union[int, np.random.Generator, None] = None,
    ) -> None:
        given = [
            n
            for n, v in (("functions", functions), ("family", family), ("series", series))
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "Regression: give exactly one of functions, family or series, got "
                + (", ".join(given) if given else "none")
            )
        self.k_shot, self.q_queries = int(k_shot), int(q_queries)
        if self.k_shot < 1 or self.q_queries < 0:
            raise ValueError(
                f"Regression: k_shot must be >= 1 and q_queries >= 0, got {k_shot}, {q_queries}"
            )
        self.functions = self.family = self.series = None
        if functions is not None:
            functions = list(functions)
            if not functions or not all(callable(f) for f in functions):
                raise ValueError("Regression: functions must be a non-empty list of callables")
            self.functions = functions
        elif family is not None:
            if not callable(family):
                raise ValueError("Regression: family must be a callable family(rng) -> f")
            self.family = family
        else:
            if window is None or int(window) < 1 or int(horizon) < 1:
                raise ValueError(
                    f"Regression: series need window >= 1 and horizon >= 1, got window={window}, "
                    f"horizon={horizon}"
                )
            self.window, self.horizon = int(window), int(horizon)
            need = self._series_length()
            arrays = []
            for i, s in enumerate(series):
                a = np.asarray(s, dtype=np.float32)
                a = a[:, None] if a.ndim == 1 else a
                if a.ndim != 2:
                    raise ValueError(
                        f"Regression: series {i} must be (T,) or (T, d), got {a.shape}"
                    )
                if not np.all(np.isfinite(a)):
                    raise ValueError(f"Regression: series {i} holds NaN or inf")
                if len(a) < need:
                    raise ValueError(
                        f"Regression: series {i} has {len(a)} steps; a task of {self.k_shot} + "
                        f"{self.q_queries} windows of {self.window} (+{self.horizon}) needs {need}"
                    )
                arrays.append(a)
            if not arrays:
                raise ValueError("Regression: series is empty")
            if len({a.shape[1] for a in arrays}) > 1:
                raise ValueError("Regression: every series must have the same number of channels")
            self.series = arrays
        if len(x_range) != 2 or not x_range[0] <= x_range[1]:
            raise ValueError(f"Regression: x_range must be (low, high), got {x_range!r}")
        self.x_range = (float(x_range[0]), float(x_range[1]))
        self.input_dim = int(input_dim)
        if self.input_dim < 1:
            raise ValueError(f"Regression: input_dim must be >= 1, got {input_dim}")
        self.seed = seed
        self.rng = as_generator(seed)

    def _gap(self) -> int:
        return self.horizon - 1 if self.q_queries else 0

    def _series_length(self) -> int:
        windows = self.k_shot + self._gap() + self.q_queries
        return windows - 1 + self.window + self.horizon

    def _function_task(self) -> Task:
        n = self.k_shot + self.q_queries
        if self.functions is not None:
            which = int(self.rng.integers(len(self.functions)))
            f, info = self.functions[which], {"function": which}
        else:
            f, info = self.family(self.rng), {}
        x = self.rng.uniform(*self.x_range, size=(n, self.input_dim)).astype(np.float32)
        y = np.asarray(f(x), dtype=np.float32)
        if y.shape[:1] != (n,):
            raise ValueError(
                f"Regression: a function gave shape {y.shape} for x of shape {x.shape}; it must "
                "return one value (or vector) per row of x"
            )
        y = y.reshape(n, -1)
        k = self.k_shot
        return Task(x[:k], y[:k], x[k:], y[k:], info)

    def _series_task(self) -> Task:
        which = int(self.rng.integers(len(self.series)))
        s = self.series[which]
        start = int(self.rng.integers(0, len(s) - self._series_length() + 1))
        w, h, k = self.window, self.horizon, self.k_shot
        starts = np.concatenate([np.arange(k), k + self._gap() + np.arange(self.q_queries)]) + start
        x = np.stack([s[i : i + w].reshape(-1) for i in starts])
        y = np.stack([s[i + w : i + w + h].reshape(-1) for i in starts])
        return Task(x[:k], y[:k], x[k:], y[k:], {"series": which, "start": start})

    def sample(self) -> Task:
        """One task (shapes in the class docstring)."""
        return self._series_task() if self.series is not None else self._function_task()

    def sample_batch(self, meta_batch_size: int) -> Task:
        """`meta_batch_size` tasks with a leading task axis."""
        b = int(meta_batch_size)
        if b < 1:
            raise ValueError(f"sample_batch: meta_batch_size must be >= 1, got {meta_batch_size}")
        return Task.batch([self.sample() for _ in range(b)])

    def __iter__(self) -> Iterator[Task]:
        while True:
            yield self.sample()
