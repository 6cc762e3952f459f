#!/usr/bin/env bash
# One device call that tells whether main still works and performs on the GPU (about 3 minutes
# on an H200): `gla check --device cuda` (op case table and model rows, fla's fixtures), the
# training and generation benchmarks of the 340M-class model; prints a summary and keeps at most
# 8 files under $OUT (the device tool's limit): check.txt, train.json, generate.json, log.txt.
# Usage, from the repo root there:  bench/gpu_smoke.sh [path/to/gla]   (exit 1 on a failure)
set -uo pipefail
OUT="${OUT:-bench/out}"; mkdir -p "$OUT"
G="${1:-target/release/gla}"
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
L="$OUT/log.txt"; : > "$L"
FAILED=0
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$L"
timeout 240 "$G" check --device cuda --fla-fixtures crates/gla-model/tests/fixtures/fla > "$OUT/check.txt" 2>&1
rc=$?; echo "gla check --device cuda: rc=$rc; $(tail -1 "$OUT/check.txt")" | tee -a "$L"; [ $rc = 0 ] || FAILED=1
grep -E "FAIL" "$OUT/check.txt" | head -20 | tee -a "$L"
timeout 150 "$G" bench train --device cuda --json "$OUT/train.json" 2>&1 | tail -3 | tee -a "$L"
[ "${PIPESTATUS[0]}" = 0 ] || FAILED=1
timeout 150 "$G" bench generate --device cuda --json "$OUT/generate.json" 2>&1 | tail -4 | tee -a "$L"
[ "${PIPESTATUS[0]}" = 0 ] || FAILED=1
[ "$FAILED" = 0 ] && echo "gpu smoke: all passed" | tee -a "$L" || echo "gpu smoke: FAILED" | tee -a "$L"
exit "$FAILED"
