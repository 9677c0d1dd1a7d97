#!/bin/sh
# The machine's limits behind issue 12's unmet targets, measured without lcjit (plain C,
# 2 threads): streaming reads by load width and prefetch, and the memory floor of an Adam
# training step. Needs gcc and an AVX-512 CPU. Usage: benches/limits/run.sh
set -eu
here=$(dirname "$0")
out=${TMPDIR:-/tmp}/lcjit-limits
mkdir -p "$out"
gcc -O2 -mavx512f -pthread "$here/stream.c" -o "$out/stream"
gcc -O2 -mavx512f -pthread "$here/adam.c" -o "$out/adam"
for width in 4 8 16; do
    for pf in 0 2048; do "$out/stream" 536 $pf $width; done
done
"$out/stream" 294 2048 16
"$out/adam" 294
"$out/adam" 64.4
