"""Implementation-2 LocallyConnected layers trained by tf-keras 2.21 with an L2 kernel
regularizer and a MaxNorm kernel constraint (and one with neither, trained by AdamW,
whose decoupled weight decay moves the masked entries too): the figures of
tests/impl2_lossless.rs.

Keras keeps the entries of an implementation-2 kernel outside the connectivity mask in
the variable (initialized randomly, saved, regularized, constrained), so its loss
history and weights after training depend on them. For each case this writes, under
case_<name>/:
  model.h5     the compiled model before fit (model_config, training_config, weights:
               the full dense implementation-2 kernels, masked entries non-zero as
               Keras's initializer leaves them)
  xs.npy ys.npy  training data
  history.npy  Keras's loss per epoch (regularization included)
  after.npz    every weight after fit, Keras layout, keys <layer>/<weight>
  case.json    what the case is
Run: TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES="" /work/venv/bin/python make.py
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import tensorflow as tf
import tf_keras as keras

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCHS = 3
BATCH = 4
SAMPLES = 10  # 3 batches, the last one smaller

# name, LC class, input shape, LC kwargs, MaxNorm kwargs (None: no regularizer and no
# constraint), optimizer
CASES = [
    ("lc1d_last_sgd", "1d", (9, 3),
     dict(filters=4, kernel_size=3, strides=2, padding="valid", data_format="channels_last"),
     dict(max_value=0.3, axis=0),
     lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)),
    ("lc1d_first_adam", "1d", (3, 10),
     dict(filters=3, kernel_size=4, strides=1, padding="same", data_format="channels_first"),
     dict(max_value=0.25, axis=[0, 1]),
     lambda: keras.optimizers.Adam(learning_rate=0.01)),
    ("lc2d_last_adam", "2d", (6, 5, 2),
     dict(filters=3, kernel_size=(3, 2), strides=(1, 2), padding="valid", data_format="channels_last"),
     dict(max_value=0.2, axis=0),
     lambda: keras.optimizers.Adam(learning_rate=0.02)),
    ("lc2d_first_sgd", "2d", (2, 5, 6),
     dict(filters=2, kernel_size=(2, 3), strides=(2, 1), padding="same", data_format="channels_first"),
     dict(max_value=0.2, axis=[1, 2]),
     lambda: keras.optimizers.SGD(learning_rate=0.1)),
    ("lc1d_last_adamw", "1d", (8, 2),
     dict(filters=3, kernel_size=3, strides=1, padding="valid", data_format="channels_last"),
     None,
     lambda: keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.2)),
]


def build(kind, input_shape, lc_kwargs, maxnorm):
    lc_cls = keras.layers.LocallyConnected1D if kind == "1d" else keras.layers.LocallyConnected2D
    inp = keras.Input(shape=input_shape, name="x")
    h = lc_cls(
        implementation=2,
        activation="tanh",
        kernel_regularizer=keras.regularizers.L2(0.05) if maxnorm else None,
        kernel_constraint=keras.constraints.MaxNorm(**maxnorm) if maxnorm else None,
        bias_initializer=keras.initializers.RandomUniform(-0.1, 0.1),
        name="lc",
        **lc_kwargs,
    )(inp)
    h = keras.layers.Flatten(name="flatten")(h)
    out = keras.layers.Dense(2, name="dense")(h)
    return keras.Model(inp, out, name="impl2")


def weights_dict(model):
    d = {}
    for layer in model.layers:
        for w in layer.weights:
            d[f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}"] = w.numpy()
    return d


def main():
    for i, (name, kind, shape, lc_kwargs, maxnorm, make_opt) in enumerate(CASES):
        keras.utils.set_random_seed(100 + i)
        model = build(kind, shape, lc_kwargs, maxnorm)
        model.compile(optimizer=make_opt(), loss="mse")
        kernel = model.get_layer("lc").kernel.numpy()
        mask = np.asarray(model.get_layer("lc").kernel_mask)
        masked = np.broadcast_to(mask, kernel.shape) == 0
        assert masked.any() and (kernel[masked] != 0).all(), name
        rng = np.random.default_rng(i)
        xs = rng.normal(size=(SAMPLES,) + shape).astype(np.float32)
        ys = rng.normal(size=(SAMPLES, 2)).astype(np.float32)
        out = os.path.join(HERE, f"case_{name}")
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "model.h5")
        if os.path.exists(path):
            os.remove(path)
        model.save(path, save_format="h5")
        before = weights_dict(model)
        h = model.fit(xs, ys, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
        after = weights_dict(model)
        moved = np.abs(after["lc/kernel"][masked] - before["lc/kernel"][masked]).max()
        assert moved > 1e-4, f"{name}: masked entries did not move ({moved})"
        binding = None
        if maxnorm:
            axes = tuple(np.atleast_1d(maxnorm["axis"]))
            norms = np.sqrt((after["lc/kernel"] ** 2).sum(axis=axes))
            binding = int((np.abs(norms - maxnorm["max_value"]) < 1e-4).sum())
            assert binding > 0, f"{name}: the MaxNorm constraint does not bind"
        np.save(os.path.join(out, "xs.npy"), xs)
        np.save(os.path.join(out, "ys.npy"), ys)
        np.save(os.path.join(out, "history.npy"), np.array(h.history["loss"], dtype=np.float32))
        np.savez(os.path.join(out, "after.npz"), **after)
        info = {
            "layer": f"LocallyConnected{kind.upper()}",
            "input_shape": list(shape),
            "lc": {k: (list(v) if isinstance(v, tuple) else v) for k, v in lc_kwargs.items()},
            "implementation": 2,
            "kernel_regularizer": "L2(0.05)" if maxnorm else None,
            "kernel_constraint": {"MaxNorm": maxnorm} if maxnorm else None,
            "kernel_shape": list(kernel.shape),
            "masked_entries": int(masked.sum()),
            "optimizer": model.optimizer.get_config()["name"],
            "fit": {"epochs": EPOCHS, "batch_size": BATCH, "shuffle": False, "samples": SAMPLES},
            "history": [float(v) for v in h.history["loss"]],
            "masked_entries_max_change": float(moved),
            "maxnorm_binding_norms": binding,
        }
        with open(os.path.join(out, "case.json"), "w") as f:
            json.dump(info, f, indent=1)
        print(name, kernel.shape, "masked", int(masked.sum()), "history", h.history["loss"])


if __name__ == "__main__":
    main()
