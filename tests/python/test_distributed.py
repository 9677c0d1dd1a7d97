"""Scale-out: Ray Data batch inference (examples/python/ray_predict.py) and MPI
data-parallel training (lcjit.distributed.fit under mpiexec).

This file is also the MPI worker: ``mpiexec -n 2 python test_distributed.py worker ...``
trains on every rank and writes each rank's weights and history to an ``.npz``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "keras-golden"


# ---- the MPI worker (runs under mpiexec, without pytest) ------------------------------
def _worker(case: str, out: str, batch_size: int, epochs: int, seed: int, validate: bool) -> None:
    import lcjit
    import lcjit.distributed
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    d = GOLDEN / case
    xs, ys = np.load(d / "xs.npy"), np.load(d / "ys.npy")
    # Rank-dependent starting weights: fit must broadcast root's.
    model = lcjit.load(d / "compiled.h5", seed=comm.rank)
    if comm.rank != 0:
        model.set_weights([w + 0.5 for w in model.get_weights()])
    vd = (xs[:3], ys[:3]) if validate else None
    h = lcjit.distributed.fit(
        model, xs, ys, batch_size=batch_size, epochs=epochs, shuffle=True, seed=seed,
        validation_data=vd,
    )
    arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    arrays["history"] = np.array(json.dumps(h.history))
    np.savez(f"{out}.rank{comm.rank}.npz", **arrays)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    a = sys.argv[2:]
    _worker(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), a[5] == "1")
    sys.exit(0)


# ---- tests -----------------------------------------------------------------------------
import pytest  # noqa: E402

import lcjit  # noqa: E402


def _load_example(name: str):
    path = ROOT / "examples" / "python" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def _mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        pytest.fail("mpiexec not found next to the interpreter or on PATH (install the mpich wheel)")
    return found


def _run_mpi(ranks: int, case: str, tmp: Path, batch_size: int, epochs: int, seed: int, validate: bool):
    out = tmp / f"{case}_{ranks}_{batch_size}"
    cmd = [_mpiexec(), "-n", str(ranks)]
    if "open" in subprocess.run([cmd[0], "--version"], capture_output=True, text=True).stdout.lower():
        cmd += ["--allow-run-as-root", "--oversubscribe"]  # OpenMPI; MPICH's hydra needs neither
    cmd += [sys.executable, str(Path(__file__).resolve()), "worker", case, str(out),
            str(batch_size), str(epochs), str(seed), "1" if validate else "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"
    results = []
    for k in range(ranks):
        with np.load(f"{out}.rank{k}.npz") as z:
            weights = [z[f"w{i}"] for i in range(len(z.files) - 1)]
            results.append((weights, json.loads(str(z["history"]))))
    return results


def _single(case: str, batch_size: int, epochs: int, seed: int, validate: bool):
    d = GOLDEN / case
    xs, ys = np.load(d / "xs.npy"), np.load(d / "ys.npy")
    model = lcjit.load(d / "compiled.h5", seed=0)
    vd = (xs[:3], ys[:3]) if validate else None
    h = model.fit(xs, ys, batch_size=batch_size, epochs=epochs, shuffle=True, seed=seed,
                  verbose=0, validation_data=vd)
    return model.get_weights(), h.history


def _close(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    return bool(np.max(np.abs(a - b), initial=0.0) <= tol * max(1.0, float(np.max(np.abs(b), initial=0.0))))


# (ranks, golden case, batch size): even shards, uneven shards with a short last batch,
# and a rank with an empty shard (batch 2 over 3 ranks). None of these cases has
# BatchNormalization or Dropout, so the result must be single-process fit's.
MPI_CASES = [
    (2, "model_gpnet_like", 4),  # Functional LC1D + skip Add + Conv1D, Adam
    (2, "case_0105", 3),  # LC2D + Dense with weight regularization, RMSprop; batches 3, 3, 2
    (3, "case_0102", 2),  # LC1D stack with regularization, SGD momentum; shards 1, 1, 0
]


@pytest.mark.parametrize("ranks,case,batch_size", MPI_CASES)
def test_mpi_fit_matches_single_process(tmp_path, ranks, case, batch_size):
    epochs, seed = 3, 7
    per_rank = _run_mpi(ranks, case, tmp_path, batch_size, epochs, seed, validate=True)
    w0, h0 = per_rank[0]
    for wk, hk in per_rank[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(w0, wk)), "ranks ended with different weights"
        assert hk == h0
    ref_w, ref_h = _single(case, batch_size, epochs, seed, validate=True)
    assert len(w0) == len(ref_w)
    for i, (a, b) in enumerate(zip(w0, ref_w)):
        assert a.shape == b.shape
        assert _close(a, b, 1e-5), f"weight {i}: max diff {np.max(np.abs(a - b))}"
    assert set(h0) == set(ref_h) == {"loss", "val_loss"}
    for k in ref_h:
        np.testing.assert_allclose(h0[k], ref_h[k], rtol=1e-5, atol=1e-6)


def test_mpi_fit_batchnorm_stats_identical(tmp_path):
    """With BatchNormalization each shard normalizes with its own statistics (not
    single-process fit's), but the averaged moving statistics keep the ranks identical."""
    per_rank = _run_mpi(2, "model_mini_genomics", tmp_path, 4, 2, 3, validate=False)
    (w0, h0), (w1, h1) = per_rank
    assert all(np.array_equal(a, b) for a, b in zip(w0, w1))
    assert h0 == h1 and len(h0["loss"]) == 2 and np.all(np.isfinite(h0["loss"]))
    # The moving statistics moved away from their initial values (0 and 1).
    d = GOLDEN / "model_mini_genomics"
    start = lcjit.load(d / "compiled.h5")
    moved = [not np.array_equal(a, b) for a, b in zip(w0, start.get_weights())]
    assert all(moved), moved


def test_custom_loop_matches_fit():
    """The compute_gradients + apply_gradients path lcjit.distributed is built on equals fit."""
    d = GOLDEN / "case_0105"
    xs, ys = np.load(d / "xs.npy"), np.load(d / "ys.npy")
    ref_w, ref_h = _single("case_0105", 3, 2, 5, validate=False)
    model = lcjit.load(d / "compiled.h5")
    losses = []
    for order in lcjit.epoch_orders(len(xs), 2, 5):
        total = 0.0
        for s in range(0, len(xs), 3):
            idx = order[s : s + 3]
            total += model.train_step(xs[idx], ys[idx])["loss"] * len(idx)
        losses.append(total / len(xs))
    for a, b in zip(model.get_weights(), ref_w):
        assert _close(a, b, 1e-6)
    np.testing.assert_allclose(losses, ref_h["loss"], rtol=1e-6)


# ---- Ray -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_example():
    return _load_example("ray_predict")


def test_ray_data_predict_equals_predict(ray_session, ray_example, tmp_path):
    path = GOLDEN / "model_mini_deepface" / "model.h5"
    model = lcjit.load(path)
    x = np.random.default_rng(0).standard_normal((37, *model.input_shape[1:])).astype(np.float32)
    got = ray_example.ray_predict(path, x, batch_size=8, num_workers=2)
    want = model.predict(x)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1e-6
    # An inner layer's outputs, from a pickled in-memory model (no file on the workers).
    got = ray_example.ray_predict(model, x, batch_size=16, num_workers=2, output="dense")
    np.testing.assert_allclose(got, model.predict(x, output="dense"), rtol=0, atol=1e-6)
