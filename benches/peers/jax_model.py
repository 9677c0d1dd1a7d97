"""A Keras model config (the JSON of `model.to_json()`, tf-keras 2.x dialect) as a JAX
function, for the JAX peer of `peers.py`.

Covers the layer kinds of the lcjit workloads: LocallyConnected1D/2D (through
`lax.conv_general_dilated_local`; `valid` and Keras's own `same` windows, channels_last and
channels_first, with Keras's channels_first bias reshape), Conv1D/2D, Dense,
BatchNormalization, Dropout, Max/AveragePooling1D/2D, global pooling, ZeroPadding1D/2D,
Flatten, Reshape, Permute, Add/Subtract/Multiply/Average/Concatenate and activations.
Anything else raises `Unsupported`, which the caller reports as the peer's error.

Semantics follow /work/shared/docs/keras-lc-semantics.md (lcjit's reference): LC `same`
is *not* XLA's SAME — the window of output `o` starts at `o*s - k//2` and is clipped to
the input, so it is built here from explicit padding. Weights are in lcjit's layout
(Keras's implementation-1 kernel `(P, Q, F)` and bias `(out..., F)`) converted once to the
JAX layout; `from_keras_weights` maps a built tf-keras model's weights (implementations
1, 2 and 3) for `peers.py --check`, which compares this function with tf-keras.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


class Unsupported(ValueError):
    """The config uses a layer or option this builder does not translate."""


ACTIVATIONS = {
    None: lambda x: x,
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "softplus": jax.nn.softplus,
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "exponential": jnp.exp,
    "hard_sigmoid": lambda x: jnp.clip(0.2 * x + 0.5, 0.0, 1.0),
}


def activation(name):
    if isinstance(name, dict):  # serialized activation object
        name = name.get("config", {}).get("name", name.get("class_name"))
    if name not in ACTIVATIONS:
        raise Unsupported(f"activation {name!r}")
    return ACTIVATIONS[name]


def keras_layers(cfg):
    """The config as [(name, class, config, input names)] in order, with input and output names."""
    kind, c = cfg["class_name"], cfg["config"]
    if "layers" not in c or kind not in ("Sequential", "Functional", "Model"):
        raise Unsupported(f"model class {kind} (Keras 1 configs are not translated)")
    nodes = []
    if kind == "Sequential":
        prev = None
        for layer in c["layers"]:
            lc, lcfg = layer["class_name"], layer["config"]
            if prev is None and lc != "InputLayer":
                nodes.append(("input", "InputLayer", {"batch_input_shape": lcfg["batch_input_shape"]}, []))
                prev = "input"
            nodes.append((lcfg["name"], lc, lcfg, [prev] if prev else []))
            prev = lcfg["name"]
        return nodes, [nodes[0][0]], [prev]
    for layer in c["layers"]:
        inbound = layer.get("inbound_nodes") or []
        if len(inbound) > 1:
            raise Unsupported(f"layer {layer['name']} is called more than once")
        ins = [n[0] for n in inbound[0]] if inbound else []
        nodes.append((layer["name"], layer["class_name"], layer["config"], ins))
    return nodes, [x[0] for x in c["input_layers"]], [x[0] for x in c["output_layers"]]


def _spatial(shape, channels_first):
    return (tuple(shape[1:]), shape[0]) if channels_first else (tuple(shape[:-1]), shape[-1])


def _join(spatial, f, channels_first):
    return (f, *spatial) if channels_first else (*spatial, f)


def _specs(rank, channels_first):
    sp = "HWD"[:rank]
    lhs = "NC" + sp if channels_first else "N" + sp + "C"
    return (lhs, sp + "IO", lhs)


def _tuple(v, rank):
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * rank


def _glorot(rng, fan_in, fan_out, shape):
    lim = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-lim, lim, size=shape).astype(np.float32)


class Layer:
    """One translated layer: its parameters, state (BatchNorm statistics) and function."""

    def __init__(self, params, state, out_shape, fn):
        self.params, self.state, self.out_shape, self.fn = params, state, out_shape, fn


def locally_connected(cfg, shape, rng, rank):
    cf = cfg.get("data_format") == "channels_first"
    spatial, cin = _spatial(shape, cf)
    k, s = _tuple(cfg["kernel_size"], rank), _tuple(cfg["strides"], rank)
    f = cfg["filters"]
    pad_mode = cfg.get("padding", "valid").lower()
    if pad_mode == "valid":
        out = tuple((n - kk) // ss + 1 for n, kk, ss in zip(spatial, k, s))
        pads = [(0, (o - 1) * ss + kk - n) for n, kk, ss, o in zip(spatial, k, s, out)]
    elif pad_mode == "same":  # Keras LC windows: start o*s - k//2, clipped (not XLA's SAME)
        out = tuple(-(-n // ss) for n, ss in zip(spatial, s))
        pads = [(kk // 2, (o - 1) * ss - kk // 2 + kk - n) for n, kk, ss, o in zip(spatial, k, s, out)]
    else:
        raise Unsupported(f"LC padding {pad_mode!r}")
    q = int(np.prod(k)) * cin
    w1 = _glorot(rng, q, f, (int(np.prod(out)), q, f))  # Keras implementation-1 layout
    bias = np.zeros((*out, f), np.float32) if cfg.get("use_bias", True) else None
    dn = _specs(rank, cf)
    act = activation(cfg.get("activation"))
    axis0 = 2 if cf else 1

    def fn(p, st, xs, train, key):
        x = xs[0]
        lo_hi = []
        for d, (lo, hi) in enumerate(pads):
            if hi < 0:  # the last window ends before the input does: drop the unread tail
                x = lax.slice_in_dim(x, 0, x.shape[axis0 + d] + hi, axis=axis0 + d)
                hi = 0
            lo_hi.append((lo, hi))
        y = lax.conv_general_dilated_local(
            x, p["kernel"], window_strides=s, padding=lo_hi, filter_shape=k, dimension_numbers=dn
        )
        if "bias" in p:  # channels_first reads the (out..., F) bias reshaped, as Keras does
            y = y + (p["bias"].reshape(f, *out) if cf else p["bias"])
        return act(y), st

    params = {"kernel": lc_kernel_to_jax(w1, out, k, cin, f, cf)}
    if bias is not None:
        params["bias"] = jnp.asarray(bias)
    return Layer(params, {}, _join(out, f, cf), fn)


def lc_kernel_to_jax(w1, out, k, cin, f, channels_first):
    """Keras implementation-1 kernel (P, Q, F) -> conv_general_dilated_local's (out..., C·k..., F).

    JAX flattens the I axis channel-major, (C, k...); Keras flattens the patch in the
    input's memory order: (k..., C) for channels_last, (C, k...) for channels_first.
    """
    w = np.asarray(w1, np.float32)
    if not channels_first:
        rank = len(k)
        w = w.reshape(w.shape[0], *k, cin, f).transpose(0, rank + 1, *range(1, rank + 1), rank + 2)
    return jnp.asarray(w.reshape(*out, cin * int(np.prod(k)), f))


def conv(cfg, shape, rng, rank):
    cf = cfg.get("data_format") == "channels_first"
    spatial, cin = _spatial(shape, cf)
    k, s = _tuple(cfg["kernel_size"], rank), _tuple(cfg["strides"], rank)
    dil = _tuple(cfg.get("dilation_rate", 1), rank)
    if cfg.get("groups", 1) != 1:
        raise Unsupported("grouped convolution")
    pad = cfg.get("padding", "valid").upper()
    if pad not in ("VALID", "SAME"):  # TF's conv SAME is XLA's SAME
        raise Unsupported(f"conv padding {pad}")
    f = cfg["filters"]
    ek = [(kk - 1) * dd + 1 for kk, dd in zip(k, dil)]
    out = tuple(
        (n - e) // ss + 1 if pad == "VALID" else -(-n // ss) for n, e, ss in zip(spatial, ek, s)
    )
    params = {"kernel": jnp.asarray(_glorot(rng, int(np.prod(k)) * cin, f, (*k, cin, f)))}
    if cfg.get("use_bias", True):
        params["bias"] = jnp.zeros((f,), jnp.float32)
    dn = _specs(rank, cf)
    act = activation(cfg.get("activation"))

    def fn(p, st, xs, train, key):
        y = lax.conv_general_dilated(xs[0], p["kernel"], s, pad, rhs_dilation=dil, dimension_numbers=dn)
        if "bias" in p:
            y = y + (p["bias"].reshape(f, *([1] * rank)) if cf else p["bias"])
        return act(y), st

    return Layer(params, {}, _join(out, f, cf), fn)


def dense(cfg, shape, rng):
    n, u = shape[-1], cfg["units"]
    params = {"kernel": jnp.asarray(_glorot(rng, n, u, (n, u)))}
    if cfg.get("use_bias", True):
        params["bias"] = jnp.zeros((u,), jnp.float32)
    act = activation(cfg.get("activation"))

    def fn(p, st, xs, train, key):
        y = jnp.dot(xs[0], p["kernel"])
        return act(y + p["bias"] if "bias" in p else y), st

    return Layer(params, {}, (*shape[:-1], u), fn)


def batch_norm(cfg, shape):
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) else axis
    axis = axis % (len(shape) + 1)  # with the batch axis
    if axis == 0:
        raise Unsupported("BatchNormalization over the batch axis")
    c = shape[axis - 1]
    eps, mom = cfg.get("epsilon", 1e-3), cfg.get("momentum", 0.99)
    params = {}
    if cfg.get("scale", True):
        params["gamma"] = jnp.ones((c,), jnp.float32)
    if cfg.get("center", True):
        params["beta"] = jnp.zeros((c,), jnp.float32)
    state = {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}

    def fn(p, st, xs, train, key):
        x = xs[0]
        bshape = [1] * x.ndim
        bshape[axis] = c
        if train:  # batch statistics, and Keras's moving-average update
            red = tuple(i for i in range(x.ndim) if i != axis)
            mean, var = jnp.mean(x, axis=red), jnp.var(x, axis=red)
            st = {"mean": st["mean"] * mom + mean * (1 - mom), "var": st["var"] * mom + var * (1 - mom)}
        else:
            mean, var = st["mean"], st["var"]
        y = (x - mean.reshape(bshape)) * lax.rsqrt(var.reshape(bshape) + eps)
        if "gamma" in p:
            y = y * p["gamma"].reshape(bshape)
        if "beta" in p:
            y = y + p["beta"].reshape(bshape)
        return y, st

    return Layer(params, state, shape, fn)


def dropout(cfg, shape):
    rate = cfg["rate"]
    if cfg.get("noise_shape") is not None:
        raise Unsupported("Dropout noise_shape")

    def fn(p, st, xs, train, key):
        x = xs[0]
        if not train or rate == 0:
            return x, st
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), 0.0), st

    return Layer({}, {}, shape, fn)


def pooling(cfg, shape, rank, kind):
    cf = cfg.get("data_format") == "channels_first"
    spatial, c = _spatial(shape, cf)
    k = _tuple(cfg["pool_size"], rank)
    s = _tuple(cfg.get("strides") or cfg["pool_size"], rank)
    pad = cfg.get("padding", "valid").upper()
    out = tuple((n - kk) // ss + 1 if pad == "VALID" else -(-n // ss) for n, kk, ss in zip(spatial, k, s))
    win = (1, 1, *k) if cf else (1, *k, 1)
    strides = (1, 1, *s) if cf else (1, *s, 1)

    def fn(p, st, xs, train, key):
        x = xs[0]
        if kind == "max":
            return lax.reduce_window(x, -jnp.inf, lax.max, win, strides, pad), st
        total = lax.reduce_window(x, 0.0, lax.add, win, strides, pad)
        count = lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, win, strides, pad)
        return total / count, st  # Keras averages over the in-range taps only

    return Layer({}, {}, _join(out, c, cf), fn)


def global_pooling(cfg, shape, kind):
    cf = cfg.get("data_format") == "channels_first"
    if cfg.get("keepdims"):
        raise Unsupported("global pooling keepdims")
    axes = tuple(range(2, len(shape) + 1)) if cf else tuple(range(1, len(shape)))
    red = jnp.max if kind == "max" else jnp.mean
    c = shape[0] if cf else shape[-1]
    return Layer({}, {}, (c,), lambda p, st, xs, train, key: (red(xs[0], axis=axes), st))


def zero_padding(cfg, shape, rank):
    cf = cfg.get("data_format") == "channels_first"
    pad = cfg["padding"]
    if rank == 1:
        pad = [pad] if isinstance(pad[0], int) else pad
    pad = [tuple(p) if isinstance(p, (list, tuple)) else (p, p) for p in pad]
    spatial, c = _spatial(shape, cf)
    widths = [(0, 0), (0, 0), *pad] if cf else [(0, 0), *pad, (0, 0)]
    out = tuple(n + a + b for n, (a, b) in zip(spatial, pad))
    return Layer({}, {}, _join(out, c, cf), lambda p, st, xs, train, key: (jnp.pad(xs[0], widths), st))


def flatten(cfg, shape):
    cf = cfg.get("data_format") == "channels_first" and len(shape) > 1

    def fn(p, st, xs, train, key):
        x = xs[0]
        if cf:  # Keras moves channels last before flattening
            x = jnp.moveaxis(x, 1, -1)
        return x.reshape(x.shape[0], -1), st

    return Layer({}, {}, (int(np.prod(shape)),), fn)


def merge(kind, cfg, shapes):
    if kind == "Concatenate":
        axis = cfg.get("axis", -1) % (len(shapes[0]) + 1)
        out = list(shapes[0])
        out[axis - 1] = sum(s[axis - 1] for s in shapes)
        return Layer({}, {}, tuple(out), lambda p, st, xs, train, key: (jnp.concatenate(xs, axis=axis), st))
    ops = {
        "Add": lambda xs: sum(xs[1:], xs[0]),
        "Subtract": lambda xs: xs[0] - xs[1],
        "Multiply": lambda xs: math.prod(xs[1:], start=xs[0]),
        "Average": lambda xs: sum(xs[1:], xs[0]) / len(xs),
    }
    op = ops[kind]
    return Layer({}, {}, tuple(shapes[0]), lambda p, st, xs, train, key: (op(xs), st))


def build_layer(kind, cfg, shapes, rng):
    shape = shapes[0] if shapes else None
    if kind in ("LocallyConnected1D", "LocallyConnected2D"):
        return locally_connected(cfg, shape, rng, int(kind[-2]))
    if kind in ("Conv1D", "Conv2D"):
        return conv(cfg, shape, rng, int(kind[-2]))
    if kind == "Dense":
        return dense(cfg, shape, rng)
    if kind == "BatchNormalization":
        return batch_norm(cfg, shape)
    if kind == "Dropout":
        return dropout(cfg, shape)
    if kind in ("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D"):
        return pooling(cfg, shape, int(kind[-2]), "max" if kind.startswith("Max") else "avg")
    if kind.startswith("Global") and kind[-2] in "12":
        return global_pooling(cfg, shape, "max" if "Max" in kind else "avg")
    if kind in ("ZeroPadding1D", "ZeroPadding2D"):
        return zero_padding(cfg, shape, int(kind[-2]))
    if kind == "Flatten":
        return flatten(cfg, shape)
    if kind in ("Add", "Subtract", "Multiply", "Average", "Concatenate"):
        return merge(kind, cfg, shapes)
    if kind == "Activation":
        act = activation(cfg["activation"])
        return Layer({}, {}, shape, lambda p, st, xs, train, key: (act(xs[0]), st))
    if kind in ("ReLU", "LeakyReLU"):
        alpha = cfg.get("alpha", 0.3) if kind == "LeakyReLU" else cfg.get("negative_slope", 0.0)
        return Layer({}, {}, shape, lambda p, st, xs, train, key: (jnp.where(xs[0] > 0, xs[0], alpha * xs[0]), st))
    if kind == "Reshape":
        tgt = tuple(cfg["target_shape"])
        if -1 in tgt:
            known = -int(np.prod(tgt))
            tgt = tuple(int(np.prod(shape)) // known if t == -1 else t for t in tgt)
        return Layer({}, {}, tgt, lambda p, st, xs, train, key: (xs[0].reshape(xs[0].shape[0], *tgt), st))
    if kind == "Permute":
        dims = tuple(cfg["dims"])
        out = tuple(shape[d - 1] for d in dims)
        return Layer({}, {}, out, lambda p, st, xs, train, key: (jnp.transpose(xs[0], (0, *dims)), st))
    raise Unsupported(f"layer {kind}")


class Model:
    """The config as a pure JAX function `apply(params, state, x, train, key) -> (y, state)`."""

    def __init__(self, cfg, seed=0):
        nodes, self.inputs, self.outputs = keras_layers(cfg)
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise Unsupported("models with several inputs or outputs")
        rng = np.random.default_rng(seed)
        self.layers, shapes = [], {}
        self.params, self.state = {}, {}
        for name, kind, lcfg, ins in nodes:
            if kind == "InputLayer":
                shapes[name] = tuple(lcfg["batch_input_shape"][1:])
                continue
            missing = [i for i in ins if i not in shapes]
            if missing:
                raise Unsupported(f"layer {name} reads {missing} before they are defined")
            layer = build_layer(kind, lcfg, [shapes[i] for i in ins], rng)
            shapes[name] = layer.out_shape
            self.layers.append((name, ins, layer))
            if layer.params:
                self.params[name] = layer.params
            if layer.state:
                self.state[name] = layer.state
        self.input_shape = shapes[self.inputs[0]]
        self.output_shape = shapes[self.outputs[0]]

    def apply(self, params, state, x, train=False, key=None):
        values = {self.inputs[0]: x}
        new_state = {}
        keys = jax.random.split(key, len(self.layers)) if key is not None else [None] * len(self.layers)
        for (name, ins, layer), k in zip(self.layers, keys):
            y, st = layer.fn(params.get(name, {}), state.get(name, {}), [values[i] for i in ins], train, k)
            values[name] = y
            if st:
                new_state[name] = st
        return values[self.outputs[0]], new_state


def from_keras_weights(model, keras_model):
    """Params and state of `model` (this module's) from a built tf-keras model's weights."""
    params, state = {}, {}
    for name, _, layer in model.layers:
        kl = keras_model.get_layer(name)
        kind = type(kl).__name__
        w = [np.asarray(v) for v in kl.get_weights()]
        if kind.startswith("LocallyConnected"):
            params[name] = _lc_weights(kl, w)
        elif kind in ("Dense", "Conv1D", "Conv2D"):
            params[name] = {"kernel": jnp.asarray(w[0])}
            if len(w) > 1:
                params[name]["bias"] = jnp.asarray(w[1])
        elif kind == "BatchNormalization":
            c = kl.get_config()
            it = iter(w)
            params[name] = {}
            if c.get("scale", True):
                params[name]["gamma"] = jnp.asarray(next(it))
            if c.get("center", True):
                params[name]["beta"] = jnp.asarray(next(it))
            state[name] = {"mean": jnp.asarray(next(it)), "var": jnp.asarray(next(it))}
        elif w:
            raise Unsupported(f"weights of {kind}")
    return params, state


def _lc_weights(kl, w):
    """An LC layer's kernel in implementation-1 layout, from any implementation."""
    c = kl.get_config()
    rank = 1 if type(kl).__name__.endswith("1D") else 2
    cf = c["data_format"] == "channels_first"
    in_shape = tuple(kl.input_shape[1:])
    spatial, cin = _spatial(in_shape, cf)
    out_full = tuple(kl.output_shape[1:])
    out, f = _spatial(out_full, cf)
    k, s = _tuple(c["kernel_size"], rank), _tuple(c["strides"], rank)
    p_, q = int(np.prod(out)), int(np.prod(k)) * cin
    impl = c.get("implementation", 1)
    same = c["padding"] == "same"
    if impl == 1:
        w1 = w[0]
    elif impl == 3 and not same:  # closed form of keras-lc-semantics §2.4
        v = w[0]
        w1 = v.reshape(f, p_, q).transpose(1, 2, 0) if cf else v.reshape(p_, f, q).transpose(0, 2, 1)
    elif impl == 2:
        w1 = _impl2_to_impl1(w[0], spatial, out, k, s, cin, f, cf, same)
    else:
        raise Unsupported("implementation 3 with same padding in --check")
    params = {"kernel": lc_kernel_to_jax(w1, out, k, cin, f, cf)}
    if c.get("use_bias", True):
        params["bias"] = jnp.asarray(w[1])
    return params


def _impl2_to_impl1(k2, spatial, out, k, s, cin, f, cf, same):
    """Implementation-2 dense kernel -> implementation-1 layout; clipped taps become 0."""
    q_order = [(c, t) for c in range(cin) for t in np.ndindex(*k)] if cf else [
        (c, t) for t in np.ndindex(*k) for c in range(cin)
    ]
    w1 = np.zeros((int(np.prod(out)), len(q_order), f), np.float32)
    for p, o in enumerate(np.ndindex(*out)):
        for qi, (c, t) in enumerate(q_order):
            pos = tuple(oo * ss - (kk // 2 if same else 0) + tt for oo, ss, kk, tt in zip(o, s, k, t))
            if all(0 <= x < n for x, n in zip(pos, spatial)):
                idx = (c, *pos, slice(None), *o) if cf else (*pos, c, *o, slice(None))
                w1[p, qi, :] = k2[idx]
    return w1
