"""Keras (tf-keras, TensorFlow's Eigen CPU kernels) max-pooling gradients on NaN, ±inf
and tied inputs: `MaxPoolGrad` for the windowed layers, `tf.reduce_max`'s gradient for
global max pooling.

Regenerate with a tf-keras virtualenv (not a test dependency):

    TF_ENABLE_ONEDNN_OPTS=0 python make_pool_grad.py > keras_pool_grad.json

Each case: the layer, one input sample, the output gradient `dy = 1, 2, …, n` in the
output's memory order, and TensorFlow's output and input gradient.
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

L = keras.layers
nan, inf = np.nan, np.inf


def enc(v):
    v = float(v)
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


cases = []


def case(name, layer, x, desc):
    x = np.asarray(x, np.float32)[None]
    t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(t)
        y = layer(t)
        n = int(np.prod(y.shape))
        dy = tf.reshape(tf.range(1, n + 1, dtype=tf.float32), y.shape)
        s = tf.reduce_sum(y * dy)
    dx = tape.gradient(s, t)
    cases.append({
        "name": name,
        "layer": desc,
        "input": {"shape": list(x.shape[1:]), "data": [enc(v) for v in x.ravel()]},
        "output": {"shape": list(y.shape[1:]), "data": [enc(v) for v in np.asarray(y).ravel()]},
        "dx": [enc(v) for v in np.asarray(dx).ravel()],
    })


cols = [[nan, nan, nan, 1.0, 2.0, nan, -inf, -inf],
        [-inf, nan, 0.5, 0.5, nan, -inf, inf, inf],
        [nan, -inf, 3.0, -1.0, -inf, -inf, nan, nan],
        [0.0, -0.0, -0.0, 0.0, inf, nan, nan, 7.0]]
x8 = np.array(cols, np.float32).T
case("max1d_p2", L.MaxPooling1D(2), x8, {"kind": "max", "pool": [2], "strides": [2], "padding": "valid"})
case("max1d_p3_s1_same", L.MaxPooling1D(3, strides=1, padding="same"), x8,
     {"kind": "max", "pool": [3], "strides": [1], "padding": "same"})
case("max1d_p3_s2_cf", L.MaxPooling1D(3, strides=2, data_format="channels_first"), x8.T,
     {"kind": "max", "pool": [3], "strides": [2], "padding": "valid", "data_format": "channels_first"})
case("global_max1d", L.GlobalMaxPooling1D(), x8, {"kind": "global_max"})
fin = np.array([[1, 3, 3, 2], [-inf, -inf, -inf, -inf], [0.0, -0.0, 0.0, -1], [5, inf, inf, inf]],
               np.float32).T
case("global_max1d_ties", L.GlobalMaxPooling1D(), fin, {"kind": "global_max"})
case("global_max1d_ties_cf", L.GlobalMaxPooling1D(data_format="channels_first"), fin.T,
     {"kind": "global_max", "data_format": "channels_first"})
case("max1d_ties_p4", L.MaxPooling1D(4), fin, {"kind": "max", "pool": [4], "strides": [4], "padding": "valid"})
img = np.array([[nan, 1, 2], [3, nan, 3], [-inf, 3, nan]], np.float32)[:, :, None]
case("max2d_p2_s1", L.MaxPooling2D(2, strides=1), img,
     {"kind": "max", "pool": [2, 2], "strides": [1, 1], "padding": "valid"})
case("max2d_p2_same", L.MaxPooling2D(2, padding="same"), img,
     {"kind": "max", "pool": [2, 2], "strides": [2, 2], "padding": "same"})
case("global_max2d", L.GlobalMaxPooling2D(), np.array([[[1, nan], [3, 2]], [[3, 0], [-inf, 2]]], np.float32),
     {"kind": "global_max"})
print(json.dumps({"tensorflow": tf.__version__, "cases": cases}, indent=1))
