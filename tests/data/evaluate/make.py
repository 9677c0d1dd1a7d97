"""Golden figures for `lcjit evaluate` and the Keras metrics (tf-keras 2.21).

Run from anywhere with the tf-keras venv:
    TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES= python tests/data/evaluate/make.py

Writes, next to this script, one directory per model:
    model.h5     the model with weights and its training_config (loss, metrics)
    model.json   the architecture alone (no training_config)
    x.npy, y.npy the evaluation data (a sample count that is not a multiple of the batch)
    expected.json  {"batch_size": B, "logs": model.evaluate(x, y, batch_size=B,
                    return_dict=True) in Keras's key order}
and formulas.npz + formulas.json: per-metric results of tf-keras metric objects on fixed
arrays (two update_state calls, to check the accumulation across batches).
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tf_keras import layers, regularizers

HERE = os.path.dirname(os.path.abspath(__file__))


def save_case(name, model, x, y, batch_size):
    d = os.path.join(HERE, name)
    os.makedirs(d, exist_ok=True)
    logs = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    model.save(os.path.join(d, "model.h5"))
    # The architecture alone (no training_config): `lcjit evaluate` then needs --loss.
    with open(os.path.join(d, "model.json"), "w") as f:
        f.write(model.to_json())
    np.save(os.path.join(d, "x.npy"), x.astype(np.float32))
    np.save(os.path.join(d, "y.npy"), y.astype(np.float32))
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(
            {"batch_size": batch_size, "logs": {k: float(v) for k, v in logs.items()}},
            f,
            indent=1,
        )
    print(name, logs)
    return logs


def lc1d_regression(rng):
    """LC1D (implementation 1) with L2 kernel and L1 bias regularizers; regression metrics."""
    inp = keras.Input((12, 3))
    h = layers.LocallyConnected1D(
        4, 3, implementation=1, activation="tanh",
        kernel_regularizer=regularizers.l2(0.01),
        bias_regularizer=regularizers.l1(0.002),
        bias_initializer="glorot_uniform",
    )(inp)
    h = layers.Flatten()(h)
    out = layers.Dense(2, kernel_regularizer=regularizers.L1L2(l1=0.001, l2=0.003))(h)
    m = keras.Model(inp, out)
    m.compile(
        optimizer="adam",
        loss="mse",
        metrics=[
            "mae", "mean_squared_error", "mse", "mape", "msle",
            "mean_squared_logarithmic_error", "cosine_similarity", "logcosh",
            keras.metrics.RootMeanSquaredError(), keras.metrics.MeanAbsoluteError(),
            keras.metrics.MeanAbsolutePercentageError(name="mape2"),
            keras.metrics.CosineSimilarity(name="cos"),
        ],
    )
    x = rng.normal(size=(37, 12, 3))
    y = np.abs(rng.normal(size=(37, 2))) + 0.1
    y[3, 0] = 0.0  # a zero target: MAPE's max(|t|, ε) clipping
    return m, x, y, 8


def lc2d_softmax(rng):
    """LC2D (implementation 2) + softmax with categorical crossentropy; some confident
    predictions so that the loss from logits differs from the clipped probabilities."""
    inp = keras.Input((6, 6, 2))
    h = layers.LocallyConnected2D(3, (3, 3), implementation=2, activation="relu")(inp)
    h = layers.Flatten()(h)
    out = layers.Dense(4, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(stddev=12.0))(h)
    m = keras.Model(inp, out)
    m.compile(
        optimizer="sgd",
        loss="categorical_crossentropy",
        metrics=[
            "accuracy", "categorical_accuracy", "top_k_categorical_accuracy",
            keras.metrics.TopKCategoricalAccuracy(k=2, name="top2"),
            "categorical_crossentropy", "crossentropy", "mse",
            keras.metrics.CategoricalCrossentropy(label_smoothing=0.1, name="cce_smooth"),
            "poisson",
        ],
    )
    x = rng.normal(size=(29, 6, 6, 2)) * 2.0
    y = np.eye(4)[rng.integers(0, 4, 29)]
    return m, x, y, 6


def binary_sigmoid(rng):
    """A sigmoid output with binary crossentropy: AUC variants and binary metrics; the
    targets are a flat vector (n,) as Keras allows for a (n, 1) output."""
    inp = keras.Input((10, 2))
    h = layers.LocallyConnected1D(2, 3, implementation=3, activation="relu")(inp)
    h = layers.Flatten()(h)
    out = layers.Dense(1, activation="sigmoid")(h)
    m = keras.Model(inp, out)
    m.compile(
        optimizer="rmsprop",
        loss="binary_crossentropy",
        metrics=[
            "acc", "binary_accuracy", keras.metrics.AUC(),
            keras.metrics.AUC(curve="PR", name="pr_auc"),
            keras.metrics.AUC(num_thresholds=50, summation_method="minoring", name="auc_min"),
            keras.metrics.AUC(num_thresholds=7, summation_method="majoring", name="auc_maj"),
            keras.metrics.AUC(thresholds=[0.1, 0.35, 0.5, 0.8], name="auc_thr"),
            keras.metrics.BinaryAccuracy(threshold=0.3, name="bacc3"),
            "binary_crossentropy", "crossentropy", "mse",
        ],
    )
    x = rng.normal(size=(43, 10, 2))
    y = (rng.random(43) < 0.45).astype(np.float32)
    return m, x, y, 10


def sparse_softmax(rng):
    """Seven classes with integer labels (n,): sparse accuracy and top-k variants."""
    inp = keras.Input((8, 3))
    h = layers.LocallyConnected1D(5, 2, strides=2, implementation=1)(inp)
    h = layers.Flatten()(h)
    out = layers.Dense(7, activation="softmax")(h)
    m = keras.Model(inp, out)
    m.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=[
            "accuracy", "sparse_categorical_accuracy",
            "sparse_top_k_categorical_accuracy",
            keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2"),
            "sparse_categorical_crossentropy", "ce",
        ],
    )
    x = rng.normal(size=(23, 8, 3))
    y = rng.integers(0, 7, 23).astype(np.float32)
    return m, x, y, 4


def activity(rng):
    """Activity regularizers on an inner layer and on the output layer: evaluate's loss
    includes them (divided by the batch size, per batch) as test_step's `self.losses`."""
    inp = keras.Input((9, 2))
    h = layers.LocallyConnected1D(
        3, 3, implementation=1, activation="relu",
        activity_regularizer=regularizers.l2(0.05),
    )(inp)
    h = layers.Flatten()(h)
    out = layers.Dense(
        3, activation="sigmoid",
        activity_regularizer=regularizers.L1L2(l1=0.02, l2=0.01),
        kernel_regularizer=regularizers.l2(0.01),
    )(h)
    m = keras.Model(inp, out)
    m.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy", "mae"])
    x = rng.normal(size=(19, 9, 2))
    y = (rng.random((19, 3)) < 0.5).astype(np.float32)
    return m, x, y, 5


def formulas(rng):
    """Metric objects on fixed arrays, updated twice (two 'batches')."""
    arrays = {}
    out = {}

    def run(name, metric, pairs):
        for yt, yp in pairs:
            metric.update_state(yt, yp)
        out[name] = float(metric.result().numpy())

    reg_t = [rng.normal(size=(5, 3)).astype("f4"), rng.normal(size=(3, 3)).astype("f4")]
    reg_p = [rng.normal(size=(5, 3)).astype("f4"), rng.normal(size=(3, 3)).astype("f4")]
    reg_t[0][1, 2] = 0.0
    reg_p[1][2] = 0.0  # a zero prediction row: l2_normalize's epsilon
    prob_p = [rng.random((5, 4)).astype("f4"), rng.random((3, 4)).astype("f4")]
    prob_p[0][0] = [1.0, 0.0, 0.0, 0.0]
    prob_p[1][1] = [0.25, 0.25, 0.25, 0.25]  # ties: argmax picks the first
    onehot = [np.eye(4, dtype="f4")[rng.integers(0, 4, 5)], np.eye(4, dtype="f4")[rng.integers(0, 4, 3)]]
    sparse = [np.argmax(o, -1).astype("f4") for o in onehot]
    bin_p = [rng.random((6, 1)).astype("f4"), rng.random((4, 1)).astype("f4")]
    bin_p[0][0, 0] = 0.5
    bin_p[1][0, 0] = 0.0
    bin_p[1][1, 0] = 1.0
    bin_t = [(rng.random((6, 1)) < 0.5).astype("f4"), np.array([[0], [1], [1], [0]], "f4")]
    for i in range(2):
        arrays.update({
            f"reg_t{i}": reg_t[i], f"reg_p{i}": reg_p[i], f"prob_p{i}": prob_p[i],
            f"onehot{i}": onehot[i], f"sparse{i}": sparse[i], f"bin_p{i}": bin_p[i],
            f"bin_t{i}": bin_t[i],
        })
    M = keras.metrics
    reg = list(zip(reg_t, reg_p))
    pos = [(np.abs(t), np.abs(p)) for t, p in reg]
    run("mae", M.MeanAbsoluteError(), reg)
    run("mse", M.MeanSquaredError(), reg)
    run("rmse", M.RootMeanSquaredError(), reg)
    run("mape", M.MeanAbsolutePercentageError(), reg)
    run("msle", M.MeanSquaredLogarithmicError(), reg)
    run("msle_pos", M.MeanSquaredLogarithmicError(), pos)
    run("cosine_similarity", M.CosineSimilarity(), reg)
    run("logcosh", M.LogCoshError(), reg)
    run("poisson", M.Poisson(), pos)
    run("hinge", M.Hinge(), reg)
    run("squared_hinge", M.SquaredHinge(), reg)
    run("categorical_hinge", M.CategoricalHinge(), reg)
    run("categorical_accuracy", M.CategoricalAccuracy(), list(zip(onehot, prob_p)))
    run("sparse_categorical_accuracy", M.SparseCategoricalAccuracy(), list(zip(sparse, prob_p)))
    run("top2", M.TopKCategoricalAccuracy(k=2), list(zip(onehot, prob_p)))
    run("sparse_top2", M.SparseTopKCategoricalAccuracy(k=2), list(zip(sparse, prob_p)))
    run("categorical_crossentropy", M.CategoricalCrossentropy(), list(zip(onehot, prob_p)))
    run("sparse_categorical_crossentropy", M.SparseCategoricalCrossentropy(), list(zip(sparse, prob_p)))
    run("kld", M.KLDivergence(), list(zip(onehot, prob_p)))
    run("binary_accuracy", M.BinaryAccuracy(), list(zip(bin_t, bin_p)))
    run("binary_crossentropy", M.BinaryCrossentropy(), list(zip(bin_t, bin_p)))
    run("accuracy_eq", M.Accuracy(), list(zip(bin_t, [np.round(p) for p in bin_p])))
    run("auc", M.AUC(), list(zip(bin_t, bin_p)))
    run("auc_pr", M.AUC(curve="PR"), list(zip(bin_t, bin_p)))
    run("auc_prgain", M.AUC(curve="PR_GAIN"), list(zip(bin_t, bin_p)))
    run("auc_min", M.AUC(num_thresholds=3, summation_method="minoring"), list(zip(bin_t, bin_p)))
    run("auc_maj", M.AUC(num_thresholds=3, summation_method="majoring"), list(zip(bin_t, bin_p)))
    run("auc_thr", M.AUC(thresholds=[0.2, 0.3, 0.7]), list(zip(bin_t, bin_p)))
    run("auc_logits", M.AUC(from_logits=True), list(zip(bin_t, [p * 8 - 4 for p in bin_p])))
    run("auc_multiclass_flat", M.AUC(), list(zip(onehot, prob_p)))
    np.savez(os.path.join(HERE, "formulas.npz"), **arrays)
    with open(os.path.join(HERE, "formulas.json"), "w") as f:
        json.dump(out, f, indent=1)
    print("formulas", out)


def main():
    keras.utils.set_random_seed(9)
    rng = np.random.default_rng(9)
    for name, build in [
        ("lc1d_regression", lc1d_regression),
        ("lc2d_softmax", lc2d_softmax),
        ("binary_sigmoid", binary_sigmoid),
        ("sparse_softmax", sparse_softmax),
        ("activity", activity),
    ]:
        m, x, y, b = build(rng)
        save_case(name, m, x.astype("f4"), y.astype("f4"), b)
    formulas(rng)


if __name__ == "__main__":
    main()
