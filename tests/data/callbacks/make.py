"""Golden figures for lcjit's callbacks (tests/train_callbacks.rs), made with tf-keras 2.21.

Run from this folder:

    TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES="" /work/venv/bin/python make.py

One small locally connected regression model (LC1D with an L2 kernel penalty, so the
validation loss includes regularization, then Dense) is saved once, compiled, before any
training, twice with the same initial weights (`compiled.h5` with Adam at 0.03 and
`compiled_fast.h5` at 0.08; `training_config`: Adam, mse, metric mae).
Every case reloads that file (fresh optimizer, same initial weights) and runs
`fit(xs, ys, batch_size=8, shuffle=False, validation_data=(vx, vy), callbacks=[...])`.
The learning rate is large enough to overfit the 40 noisy training samples, so
`val_loss` turns up after a few epochs and EarlyStopping stops early; at 0.08 the
training loss rises at times, which ReduceLROnPlateau answers.

Per case `<name>/`:
  history.json  Keras's `history.history` (every key: loss, mae, val_loss, val_mae, lr)
  result.json   the callback's arguments, the epochs run, `stopped_epoch`, `best_epoch`
  after.npz     every weight after `fit` (restored best weights for restore_best_weights),
                keys `<layer>/<weight>` in Keras layout
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import tensorflow as tf
import tf_keras as keras

HERE = os.path.dirname(os.path.abspath(__file__))


def data():
    rng = np.random.default_rng(9)
    n, nv, length, ch = 40, 20, 16, 2
    x = rng.normal(size=(n + nv, length, ch)).astype(np.float32)
    w = rng.normal(size=(length, ch)).astype(np.float32) / 4
    y = np.tanh((x * w).sum(axis=(1, 2)))[:, None]
    y = (y + 0.3 * rng.normal(size=y.shape)).astype(np.float32)
    return x[:n], y[:n], x[n:], y[n:]


def build(lr):
    keras.utils.set_random_seed(9)
    model = keras.Sequential(
        [
            keras.layers.InputLayer(input_shape=(16, 2)),
            keras.layers.LocallyConnected1D(
                4,
                3,
                activation="tanh",
                kernel_regularizer=keras.regularizers.l2(1e-3),
                name="lc",
            ),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(1, name="out"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="mse",
        metrics=["mae"],
    )
    return model


def weights(model):
    out = {}
    for layer in model.layers:
        for v in layer.weights:
            short = v.name.split("/")[-1].split(":")[0]
            out[f"{layer.name}/{short}"] = v.numpy()
    return out


# The two saved models: same initial weights (same seed), Adam at two learning rates.
MODELS = {"compiled.h5": 0.03, "compiled_fast.h5": 0.08}

# (case name, model file, callback factory, arguments recorded for the Rust test, epochs)
CASES = [
    (
        "early_stopping",
        "compiled.h5",
        lambda: keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=2, restore_best_weights=True
        ),
        {"monitor": "val_loss", "patience": 2, "restore_best_weights": True},
        40,
    ),
    (
        "early_stopping_delta",
        "compiled.h5",
        lambda: keras.callbacks.EarlyStopping(
            monitor="val_mae", patience=1, min_delta=0.01, start_from_epoch=2
        ),
        {"monitor": "val_mae", "patience": 1, "min_delta": 0.01, "start_from_epoch": 2},
        40,
    ),
    (
        "early_stopping_baseline",
        "compiled_fast.h5",
        lambda: keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=3, baseline=0.3, restore_best_weights=True
        ),
        {"monitor": "val_loss", "patience": 3, "baseline": 0.3, "restore_best_weights": True},
        40,
    ),
    (
        "reduce_lr_p0",
        "compiled_fast.h5",
        lambda: keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0),
        {"monitor": "loss", "factor": 0.5, "patience": 0},
        12,
    ),
    (
        "reduce_lr_p1",
        "compiled_fast.h5",
        lambda: keras.callbacks.ReduceLROnPlateau(
            monitor="loss", factor=0.5, patience=1, cooldown=1, min_delta=0.005, min_lr=0.004
        ),
        {
            "monitor": "loss",
            "factor": 0.5,
            "patience": 1,
            "cooldown": 1,
            "min_delta": 0.005,
            "min_lr": 0.004,
        },
        20,
    ),
]


def main():
    xs, ys, vx, vy = data()
    for name, arr in [("xs", xs), ("ys", ys), ("vx", vx), ("vy", vy)]:
        np.save(os.path.join(HERE, f"{name}.npy"), arr)
    for file, lr in MODELS.items():
        build(lr).save(os.path.join(HERE, file))
    for name, file, make, args, epochs in CASES:
        m = keras.models.load_model(os.path.join(HERE, file))
        cb = make()
        h = m.fit(
            xs,
            ys,
            batch_size=8,
            epochs=epochs,
            shuffle=False,
            validation_data=(vx, vy),
            callbacks=[cb],
            verbose=0,
        )
        folder = os.path.join(HERE, name)
        os.makedirs(folder, exist_ok=True)
        hist = {k: [float(v) for v in vals] for k, vals in h.history.items()}
        with open(os.path.join(folder, "history.json"), "w") as f:
            json.dump(hist, f, indent=1)
        result = {
            "model": file,
            "callback": type(cb).__name__,
            "args": args,
            "epochs": epochs,
            "batch_size": 8,
            "epochs_run": len(hist["loss"]),
            "keys": list(hist.keys()),
        }
        if isinstance(cb, keras.callbacks.EarlyStopping):
            result["stopped_epoch"] = int(cb.stopped_epoch)
            result["best_epoch"] = int(cb.best_epoch)
            result["best"] = float(cb.best)
        np.savez(os.path.join(folder, "after.npz"), **weights(m))
        with open(os.path.join(folder, "result.json"), "w") as f:
            json.dump(result, f, indent=1)
        print(name, json.dumps(result), json.dumps({k: v[-3:] for k, v in hist.items()}))


if __name__ == "__main__":
    main()
