#!/usr/bin/env python3
"""Time tf-keras (implementations 1/2/3) and JAX (lax.conv_general_dilated_local) on the
lcjit workloads, for side-by-side comparison with `lcjit bench` in the same run.

Optional: needs tensorflow-cpu, tf-keras and jax in the Python environment (see
README.md here). The project's tests never use it.

Prints one JSON line per (workload, peer) with medians in ms:
  {"workload", "peer", "build_s", "forward_ms": {"1": .., "32": ..}, "train_step_ms": ..}
"""
import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = os.path.join(HERE, "..", "..", "tests", "data", "workloads")


def median_ms(fn, min_reps=3, budget_s=2.0):
    fn()  # warm-up (and compile, for jit-compiled peers)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 30):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def load_config(name):
    with open(os.path.join(WORKLOADS, name + ".json")) as f:
        return json.load(f)


def with_implementation(cfg, impl):
    for layer in cfg["config"]["layers"]:
        if layer["class_name"].startswith("LocallyConnected"):
            layer["config"]["implementation"] = impl
            if impl == 1 and layer["config"].get("padding") == "same":
                raise ValueError("implementation 1 does not support padding 'same'")
    return cfg


def tf_keras_peer(name, impl, batches, train):
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    cfg = with_implementation(load_config(name), impl)
    t = time.perf_counter()
    model = keras.models.model_from_json(json.dumps(cfg))
    build_s = time.perf_counter() - t
    shape = model.input_shape[1:]
    fwd = tf.function(lambda x: model(x, training=False))
    out = {"workload": name, "peer": f"tf-keras impl {impl}", "build_s": round(build_s, 2), "forward_ms": {}}
    for b in batches:
        x = tf.constant(np.random.default_rng(0).random((b, *shape), dtype=np.float32))
        out["forward_ms"][str(b)] = round(median_ms(lambda: fwd(x).numpy()), 3)
    if train:
        b = 32
        x = tf.constant(np.random.default_rng(0).random((b, *shape), dtype=np.float32))
        y = tf.constant(np.random.default_rng(1).random((b, *model.output_shape[1:]), dtype=np.float32))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        out["train_step_ms"] = round(median_ms(lambda: model.train_on_batch(x, y)), 3)
    return out


def jax_peer(name, batches, train):
    """The LC-only workloads as JAX functions (channels_last, valid padding, relu or linear)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    cfg = load_config(name)
    layers = cfg["config"]["layers"]
    shape = None
    specs = []
    for layer in layers:
        c = layer["config"]
        if layer["class_name"] == "InputLayer":
            shape = tuple(c["batch_input_shape"][1:])
        elif layer["class_name"].startswith("LocallyConnected"):
            if c.get("padding", "valid") != "valid" or c.get("data_format") != "channels_last":
                raise ValueError("the JAX peer covers channels_last valid LC stacks only")
            specs.append((tuple(c["kernel_size"]), tuple(c["strides"]), c["filters"], c["activation"]))
        else:
            raise ValueError(f"the JAX peer covers LC-only stacks ({layer['class_name']})")
    rng = np.random.default_rng(0)
    params = []
    cur = shape
    dn = None
    for k, s, f, act in specs:
        rank = len(k)
        spatial, cin = cur[:-1], cur[-1]
        out_sp = tuple((n - kk) // ss + 1 for n, kk, ss in zip(spatial, k, s))
        q = int(np.prod(k)) * cin
        # lax.conv_general_dilated_local: rhs (out spatial..., filters, in_channels·window)
        w = rng.standard_normal((int(np.prod(out_sp)), q, f)).astype(np.float32) * 0.01
        rhs = jnp.asarray(w.reshape(*out_sp, q, f).transpose(*range(rank), rank + 1, rank))
        bias = jnp.zeros((*out_sp, f), jnp.float32)
        params.append((rhs, bias))
        cur = (*out_sp, f)
    lhs_spec = "N" + "".join("HWD"[:rank]) + "C"
    rhs_spec = "".join("HWD"[:rank]) + "OI"
    dn = (lhs_spec, rhs_spec, lhs_spec)

    def forward(ps, x):
        for (rhs, bias), (k, s, f, act) in zip(ps, specs):
            y = jax.lax.conv_general_dilated_local(
                x, rhs, window_strides=s, padding="VALID", filter_shape=k, dimension_numbers=dn
            )
            y = y + bias
            x = jax.nn.relu(y) if act == "relu" else y
        return x

    fwd = jax.jit(forward)
    out = {"workload": name, "peer": "jax", "build_s": None, "forward_ms": {}}
    for b in batches:
        x = jnp.asarray(rng.random((b, *shape), dtype=np.float32))
        t = time.perf_counter()
        fwd(params, x).block_until_ready()
        if out["build_s"] is None:
            out["build_s"] = round(time.perf_counter() - t, 2)
        out["forward_ms"][str(b)] = round(median_ms(lambda: fwd(params, x).block_until_ready()), 3)
    if train:
        b = 32
        x = jnp.asarray(rng.random((b, *shape), dtype=np.float32))
        y = jnp.asarray(rng.random((b, *cur), dtype=np.float32))

        def loss(ps):
            return jnp.mean((forward(ps, x) - y) ** 2)

        @jax.jit
        def step(ps, m, v, t):
            g = jax.grad(loss)(ps)
            m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
            v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
            ps = jax.tree_util.tree_map(lambda p, m, v: p - 1e-3 * m / (jnp.sqrt(v) + 1e-7), ps, m, v)
            return ps, m, v

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        state = [params, zeros, zeros]

        def run():
            state[0], state[1], state[2] = step(state[0], state[1], state[2], 1)
            jax.block_until_ready(state[0])

        out["train_step_ms"] = round(median_ms(run), 3)
    return out


def table(path):
    """Markdown table from the JSON lines of `lcjit bench --json` and of this script."""
    rows = {}
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "peer" in r:
            key = (r["workload"], r["peer"])
            rows.setdefault(key, {}).update(r)
        else:  # lcjit bench
            key = (r["model"], "lcjit jit")
            e = rows.setdefault(key, {"forward_ms": {}, "build_s": None})
            e["forward_ms"][str(r["batch"])] = r["forward_ms"]["jit"]
            e["build_s"] = round((r["compile_ms"]["forward"] or 0) / 1e3, 4)
            if r["train_step_ms"]["jit"] is not None:
                e["train_step_ms"] = r["train_step_ms"]["jit"]
    print("| workload | engine | build / compile (s) | forward batch 1 (ms) | forward batch 32 (ms) | train step 32 (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (w, p), r in sorted(rows.items()):
        if "error" in r:
            print(f"| {w} | {p} | — | {r['error'][:60]} | | |")
            continue
        f = r.get("forward_ms", {})
        print(f"| {w} | {p} | {r.get('build_s')} | {f.get('1', '—')} | {f.get('32', '—')} | {r.get('train_step_ms', '—')} |")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        return table(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="seed_lc2d,snp_lc1d,deepface_l4_l6")
    ap.add_argument("--impls", default="1,3")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--no-jax", action="store_true")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    for name in args.workloads.split(","):
        runs = [("tf", int(i)) for i in args.impls.split(",") if i]
        if not args.no_jax:
            runs.append(("jax", None))
        for kind, impl in runs:
            try:
                if kind == "tf":
                    res = tf_keras_peer(name, impl, batches, args.train)
                else:
                    res = jax_peer(name, batches, args.train)
            except Exception as e:  # a peer that cannot run a workload is reported, not fatal
                res = {"workload": name, "peer": f"tf-keras impl {impl}" if kind == "tf" else "jax",
                       "error": f"{type(e).__name__}: {e}"[:200]}
            print(json.dumps(res), flush=True)


if __name__ == "__main__":
    sys.exit(main())
