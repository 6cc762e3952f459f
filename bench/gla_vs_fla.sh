#!/usr/bin/env bash
# Side-by-side benchmark on the GPU machine, one run: `gla bench ops --device cuda --json`, then
# fla's chunk_gla and PyTorch SDPA (flash, cuDNN) on the same shapes (bench/gla_vs_fla.py).
# Usage, from the repo root there:  bench/gla_vs_fla.sh [path/to/gla [--shape B,T,H,K,V ...]]
# FLA_TIMEOUT (s) stops fla's side; the JSON holds every shape finished by then.
#   needs: a gla built with --features cuda, libnvrtc (bench/fla_env.sh sets the path), python3 with torch
#   and triton, and fla's wheels in .whl/ (pip download --no-deps flash-linear-attention==0.6.0
#   fla-core==0.6.0 -d .whl; installed here into /tmp/site).
# Writes $OUT/gla.json, $OUT/gla_vs_fla.json and logs ($OUT defaults to bench/out).
set -euo pipefail
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
GLA="${1:-target/release/gla}"
source "$(dirname "$0")/fla_env.sh"
# extra arguments after the binary go to `gla bench ops` (e.g. --shape B,T,H,K,V, repeatable)
"$GLA" bench ops --device cuda --json "$OUT/gla.json" "${@:2}" 2>&1 | tee "$OUT/gla.txt"
fla_autotune_restore
set +e
timeout "${FLA_TIMEOUT:-3600}" python3 bench/gla_vs_fla.py --gla-json "$OUT/gla.json" --out "$OUT/gla_vs_fla.json" 2>&1 | tee "$OUT/gla_vs_fla.txt"
rc=${PIPESTATUS[0]}
fla_autotune_save
exit "$rc"
