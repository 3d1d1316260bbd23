"""Wall-clock budgets for ``fit(..., time_budget=seconds)`` (meta algorithms and
``keras.Model``): one check of the argument and one clock, so both stop alike."""

from __future__ import annotations

from typing import Any, Optional
import math
import time

#: the value ``history["stopped"]`` (meta fit) and ``History.stopped`` (Model.fit) take
#: when the budget ended the run
STOPPED_TIME_BUDGET = "time_budget"


def deadline(time_budget: Any, who: str) -> Optional[float]:
    """The monotonic time at which a run of `time_budget` seconds started now ends, or
    None for no budget. TypeError unless a real number, ValueError unless finite and > 0
    (checked before any work is done)."""
    if time_budget is None:
        return None
    if isinstance(time_budget, bool) or not isinstance(time_budget, (int, float)):
        try:
            import numpy as np

            ok = isinstance(time_budget, (np.integer, np.floating))
        except ImportError:  # pragma: no cover - NumPy is a dependency
            ok = False
        if not ok:
            raise TypeError(
                f"{who}: time_budget must be a number of seconds, got "
                f"{type(time_budget).__name__} {time_budget!r}"
            )
    t = float(time_budget)
    if not math.isfinite(t) or t <= 0.0:
        raise ValueError(
            f"{who}: time_budget must be a positive, finite number of seconds, got {t}"
        )
    return time.monotonic() + t


def expired(end: Optional[float]) -> bool:
    """Whether the budget ending at `end` (from ``deadline``) is spent; read at iteration
    or batch boundaries only, so a run stops cleanly, at most one step past its budget."""
    return end is not None and time.monotonic() >= end
