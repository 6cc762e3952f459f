#!/usr/bin/env bash
# ViG's bidirectional scan in one device call: the GPU check rows of the op (`gla check --device
# cuda --filter bidir`: the bidir case table on the fused and composed paths against the f64
# oracle, the typed-error rows, the repeat row), `gla bench bidir` (our fused forward vs our GLA
# op on x and flip(x), ViG's shapes and the record shape), then fla's chunk_gla on the stacked
# [x; flip x] batch as ViG calls it (bench/bidir_vs_fla.py) until the time budget runs out.
# Usage, from the repo root on the GPU machine: OUT=/tmp/out bench/bidir_vs_fla.sh [path/to/gla [--shape B,T,H,K,V ...]]
#   GLA_CACHE_DIR: cubins compiled beforehand; fla's wheels in .whl/ (bench/fla_env.sh);
#   .triton-autotune/ restores fla's autotuning. FLA_TIMEOUT (s, default 300) stops fla's side.
# Writes $OUT/bidir_check.{txt,json}, $OUT/bidir_gla.{txt,json}, $OUT/bidir_vs_fla.{txt,json},
# $OUT/summary.txt.
set -u
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
G="${1:-target/release/gla}"
source "$(dirname "$0")/fla_env.sh"
SUM=$OUT/summary.txt
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt" 2>&1
timeout 240 "$G" check --device cuda --filter bidir --json "$OUT/bidir_check.json" > "$OUT/bidir_check.txt" 2>&1
echo "check rc=$?" | tee -a "$SUM"
tail -2 "$OUT/bidir_check.txt" >> "$SUM"; grep -E " FAIL" "$OUT/bidir_check.txt" | head -20 >> "$SUM"
timeout 240 "$G" bench bidir --device cuda --json "$OUT/bidir_gla.json" "${@:2}" > "$OUT/bidir_gla.txt" 2>&1
echo "bench bidir rc=$?" | tee -a "$SUM"
cat "$OUT/bidir_gla.txt" >> "$SUM"
fla_autotune_restore
timeout "${FLA_TIMEOUT:-300}" python3 bench/bidir_vs_fla.py --gla-json "$OUT/bidir_gla.json" --out "$OUT/bidir_vs_fla.json" > "$OUT/bidir_vs_fla.txt" 2>&1
echo "fla rc=$?" | tee -a "$SUM"
tail -24 "$OUT/bidir_vs_fla.txt" >> "$SUM"
fla_autotune_save
cat "$SUM"
