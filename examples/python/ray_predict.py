"""Batch inference with Ray Data: a pool of actors, each compiling the model once.

    python examples/python/ray_predict.py [MODEL] [--samples N] [--workers K]

MODEL is any file ``lcjit.load`` reads (default: the mini DeepFace golden model in
``tests/data/keras-golden``). The script starts a local Ray instance (loopback only),
predicts N random samples on K actors and checks the result equals single-process
``model.predict``.

Importable: :func:`ray_predict` (used by ``tests/python/test_distributed.py``) works with
a Ray instance already running (``ray.init(...)``) or starts a local one for the call.

Each actor loads and compiles the model in ``__init__`` (once per worker, not per batch)
from a path, or unpickles an :class:`lcjit.Model` passed in memory (a Model pickles as
configuration + weights). Each actor reserves one CPU and runs lcjit on ``threads``
threads (default 1), so K actors use K cores without oversubscription.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np

import lcjit

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "tests" / "data" / "keras-golden" / "model_mini_deepface" / "model.h5"


class LcjitPredictor:
    """A Ray Data callable class: builds the model once, then predicts each batch."""

    def __init__(self, model: Union[str, "lcjit.Model"], threads: int = 1, output: Optional[str] = None,
                 batch_size: int = 32) -> None:
        if isinstance(model, lcjit.Model):
            self.model = model  # already unpickled by Ray (configuration + weights)
        else:
            self.model = lcjit.load(model, threads=threads)
        self.output = output
        self.batch_size = batch_size
        self.model.predict(np.zeros((1, *self.model.input_shape[1:]), np.float32))  # compile now

    def __call__(self, batch: dict) -> dict:
        x = np.ascontiguousarray(batch["data"], dtype=np.float32)
        y = self.model.predict(x, batch_size=self.batch_size, output=self.output)
        return {"index": batch["index"], "y": y}


def ray_predict(
    model: Union[str, os.PathLike, "lcjit.Model"],
    x: np.ndarray,
    batch_size: int = 32,
    num_workers: int = 2,
    threads: int = 1,
    output: Optional[str] = None,
) -> np.ndarray:
    """Predicts every sample of ``x`` with ``num_workers`` Ray actors (Ray Data
    ``map_batches``); returns the outputs in the order of ``x`` (``output`` names an
    inner layer, as :meth:`lcjit.Model.predict`)."""
    import ray
    import ray.data

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=max(2, num_workers), include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
        started = True
    try:
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = len(x)
        if n == 0:
            raise ValueError("ray_predict: x has no samples")
        # One block per batch-sized chunk, carrying each sample's index so the results can
        # be put back in order whatever order the actors finish in.
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # no progress bars / per-dataset banners in logs
        ctx.print_on_execution_start = False
        chunks = max(1, -(-n // batch_size))
        idx = np.arange(n, dtype=np.int64)
        ds = ray.data.from_items(
            [{"index": i, "data": x[i]} for i in range(n)], override_num_blocks=chunks
        )
        src = model if isinstance(model, lcjit.Model) else os.fspath(model)
        out = ds.map_batches(
            LcjitPredictor,
            fn_constructor_kwargs={"model": src, "threads": threads, "output": output, "batch_size": batch_size},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            num_cpus=1,
        )
        parts = list(out.iter_batches(batch_size=None, batch_format="numpy"))
        order = np.concatenate([p["index"] for p in parts])
        ys = np.concatenate([p["y"] for p in parts])
        result = np.empty_like(ys)
        result[order] = ys
        if not np.array_equal(np.sort(order), idx):
            raise RuntimeError("ray_predict: some samples are missing or repeated in the results")
        return result
    finally:
        if started:
            ray.shutdown()


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default=str(DEFAULT_MODEL), help="model file (.h5, .keras, .json)")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)

    model = lcjit.load(args.model)
    x = np.random.default_rng(0).standard_normal((args.samples, *model.input_shape[1:])).astype(np.float32)

    t = time.perf_counter()
    want = model.predict(x, batch_size=args.batch_size)
    t_single = time.perf_counter() - t

    import ray

    ray.init(num_cpus=max(2, args.workers), include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        t = time.perf_counter()
        got = ray_predict(args.model, x, batch_size=args.batch_size, num_workers=args.workers)
        t_ray = time.perf_counter() - t
    finally:
        ray.shutdown()

    diff = float(np.max(np.abs(got - want)))
    print(f"model {Path(args.model).name}: {args.samples} samples, output {got.shape}")
    print(f"single process predict: {t_single * 1e3:.1f} ms; Ray Data, {args.workers} actors: "
          f"{t_ray * 1e3:.1f} ms (actor start-up and compilation included)")
    print(f"max |ray - predict| = {diff:.3g}")
    if diff > 1e-6:
        print("MISMATCH", file=sys.stderr)
        return 1
    print("OK: Ray predictions equal single-process predict")
    return 0


if __name__ == "__main__":
    sys.exit(main())
