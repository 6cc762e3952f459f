#!/usr/bin/env bash
# Training throughput side by side on the GPU machine, one run: fla's GLAForCausalLM with full
# setup (fla's gla_340M, batch 8 x 2048); prints both rows.
# fla autotunes every config of every Triton kernel on a fresh machine (7 minutes here), so the
# autotuning results are kept between calls (fla_env.sh: carry .triton-autotune/, copy
# $OUT/triton-autotune.tgz back there). A FLA_TIMEOUT (s) stops a call that is still
# autotuning; the next call resumes from the results.
# Usage, from the repo root there:  bench/train_vs_fla.sh [path/to/gla]
set -uo pipefail
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
GLA="${1:-target/release/gla}"
source "$(dirname "$0")/fla_env.sh"
fla_autotune_restore
timeout "${FLA_TIMEOUT:-1200}" python3 bench/train_vs_fla.py --autotune full --out "$OUT/train_fla.json" 2>&1 | tee "$OUT/train_fla.txt"
fla_rc=${PIPESTATUS[0]}
fla_autotune_save
echo "fla rc=$fla_rc"
if [ "$fla_rc" = 0 ]; then
    "$GLA" bench train --device cuda --json "$OUT/train_gla.json" 2>&1 | tee "$OUT/train_gla.txt"
fi
