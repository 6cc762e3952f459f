#!/usr/bin/env bash
# Fills fla's Triton autotuning results for every shape of bench/gla_vs_fla.py --warm-only (the
# shapes of record and fla's README shapes), so that a later bench/gla_vs_fla.sh call times at
# once. Meant to run in the background of a call that does other GPU work (gla check does not
# time anything): `bench/fla_warm.sh & ...; wait`. Keeps the results in $OUT/triton-autotune.tgz
# (copy it back to .triton-autotune/ here). FLA_TIMEOUT (s, default 500) stops it in time for the
# results to be saved.
set -uo pipefail
OUT="${OUT:-bench/out}"; mkdir -p "$OUT"
source "$(dirname "$0")/fla_env.sh"
fla_autotune_restore
timeout "${FLA_TIMEOUT:-500}" python3 bench/gla_vs_fla.py --warm-only --out /dev/null > "$OUT/fla_warm.txt" 2>&1
echo "fla warm: rc=$?; $(grep -c '^warm' "$OUT/fla_warm.txt") shapes warm"
fla_autotune_save
