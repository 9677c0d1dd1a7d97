#!/usr/bin/env python3
"""Markdown tables of a peers run, and the machine it ran on, for benches/peers/README.md.

A run is one JSON-lines file (run.sh writes it) holding:
  - `lcjit bench --json` lines (key "model"),
  - peer lines from peers.py (keys "workload", "peer"),
  - machine lines from `report.py machine` (key "machine"), one before and one after the run,
  - the roofline probe line (key "probe"),
  - the load average when each lcjit bench started (key "lcjit_load").

  python benches/peers/report.py machine [--conditions TEXT]   prints a machine line
Tables are printed by `peers.py --table FILE` and written into the README, between the
markers below, by `peers.py --readme README.md --jsonl FILE`.
"""
import datetime
import json
import os
import subprocess
import sys

BEGIN, END = "<!-- peers-run:begin -->", "<!-- peers-run:end -->"
ENGINE_ORDER = ["lcjit", "tf-keras impl 1", "tf-keras impl 2", "tf-keras impl 3", "JAX"]
HERE = os.path.dirname(os.path.abspath(__file__))


def read_rows(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip().startswith("{")]


def _lscpu():
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    kv = dict(l.split(":", 1) for l in out.splitlines() if ":" in l)
    kv = {k.strip(): v.strip() for k, v in kv.items()}
    flags = kv.get("Flags", "").split()
    return {
        "model": kv.get("Model name"),
        "cpus": kv.get("CPU(s)"),
        "threads_per_core": kv.get("Thread(s) per core"),
        "l1d": kv.get("L1d cache"),
        "l2": kv.get("L2 cache"),
        "l3": kv.get("L3 cache"),
        "hypervisor": kv.get("Hypervisor vendor"),
        "simd": " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags),
    }


def machine(conditions):
    from importlib import metadata

    versions = {}
    for pkg in ("tensorflow", "tf_keras", "jax", "jaxlib", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    commit = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {
        "machine": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": _lscpu(),
            "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": os.uname().release,
            "python": sys.version.split()[0],
            "versions": versions,
            "lcjit_commit": commit.stdout.strip() or None,
            "loadavg": [float(x) for x in load],
            "conditions": conditions,
        }
    }


def _engine_rows(rows):
    """{(workload, engine): {"build", "1", "32", "train", "load1", "error"}}"""
    table = {}
    for r in rows:
        if "model" in r:  # lcjit bench --json
            e = table.setdefault((r["model"], "lcjit"), {})
            e[str(r["batch"])] = r["forward_ms"]["jit"]
            fwd, bwd = r["compile_ms"]["forward"], r["compile_ms"]["backward"]
            if fwd is not None:
                e["build"] = f"{fwd:.1f} ms" + (f" (+{bwd:.0f} ms training)" if bwd is not None else "")
            if r["train_step_ms"]["jit"] is not None:
                e["train"] = r["train_step_ms"]["jit"]
            e["weight_bytes"] = r["weight_bytes"]
            e[f"flops{r['batch']}"] = r["flops"]["forward"]
            if r["flops"]["train_step"] is not None:
                e["flops_train"] = r["flops"]["train_step"]
        elif "lcjit_load" in r:  # run.sh: the load when the batch-1 bench started
            e = table.setdefault((r["lcjit_load"]["workload"], "lcjit"), {})
            e.setdefault("load1", r["lcjit_load"]["load1"])
        elif "peer" in r:
            e = table.setdefault((r["workload"], r["peer"]), {})
            e["load1"] = r.get("load1")
            if "error" in r:
                e["error"] = r["error"]
                continue
            e["build"] = f"{r['build_s']} s" if r.get("build_s") is not None else None
            for b, ms in r.get("forward_ms", {}).items():
                e[b] = ms
            if r.get("train_step_ms") is not None:
                e["train"] = r["train_step_ms"]
            elif r.get("train_error"):
                # The forward figures of a peer whose training step failed (re-run
                # without it), with the reason in the training cell.
                e["train_error"] = r["train_error"]
    return table


def _order(table):
    from peers import TABLE_WORKLOADS

    first = TABLE_WORKLOADS.split(",")
    names = sorted({w for w, _ in table}, key=lambda w: (first.index(w) if w in first else len(first), w))
    return names


def _fmt(v):
    if v is None:
        return "—"
    return f"{v:.3g}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _bounds(lc, probe):
    """lcjit's time over its bound: b1 over streaming the weights once at the probe's best
    read bandwidth (the wide tier's loads where the CPU has one), b32 and the training
    step over their flops at the probe's f32x4 FMA rate."""
    if not probe or not probe.get("read_gbps") or not probe.get("fma_gflops"):
        return "—"
    read = probe.get("stream_gbps") or probe["read_gbps"]
    parts = []
    for col, work, rate in (("1", lc.get("weight_bytes"), read),
                            ("32", lc.get("flops32"), probe["fma_gflops"]),
                            ("train", lc.get("flops_train"), probe["fma_gflops"])):
        ms = lc.get(col)
        parts.append(f"{ms / (work / (rate * 1e9) * 1e3):.2f}×" if ms and work else "—")
    return " / ".join(parts)


def tables(rows):
    t = _engine_rows(rows)
    probe = next((r["probe"] for r in rows if "probe" in r), None)
    out = ["| workload | engine | build / compile | forward b1 (ms) | forward b32 (ms) | train step b32 (ms) | load (1 min) at start |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for w in _order(t):
        for eng in sorted({e for ww, e in t if ww == w}, key=lambda e: ENGINE_ORDER.index(e) if e in ENGINE_ORDER else 99):
            r = t[(w, eng)]
            load = f"{r['load1']:.1f}" if r.get("load1") is not None else ""
            if "error" in r:
                out.append(f"| {w} | {eng} | {r['error']} | — | — | — | {load} |")
                continue
            name = f"**{eng}**" if eng == "lcjit" else eng
            train = r.get("train_error") or _fmt(r.get("train"))
            out.append(f"| {w} | {name} | {r.get('build') or '—'} | {_fmt(r.get('1'))} | {_fmt(r.get('32'))} | {train} | {load} |")
    out += ["", "Speed-up of lcjit over the fastest peer of each column (> 1: lcjit faster):", "",
            "| workload | lcjit b1 / b32 / train (ms) | fastest peer b1 / b32 / train (ms) | speed-up b1 / b32 / train | lcjit ÷ bound b1 (stream) / b32, train (f32x4 FMA) |",
            "| --- | --- | --- | --- | --- |"]
    for w in _order(t):
        lc = t.get((w, "lcjit"), {})
        mine, best, ratio = [], [], []
        for col in ("1", "32", "train"):
            peers = [(r[col], e) for (ww, e), r in t.items() if ww == w and e != "lcjit" and r.get(col) is not None]
            mine.append(_fmt(lc.get(col)))
            if not peers:
                best.append("—")
                ratio.append("—")
                continue
            ms, eng = min(peers)
            best.append(f"{eng} {_fmt(ms)}")
            ratio.append(f"{ms / lc[col]:.2f}×" if lc.get(col) else "—")
        out.append(f"| {w} | {' / '.join(mine)} | {' / '.join(best)} | {' / '.join(ratio)} | {_bounds(lc, probe)} |")
    return "\n".join(out)


def _machine_text(rows):
    ms = [r["machine"] for r in rows if "machine" in r]
    probe = next((r["probe"] for r in rows if "probe" in r), None)
    if not ms:
        return "Machine: not recorded."
    m, last = ms[0], ms[-1]
    c = m["cpu"]
    v = m["versions"]
    lines = [
        f"Run of {m['date']} (lcjit {m['lcjit_commit']}), {last['conditions']}.",
        "",
        f"Machine: {c['cpus']} vCPUs ({c['threads_per_core']} thread per core) of an {c['model']}"
        f" under {c['hypervisor'] or 'no'} hypervisor; SIMD {c['simd']} (lcjit emits f32x4, and AVX2 or AVX-512 microkernels for its compute-bound tiles);"
        f" L1d {c['l1d']}, L2 {c['l2']}, L3 {c['l3']}; {m['memory_gib']} GiB; Linux {m['kernel']}.",
        f"Peers: Python {m['python']}, tensorflow {v['tensorflow']}, tf-keras {v['tf_keras']} (oneDNN),"
        f" jax {v['jax']} / jaxlib {v['jaxlib']} (XLA CPU), numpy {v['numpy']}.",
        f"Load average (1, 5, 15 min) before the run {m['loadavg']}, after {last['loadavg']};"
        " the table gives the 1-minute load when each peer started (the run itself adds about 2).",
    ]
    if probe:
        wide = wide_read = ""
        tier = {"avx512": "AVX-512", "avx2": "AVX2"}.get(probe.get("wide_tier"), probe.get("wide_tier"))
        if probe.get("wide_fma_gflops"):
            wide = f", {probe['wide_fma_gflops']:.1f} GFLOP/s {tier} microkernel FMA"
        if probe.get("wide_read_gbps"):
            wide_read = f" ({probe['wide_read_gbps']:.1f} GB/s with {tier} loads)"
        lines.append(
            f"lcjit's roofline probe in the same run: {probe['read_gbps']:.1f} GB/s read bandwidth{wide_read},"
            f" {probe['fma_gflops']:.1f} GFLOP/s f32x4 FMA{wide} (2 threads)."
        )
    lines.append(
        "Everything on 2 threads (lcjit `--threads 2`; TF intra/inter-op pools of 2; XLA CPU"
        " intra-op pool of 2; each peer process pinned to 2 CPUs); medians in ms; weights from"
        " the initializers; forward at batch 1 and 32; a training step (forward, backward of the"
        " MSE, Adam) at batch 32 in training mode."
    )
    return "\n".join(lines)


def write_readme(readme, jsonl):
    rows = read_rows(jsonl)
    block = f"{BEGIN}\n{_machine_text(rows)}\n\n{tables(rows)}\n{END}"
    text = open(readme).read()
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(readme, "w") as f:
        f.write(text)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "machine":
        cond = sys.argv[3] if len(sys.argv) >= 4 and sys.argv[2] == "--conditions" else "conditions not stated"
        print(json.dumps(machine(cond)))
    else:
        sys.exit(__doc__)
