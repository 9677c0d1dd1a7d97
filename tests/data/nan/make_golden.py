"""Keras (tf-keras on TensorFlow's Eigen CPU kernels) outputs on NaN and ±inf inputs.

Regenerate with a tf-keras virtualenv (not a test dependency):

    TF_ENABLE_ONEDNN_OPTS=0 python make_golden.py > keras_special.json

oneDNN is switched off because lcjit follows TensorFlow's reference (Eigen) kernels; the
oneDNN softmax differs only on lanes holding NaN or +inf (it returns 0 instead of NaN at
their finite entries).
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

L = keras.layers
nan, inf = np.nan, np.inf
XS = [nan, inf, -inf, 0.0, -0.0, 1.5, -2.0, 100.0]


def enc(v):
    v = float(v)
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


cases = []


def case(name, layer, inputs, desc):
    arrs = [np.asarray(x, np.float32)[None] for x in inputs]
    t = [tf.constant(a) for a in arrs]
    y = layer(t if len(t) > 1 else t[0])
    cases.append({
        "name": name,
        "op": desc,
        "inputs": [{"shape": list(a.shape[1:]), "data": [enc(v) for v in a.ravel()]} for a in arrs],
        "output": {"shape": list(np.shape(y)[1:]), "data": [enc(v) for v in np.asarray(y).ravel()]},
    })


acts = {
    "linear": {}, "relu": {}, "relu6": {}, "sigmoid": {}, "tanh": {}, "elu": {}, "selu": {},
    "softplus": {}, "softsign": {}, "hard_sigmoid": {}, "exponential": {}, "swish": {},
    "gelu": {}, "mish": {},
}
for a in acts:
    for n in (8, 5):  # vector (4 lanes) and scalar code paths
        case(f"{a}_{n}", L.Activation(a), [XS[:n]], {"activation": a})
for n in (8, 5):
    case(f"gelu_approx_{n}", L.Lambda(lambda x: keras.activations.gelu(x, approximate=True)),
         [XS[:n]], {"activation": "gelu_approximate"})
    for name, kw in [("relu_max2", dict(max_value=2.0)), ("relu_thr", dict(threshold=0.5)),
                     ("relu_slope", dict(negative_slope=0.1)),
                     ("relu_all", dict(max_value=3.0, negative_slope=0.1, threshold=0.5))]:
        case(f"{name}_{n}", L.ReLU(**kw), [XS[:n]], {"relu": kw})
    case(f"leaky_relu_{n}", L.LeakyReLU(0.3), [XS[:n]], {"leaky_relu": 0.3})
    case(f"elu2_{n}", L.ELU(2.0), [XS[:n]], {"elu": 2.0})

seq = [[nan], [1.0], [2.0], [nan], [nan], [nan], [-inf], [-inf], [3.0], [inf], [inf], [-inf]]
chan4 = [[nan, 1, 2, 3], [0, nan, -inf, inf], [nan, nan, nan, nan], [1, 1, 1, 1],
         [-inf, -inf, -inf, -inf], [-inf, nan, 5, -inf]]
for kind, cls in [("max", L.MaxPooling1D), ("average", L.AveragePooling1D)]:
    case(f"{kind}pool1d_p2", cls(2), [seq], {"pool": kind, "size": 2, "padding": "valid"})
    case(f"{kind}pool1d_p3_same", cls(3, padding="same"), [seq],
         {"pool": kind, "size": 3, "padding": "same"})
    case(f"{kind}pool1d_c4", cls(2), [chan4], {"pool": kind, "size": 2, "padding": "valid"})
for kind, cls in [("max", L.GlobalMaxPooling1D), ("average", L.GlobalAveragePooling1D)]:
    case(f"global{kind}pool1d_c4", cls(), [chan4], {"global_pool": kind})
    for i, s in enumerate([[nan, 1, 2], [1, nan, 2], [1, 2, nan], [-inf, -inf, -inf], [inf, -inf, 1]]):
        case(f"global{kind}pool1d_{i}", cls(), [[[v] for v in s]], {"global_pool": kind})
case("maxpool2d", L.MaxPooling2D(2), [[[[nan], [1.0]], [[2.0], [3.0]]]],
     {"pool": "max", "size": 2, "padding": "valid", "rank": 2})
case("maxpool2d_all_nan", L.MaxPooling2D(2), [[[[nan], [nan]], [[nan], [nan]]]],
     {"pool": "max", "size": 2, "padding": "valid", "rank": 2})

A = [nan, 1.0, nan, inf, -inf, 0.0, inf, 2.0]
B = [1.0, nan, nan, -inf, inf, -0.0, inf, -inf]
C = [3.0, 3.0, 0.0, 1.0, 1.0, 1.0, -inf, nan]
for m in ["Maximum", "Minimum", "Add", "Subtract", "Multiply", "Average"]:
    for n in (8, 6):
        ins = [A[:n], B[:n]] if m == "Subtract" else [A[:n], B[:n], C[:n]]
        case(f"merge_{m}_{n}", getattr(L, m)(), ins, {"merge": m})

for name, v in [("sm_inf", [inf, 0, 1, 2]), ("sm_neginf", [-inf, 0, 1, 2]),
                ("sm_nan", [nan, 0, 1, 2]), ("sm_all_neginf", [-inf, -inf, -inf, -inf]),
                ("sm_big", [1000, 0, -1000, 1]), ("sm_neginf3", [-inf, 0, 1])]:
    case(name, L.Softmax(), [v], {"activation": "softmax"})
    case("log_" + name, L.Lambda(tf.nn.log_softmax), [v], {"activation": "log_softmax"})

print(json.dumps({"tensorflow": tf.__version__, "cases": cases}, indent=1))
