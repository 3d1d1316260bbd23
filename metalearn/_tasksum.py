"""The one order in which a meta-batch's per-task values are summed when the sum must not
depend on how the tasks were split (the determinism contract, ARCHITECTURE.md): a fixed
pairwise tree over the task indices 0 .. n - 1, used by ``metalearn.distributed``'s
DataParallel (whatever the number of processes) and by Reptile's task loop, which
therefore give the same bits.

The tree: the sum over the tasks [lo, hi) is task lo's value when hi - lo == 1, else
``sum[lo, m) + sum[m, hi)`` with m = lo + the largest power of two below hi - lo. Its left
parts are perfect binary trees aligned on their size, so the values can be added as they
come with a binary-counter stack (``TreeSum``: at most log2 n + 1 partial sums held, not
every task's value); the additions are in place, on float32 NumPy arrays.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np


def split(lo: int, hi: int) -> int:
    """Where the tree cuts the node [lo, hi) (hi - lo >= 2): lo + the largest power of two
    below hi - lo."""
    return lo + (1 << ((hi - lo - 1).bit_length() - 1))


class TreeSum:
    """Adds the values of the consecutive tasks of one tree node [lo, hi), in the tree's
    order, as they come (``add`` each, then ``result``). Relative to lo the node's
    subtrees are the binary digits of its size, largest first, each a perfect tree: a
    binary counter builds them (two partial sums of one size are siblings), and they are
    added from the right (``s_0 + (s_1 + (... + s_k))``), as the tree nests them.

    ``add`` takes the array (owning it: it becomes a partial sum, summed into in place);
    ``spare()`` hands back an array freed by a merge, for the caller to fill next (None
    when there is none), so a long block needs no new buffers (`free`: a list of such
    arrays to share between several sums)."""

    def __init__(self, free=None):
        self._stack: List[Tuple[int, np.ndarray]] = []  # (tasks summed, partial sum)
        self._free: List[np.ndarray] = [] if free is None else free  # may be shared

    def spare(self):
        return self._free.pop() if self._free else None

    def add(self, value: np.ndarray) -> None:
        self._push(value, 1)

    def add_parts(self, parts, width: int) -> None:
        """Adds the value whose flattened pieces are `parts` (arrays of float32, say one
        per weight; `width` elements in all), which are read, not kept: a task with a left
        sibling task is added into it straight from them, otherwise copied into a buffer
        of its own (half the tasks: a copy of the value saved on the others)."""
        stack = self._stack
        if stack and stack[-1][0] == 1:
            left = stack.pop()[1]
            off = 0
            for x in parts:
                x = np.asarray(x).reshape(-1)
                seg = left[off : off + x.size]
                np.add(seg, x, out=seg)
                off += x.size
            self._push(left, 2)
            return
        row = self.spare()
        if row is None:
            row = np.empty(width, np.float32)
        off = 0
        for x in parts:
            x = np.asarray(x).reshape(-1)
            row[off : off + x.size] = x
            off += x.size
        self._push(row, 1)

    def _push(self, value, count):
        stack = self._stack
        while stack and stack[-1][0] == count:  # a left sibling of the same size
            left = stack.pop()[1]
            np.add(left, value, out=left)
            self._free.append(value)
            value, count = left, 2 * count
        stack.append((count, value))

    def result(self) -> np.ndarray:
        """The node's sum (the arrays given to ``add`` are consumed)."""
        if not self._stack:
            raise ValueError("TreeSum.result: no value was added")
        acc = self._stack.pop()[1]
        while self._stack:
            left = self._stack.pop()[1]
            np.add(left, acc, out=left)
            acc = left
        return acc


def tree_sum(values) -> np.ndarray:
    """The sum of `values` (arrays of one shape and dtype, task 0 first) in the tree's
    order; `values` are not changed."""
    acc = TreeSum()
    for v in values:
        acc.add(np.array(v, copy=True))
    return acc.result()


def cover(n: int, lo: int, hi: int) -> List[Tuple[int, int]]:
    """The largest nodes of the tree over n tasks that lie in [lo, hi), in task order (at
    most about 2 log2 n): the partial sums a holder of tasks [lo, hi) can form alone."""
    out: List[Tuple[int, int]] = []

    def walk(a, b):
        if b <= lo or a >= hi:
            return
        if lo <= a and b <= hi:
            out.append((a, b))
            return
        m = split(a, b)
        walk(a, m)
        walk(m, b)

    if lo < hi:
        walk(0, n)
    return out


def combine(n: int, nodes: Dict[Tuple[int, int], np.ndarray]) -> np.ndarray:
    """The tree's sum over n tasks from the sums of nodes that tile [0, n) (``cover``'s of
    consecutive blocks): the additions above them, in the tree's order. The arrays of
    `nodes` may be summed into."""

    def walk(a, b):
        got = nodes.get((a, b))
        if got is not None:
            return got
        m = split(a, b)
        left, right = walk(a, m), walk(m, b)
        np.add(left, right, out=left)
        return left

    return walk(0, n)
