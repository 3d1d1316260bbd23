"""Training steps per second of the AdaptiveNeuralNetwork (784-128-10, Adam, categorical
cross-entropy): metalearn vs PyTorch eager, same machine, same thread count, one run.

    python benchmarks/dense_step.py [--threads 1] [--repeats 7] [--steps 200]
    python benchmarks/dense_step.py --drift 8000      # time per step over a long run

Prints the median steps/s of each at batch 32 and 256 and the ratio metalearn / PyTorch.
With --drift N, trains N steps at batch 32 and prints the time per step of each block of
1000: a step must not slow down as training goes on (it did, by 20 %, while Adam's
moments of dead units decayed into denormals, before Adam flushed them).
Runs without PyTorch too (metalearn only).
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np


def bench(step, steps, repeats, warmup=20):
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps / (time.perf_counter() - t0))
    return statistics.median(rates)


def metalearn_step(batch):
    import metalearn as ml
    from metalearn.keras import losses, optimizers
    from metalearn.networks import AdaptiveNeuralNetwork

    ml.random.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(batch, 28, 28)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    model = AdaptiveNeuralNetwork()
    model(x)
    params = model.trainable_variables
    opt = optimizers.Adam(learning_rate=1e-3)

    def step():  # what Model.train_on_batch does, minus its argument checks
        with ml.GradientTape() as tape:
            loss = ml.reduce_mean(losses.categorical_crossentropy(y, model(x)))
        grads = tape.gradient(loss, params)
        opt._apply(params, grads)

    return step


def metalearn_fit_step(batch):
    """The same step through Model.train_on_batch (the Keras path)."""
    import metalearn as ml
    from metalearn.networks import AdaptiveNeuralNetwork

    ml.random.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(batch, 28, 28)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    model = AdaptiveNeuralNetwork()
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model(x)
    return lambda: model.train_on_batch(x, y)


def torch_step(batch):
    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0, 1, size=(batch, 28, 28)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, batch))
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss()  # softmax + categorical cross-entropy, fused

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    parser.add_argument(
        "--drift",
        type=int,
        default=0,
        metavar="N",
        help="train N steps at batch 32, print us/step per 1000-step block",
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("METALEARN_NUM_THREADS", str(args.threads))
    try:
        import torch

        torch.set_num_threads(args.threads)
        torch_version = torch.__version__
    except ImportError:
        torch = None
        torch_version = None
    import metalearn  # noqa: F401

    if args.drift:
        steps = {"metalearn": metalearn_step(32)}
        if torch is not None:
            steps["torch"] = torch_step(32)
        print(
            f"AdaptiveNeuralNetwork 784-128-10, Adam, batch 32; threads={args.threads}; "
            "us/step per block of 1000 steps"
        )
        print(f"{'steps':>13} " + " ".join(f"{name:>10}" for name in steps))
        for start in range(0, args.drift, 1000):
            times = []
            for step in steps.values():  # each library its own block, alternating
                t0 = time.perf_counter()
                for _ in range(1000):
                    step()
                times.append((time.perf_counter() - t0) / 1000 * 1e6)
            print(f"{start:>6}-{start + 999:<6} " + " ".join(f"{t:>10.1f}" for t in times))
        return
    print(
        f"AdaptiveNeuralNetwork 784-128-10, Adam, categorical cross-entropy; threads={args.threads}; "
        f"median of {args.repeats} x {args.steps} steps"
    )
    print(f"torch: {torch_version or 'not installed'}")
    header = f"{'batch':>6} {'metalearn steps/s':>18} {'train_on_batch':>15} {'torch steps/s':>14} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for batch in args.batches:
        ml_rate = bench(metalearn_step(batch), args.steps, args.repeats)
        fit_rate = bench(metalearn_fit_step(batch), args.steps, args.repeats)
        if torch is not None:
            t_rate = bench(torch_step(batch), args.steps, args.repeats)
            print(
                f"{batch:>6} {ml_rate:>18.0f} {fit_rate:>15.0f} {t_rate:>14.0f} {ml_rate / t_rate:>6.2f}x"
            )
        else:
            print(f"{batch:>6} {ml_rate:>18.0f} {fit_rate:>15.0f} {'-':>14} {'-':>7}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
