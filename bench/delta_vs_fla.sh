#!/usr/bin/env bash
# Side-by-side benchmark of the delta-rule ops on the GPU machine, one run: `gla bench delta
# --device cuda --json`, then fla's chunk_delta_rule and chunk_gated_delta_rule on the same shapes
# (bench/delta_vs_fla.py).
# Usage, from the repo root there:  bench/delta_vs_fla.sh [path/to/gla [--shape B,T,H,K,V ...]]
# FLA_TIMEOUT (s) stops fla's side; the table and JSON hold every shape finished by then.
# ONE_PLANE=1 also times gla under GLA_DELTA_PRECISION=bf16 (one bf16 plane, fla's storage
# precision) on the same shapes: a second gla column (needs those cubins cached or compiled).
#   needs: a gla built with --features cuda, libnvrtc (bench/fla_env.sh sets the path), python3 with
#   torch and triton, and fla's wheels in .whl/ (see bench/fla_env.sh).
# Writes $OUT/delta_gla.json, $OUT/delta_vs_fla.json and logs ($OUT defaults to bench/out).
set -euo pipefail
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
GLA="${1:-target/release/gla}"
source "$(dirname "$0")/fla_env.sh"
# extra arguments after the binary go to `gla bench delta` (e.g. --shape B,T,H,K,V, repeatable)
"$GLA" bench delta --device cuda --json "$OUT/delta_gla.json" "${@:2}" 2>&1 | tee "$OUT/delta_gla.txt"
ONE=()
if [ "${ONE_PLANE:-0}" = 1 ]; then
    GLA_DELTA_PRECISION=bf16 "$GLA" bench delta --device cuda --json "$OUT/delta_gla_one.json" "${@:2}" 2>&1 | tee "$OUT/delta_gla_one.txt"
    ONE=(--gla-one-json "$OUT/delta_gla_one.json")
fi
fla_autotune_restore
set +e
timeout "${FLA_TIMEOUT:-3600}" python3 bench/delta_vs_fla.py --gla-json "$OUT/delta_gla.json" "${ONE[@]}" --out "$OUT/delta_vs_fla.json" 2>&1 | tee "$OUT/delta_vs_fla.txt"
rc=${PIPESTATUS[0]}
fla_autotune_save
exit "$rc"
