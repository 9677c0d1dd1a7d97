"""Callbacks in Model.fit: the built-ins against tf-keras 2.21 (tests/data/callbacks, as
tests/train_callbacks.rs checks them), Python callbacks (hook order and logs,
stop_training, exceptions, keys added to the logs), LearningRateScheduler and the
logged ``lr``, ModelCheckpoint, CSVLogger and TerminateOnNaN."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import lcjit
from lcjit import callbacks as C
from conftest import DATA, npz, weights_dict

ROOT = DATA / "callbacks"
CASES = ["early_stopping", "early_stopping_delta", "early_stopping_baseline", "reduce_lr_p0", "reduce_lr_p1"]


@pytest.fixture(scope="module")
def data():
    return tuple(np.load(ROOT / f) for f in ("xs.npy", "ys.npy", "vx.npy", "vy.npy"))


def model(name="compiled.h5", **kw):
    return lcjit.load(ROOT / name, threads=2, **kw)


@pytest.mark.parametrize("engine", ["jit", "reference"])
@pytest.mark.parametrize("case", CASES)
def test_builtin_callbacks_match_tf_keras(case, engine, data):
    xs, ys, vx, vy = data
    r = json.loads((ROOT / case / "result.json").read_text())
    cb = getattr(C, r["callback"])(**r["args"])
    m = model(r["model"], engine=engine)
    h = m.fit(
        xs, ys, batch_size=r["batch_size"], epochs=r["epochs"], shuffle=False,
        validation_data=(vx, vy), callbacks=[cb], verbose=0,
    )
    want = json.loads((ROOT / case / "history.json").read_text())
    assert list(h.history) == list(want) == r["keys"]
    for k, w in want.items():
        g = h.history[k]
        assert len(g) == len(w) == r["epochs_run"], f"{k}: {len(g)} epochs, Keras {len(w)}"
        scale = max(1.0, max(abs(v) for v in w))
        assert max(abs(a - b) for a, b in zip(g, w)) <= 1e-4 * scale, f"{k}: {g} vs {w}"
    assert h.epoch == list(range(r["epochs_run"]))
    stops = r.get("stopped_epoch", 0) > 0
    assert (h.stopped is not None) == stops, h.stopped
    if stops:
        assert "EarlyStopping" in h.stopped
    # Weights (restored best weights included) as Keras left them.
    after = npz(ROOT / case / "after.npz")
    ours = weights_dict(m)
    assert sorted(ours) == sorted(after)
    for k, w in after.items():
        scale = max(1.0, float(np.abs(w).max()))
        assert np.abs(ours[k] - w).max() <= 1e-3 * scale, k


def test_python_callback_hooks_order_and_logs(data):
    xs, ys, vx, vy = data
    events = []
    cb = C.LambdaCallback(
        on_train_begin=lambda logs: events.append(("train_begin",)),
        on_epoch_begin=lambda e, logs: events.append(("epoch_begin", e)),
        on_batch_begin=lambda b, logs: events.append(("batch_begin", b)),
        on_batch_end=lambda b, logs: events.append(("batch_end", b, dict(logs))),
        on_epoch_end=lambda e, logs: events.append(("epoch_end", e, dict(logs))),
        on_train_end=lambda logs: events.append(("train_end", dict(logs or {}))),
    )
    m = model()
    h = m.fit(xs, ys, batch_size=16, epochs=2, shuffle=False, validation_data=(vx, vy), callbacks=[cb], verbose=0)
    steps = -(-len(xs) // 16)
    names = [e[:2] if e[0] not in ("train_begin", "train_end") else e[:1] for e in events]
    want = [("train_begin",)]
    for ep in range(2):
        want.append(("epoch_begin", ep))
        for b in range(steps):
            want += [("batch_begin", b), ("batch_end", b)]
        want.append(("epoch_end", ep))
    want.append(("train_end",))
    assert names == want
    epoch_logs = [e[2] for e in events if e[0] == "epoch_end"]
    for ep, logs in enumerate(epoch_logs):
        assert list(logs) == ["loss", "mae", "val_loss", "val_mae"]
        for k, v in logs.items():
            assert v == pytest.approx(h.history[k][ep], rel=1e-12)
    # Batch logs are the running means: the last batch's are the epoch's training logs.
    last_batch = [e[2] for e in events if e[0] == "batch_end"][steps - 1]
    assert list(last_batch) == ["loss", "mae"]
    assert last_batch["loss"] == pytest.approx(epoch_logs[0]["loss"], rel=1e-12)
    assert events[-1][1]["loss"] == pytest.approx(h.history["loss"][-1], rel=1e-12)


def test_callback_base_class_gets_model_and_params(data):
    xs, ys, _, _ = data
    seen = {}

    class Probe(C.Callback):
        def on_train_begin(self, logs=None):
            seen["model"] = self.model
            seen["params"] = dict(self.params)

        def on_epoch_end(self, epoch, logs=None):
            logs["twice_loss"] = 2 * logs["loss"]  # keys added reach the history

    m = model()
    h = m.fit(xs, ys, batch_size=8, epochs=2, verbose=0, callbacks=[Probe()], seed=0)
    assert seen["model"] is m
    assert seen["params"] == {"epochs": 2, "steps": 5, "verbose": 0}
    assert h.history["twice_loss"] == pytest.approx([2 * v for v in h.history["loss"]])
    assert h.history["loss"][0] > 0


def test_any_object_with_hook_methods(data):
    xs, ys, _, _ = data

    class Plain:
        def __init__(self):
            self.epochs = []

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append((epoch, sorted(logs)))

    p = Plain()
    model().fit(xs, ys, batch_size=8, epochs=3, verbose=0, callbacks=[p])
    assert p.epochs == [(e, ["loss", "mae"]) for e in range(3)]


def test_stop_training_at_epoch_end(data):
    xs, ys, _, _ = data

    class Stop(C.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    m = model()
    h = m.fit(xs, ys, batch_size=8, epochs=10, verbose=0, callbacks=[Stop()])
    assert h.epoch == [0, 1] and len(h.history["loss"]) == 2
    assert h.stopped and "stop_training" in h.stopped
    # The flag is reset by the next fit.
    h = m.fit(xs, ys, batch_size=8, epochs=3, verbose=0)
    assert h.epoch == [0, 1, 2] and h.stopped is None


def test_stop_training_inside_an_epoch(data):
    xs, ys, _, _ = data
    batches = []

    class Stop(C.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batches.append(batch)
            if batch == 1:
                self.model.stop_training = True

    h = model().fit(xs, ys, batch_size=8, epochs=5, verbose=0, callbacks=[Stop()])
    assert batches == [0, 1]
    assert h.epoch == [0] and h.stopped


def test_exception_in_a_callback_propagates(data):
    xs, ys, vx, _ = data

    class Boom(Exception):
        pass

    def explode(epoch, logs):
        if epoch == 1:
            raise Boom("from the callback")

    m = model()
    with pytest.raises(Boom, match="from the callback"):
        m.fit(xs, ys, batch_size=8, epochs=5, verbose=0, callbacks=[C.LambdaCallback(on_epoch_end=explode)])
    y = m.predict(vx)
    assert np.all(np.isfinite(y))
    # Raised from a batch hook, too; the model keeps working afterwards.
    with pytest.raises(KeyError):
        m.fit(xs, ys, batch_size=8, epochs=1, verbose=0,
              callbacks=[C.LambdaCallback(on_batch_end=lambda b, logs: {}["missing"])])
    h = m.fit(xs, ys, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(h.history["loss"][0])


def test_learning_rate_scheduler_changes_lr(data):
    xs, ys, _, _ = data
    m = model()
    snaps = []
    h = m.fit(
        xs, ys, batch_size=8, epochs=3, shuffle=False, verbose=0,
        callbacks=[
            C.LearningRateScheduler(lambda epoch, lr: lr if epoch == 0 else 0.0),
            C.ReduceLROnPlateau(monitor="loss", patience=100),
            C.LambdaCallback(on_epoch_end=lambda e, logs: snaps.append(m.get_weights())),
        ],
    )
    assert h.history["lr"] == pytest.approx([0.03, 0.0, 0.0])  # compiled.h5: Adam at 0.03
    # With lr = 0 the weights do not move.
    for a, b in zip(snaps[1], snaps[2]):
        assert np.array_equal(a, b)
    m2 = model()
    h = m2.fit(xs, ys, batch_size=8, epochs=3, verbose=0,
               callbacks=[C.LearningRateScheduler(lambda epoch, lr: 0.01 * (epoch + 1))])
    assert h.history["lr"] == pytest.approx([0.01, 0.02, 0.03])


def test_lr_scheduler_zero_from_start_freezes_weights(data):
    xs, ys, _, _ = data
    m = model()
    w0 = m.get_weights()
    m.fit(xs, ys, batch_size=8, epochs=2, verbose=0, callbacks=[C.LearningRateScheduler(lambda e, lr: 0.0)])
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), w0))
    # As in Keras, the scheduler set the optimizer's learning rate, which persists into
    # the next fit; a new compile starts a fresh optimizer.
    h = m.fit(xs, ys, batch_size=8, epochs=1, verbose=0, callbacks=[C.ReduceLROnPlateau(monitor="loss")])
    assert h.history["lr"] == [0.0]
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), w0))
    m.compile(optimizer={"class_name": "Adam", "config": {"learning_rate": 0.03}}, loss="mse")
    h = m.fit(xs, ys, batch_size=8, epochs=1, verbose=0, callbacks=[C.ReduceLROnPlateau(monitor="loss")])
    assert h.history["lr"] == pytest.approx([0.03])
    assert any(not np.array_equal(a, b) for a, b in zip(m.get_weights(), w0))


def test_model_checkpoint_and_csv_logger(data, tmp_path):
    xs, ys, vx, vy = data
    m = model()
    h = m.fit(
        xs, ys, batch_size=8, epochs=3, shuffle=False, verbose=0, validation_data=(vx, vy),
        callbacks=[
            C.ModelCheckpoint(tmp_path / "m.{epoch:02d}.h5"),
            C.ModelCheckpoint(tmp_path / "best.npz", save_best_only=True, save_weights_only=True),
            C.CSVLogger(tmp_path / "log.csv"),
        ],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz", "log.csv", "m.01.h5", "m.02.h5", "m.03.h5"]
    last = lcjit.load(tmp_path / "m.03.h5")
    assert np.array_equal(last.predict(vx), m.predict(vx))
    assert last.training_config_json()
    first = lcjit.load(tmp_path / "m.01.h5")
    assert not np.array_equal(first.predict(vx), m.predict(vx))
    # val_loss improved every epoch here, so the best weights are the last ones.
    assert h.history["val_loss"] == sorted(h.history["val_loss"], reverse=True)
    best = model()
    best.load_weights(tmp_path / "best.npz")
    assert np.array_equal(best.predict(vx), m.predict(vx))
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "loss", "mae", "val_loss", "val_mae"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2]
    for i, r in enumerate(rows[1:]):
        assert float(r[1]) == pytest.approx(h.history["loss"][i], rel=1e-9)
        assert float(r[3]) == pytest.approx(h.history["val_loss"][i], rel=1e-9)


def test_terminate_on_nan(data):
    xs, ys, _, _ = data
    bad = ys.copy()
    bad[:] = np.nan
    m = model()
    h = m.fit(xs, bad, batch_size=8, epochs=3, verbose=0, callbacks=[C.TerminateOnNaN()])
    assert h.epoch == [0]
    assert h.stopped and "TerminateOnNaN" in h.stopped
    assert np.isnan(h.history["loss"][0])


def test_unknown_monitor_is_a_warning(data):
    xs, ys, _, _ = data
    h = model().fit(xs, ys, batch_size=8, epochs=2, verbose=0, callbacks=[C.EarlyStopping(monitor="val_nope")])
    assert h.epoch == [0, 1] and h.stopped is None
    assert any("val_nope" in w and "loss" in w for w in h.warnings)


def test_callback_configs():
    es = C.EarlyStopping(patience=3)
    assert es.get_config()["patience"] == 3 and "EarlyStopping" in repr(es)
    assert C.ReduceLROnPlateau(epsilon=0.5).get_config()["min_delta"] == 0.5
    with pytest.raises(TypeError):
        C.ReduceLROnPlateau(bogus=1)
    with pytest.raises(TypeError):
        C.LearningRateScheduler(0.1)
