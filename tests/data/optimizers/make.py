"""Golden figures for every optimizer flavour (tests/train_optimizers_keras.rs).

Run with tf-keras 2.21 (TensorFlow 2.21, CPU):

    TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES="" /work/venv/bin/python tests/data/optimizers/make.py

One model for all cases: Input (8, 2) -> LocallyConnected1D(3 filters, kernel 3, relu)
-> Flatten -> Dense(2), with fixed initial weights (numpy seed 0), MSE loss, compiled
and saved, then loaded back with `keras.models.load_model` (what `lcjit fit MODEL`
stands for) and trained for 3 epochs on the 12 fixed samples of x.npy / y.npy with
batch 4 and shuffle=False. The one exception, current_nadam_fresh, trains the compiled
model in memory instead: tf-keras's Nadam gives other figures when `fit` builds the
optimizer itself (see `Optimizer::set_keras_trace` in src/train/optimizer.rs).

Per case <flavour>_<rule>/:
  model.h5     the compiled model before training, `model.save(path, save_format="h5")`
               (its `training_config` holds the optimizer config as tf-keras writes it:
               legacy optimizers without an `is_legacy_optimizer` key, current ones with
               `is_legacy_optimizer: false`)
  history.npy  Keras's loss per epoch (float64)
  after.npz    every weight after training, keys `<layer>/<weight>` in Keras layout
cases.json lists the cases with their optimizer config.

Hyperparameters are chosen so that the places where the flavours differ show up in the
figures: epsilon 1e-3 (RMSprop's sqrt(ms) + eps vs sqrt(ms + eps), Adagrad's eps inside
or outside the root, Adam's eps-hat), rho/beta below the defaults (bias corrections and
moving averages move quickly in 9 steps), and, for the legacy cases with "decay", the
inverse-time learning-rate decay of optimizer_v2.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCHS = 3
BATCH = 4
SAMPLES = 12

# (name, class, kwargs); the same kwargs for the legacy and the current class.
RULES = [
    ("sgd", "SGD", dict(learning_rate=0.05)),
    ("sgd_momentum", "SGD", dict(learning_rate=0.02, momentum=0.9)),
    ("sgd_nesterov", "SGD", dict(learning_rate=0.02, momentum=0.9, nesterov=True)),
    ("rmsprop", "RMSprop", dict(learning_rate=0.01, rho=0.8, epsilon=1e-3)),
    (
        "rmsprop_momentum",
        "RMSprop",
        dict(learning_rate=0.01, rho=0.8, momentum=0.5, epsilon=1e-3),
    ),
    (
        "rmsprop_centered",
        "RMSprop",
        dict(learning_rate=0.01, rho=0.8, epsilon=1e-3, centered=True),
    ),
    (
        "rmsprop_centered_momentum",
        "RMSprop",
        dict(learning_rate=0.01, rho=0.8, momentum=0.5, epsilon=1e-3, centered=True),
    ),
    ("adam", "Adam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.9, epsilon=1e-3)),
    (
        "adam_amsgrad",
        "Adam",
        dict(learning_rate=0.01, beta_1=0.8, beta_2=0.9, epsilon=1e-3, amsgrad=True),
    ),
    (
        "adagrad",
        "Adagrad",
        dict(learning_rate=0.05, initial_accumulator_value=0.05, epsilon=1e-3),
    ),
    ("adadelta", "Adadelta", dict(learning_rate=1.0, rho=0.9, epsilon=1e-3)),
    ("adamax", "Adamax", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.9, epsilon=1e-3)),
    ("nadam", "Nadam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.9, epsilon=1e-3)),
    (
        "ftrl",
        "Ftrl",
        dict(
            learning_rate=0.1,
            initial_accumulator_value=0.05,
            l1_regularization_strength=0.002,
            l2_regularization_strength=0.01,
            beta=0.1,
        ),
    ),
    (
        # optimizer_v2 switches to the FtrlV2 kernel when shrinkage > 0.
        "ftrl_shrinkage",
        "Ftrl",
        dict(
            learning_rate=0.1,
            l1_regularization_strength=0.002,
            l2_shrinkage_regularization_strength=0.05,
        ),
    ),
]

# Only in one flavour.
CURRENT_ONLY = [
    (
        "adamw",
        "AdamW",
        dict(
            learning_rate=0.01, weight_decay=0.05, beta_1=0.8, beta_2=0.9, epsilon=1e-3
        ),
    ),
]
LEGACY_ONLY = [
    # optimizer_v2's inverse-time decay lr / (1 + decay * iterations).
    ("sgd_momentum_decay", "SGD", dict(learning_rate=0.02, momentum=0.9, decay=0.1)),
    (
        "rmsprop_decay",
        "RMSprop",
        dict(learning_rate=0.01, rho=0.8, epsilon=1e-3, decay=0.1),
    ),
    # optimizer_v2 chains clipvalue, then clipnorm (the current optimizer applies one).
    ("sgd_clip", "SGD", dict(learning_rate=0.05, clipvalue=0.05, clipnorm=0.1)),
    # A fixed per-coordinate rate (n^0 = 1).
    ("ftrl_power0", "Ftrl", dict(learning_rate=0.05, learning_rate_power=0.0)),
]


def data():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1.0, 1.0, size=(SAMPLES, 8, 2)).astype(np.float32)
    y = rng.uniform(-1.0, 1.0, size=(SAMPLES, 2)).astype(np.float32)
    return x, y


def build():
    inp = keras.Input(shape=(8, 2), name="x")
    h = keras.layers.LocallyConnected1D(3, 3, activation="relu", name="lc")(inp)
    h = keras.layers.Flatten(name="flatten")(h)
    out = keras.layers.Dense(2, name="dense")(h)
    model = keras.Model(inp, out, name="opt_case")
    rng = np.random.default_rng(0)
    weights = []
    for w in model.get_weights():
        if w.ndim == 1 or w.shape == (6, 3):  # biases: small positive (ReLU stays alive)
            weights.append(rng.uniform(0.0, 0.2, size=w.shape).astype(np.float32))
        else:
            weights.append(rng.uniform(-0.5, 0.5, size=w.shape).astype(np.float32))
    model.set_weights(weights)
    return model


def keras_weights(model):
    out = {}
    for layer in model.layers:
        for w in layer.weights:
            short = w.name.split("/")[-1].split(":")[0]
            out[f"{layer.name}/{short}"] = w.numpy()
    return out


def optimizer(flavour, cls, kwargs):
    module = keras.optimizers.legacy if flavour == "legacy" else keras.optimizers
    return getattr(module, cls)(**kwargs)


def run_case(flavour, name, cls, kwargs, x, y, fresh=False):
    case = f"{flavour}_{name}" + ("_fresh" if fresh else "")
    d = os.path.join(HERE, case)
    os.makedirs(d, exist_ok=True)
    model = build()
    model.compile(optimizer=optimizer(flavour, cls, kwargs), loss="mse")
    path = os.path.join(d, "model.h5")
    model.save(path, save_format="h5")
    if not fresh:
        model = keras.models.load_model(path)
    h = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    np.save(os.path.join(d, "history.npy"), np.array(h.history["loss"], np.float64))
    np.savez(os.path.join(d, "after.npz"), **keras_weights(model))
    cfg = keras.optimizers.serialize(model.optimizer)
    return {"case": case, "flavour": flavour, "optimizer": cfg, "loss": h.history["loss"]}


def main():
    tf.keras.utils.set_random_seed(0)
    x, y = data()
    np.save(os.path.join(HERE, "x.npy"), x)
    np.save(os.path.join(HERE, "y.npy"), y)
    cases = []
    plan = [("legacy", r) for r in RULES + LEGACY_ONLY]
    plan += [("current", r) for r in RULES + CURRENT_ONLY]
    for flavour, (name, cls, kwargs) in plan:
        cases.append(run_case(flavour, name, cls, kwargs, x, y))
        print(cases[-1]["case"], cases[-1]["loss"])
    nadam = next(r for r in RULES if r[0] == "nadam")
    cases.append(run_case("current", *nadam, x, y, fresh=True))
    print(cases[-1]["case"], cases[-1]["loss"])
    with open(os.path.join(HERE, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1, default=str)
        f.write("\n")


if __name__ == "__main__":
    main()
