"""Shared helpers of the lcjit Python suite: where the test data is, the golden case
lists and the tolerance rule of tests/data/keras-golden/README.md."""

from __future__ import annotations

import json
import pathlib
from typing import Dict, List

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
GOLDEN = DATA / "keras-golden"
GRID = DATA / "keras-grid"

#: Golden training cases with Dropout rate > 0, whose Keras masks cannot be reproduced
#: (as DROPOUT_CASES in tests/train_golden.rs); they are held to DROPOUT_BAND instead.
DROPOUT_CASES = ("case_0108",)
DROPOUT_BAND = 0.3
#: Tolerance of the BatchNorm moving statistics after training (MOVING_TOL there).
MOVING_TOL = 1e-6


def _cases(marker: str) -> List[pathlib.Path]:
    return sorted(
        p for d in (GOLDEN, GRID) for p in d.iterdir() if p.is_dir() and (p / marker).exists()
    )


#: Every golden case (keras-golden and keras-grid), as tests/golden.rs lists them.
CASES = _cases("x.npy")
#: The cases with a Keras training run (compiled.h5, history.npy, after.npz).
TRAIN_CASES = _cases("compiled.h5")


def case_id(p: pathlib.Path) -> str:
    return f"{p.parent.name}/{p.name}"


def scaled_err(got, want) -> float:
    """``max|a - b| / max(1, max|b|)``; shapes must agree."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"shape {got.shape} vs {want.shape}"
    if want.size == 0:
        return 0.0
    scale = max(1.0, float(np.abs(want).max()))
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) / scale


def assert_close(got, want, tol: float = 1e-4, what: str = "") -> None:
    err = scaled_err(got, want)
    assert np.isfinite(err) and err <= tol, f"{what}: scaled error {err:.3e} > {tol:g}"


def npz(path) -> Dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def weight_keys(model) -> List[str]:
    """``layer/weight`` keys in ``get_weights`` order."""
    return [f"{l.name}/{w}" for l in model.layers for w in l.weight_names]


def weights_dict(model) -> Dict[str, np.ndarray]:
    keys = weight_keys(model)
    ws = model.get_weights()
    assert len(keys) == len(ws), f"{len(keys)} weight names, {len(ws)} arrays"
    return dict(zip(keys, ws))


def read_json(path):
    return json.loads(pathlib.Path(path).read_text())


@pytest.fixture(scope="session")
def lcjit():
    import lcjit as mod

    return mod
