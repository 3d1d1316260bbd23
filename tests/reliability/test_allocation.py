"""No malloc/free churn in a training step (issue 6): a replayed MAML meta-step takes its
tensors' memory and structs from the per-thread pools, not from malloc.

Counted with a malloc/calloc/realloc/posix_memalign counter preloaded into a child Python
(built here with the system C compiler), switched on only around the replays."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")

COUNTER = r"""
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
static long calls;
static int on;
void *malloc(size_t n) { calls += on; return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { calls += on; return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { calls += on; return __libc_realloc(p, n); }
int posix_memalign(void **p, size_t a, size_t n) {
    calls += on;
    *p = __libc_memalign(a, n);
    return *p ? 0 : 12;
}
void *aligned_alloc(size_t a, size_t n) { calls += on; return __libc_memalign(a, n); }
void count_start(void) { calls = 0; on = 1; }
long count_stop(void) { on = 0; return calls; }
"""

CHILD = """
import ctypes, sys
counter = ctypes.CDLL(sys.argv[1])
import metalearn as ml
from metalearn import _core
from metalearn.meta import MAML, models
from metalearn.meta._base import to_tensor
from metalearn.tasks import Sinusoid
ml.set_num_threads(1)
ml.random.set_seed(0)
maml = MAML(models.sinusoid_mlp(), inner_lr=0.01, inner_steps=1, meta_lr=1e-3)
tasks = Sinusoid(k_shot=10, q_queries=10, seed=0)
maml.fit(tasks, iterations=3, meta_batch_size=25, verbose=0)   # traces the meta-step
(trace, _), = maml._traced_step._traces.values()
batch = tasks.sample_batch(25)
args = [to_tensor(a) for a in batch[:4]]
for _ in range(3):
    _core.trace_replay(trace, args)        # warm the pools
counter.count_start()
for _ in range(50):
    _core.trace_replay(trace, args)        # a second-order meta-step and its Adam update
calls = counter.count_stop()
print(_core.trace_n_ops(trace), calls)
"""


@pytest.mark.skipif(
    os.environ.get("METALEARN_SANITIZED") == "1",
    reason="the pools are off under ASan so that it sees every free",
)
def test_replayed_meta_step_makes_no_allocator_calls(tmp_path):
    src = tmp_path / "counter.c"
    src.write_text(COUNTER)
    lib = tmp_path / "counter.so"
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    build = subprocess.run(
        ["cc", "-O1", "-shared", "-fPIC", str(src), "-o", str(lib)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(lib)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "LD_PRELOAD": str(lib)},
    )
    assert run.returncode == 0, run.stderr
    n_ops, calls = (int(v) for v in run.stdout.split()[-2:])
    assert n_ops > 100  # the whole second-order step is in the trace
    # 50 replays of ~175 ops each: before the struct caches this was ~9 000 calls
    assert calls <= 5, f"{calls} allocator calls in 50 replayed meta-steps"
