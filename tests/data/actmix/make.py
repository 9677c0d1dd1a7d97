"""Golden cases for activity regularizers and mixed-precision dtype policies (issue 9).

Run with the tf-keras 2.21 venv from the repository root:
    TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES= /work/venv/bin/python tests/data/actmix/make.py

Each case directory holds:
    compiled.h5  the model saved after compile (training_config included), before training
    x.npy, y.npy inputs and Keras's predictions (inference mode)
    dy.npy, grads.npz  a fixed cotangent and the gradients of sum(y * dy) in inference mode
                 (keys `x` and `<layer>/<weight>`), what `lcjit grad` writes
    xs.npy, ys.npy, history.npy, after.npz
                 fit(xs, ys, batch_size=4, epochs=2, shuffle=False): loss per epoch and
                 the weights after training
    case.json    a description

Mixed-precision layers get the policy through their own `dtype` argument (the global
policy stays float32), so the model's own policy is float32 and `compile` does not wrap
the optimizer in a LossScaleOptimizer (tf_keras/src/engine/training.py `_get_optimizer`
wraps only when `self.dtype_policy.name == "mixed_float16"`).
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import numpy as np
import tensorflow as tf
import tf_keras as keras
from tf_keras import layers, regularizers

ROOT = os.path.dirname(os.path.abspath(__file__))


def lc1d_act(reg):
    inp = keras.Input((10, 3))
    h = layers.LocallyConnected1D(4, 3, activation="relu", activity_regularizer=reg)(inp)
    h = layers.Flatten()(h)
    out = layers.Dense(2)(h)
    return keras.Model(inp, out)


def lc2d_act():
    inp = keras.Input((6, 6, 2))
    h = layers.LocallyConnected2D(3, (3, 3), activation="tanh",
                                  activity_regularizer=regularizers.L2(0.02))(inp)
    h = layers.Flatten()(h)
    out = layers.Dense(3, activation="softmax")(h)
    return keras.Model(inp, out)


def lc1d_act_out():
    """Activity regularizers on a hidden LC1D (l1_l2) and on the softmax output (l1):
    the step computes the loss from the logits, the output's penalty from the softmax."""
    inp = keras.Input((8, 2))
    h = layers.LocallyConnected1D(3, 2, strides=2, activation="sigmoid",
                                  activity_regularizer=regularizers.L1L2(0.01, 0.02))(inp)
    h = layers.Flatten()(h)
    out = layers.Dense(3, activation="softmax", activity_regularizer=regularizers.L1(0.05))(h)
    return keras.Model(inp, out)


def lc1d_mixed(policy):
    inp = keras.Input((10, 3))
    h = layers.LocallyConnected1D(4, 3, activation="relu", dtype=policy)(inp)
    h = layers.LocallyConnected1D(3, 2, strides=2, activation="linear", dtype=policy)(h)
    h = layers.Flatten(dtype=policy)(h)
    out = layers.Dense(2, dtype="float32")(h)
    return keras.Model(inp, out)


def lc2d_mixed(policy):
    inp = keras.Input((6, 6, 2))
    h = layers.LocallyConnected2D(3, (2, 2), activation="relu", dtype=policy)(inp)
    h = layers.Flatten(dtype=policy)(h)
    h = layers.Dense(5, activation="relu", dtype=policy)(h)
    out = layers.Dense(3, activation="softmax", dtype="float32")(h)
    return keras.Model(inp, out)


CASES = [
    ("act_lc1d_l2", lambda: lc1d_act(regularizers.L2(0.01)), "mse",
     lambda: keras.optimizers.SGD(0.05), "regression"),
    ("act_lc1d_l1", lambda: lc1d_act(regularizers.L1(0.01)), "mse",
     lambda: keras.optimizers.Adam(0.01), "regression"),
    ("act_lc2d_l2", lc2d_act, "categorical_crossentropy",
     lambda: keras.optimizers.Adam(0.01), "classes"),
    ("act_lc1d_out", lc1d_act_out, "categorical_crossentropy",
     lambda: keras.optimizers.SGD(0.1, momentum=0.9), "classes"),
    ("mixed16_lc1d", lambda: lc1d_mixed("mixed_float16"), "mse",
     lambda: keras.optimizers.SGD(0.05), "regression"),
    ("mixed16_lc2d", lambda: lc2d_mixed("mixed_float16"), "categorical_crossentropy",
     lambda: keras.optimizers.Adam(0.01), "classes"),
    ("mixedbf16_lc1d", lambda: lc1d_mixed("mixed_bfloat16"), "mse",
     lambda: keras.optimizers.SGD(0.05), "regression"),
]


def data(model, kind, rng, n):
    shape = (n,) + tuple(model.input_shape[1:])
    x = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    out = model.output_shape[1:]
    if kind == "classes":
        y = np.eye(out[-1], dtype=np.float32)[rng.integers(0, out[-1], n)]
    else:
        y = (rng.standard_normal((n,) + tuple(out)) * 0.5).astype(np.float32)
    return x, y


def weights_dict(model):
    d = {}
    for layer in model.layers:
        for w in layer.weights:
            d[f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}"] = w.numpy()
    return d


def make(seed, name, build, loss, opt, kind):
    keras.utils.set_random_seed(seed)
    keras.backend.clear_session()
    model = build()
    model.compile(optimizer=opt(), loss=loss)
    d = os.path.join(ROOT, name)
    os.makedirs(d, exist_ok=True)
    model.save(os.path.join(d, "compiled.h5"))
    rng = np.random.default_rng(seed)
    x, _ = data(model, kind, rng, 3)
    y = model(x, training=False).numpy().astype(np.float32)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = tf.cast(model(xt, training=False), tf.float32)
        s = tf.reduce_sum(out * dy)
    ws = [w for layer in model.layers for w in layer.trainable_weights]
    names = [f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}"
             for layer in model.layers for w in layer.trainable_weights]
    g = tape.gradient(s, [xt] + ws)
    grads = {"x": tf.cast(g[0], tf.float32).numpy()}
    for n_, gw in zip(names, g[1:]):
        grads[n_] = tf.cast(gw, tf.float32).numpy()
    np.save(os.path.join(d, "x.npy"), x)
    np.save(os.path.join(d, "y.npy"), y)
    np.save(os.path.join(d, "dy.npy"), dy)
    np.savez(os.path.join(d, "grads.npz"), **grads)
    xs, ys = data(model, kind, rng, 10)
    np.save(os.path.join(d, "xs.npy"), xs)
    np.save(os.path.join(d, "ys.npy"), ys)
    h = model.fit(xs, ys, batch_size=4, epochs=2, shuffle=False, verbose=0)
    np.save(os.path.join(d, "history.npy"), np.array(h.history["loss"], np.float32))
    np.savez(os.path.join(d, "after.npz"), **weights_dict(model))
    desc = {
        "seed": seed,
        "loss": loss,
        "optimizer": type(model.optimizer).__name__,
        "policies": {l.name: l.dtype_policy.name for l in model.layers},
        "history": [float(v) for v in h.history["loss"]],
        "tf_keras": keras.__version__,
    }
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(desc, f, indent=1)
    print(name, desc["history"], desc["optimizer"])


if __name__ == "__main__":
    for i, c in enumerate(CASES):
        make(900 + i, *c)
