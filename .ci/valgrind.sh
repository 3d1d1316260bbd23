#!/usr/bin/env bash
# valgrind memcheck of a short training loop through the Python binding: 50 Keras steps of
# a Dense network (fit and train_on_batch), 20 custom GradientTape/Adam steps, 20
# second-order (create_graph) MAML-style meta-steps, a save/load round trip and the
# refused loads of a corrupt file. Fails on any memory error (invalid read/write, use of
# uninitialised values, bad free) anywhere and on any *definite* leak whose stack passes
# through metalearn's code (_core / ml_*).
#
#   .ci/valgrind.sh                  # uses the installed (normal, -O3) metalearn._core
#   STEPS=200 .ci/valgrind.sh        # a longer loop
#
# PYTHONMALLOC=malloc routes Python's allocations through malloc, so valgrind sees them
# (and pymalloc's arena tricks cause no false reports). CPython itself keeps memory alive
# at exit by design ("possibly lost"/"still reachable": not errors here). Definite leaks
# and memory errors whose stacks never pass through metalearn (CPython start-up and GC,
# ld.so's strncmp: this interpreter is not built for valgrind) are counted and printed,
# not failed on.
set -euo pipefail
cd "$(dirname "$0")/.."
# the interpreter itself, not a wrapper script (pyenv shims would be what valgrind traces)
PY=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
STEPS=${STEPS:-50}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/metalearn-vg.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

cat >"$OUT/train.py" <<'EOF'
import os, sys, tempfile
import numpy as np
import metalearn as ml
from metalearn.keras import layers, models, optimizers, losses

steps = int(os.environ.get("STEPS", "50"))
ml.random.set_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8)).astype(np.float32)
y = rng.integers(0, 3, size=64)

model = models.Sequential([layers.Dense(16, activation="relu", input_shape=(8,)),
                           layers.Dense(16, activation="tanh"),
                           layers.Dense(3, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x, y, epochs=max(1, steps // 4), batch_size=16, verbose=0)       # steps Adam steps
for i in range(steps):
    model.train_on_batch(x[i % 4 * 16:(i % 4 + 1) * 16], y[i % 4 * 16:(i % 4 + 1) * 16])
model.evaluate(x, y, verbose=0)
model.predict(x, verbose=0)

# custom GradientTape loop
opt = optimizers.Adam(1e-3)
for i in range(20):
    with ml.GradientTape() as tape:
        loss = ml.reduce_mean(losses.sparse_categorical_crossentropy(y, model(x)))
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))

# second-order MAML-style meta-steps: inner step with create_graph, outer gradient
w = ml.tensor(rng.normal(size=(8, 1)).astype(np.float32) * 0.1, requires_grad=True)
b = ml.tensor(np.zeros(1, np.float32), requires_grad=True)
xs, ys = ml.tensor(x[:16]), ml.tensor(rng.normal(size=(16, 1)).astype(np.float32))
for i in range(20):
    inner = ml.reduce_mean(ml.square(ml.linear(xs, w, b) - ys))
    gw, gb = ml.grad(inner, [w, b], create_graph=True)
    w2, b2 = w - 0.1 * gw, b - 0.1 * gb
    outer = ml.reduce_mean(ml.square(ml.linear(xs, w2, b2, "tanh") - ys))
    mw, mb = ml.grad(outer, [w, b])
    with ml.no_grad():
        ml._core.assign(w, np.asarray(w) - 0.01 * np.asarray(mw))

# files: round trip, then refused corrupt/truncated loads
d = tempfile.mkdtemp()
p = os.path.join(d, "w.mlw")
model.save_weights(p)
model.load_weights(p)
data = open(p, "rb").read()
for bad in (data[:-7], data[:20], bytes([data[0] ^ 1]) + data[1:],
            data[:40] + bytes([data[40] ^ 0x10]) + data[41:]):
    open(p, "wb").write(bad)
    try:
        model.load_weights(p)
    except (OSError, ValueError):
        pass
    else:
        sys.exit("a corrupt file was accepted")
for bad in ([np.zeros(3)], None, [np.zeros((8, 16), complex)] * 6):
    try:
        model.set_weights(bad)
    except (TypeError, ValueError):
        pass
print("valgrind-train: done")
EOF

echo "== valgrind memcheck: $STEPS training steps (+ tape, meta-steps, weight files)"
t0=$(date +%s)
set +e
STEPS=$STEPS PYTHONMALLOC=malloc valgrind --tool=memcheck --leak-check=full \
    --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --num-callers=40 --error-exitcode=99 --log-file="$OUT/vg.log" \
    "$PY" "$OUT/train.py"
rc=$?
grep -q "ERROR SUMMARY" "$OUT/vg.log" || { echo "valgrind: no memcheck summary" >&2; cat "$OUT/vg.log"; exit 1; }
set -e
t1=$(date +%s)

set +e
# Every error/leak record of valgrind starts with "==pid== <text>" and ends at a blank one.
"$PY" - "$OUT/vg.log" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
lines = [re.sub(r"^==\d+== ?", "", l) for l in text.splitlines()]
blocks, cur = [], []
for l in lines:
    if l.strip():
        cur.append(l)
    elif cur:
        blocks.append(cur); cur = []
if cur:
    blocks.append(cur)
ours = lambda b: any(re.search(r"_core\.cpython|\bml_\w+|metalearn", l) for l in b)
leaks = [b for b in blocks if "definitely lost in" in b[0]]
errors = [b for b in blocks if re.match(r"(Invalid (read|write|free)|Conditional jump|Use of uninitialised"
                                          r"|Syscall param|Mismatched free|Source and destination overlap"
                                          r"|Argument '.*' of function)", b[0])]
our_leaks = [b for b in leaks if ours(b)]
our_errors = [b for b in errors if ours(b)]
summ = [l for l in lines if re.search(r"definitely lost:|ERROR SUMMARY", l)]
print("\n".join("   " + s.strip() for s in summ))
print(f"   definite-leak records: {len(leaks)} ({len(our_leaks)} through metalearn's code)")
print(f"   memory-error records:  {len(errors)} ({len(our_errors)} through metalearn's code)")
# Reports whose whole stack lies in CPython, ld.so or NumPy (this interpreter was not
# built for valgrind: its start-up and GC give "uninitialised value" reports) are counted,
# not failed on; a report with any metalearn frame in its stack fails the run.
for b in our_leaks + our_errors:
    print("\n".join("   | " + l for l in b[:40]))
sys.exit(1 if our_leaks or our_errors else 0)
EOF
prc=$?
echo "== valgrind: $((t1 - t0)) s; the program exited $rc (99: valgrind counted errors, see above)"
if [ "$rc" -ne 0 ] && [ "$rc" -ne 99 ]; then
    echo "valgrind: the training program itself failed" >&2; tail -40 "$OUT/vg.log"; exit 1
fi
exit $prc
