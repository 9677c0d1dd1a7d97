"""Cost of the Python boundary: `model.predict` and a `fit` step through the Python
package against `lcjit.bench` (the Rust timing loop) on the same model, engine and
threads, in one process, alternating the two so machine noise hits both alike.

    python benches/python/boundary.py [MODEL.json] [--threads N] [--rounds R]

Prints medians in milliseconds and the ratio Python / Rust for forward at batch 1 and 32
and for a steady-state training step of `fit` at batch 32 against `lcjit bench --train`'s
step (forward, backward of MSE, Adam update), and fit's fixed cost per call.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import numpy as np

import lcjit

ROOT = pathlib.Path(__file__).resolve().parents[2]


def median_ms(fn, min_time: float = 1.0, min_reps: int = 5) -> float:
    fn()  # warm up (compiles the program for this batch size)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=str(ROOT / "tests/data/workloads/deepface_l4_l6.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    model = lcjit.load(a.model, threads=a.threads)
    shape = model.input_shape[1:]
    rng = np.random.default_rng(7)
    rows = []
    for batch in (1, 32):
        x = rng.random((batch, *shape), dtype=np.float32)
        py, rs = [], []
        for _ in range(a.rounds):
            py.append(median_ms(lambda: model.predict(x, batch_size=batch)))
            rs.append(lcjit.bench(model, batch=batch, threads=a.threads)["forward_ms"]["jit"])
        rows.append((f"forward b{batch}", statistics.median(py), statistics.median(rs)))
    # Training step at batch 32, in steady state: a fit call also copies the weights and
    # compiles its gradient program once, so the per-step time is the difference between
    # fits of 3 and 1 epochs of 4 batches, divided by the 8 extra steps.
    steps, batch = 4, 32
    x = rng.random((steps * batch, *shape), dtype=np.float32)
    y = np.zeros((steps * batch, *model.output_shape[1:]), dtype=np.float32)
    model.compile(optimizer={"class_name": "Adam", "config": {"learning_rate": 1e-6}}, loss="mse")

    def fit_ms(epochs: int) -> float:
        t = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, shuffle=False)
        return (time.perf_counter() - t) * 1e3

    py, rs, once = [], [], []
    for _ in range(a.rounds):
        one, three = fit_ms(1), fit_ms(3)
        py.append((three - one) / (2 * steps))
        once.append(one - steps * py[-1])
        rs.append(lcjit.bench(model, batch=batch, threads=a.threads, train=True)["train_step_ms"]["jit"])
    rows.append(("train step b32 (fit)", statistics.median(py), statistics.median(rs)))
    print(f"fit's fixed cost per call (copies, gradient program compile): {statistics.median(once):.1f} ms")
    print(f"model {pathlib.Path(a.model).name}, threads {a.threads}, engine jit")
    print(f"{'what':<22}{'python ms':>12}{'rust ms':>12}{'ratio':>8}")
    for what, p, r in rows:
        print(f"{what:<22}{p:>12.3f}{r:>12.3f}{p / r:>8.3f}")


if __name__ == "__main__":
    main()
