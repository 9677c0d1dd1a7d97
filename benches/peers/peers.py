#!/usr/bin/env python3
"""Time lcjit's peers — tf-keras (LocallyConnected implementations 1/2/3, built from the
workload's JSON) and JAX (`lax.conv_general_dilated_local`, the model translated from the
same JSON by jax_model.py) — on the lcjit workloads, beside `lcjit bench --json` in one run.

Optional tooling: needs tensorflow-cpu, tf-keras and jax (see README.md here); the
project's tests never use it. Every peer runs in its own child process pinned to
`--threads` CPUs (TF intra/inter-op pools, XLA's CPU thread pool, CPU affinity), so a
tf-keras build that exceeds its time limit is stopped and reported as "did not build in N s".

Modes:
  peers.py [--workloads a,b] [--peers tf1,tf3,jax] [--train]   one JSON line per (workload, peer):
      {"workload", "peer", "build_s", "forward_ms": {"1": .., "32": ..}, "train_step_ms", "load1"}
      or {"workload", "peer", "error"}
  peers.py --check [--workloads ...]   JAX translation vs tf-keras on the same weights
  peers.py --table FILE                markdown tables from lcjit and peer JSON lines
  peers.py --readme README.md --jsonl FILE   write them, and the machine, into the README

Timing: one warm-up call (tracing, compilation), then the median of at least 3 calls and up
to 30 within a 2 s budget. Training step: forward, backward of the mean squared error
against zeros and an Adam update, in training mode (batch statistics, Dropout masks) —
what `lcjit bench --train` times.
"""
import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = os.path.join(HERE, "..", "..", "tests", "data", "workloads")
TABLE_WORKLOADS = "deepface_l4_l6,seed_lc2d,snp_lc1d,genomics_lc1d,genomic_residual_lc1d,lc2d_f12_f6"
PEER_NAMES = {"tf1": "tf-keras impl 1", "tf2": "tf-keras impl 2", "tf3": "tf-keras impl 3", "jax": "JAX"}


def pin_threads(n):
    """Before TF or JAX is imported: n compute threads and n CPUs for this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(n)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(n)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={n}"
    ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus[:n])


def median_ms(fn, min_reps=3, budget_s=2.0, max_reps=30):
    fn()  # warm-up: tracing and compilation
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < max_reps):
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
            if impl == 1 and layer["config"].get("padding", "valid").lower() != "valid":
                raise ValueError("implementation 1 does not support padding 'same'")
            layer["config"]["implementation"] = impl
    return cfg


def emit(obj):
    print(json.dumps(obj), flush=True)


def tf_keras_peer(name, impl, batches, train, threads):
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    cfg = with_implementation(load_config(name), impl)
    t = time.perf_counter()
    model = keras.models.model_from_json(json.dumps(cfg))
    build_s = round(time.perf_counter() - t, 2)
    emit({"event": "built", "build_s": build_s})
    shape = model.input_shape[1:]
    fwd = tf.function(lambda x: model(x, training=False))
    out = {"build_s": build_s, "forward_ms": {}}
    rng = np.random.default_rng(0)
    for b in batches:
        x = tf.constant(rng.random((b, *shape), dtype=np.float32))
        out["forward_ms"][str(b)] = round(median_ms(lambda: fwd(x).numpy()), 3)
    if train:
        x = tf.constant(rng.random((32, *shape), dtype=np.float32))
        y = tf.zeros((32, *model.output_shape[1:]), tf.float32)
        model.compile(optimizer=keras.optimizers.Adam(1e-6), loss="mse")
        out["train_step_ms"] = round(median_ms(lambda: model.train_on_batch(x, y)), 3)
    return out


def jax_peer(name, batches, train, threads):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jax_model

    t = time.perf_counter()
    m = jax_model.Model(load_config(name))
    fwd = jax.jit(lambda p, s, x: m.apply(p, s, x, train=False)[0])
    out = {"forward_ms": {}, "build_s": None}
    rng = np.random.default_rng(0)
    for b in batches:
        x = jnp.asarray(rng.random((b, *m.input_shape), dtype=np.float32))
        fwd(m.params, m.state, x).block_until_ready()  # compile
        if out["build_s"] is None:
            out["build_s"] = round(time.perf_counter() - t, 2)
            emit({"event": "built", "build_s": out["build_s"]})
        out["forward_ms"][str(b)] = round(median_ms(lambda: fwd(m.params, m.state, x).block_until_ready()), 3)
    if train:
        out["train_step_ms"] = round(jax_train_ms(m, rng), 3)
    return out


def jax_train_ms(m, rng, lr=1e-6, b1=0.9, b2=0.999, eps=1e-7):
    """Median ms of a jitted step: forward, MSE against zeros, grad, Keras's Adam update."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    x = jnp.asarray(rng.random((32, *m.input_shape), dtype=np.float32))

    def loss(p, s, key):
        y, s2 = m.apply(p, s, x, train=True, key=key)
        return jnp.mean(y * y), s2

    def step(p, s, opt, key):
        (_, s2), g = jax.value_and_grad(loss, has_aux=True)(p, s, key)
        t = opt["t"] + 1
        mom = jax.tree_util.tree_map(lambda a, gg: b1 * a + (1 - b1) * gg, opt["m"], g)
        vel = jax.tree_util.tree_map(lambda a, gg: b2 * a + (1 - b2) * gg * gg, opt["v"], g)
        lr_t = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        p = jax.tree_util.tree_map(lambda w, a, v: w - lr_t * a / (jnp.sqrt(v) + eps), p, mom, vel)
        return p, {**s, **s2}, {"t": t, "m": mom, "v": vel}

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    def zeros():  # distinct buffers: a buffer cannot be donated twice
        return jax.tree_util.tree_map(jnp.zeros_like, m.params)

    st = {"p": m.params, "s": m.state, "o": {"t": jnp.float32(0), "m": zeros(), "v": zeros()},
          "k": jax.random.PRNGKey(0)}

    def run():
        st["k"], k = jax.random.split(st["k"])
        st["p"], st["s"], st["o"] = step(st["p"], st["s"], st["o"], k)
        jax.block_until_ready(st["p"])

    return median_ms(run)


def child(args):
    """One peer on one workload in this process; prints its JSON line."""
    pin_threads(args.threads)
    kind = args.child
    batches = [int(b) for b in args.batches.split(",")]
    if kind == "jax":
        res = jax_peer(args.workloads, batches, args.train, args.threads)
    else:
        res = tf_keras_peer(args.workloads, int(kind[2:]), batches, args.train, args.threads)
    emit({"event": "result", **res})


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run_peer(name, kind, args):
    """Runs `kind` on `name` in a child process under the build and run time limits."""
    limit = args.build_timeout_tf3 if kind == "tf3" else args.build_timeout
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--workloads", name,
           "--batches", args.batches, "--threads", str(args.threads)] + (["--train"] if args.train else [])
    row = {"workload": name, "peer": PEER_NAMES[kind], "load1": load1()}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=HERE)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout] + [lines.put(None)], daemon=True).start()
    errs = []
    threading.Thread(target=lambda: errs.extend(proc.stderr), daemon=True).start()
    deadline, built = time.monotonic() + limit, False
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                row["error"] = f"did not build in {limit} s" if not built else f"did not finish in {args.run_timeout} s"
                break
            if line is None:
                proc.wait()
                lines_err = "".join(errs).strip().splitlines()
                exc = [l for l in lines_err if l.split(":")[0].endswith(("Error", "Exception"))]
                last = (exc or lines_err or ["no output"])[-1]
                if proc.returncode < 0 and not exc:
                    # Killed (SIGKILL: usually the kernel's out-of-memory killer); the
                    # last line of stderr is then unrelated noise.
                    row["error"] = f"killed by signal {-proc.returncode}"
                else:
                    row["error"] = f"exit {proc.returncode}: {last[:200]}"
                break
            if not line.startswith("{"):
                continue
            ev = json.loads(line)
            if ev.get("event") == "built":
                built, deadline = True, time.monotonic() + args.run_timeout
            elif ev.get("event") == "result":
                row.update({k: v for k, v in ev.items() if k != "event"})
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: only what we started
            proc.wait()
    return row


def check(names, threads):
    """JAX translation vs tf-keras (same weights, inference) on workloads and small cases."""
    pin_threads(threads)
    import numpy as np
    import tf_keras as keras

    import jax_model

    cases = [(n, load_config(n)) for n in names] + [(n, json.loads(c.to_json())) for n, c in check_models(keras)]
    worst = 0.0
    for label, cfg in cases:
        km = keras.models.model_from_json(json.dumps(cfg))
        rng = np.random.default_rng(1)
        for w in km.weights:  # non-trivial statistics and biases, not the initial zeros and ones
            if "moving_variance" in w.name:
                w.assign(rng.uniform(0.5, 2.0, w.shape).astype(np.float32))
            elif "bias" in w.name or "moving_mean" in w.name or "beta" in w.name or "gamma" in w.name:
                w.assign(rng.normal(0, 0.5, w.shape).astype(np.float32))
        m = jax_model.Model(cfg)
        p, s = jax_model.from_keras_weights(m, km)
        x = rng.random((2, *m.input_shape), dtype=np.float32)
        want = km(x, training=False).numpy()
        got = np.asarray(m.apply(p, s, x)[0])
        scale = float(np.max(np.abs(want)))
        err = float(np.max(np.abs(got - want)) / max(1.0, scale))
        worst = max(worst, err)
        print(f"{label}: max relative difference {err:.2e} (outputs up to {scale:.3g})", flush=True)
    print(f"worst {worst:.2e}")
    return 0 if worst < 1e-4 else 1


def check_models(keras):
    """Small models with every translated option the workloads do not exercise."""
    L = keras.layers
    for impl, fmt in [(1, "channels_first"), (2, "channels_last"), (2, "channels_first"), (3, "channels_first")]:
        pad = "valid" if impl in (1, 3) else "same"
        x = keras.Input((3, 9, 8) if fmt == "channels_first" else (9, 8, 3))
        y = L.LocallyConnected2D(4, (3, 2), strides=(2, 3), padding=pad, data_format=fmt, implementation=impl, activation="tanh")(x)
        y = L.MaxPooling2D(2, padding="same", data_format=fmt)(y)
        y = L.Flatten(data_format=fmt)(y)
        yield f"lc2d impl {impl} {pad} {fmt}", keras.Model(x, L.Dense(3)(y))
    for k, s in [(2, 1), (4, 1), (3, 2), (5, 2)]:  # Keras same windows differ from XLA SAME here
        x = keras.Input((8, 2))
        y = L.LocallyConnected1D(3, k, strides=s, padding="same", implementation=2)(x)
        yield f"lc1d same k={k} s={s}", keras.Model(x, y)
    x = keras.Input((12, 2))
    a = L.LocallyConnected1D(2, 3, implementation=1, data_format="channels_first")(L.Permute((2, 1))(x))
    b = L.BatchNormalization(axis=1)(a)
    y = L.Add()([L.ZeroPadding1D((1, 1))(L.Permute((2, 1))(b)), L.Conv1D(2, 3, padding="same")(x)])
    y = L.AveragePooling1D(3, padding="same")(y)
    yield "lc1d channels_first, BatchNorm, Add, Conv1D, pooling", keras.Model(x, L.Dense(1)(L.Flatten()(y)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=TABLE_WORKLOADS)
    ap.add_argument("--peers", default="tf1,jax,tf3", help="comma-separated: tf1, tf2, tf3, jax")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--train", action="store_true", help="also time a training step at batch 32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--build-timeout", type=float, default=300, help="s to build a tf-keras impl 1/2 model or compile JAX")
    ap.add_argument("--build-timeout-tf3", type=float, default=180, help="s to build a tf-keras impl 3 model")
    ap.add_argument("--run-timeout", type=float, default=600, help="s to time a peer once it is built")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help="compare the JAX translation with tf-keras")
    ap.add_argument("--table", metavar="JSONL", help="print the markdown tables of a run")
    ap.add_argument("--readme", help="README to write the tables into (with --jsonl)")
    ap.add_argument("--jsonl")
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.check:
        return check([n for n in args.workloads.split(",") if n], args.threads)
    import report

    if args.table:
        print(report.tables(report.read_rows(args.table)))
        return 0
    if args.readme:
        report.write_readme(args.readme, args.jsonl)
        return 0
    # Stopped from outside (timeout, Ctrl-C): unwind, so run_peer kills the running child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for name in args.workloads.split(","):
        for kind in args.peers.split(","):
            emit(run_peer(name, kind, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
