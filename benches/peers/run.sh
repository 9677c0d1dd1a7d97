#!/usr/bin/env bash
# Times lcjit and its peers (tf-keras implementations 1 and 3, JAX) on the workloads of
# issue 12's table in one run: forward at batch 1 and 32 and a training step (Adam) at
# batch 32, medians, 2 threads each. Writes every measurement as a JSON line to $OUT, prints
# the markdown tables, and with WRITE_README=1 writes them, with the machine (lscpu, load,
# versions, lcjit's roofline probe), into benches/peers/README.md.
#
# Needs a Python with tensorflow-cpu, tf-keras and jax (the tests never do):
#   python3 -m venv /tmp/peers && /tmp/peers/bin/pip install tensorflow-cpu tf-keras jax
#   PYTHON=/tmp/peers/bin/python WRITE_README=1 CONDITIONS="quiet machine" benches/peers/run.sh
# Smoke run (batch 1 only, no training, README untouched):
#   PYTHON=/tmp/peers/bin/python SMOKE=1 WORKLOADS=snp_lc1d benches/peers/run.sh
# Knobs (environment): WORKLOADS (comma-separated names in tests/data/workloads), PEERS
# (tf1,tf2,tf3,jax), THREADS (2), TF3_TIMEOUT (s allowed to build a tf-keras implementation 3
# model, 180), BUILD_TIMEOUT (the same for implementations 1/2 and JAX, 300), OUT (target/peers.jsonl), CONDITIONS (free text on the machine's load, goes
# into the README).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
WORKLOADS=${WORKLOADS:-deepface_l4_l6,seed_lc2d,snp_lc1d,genomics_lc1d,genomic_residual_lc1d,lc2d_f12_f6,lc1d_f2}
PEERS=${PEERS:-tf1,jax,tf3}
THREADS=${THREADS:-2}
TF3_TIMEOUT=${TF3_TIMEOUT:-180}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-300}
OUT=${OUT:-target/peers.jsonl}
CONDITIONS=${CONDITIONS:-conditions not stated}
BIN=${CARGO_TARGET_DIR:-target}/release/lcjit
if [ "${SMOKE:-0}" = 1 ]; then BATCHES=1; TRAIN=""; else BATCHES=1,32; TRAIN=--train; fi

cargo build --release --quiet
mkdir -p "$(dirname "$OUT")"
"$PY" benches/peers/report.py machine --conditions "$CONDITIONS" > "$OUT"
# lcjit's roofline probe (read bandwidth, f32x4 FMA rate) on the same threads.
"$BIN" bench tests/data/workloads/seed_lc1d.json --json --threads "$THREADS" --engines jit \
  | "$PY" -c 'import json,sys; print(json.dumps({"probe": json.loads(sys.stdin.read())["roofline"]}))' >> "$OUT"
for w in ${WORKLOADS//,/ }; do
  for b in ${BATCHES//,/ }; do
    train=""; [ "$b" = 32 ] && train="$TRAIN"
    echo "lcjit $w batch $b $train" >&2
    echo "{\"lcjit_load\": {\"workload\": \"$w\", \"load1\": $(cut -d' ' -f1 /proc/loadavg)}}" >> "$OUT"
    "$BIN" bench "tests/data/workloads/$w.json" --batch "$b" --threads "$THREADS" --engines jit \
      --json --no-probe $train >> "$OUT"
  done
done
# One peer at a time over all workloads, in the order of $PEERS (tf-keras implementation 3,
# whose builds are the slowest, last): every line lands in $OUT as soon as it is measured.
for p in ${PEERS//,/ }; do
  "$PY" benches/peers/peers.py --workloads "$WORKLOADS" --peers "$p" --batches "$BATCHES" $TRAIN \
    --threads "$THREADS" --build-timeout "$BUILD_TIMEOUT" --build-timeout-tf3 "$TF3_TIMEOUT" \
    | tee -a "$OUT" >&2
done
"$PY" benches/peers/report.py machine --conditions "$CONDITIONS" >> "$OUT"
"$PY" benches/peers/peers.py --table "$OUT"
if [ "${WRITE_README:-0}" = 1 ]; then
  "$PY" benches/peers/peers.py --readme benches/peers/README.md --jsonl "$OUT"
  echo "tables written into benches/peers/README.md" >&2
fi
