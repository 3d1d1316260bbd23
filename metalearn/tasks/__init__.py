"""Episode samplers: the tasks that meta-learning learns to learn.

A *task* is a small learning problem: a support set to adapt on and a query set to
measure the adapted model on. Two families, as in the papers:

- :class:`Sinusoid` — regression on ``y = A sin(x - phi)`` (Finn et al. 2017, §5.1).
- :class:`NWayKShot` — N-way K-shot classification over any labelled array dataset,
  with rotations by multiples of 90° making new classes (Santoro et al. 2016;
  Vinyals et al. 2016).

Both return :class:`Task` tuples (``support_x, support_y, query_x, query_y``);
``sample()`` gives one task, ``sample_batch(meta_batch_size)`` a batch with a leading
task axis. Sampling uses a ``numpy.random.Generator`` seeded by ``seed``: two samplers
with the same seed give the same tasks. :class:`EpisodeSet` freezes N episodes in a small
checked file, so every evaluation replays the same ones.
"""

from .base import Task
from .classification import Augment, NWayKShot
from .episodes import EpisodeSet
from .regression import Regression, Sinusoid

__all__ = ["Task", "Sinusoid", "Regression", "NWayKShot", "Augment", "EpisodeSet"]
