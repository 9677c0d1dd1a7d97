"""The structure API (summary, layers, weights, shapes, JSON), inner-layer outputs
against tf-keras (tests/data/inner), evaluate against tf-keras (tests/data/evaluate),
compile, lcjit.ir and lcjit.bench."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lcjit
from conftest import CASES, DATA, GOLDEN, assert_close, case_id, npz, read_json, weight_keys

ENGINES = ("jit", "interp", "reference")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_structure_matches_the_case(case):
    m = lcjit.load(case / "model.h5")
    info = read_json(case / "case.json") if (case / "case.json").exists() else {}
    x, y = np.load(case / "x.npy"), np.load(case / "y.npy")
    assert m.input_shape == (None, *x.shape[1:])
    assert m.output_shape == (None, *y.shape[1:])
    if "params" in info:
        assert m.count_params() == info["params"]
    layers = m.layers
    assert layers[0].class_name == "InputLayer" and layers[0].count_params() == 0
    assert layers[-1].output_shape == m.output_shape
    assert m.count_params() == sum(l.count_params() for l in layers)
    # get_weights order and shapes: Keras's, with weights.npz's keys.
    ref = npz(case / "weights.npz")
    keys = weight_keys(m)
    assert sorted(keys) == sorted(ref)
    ws = m.get_weights()
    assert [w.shape for w in ws] == [ref[k].shape for k in keys]
    for k, w in zip(keys, ws):
        assert w.dtype == np.float32
        assert_close(w, ref[k], 0.0, k)
    assert sum(w.size for w in ws) == m.count_params()
    for l in layers:
        lw = l.get_weights()
        assert len(lw) == len(l.weight_names)
        assert sum(w.size for w in lw) == l.count_params()
        assert m.get_layer(l.name).name == l.name
    # Configuration round trip: the JSON builds the same model.
    again = lcjit.Model.from_json(m.to_json())
    assert [(l.name, l.class_name, l.output_shape) for l in again.layers] == [
        (l.name, l.class_name, l.output_shape) for l in layers
    ]
    again.set_weights(ws)
    assert np.array_equal(again.predict(x), m.predict(x))


def test_summary_lines():
    m = lcjit.load(GOLDEN / "model_gpnet_like" / "model.h5")
    lines = []
    m.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert lines[0].startswith("Model:")
    for l in m.layers:
        assert f"{l.name} ({l.class_name})" in text
    assert f"Total params: {m.count_params():,}" in text
    assert "Trainable params:" in text and "Non-trainable params: 0" in text
    assert "(None, 60, 3)" in text and "21,780" in text


def test_summary_prints(capsys):
    m = lcjit.load(GOLDEN / "case_0000" / "model.h5")
    m.summary()
    out = capsys.readouterr().out
    assert "Total params: 978" in out


def test_non_trainable_weights_in_summary_and_layers():
    case = next(c for c in CASES if c.name == "model_mini_jet")
    m = lcjit.load(case / "model.h5")
    bn = [l for l in m.layers if l.class_name == "BatchNormalization"]
    assert bn, "model_mini_jet has BatchNormalization"
    assert bn[0].weight_names == ["gamma", "beta", "moving_mean", "moving_variance"]
    lines = []
    m.summary(print_fn=lines.append)
    non = next(l for l in lines if l.startswith("Non-trainable params"))
    assert non != "Non-trainable params: 0"
    # No gradient for the moving statistics.
    x = np.load(case / "x.npy")
    _, grads = m.gradients(x, np.ones_like(m.predict(x)))
    assert f"{bn[0].name}/gamma" in grads and f"{bn[0].name}/moving_mean" not in grads


def test_get_layer_by_index_and_repr():
    m = lcjit.load(GOLDEN / "case_0001" / "model.h5")
    assert m.get_layer(index=0).class_name == "InputLayer"
    assert m.get_layer(index=-1).name == m.layers[-1].name
    assert "lcjit.Model" in repr(m) and m.engine == "jit"
    assert "LocallyConnected" in repr(m.layers[1])
    assert isinstance(lcjit.__version__, str) and lcjit.__version__


def test_set_weights_changes_predictions():
    case = GOLDEN / "case_0001"
    m = lcjit.load(case / "model.h5")
    x = np.load(case / "x.npy")
    ws = m.get_weights()
    y0 = m.predict(x)
    m.set_weights([w * 0 for w in ws])
    zero = m.predict(x)
    assert not np.array_equal(zero, y0)
    assert np.allclose(zero, zero[:1])  # all-zero weights: the same output for every sample
    m.set_weights(ws)
    assert np.array_equal(m.predict(x), y0)
    # Per-layer set_weights, then a copy of the weights is not a view.
    l = m.layers[1]
    lw = l.get_weights()
    l.set_weights([w + 1 for w in lw])
    assert np.array_equal(l.get_weights()[0], lw[0] + 1)
    lw[0][...] = 123
    assert not np.array_equal(l.get_weights()[0], lw[0])
    g = m.get_weights()
    g[0][...] = 7
    assert not np.array_equal(m.get_weights()[0], g[0])


def test_from_json_and_load_weights_routes():
    case = GOLDEN / "case_0002"
    x, want = np.load(case / "x.npy"), np.load(case / "y.npy")
    m = lcjit.Model.from_json((case / "model.json").read_text(), seed=1)
    other = lcjit.Model.from_json((case / "model.json").read_text(), seed=2)
    same = lcjit.Model.from_json((case / "model.json").read_text(), seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(m.get_weights(), other.get_weights()))
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), same.get_weights()))
    m.load_weights(case / "weights.npz")
    assert_close(m.predict(x), want)
    m2 = lcjit.Model.from_json((case / "model.json").read_text())
    m2.load_weights(case / "model.h5")
    assert_close(m2.predict(x), want)
    m3 = lcjit.load(case / "model.json", case / "model.h5")
    assert_close(m3.predict(x), want)


def _inner_expected():
    return npz(DATA / "inner" / "expected.npz")


@pytest.mark.parametrize("engine", ENGINES)
def test_inner_outputs_match_tf_keras(engine):
    m = lcjit.load(DATA / "inner" / "model.h5", engine=engine, threads=2)
    x = np.load(DATA / "inner" / "x.npy")
    want = _inner_expected()
    outs = m.predict(x, batch_size=32, output=["F7", "L4", "F8", "F7"])
    assert isinstance(outs, list) and len(outs) == 4
    for name, y in zip(["F7", "L4", "F8", "F7"], outs):
        assert_close(y, want[name], 1e-4, f"{name} {engine}")
    assert m.get_layer("L4").output_shape == (None, *want["L4"].shape[1:])
    f7 = m.predict(x, output="F7")
    assert isinstance(f7, np.ndarray)
    assert_close(f7, want["F7"], 1e-4, "F7 alone")
    assert_close(m.predict(x, batch_size=7), want["F8"], 1e-4, "F8, batch 7")


EVAL_CASES = ["lc1d_regression", "lc2d_softmax", "binary_sigmoid", "sparse_softmax", "activity"]


def _expected_logs(case):
    text = (DATA / "evaluate" / case / "expected.json").read_text()
    v = json.loads(text)  # dicts keep the file's (Keras's) order
    return list(v["logs"].items()), v["batch_size"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", EVAL_CASES)
def test_evaluate_matches_tf_keras(case, engine):
    d = DATA / "evaluate" / case
    want, bs = _expected_logs(case)
    m = lcjit.load(d / "model.h5", engine=engine, threads=2)
    x, y = np.load(d / "x.npy"), np.load(d / "y.npy")
    assert len(x) % bs != 0, "the last batch must be partial"
    logs = m.evaluate(x, y, batch_size=bs, return_dict=True)
    assert list(logs) == [k for k, _ in want], "keys in Keras's order"
    for k, w in want:
        assert abs(logs[k] - w) <= 1e-4 * max(1.0, abs(w)), f"{k}: {logs[k]} vs Keras {w}"
    as_list = m.evaluate(x, y, batch_size=bs)
    assert isinstance(as_list, list) and len(as_list) == len(want)
    assert as_list[0] == pytest.approx(logs["loss"], rel=1e-12)


def test_evaluate_after_compile_returns_a_scalar():
    d = DATA / "evaluate" / "lc1d_regression"
    m = lcjit.load(d / "model.h5")
    x, y = np.load(d / "x.npy"), np.load(d / "y.npy")
    want = dict(_expected_logs("lc1d_regression")[0])
    m.compile(optimizer="sgd", loss="mse")
    loss = m.evaluate(x, y, batch_size=8)
    assert isinstance(loss, float)
    assert loss == pytest.approx(want["loss"], rel=1e-4)
    m.compile(optimizer={"class_name": "Adam", "config": {"learning_rate": 1e-3}}, loss="mae", metrics=["mse"])
    logs = m.evaluate(x, y, batch_size=8, return_dict=True)
    assert list(logs) == ["loss", "mse"]
    # mae + the same weight penalty: loss - mae(penalty-free) equals Keras's loss - mse.
    penalty = want["loss"] - want["mse"]
    assert logs["loss"] - penalty == pytest.approx(want["mae"], rel=1e-4)
    assert logs["mse"] == pytest.approx(want["mse"], rel=1e-4)


def test_compile_then_fit_reduces_the_loss():
    case = GOLDEN / "case_0001"
    m = lcjit.load(case / "model.h5")
    x = np.random.default_rng(0).standard_normal((32, *m.input_shape[1:])).astype(np.float32)
    y = np.zeros((32, *m.output_shape[1:]), np.float32) + 0.3
    m.compile(optimizer="adam", loss="mse", metrics=["mae"])
    h = m.fit(x, y, batch_size=8, epochs=5, verbose=0, seed=1)
    assert list(h.history) == ["loss", "mae"]
    assert len(h.history["loss"]) == 5 and h.epoch == list(range(5))
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert "History" in repr(h)
    # validation_split adds val_ keys.
    h = m.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_split=0.25, seed=1)
    assert list(h.history) == ["loss", "mae", "val_loss", "val_mae"]
    h = m.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_data=(x[:4], y[:4]), seed=1)
    # The validation loss is evaluate's on the weights at the end of the epoch.
    assert h.history["val_loss"][0] == pytest.approx(m.evaluate(x[:4], y[:4])[0], rel=1e-5, abs=1e-7)
    assert h.history["val_mae"][0] == pytest.approx(
        m.evaluate(x[:4], y[:4], return_dict=True)["mae"], rel=1e-5, abs=1e-7
    )


def test_fit_seed_and_shuffle_are_reproducible():
    case = GOLDEN / "case_0003"
    xs, ys = np.load(case / "xs.npy"), np.load(case / "ys.npy")

    def run(**kw):
        m = lcjit.load(case / "compiled.h5")
        h = m.fit(xs, ys, batch_size=2, epochs=2, verbose=0, **kw)
        return h.history["loss"], m.get_weights()

    a, wa = run(shuffle=True, seed=3)
    b, wb = run(shuffle=True, seed=3)
    c, _ = run(shuffle=False, seed=3)
    assert a == b and all(np.array_equal(p, q) for p, q in zip(wa, wb))
    assert a != c


def test_epoch_orders_give_fits_batches():
    """A train_step loop over lcjit.epoch_orders(n, epochs, seed) is fit(shuffle=True, seed)."""
    case = GOLDEN / "model_mini_deepface"
    xs, ys = np.load(case / "xs.npy"), np.load(case / "ys.npy")
    orders = lcjit.epoch_orders(len(xs), 2, 3)
    assert len(orders) == 2 and all(sorted(o) == list(range(len(xs))) for o in orders)
    assert orders[0] != orders[1]
    assert lcjit.epoch_orders(len(xs), 2, None) == [list(range(len(xs)))] * 2
    fitted = lcjit.load(case / "compiled.h5")
    h = fitted.fit(xs, ys, batch_size=4, epochs=2, seed=3, verbose=0)
    stepped = lcjit.load(case / "compiled.h5")
    losses = []
    for o in orders:
        o = np.asarray(o)
        losses.append(np.mean([stepped.train_step(xs[o[i : i + 4]], ys[o[i : i + 4]])["loss"] for i in range(0, len(xs), 4)]))
    np.testing.assert_allclose(losses, h.history["loss"], rtol=1e-6)
    for a, b in zip(fitted.get_weights(), stepped.get_weights()):
        assert np.abs(a - b).max() <= 1e-6


def test_fit_verbose_output(capfd):
    case = GOLDEN / "case_0003"
    m = lcjit.load(case / "compiled.h5")
    xs, ys = np.load(case / "xs.npy"), np.load(case / "ys.npy")
    m.fit(xs, ys, batch_size=4, epochs=2, verbose=0, shuffle=False)
    assert capfd.readouterr().out == ""
    m.fit(xs, ys, batch_size=4, epochs=2, verbose=2, shuffle=False)
    out = capfd.readouterr()
    text = out.out + out.err
    assert "Epoch 1/2" in text and "Epoch 2/2" in text and "loss" in text


@pytest.mark.parametrize("stage", ["graph", "dot", "svg", "loops", "clif", "asm"])
def test_ir_stages(stage):
    m = lcjit.load(DATA / "inner" / "model.h5")
    text = lcjit.ir(m, stage=stage)
    assert isinstance(text, str) and len(text) > 100
    if stage == "graph":
        assert "L4" in text and "LocallyConnected2D" in text
    if stage == "loops":
        assert "L4.kernel" in text
    if stage == "svg":
        assert "<svg" in text
    if stage == "dot":
        assert "digraph" in text


def test_ir_backward_and_batch():
    m = lcjit.load(DATA / "inner" / "model.h5")
    fwd = lcjit.ir(m, stage="loops", batch=1)
    bwd = lcjit.ir(m, stage="loops", batch=1, backward=True)
    assert bwd != fwd and len(bwd) > len(fwd)
    assert lcjit.ir(m, stage="loops", batch=4) != fwd


def test_bench_reports_every_engine():
    m = lcjit.load(DATA / "inner" / "model.h5")
    r = lcjit.bench(m, batch=2, engines=("jit", "interp", "reference"), train=True)
    assert r["batch"] == 2 and r["params"] == m.count_params()
    for e in ("jit", "interp", "reference"):
        assert r["forward_ms"][e] > 0 and r["train_step_ms"][e] > 0
    assert r["flops"]["forward"] > 0 and r["flops"]["train_step"] > r["flops"]["forward"]
    only = lcjit.bench(m, batch=2)
    assert only["forward_ms"]["jit"] > 0 and only["forward_ms"]["interp"] is None
    assert only["train_step_ms"]["jit"] is None
