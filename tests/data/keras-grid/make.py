"""Golden cases built the way tf-keras 2.21's own unit tests build locally connected layers.

`tf_keras/layers/locally_connected/locally_connected_test.py` (keras-lc-semantics.md §5.3):
the grid data_format x padding x implementation (same + implementation 1 is refused by
Keras), `layer_test` inputs of 10*U[0,1), the l2 kernel/bias/activity regularizers, the
max_norm(0.01) constraints, and `test_locallyconnected_implementation`'s two stacked LC
layers + Flatten + Dense(3) trained with RMSprop(0.01) on categorical cross-entropy from
logits. Each case is written in the layout of shared/keras-golden (README there): model.json,
model.h5, weights.npz, x.npy, y.npy, dy.npy, grads.npz, compiled.h5, xs.npy, ys.npy,
history.npy, after.npz, case.json.

Run with tf-keras 2.21 (never needed by the tests):
    TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES= python make.py
"""
import json
import os
import shutil

import numpy as np
import tensorflow as tf
import tf_keras as keras

OUT = os.path.dirname(os.path.abspath(__file__))


def case_dir(name):
    d = os.path.join(OUT, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    return d


def weights_dict(model):
    out = {}
    for layer in model.layers:
        for w in layer.weights:
            short = w.name.split("/")[-1].split(":")[0]
            out[f"{layer.name}/{short}"] = w.numpy()
    return out


def write_case(name, build, compile_args, x_shape, y_fn, desc, train_n=8, batch=2, seed=0):
    d = case_dir(name)
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build()
    x = (10 * rng.random((batch,) + x_shape)).astype(np.float32)
    y = model(x, training=False).numpy()
    dy = rng.standard_normal(y.shape).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = model(xt, training=False)
        s = tf.reduce_sum(out * dy)
    grads = tape.gradient(s, [xt] + model.trainable_weights)
    g = {"x": grads[0].numpy()}
    names = {}
    for layer in model.layers:
        for w in layer.trainable_weights:
            names[id(w)] = f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}"
    for w, gw in zip(model.trainable_weights, grads[1:]):
        g[names[id(w)]] = gw.numpy()
    with open(os.path.join(d, "model.json"), "w") as f:
        f.write(model.to_json())
    model.save(os.path.join(d, "model.h5"), save_format="h5")
    np.savez(os.path.join(d, "weights.npz"), **weights_dict(model))
    np.save(os.path.join(d, "x.npy"), x)
    np.save(os.path.join(d, "y.npy"), y)
    np.save(os.path.join(d, "dy.npy"), dy)
    np.savez(os.path.join(d, "grads.npz"), **g)
    # Training: as the unit tests, fit without shuffling.
    model.compile(**compile_args)
    model.save(os.path.join(d, "compiled.h5"), save_format="h5")
    xs = (10 * rng.random((train_n,) + x_shape)).astype(np.float32)
    ys = y_fn(rng, model.output_shape, train_n)
    np.save(os.path.join(d, "xs.npy"), xs)
    np.save(os.path.join(d, "ys.npy"), ys)
    h = model.fit(xs, ys, batch_size=4, epochs=2, shuffle=False, verbose=0)
    np.save(os.path.join(d, "history.npy"), np.array(h.history["loss"], dtype=np.float32))
    np.savez(os.path.join(d, "after.npz"), **weights_dict(model))
    # Weight regularization at the trained weights (activity losses are symbolic here).
    reg = float(sum(float(l) for l in model.losses if hasattr(l, "numpy")))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump({"seed": seed, "layers": desc, "batch": batch,
                   "input_shape": list(x_shape), "output_shape": list(y.shape[1:]),
                   "params": int(model.count_params()), "regularization_loss": reg,
                   "training": {"optimizer": keras.optimizers.serialize(model.optimizer),
                                "loss": str(compile_args["loss"]), "batch_size": 4,
                                "epochs": 2, "shuffle": False}}, f, indent=1, default=str)


def regression_targets(rng, shape, n):
    return rng.standard_normal((n,) + tuple(shape[1:])).astype(np.float32)


def onehot_targets(rng, shape, n):
    k = shape[-1]
    return np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]


def grid():
    for df in ["channels_first", "channels_last"]:
        for pad in ["valid", "same"]:
            for impl in [1, 2, 3]:
                if pad == "same" and impl == 1:
                    continue  # Keras refuses it at construction
                yield df, pad, impl


def short(df, pad, impl):
    return f"{'cf' if df == 'channels_first' else 'cl'}_{pad}_i{impl}"


def main():
    mse = dict(optimizer="rmsprop", loss="mse")
    n = 0
    # test_locallyconnected_1d (+ _regularization, + the max_norm constraint).
    for df, pad, impl in grid():
        for variant in ["plain", "reg", "maxnorm"]:
            kw = dict(filters=4, kernel_size=3, strides=1, padding=pad, data_format=df,
                      implementation=impl)
            if variant == "reg":
                kw.update(kernel_regularizer="l2", bias_regularizer="l2",
                          activity_regularizer="l2")
            if variant == "maxnorm":
                kw.update(kernel_constraint=keras.constraints.max_norm(0.01),
                          bias_constraint=keras.constraints.max_norm(0.01))

            def build(kw=kw):
                return keras.Sequential([keras.Input((8, 5)),
                                         keras.layers.LocallyConnected1D(**kw)])
            write_case(f"lc1d_{short(df, pad, impl)}_{variant}", build, mse, (8, 5),
                       regression_targets, [f"LC1D({kw})"], seed=n)
            n += 1
    # test_locallyconnected_2d (strides 1 and 2; same only at stride 1), l2 regularizers.
    for df, pad, impl in grid():
        for strides in [(1, 1), (2, 2)]:
            if pad == "same" and strides == (2, 2):
                continue
            kw = dict(filters=3, kernel_size=3, strides=strides, padding=pad, data_format=df,
                      implementation=impl, kernel_regularizer="l2", bias_regularizer="l2")

            def build(kw=kw):
                return keras.Sequential([keras.Input((6, 10, 4)),
                                         keras.layers.LocallyConnected2D(**kw)])
            write_case(f"lc2d_{short(df, pad, impl)}_s{strides[0]}", build, mse, (6, 10, 4),
                       regression_targets, [f"LC2D({kw})"], seed=n)
            n += 1
    # test_locallyconnected_2d_regularization: three l2 regularizers, input (6, 7, 4).
    for df, pad, impl in grid():
        kw = dict(filters=3, kernel_size=3, padding=pad, data_format=df, implementation=impl,
                  kernel_regularizer="l2", bias_regularizer="l2", activity_regularizer="l2")

        def build(kw=kw):
            return keras.Sequential([keras.Input((6, 7, 4)),
                                     keras.layers.LocallyConnected2D(**kw)])
        write_case(f"lc2d_{short(df, pad, impl)}_reg", build, mse, (6, 7, 4),
                   regression_targets, [f"LC2D({kw})"], seed=n)
        n += 1
    # test_locallyconnected_implementation: two stacked LC layers, Flatten, Dense(3),
    # RMSprop(0.01), categorical cross-entropy from logits, 4 samples.
    for width in [1, 6]:
        for df in ["channels_first", "channels_last"]:
            for impl in [1, 2, 3]:
                if width == 1:
                    shape = (7, 2) if df == "channels_last" else (2, 7)
                    kernel, strides, layer = (3,), (1,), keras.layers.LocallyConnected1D
                else:
                    shape = (7, 6, 2) if df == "channels_last" else (2, 7, 6)
                    kernel, strides, layer = (3, 2), (1, 3), keras.layers.LocallyConnected2D

                def build(shape=shape, kernel=kernel, strides=strides, layer=layer, df=df,
                          impl=impl):
                    lc = lambda: layer(filters=2, kernel_size=kernel, strides=strides,
                                       padding="valid", data_format=df, implementation=impl,
                                       activation="relu",
                                       kernel_initializer="random_normal",
                                       bias_initializer="random_normal")
                    return keras.Sequential([keras.Input(shape), lc(), lc(),
                                             keras.layers.Flatten(), keras.layers.Dense(3)])
                xent = dict(optimizer=keras.optimizers.RMSprop(0.01),
                            loss=keras.losses.CategoricalCrossentropy(from_logits=True))
                write_case(f"impl_w{width}_{'cf' if df == 'channels_first' else 'cl'}_i{impl}",
                           build, xent, shape, onehot_targets,
                           [f"2x LC(k={kernel}, s={strides}, {df}, impl={impl}) + Dense(3)"],
                           train_n=4, batch=4, seed=n)
                n += 1
    print(n, "cases")


if __name__ == "__main__":
    main()
