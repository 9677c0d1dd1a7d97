#!/usr/bin/env bash
# Copies the seed corpora of every fuzz target from the golden cases into fuzz/corpus/
# (ignored by git: the seeds are the golden files, not copies committed twice).
#
#   fuzz/seed_corpora.sh [LCJIT_BINARY]
#
# Sources: /work/shared/keras-golden (if present) and tests/data. Files are named by
# their SHA-1, as libFuzzer names corpus entries, so identical files are kept once and
# re-running the script adds nothing twice. The `.keras` seeds are made with
# `lcjit convert` from golden `.h5` models (no golden `.keras` files exist); pass the
# binary (default: `lcjit` on PATH, else target/release/lcjit) or they are skipped with a
# note. The structural target is seeded with a few random byte strings: its input is a
# byte decoder, not a file format.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
corpus="$here/corpus"
sources=("$root/tests/data")
[ -d /work/shared/keras-golden ] && sources+=(/work/shared/keras-golden)
max_bytes=$((256 * 1024))   # larger seeds slow every execution; the goldens are smaller

add() { # target file
    mkdir -p "$corpus/$1"
    local size
    size=$(stat -L -c %s "$2")
    [ "$size" -le "$max_bytes" ] || return 0
    cp -L "$2" "$corpus/$1/$(sha1sum < "$2" | cut -c1-40)"
}

while IFS= read -r -d '' f; do
    case "$f" in
        */case.json|*/result.json|*/history.json|*/expected.json) ;;  # not model configs
        *.json) add keras_json "$f" ;;
        *.h5) add h5 "$f" ;;
        *.npz) add npz "$f" ;;
        *.npy) add npy "$f" ;;
    esac
done < <(find -L "${sources[@]}" -type f \( -name '*.json' -o -name '*.h5' -o -name '*.npz' -o -name '*.npy' \) -print0)

lcjit="${1:-}"
if [ -z "$lcjit" ]; then
    lcjit="$(command -v lcjit || true)"
    [ -n "$lcjit" ] || lcjit="${CARGO_TARGET_DIR:-$root/target}/release/lcjit"
fi
if [ -x "$lcjit" ]; then
    tmp="$(mktemp -d)"
    n=0
    while IFS= read -r -d '' f; do
        out="$tmp/$n.keras"
        if "$lcjit" convert "$f" --output "$out" >/dev/null 2>&1; then
            add keras_archive "$out"
        fi
        n=$((n + 1))
        [ "$n" -lt 60 ] || break
    done < <(find -L "${sources[@]}" -type f -name 'model.h5' -print0 | sort -z)
    rm -rf "$tmp"
else
    echo "note: no lcjit binary ($lcjit); keras_archive has no seeds" >&2
fi

mkdir -p "$corpus/structural"
for i in $(seq 1 32); do
    head -c $((16 + i * 8)) /dev/urandom > "$corpus/structural/seed$i"
done

for t in "$corpus"/*; do
    echo "$(basename "$t"): $(ls "$t" | wc -l) seeds, $(du -sh "$t" | cut -f1)"
done
