#!/usr/bin/env bash
# Training throughput side by side on the GPU machine, one run: fla's GLAForCausalLM with full
# setup (fla's gla_340M, batch 8 x 2048); prints both rows.
# fla autotunes every config of every Triton kernel on a fresh machine (more than one 10-minute
# call here), so the autotuning RESULTS are kept between calls: TRITON_CACHE_AUTOTUNING=1, and
# the *.autotune.json files of the cache are packed into $OUT/triton-autotune.tgz at the end and
# unpacked from .triton-autotune/triton-autotune.tgz (carry it back there) at the start. A
# FLA_TIMEOUT (s) stops a call that is still autotuning; the next call resumes from the results.
# Usage, from the repo root there:  bench/train_vs_fla.sh [path/to/gla]
set -uo pipefail
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
GLA="${1:-target/release/gla}"
source "$(dirname "$0")/fla_env.sh"
export TRITON_CACHE_AUTOTUNING=1
mkdir -p "$TRITON_CACHE_DIR"
if [ -f .triton-autotune/triton-autotune.tgz ]; then
    tar -xzf .triton-autotune/triton-autotune.tgz -C "$TRITON_CACHE_DIR"
    echo "restored $(find "$TRITON_CACHE_DIR" -name '*.autotune.json' | wc -l) autotuning results"
fi
timeout "${FLA_TIMEOUT:-1200}" python3 bench/train_vs_fla.py --autotune full --out "$OUT/train_fla.json" 2>&1 | tee "$OUT/train_fla.txt"
fla_rc=${PIPESTATUS[0]}
(cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar -czf "$OUT/triton-autotune.tgz" -T -)
echo "fla rc=$fla_rc; saved $(tar -tzf "$OUT/triton-autotune.tgz" | wc -l) autotuning results"
if [ "$fla_rc" = 0 ]; then
    "$GLA" bench train --device cuda --json "$OUT/train_gla.json" 2>&1 | tee "$OUT/train_gla.txt"
fi
