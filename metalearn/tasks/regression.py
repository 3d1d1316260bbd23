"""Sinusoid regression tasks (Finn, Abbeel & Levine 2017, "Model-Agnostic
Meta-Learning for Fast Adaptation of Deep Networks", §5.1)."""

import math
from typing import Any, Iterator, Tuple, Union

import numpy as np

from .. import _core
from .base import Task, as_generator

__all__ = ["Sinusoid"]


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
