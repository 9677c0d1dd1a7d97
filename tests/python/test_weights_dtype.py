"""16-bit weights from Python (``weights_dtype=``): every golden case predicts within
1e-2 of tf-keras with LC and Dense kernels in bfloat16 or half precision, the JIT agreeing
with the interpreter (bit for bit, as tests/weights16.rs checks in Rust); the option
survives pickling and shows in ``bench``; training refuses it with a UsageError."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import lcjit
from conftest import CASES, assert_close, case_id

DTYPES = ("bf16", "f16")


def model_path(case):
    return case / "model.h5" if (case / "model.h5").exists() else case / "model.json"


def load(case, **kw):
    weights = None if (case / "model.h5").exists() else case / "weights.npz"
    return lcjit.load(model_path(case), weights, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_predict_with_16_bit_weights(case, dtype):
    x = np.load(case / "x.npy")
    want = np.load(case / "y.npy")
    jit = load(case, weights_dtype=dtype, threads=2)
    interp = load(case, weights_dtype=dtype, engine="interp")
    assert jit.weights_dtype == dtype
    y = jit.predict(x, batch_size=len(x))
    assert_close(y, want, tol=1e-2, what=f"{dtype} vs tf-keras")
    # Bit for bit where the host fuses multiply-adds (tests/weights16.rs checks that).
    assert_close(y, interp.predict(x, batch_size=len(x)), tol=1e-6, what="jit vs interp")


def test_default_is_f32_and_bad_names_are_refused():
    case = CASES[0]
    assert load(case).weights_dtype == "f32"
    with pytest.raises(lcjit.UsageError, match="weights_dtype"):
        load(case, weights_dtype="int8")


def test_pickling_keeps_the_option():
    case = CASES[0]
    m = load(case, weights_dtype="bf16")
    m2 = pickle.loads(pickle.dumps(m))
    assert m2.weights_dtype == "bf16"
    x = np.load(case / "x.npy")
    assert np.array_equal(m.predict(x), m2.predict(x))


def test_training_refuses_16_bit_weights():
    case = CASES[0]
    m = load(case, weights_dtype="f16")
    x = np.load(case / "x.npy")
    y = m.predict(x)
    m.compile(optimizer="sgd", loss="mse")
    with pytest.raises(lcjit.UsageError, match="inference option"):
        m.fit(x, y, epochs=1, verbose=0)


def test_bench_reports_the_stored_bytes():
    case = CASES[0]
    r32 = lcjit.bench(load(case), batch=1)
    r16 = lcjit.bench(load(case, weights_dtype="bf16"), batch=1)
    assert r32["weights_dtype"] == "f32" and r16["weights_dtype"] == "bf16"
    assert r32["stored_weight_bytes"] == r32["weight_bytes"]
    assert r16["stored_weight_bytes"] < r16["weight_bytes"]
