"""A Keras-style progress bar for ``fit``/``evaluate``/``predict``.

On a terminal it redraws one line::

    12/63 [====>.........................] - ETA: 1s - loss: 0.4210 - accuracy: 0.8750

When output is not a terminal (a log file, CI) it prints one line when the epoch ends::

    63/63 - 1s - 9ms/step - loss: 0.3021 - accuracy: 0.9100

``verbose=0`` prints nothing.
"""

from __future__ import annotations

from typing import IO, Any, Dict, Optional, Sequence, Tuple, Union
import sys
import time

__all__ = ["Progbar"]


def _format_value(v):
    try:
        v = float(v)
    except TypeError:  # an array-valued metric (F1Score per class): its mean, as Keras' Progbar
        import numpy as np

        v = float(np.mean(v))
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return f"{v:.4e}"
    return f"{v:.4f}"


def _format_time(seconds):
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{int(round(seconds))}s"


def _per_step(seconds, unit_name):
    if seconds >= 1:
        return f"{seconds:.0f}s/{unit_name}"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/{unit_name}"
    return f"{seconds * 1e6:.0f}us/{unit_name}"


class Progbar:
    """Displays progress of a loop over `target` steps.

    Args:
        target: total number of steps, or None when unknown.
        width: width of the bar in characters.
        verbose: 0 silent, 1 bar (one line per epoch when not a terminal), 2 one line
            at the end.
        interval: minimum seconds between redraws on a terminal.
        stream: where to write (``sys.stdout`` by default, looked up at each write).
        unit_name: the name of a step (``"step"``, ``"sample"``).
    """

    def __init__(
        self,
        target: Optional[int],
        width: int = 30,
        verbose: int = 1,
        interval: float = 0.05,
        stream: Optional[IO[str]] = None,
        unit_name: str = "step",
    ) -> None:
        self.target = target
        self.width = width
        self.verbose = verbose
        self.interval = interval
        self._stream = stream
        self.unit_name = unit_name
        out = self.stream
        # isatty is a system call: not made when nothing is drawn (fit(iterations=1) in a loop)
        self._dynamic = verbose == 1 and bool(getattr(out, "isatty", lambda: False)())
        self._start = time.perf_counter()
        self._last_update = 0.0
        self._prev_len = 0
        self._values = {}
        self._seen = 0
        self._finalized = False

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    def _metrics_text(self):
        return "".join(f" - {k}: {_format_value(v)}" for k, v in self._values.items())

    def update(
        self,
        current: int,
        values: Union[Dict[str, Any], Sequence[Tuple[str, Any]], None] = None,
        finalize: Optional[bool] = None,
    ) -> None:
        """Moves to step `current` and shows `values` (pairs or dict of name → number)."""
        if values:
            items = values.items() if isinstance(values, dict) else values
            for k, v in items:
                self._values[k] = v
        self._seen = current
        if finalize is None:
            finalize = self.target is not None and current >= self.target
        if self.verbose == 0 or self._finalized:
            return
        now = time.perf_counter()
        if not finalize and (not self._dynamic or now - self._last_update < self.interval):
            return
        self._last_update = now
        elapsed = now - self._start
        if self._dynamic:
            self._draw_bar(current, elapsed, finalize)
        elif finalize:
            line = self._count(current)
            line += f" - {_format_time(elapsed)}"
            if current:
                line += f" - {_per_step(elapsed / current, self.unit_name)}"
            self.stream.write(line + self._metrics_text() + "\n")
            self.stream.flush()
        if finalize:
            self._finalized = True

    def _count(self, current):
        if self.target is None:
            return f"{current}/Unknown"
        digits = len(str(self.target))
        return f"{current:>{digits}}/{self.target}"

    def _draw_bar(self, current, elapsed, finalize):
        line = self._count(current)
        if self.target:
            frac = min(current / self.target, 1.0)
            filled = int(self.width * frac)
            bar = "=" * filled
            if current < self.target and filled < self.width:
                bar = bar[:-1] + ">" if filled else ">"
            line += " [" + bar.ljust(self.width, ".") + "]"
        if finalize:
            line += f" - {_format_time(elapsed)}"
            if current:
                line += f" {_per_step(elapsed / current, self.unit_name)}"
        elif current and self.target:
            eta = elapsed / current * (self.target - current)
            line += f" - ETA: {_format_time(eta)}"
        line += self._metrics_text()
        pad = max(self._prev_len - len(line), 0)
        self._prev_len = len(line)
        self.stream.write("\r" + line + " " * pad + ("\n" if finalize else ""))
        self.stream.flush()

    def add(
        self, n: int, values: Union[Dict[str, Any], Sequence[Tuple[str, Any]], None] = None
    ) -> None:
        self.update(self._seen + n, values)
