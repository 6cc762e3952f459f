#!/usr/bin/env bash
# Softmax attention's GPU record in one device call: `gla check --device cuda --filter attn` (the
# attention table and the GPU-only cases on the flash and decode kernels, the repeat row, the
# typed errors), then bench/attn_vs_sdpa.sh (`gla bench attn` beside PyTorch SDPA's flash and
# cuDNN backends). Prints a summary last.
# Usage, from the repo root on the GPU machine: OUT=/tmp/out bench/attn_round.sh [path/to/gla]
#   GLA_CACHE_DIR: a folder of cubins compiled here beforehand saves the first compile there.
# Writes $OUT/attn_check.{txt,json}, $OUT/summary.txt and what attn_vs_sdpa.sh writes.
set -u
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
G="${1:-target/release/gla}"
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
S=$(date +%s)
t() { echo "[$(( $(date +%s) - S ))s] $*"; }
SUM=$OUT/summary.txt
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt" 2>&1
t "check attn" | tee -a "$SUM"
timeout 240 "$G" check --device cuda --filter attn --json "$OUT/attn_check.json" > "$OUT/attn_check.txt" 2>&1
echo "check rc=$?" >> "$SUM"
tail -2 "$OUT/attn_check.txt" >> "$SUM"
grep -E " (FAIL|fail)" "$OUT/attn_check.txt" | head -30 >> "$SUM"
t "bench attn vs sdpa" | tee -a "$SUM"
OUT="$OUT" SDPA_TIMEOUT="${SDPA_TIMEOUT:-240}" timeout 330 bash bench/attn_vs_sdpa.sh "$G" > "$OUT/attn_bench.log" 2>&1
echo "bench rc=$?" >> "$SUM"
cat "$OUT/attn_gla.txt" >> "$SUM" 2>/dev/null
tail -12 "$OUT/attn_vs_sdpa.txt" >> "$SUM" 2>/dev/null
t "done" | tee -a "$SUM"
cat "$SUM"
