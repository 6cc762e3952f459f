#!/usr/bin/env bash
# Two gla binaries side by side in one device call (no slowdown check): the op, training and
# generation benchmarks at the shapes of record, each run twice in the order A B A B so that a
# drift of the card shows, then `gla check --device cuda` and the CLI's GPU paths
# (bench/cli_gpu_smoke.py) with B. Prints a summary table last
# and keeps the JSON results and logs in one archive under $OUT (ab.tar.gz).
# Usage, from the repo root on the GPU machine:  bench/ab_binaries.sh OLD_GLA NEW_GLA
set -uo pipefail
A="$1"; B="$2"
OUT="${OUT:-bench/out}"; W="$(mktemp -d)/ab"; mkdir -p "$W"
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$W/card.txt"
for round in 1 2; do
  for tag in A B; do
    G="$A"; [ "$tag" = B ] && G="$B"
    timeout 150 "$G" bench ops --device cuda --json "$W/ops_${tag}${round}.json" > "$W/ops_${tag}${round}.log" 2>&1
    timeout 120 "$G" bench train --device cuda --json "$W/train_${tag}${round}.json" > "$W/train_${tag}${round}.log" 2>&1
    timeout 120 "$G" bench generate --device cuda --json "$W/gen_${tag}${round}.json" > "$W/gen_${tag}${round}.log" 2>&1
  done
done
timeout 300 "$B" check --device cuda --fla-fixtures crates/gla-model/tests/fixtures/fla > "$W/check.txt" 2>&1
echo "check rc=$? $(tail -1 "$W/check.txt")" > "$W/check_summary.txt"
grep FAIL "$W/check.txt" | head -20 >> "$W/check_summary.txt"
python3 bench/cli_gpu_smoke.py "$B" "$(mktemp -d)" > "$W/cli_smoke.txt" 2>&1
tar czf "$OUT/ab.tar.gz" -C "$(dirname "$W")" ab
python3 bench/ab_summary.py "$W"
cat "$W/check_summary.txt"
cat "$W/cli_smoke.txt"
