#!/usr/bin/env bash
# Side-by-side benchmark of softmax attention on the GPU machine, one run: `gla bench attn
# --device cuda --json` (our flash kernels: forward, forward+backward, decode over a KV cache),
# then PyTorch SDPA on the same shapes with the flash and the cuDNN backends
# (torch.nn.attention.sdpa_kernel; bench/attn_vs_sdpa.py), one table at the end.
# Usage, from the repo root there:  bench/attn_vs_sdpa.sh [path/to/gla [gla bench attn args...]]
#   e.g. OUT=/tmp/out bench/attn_vs_sdpa.sh target/release/gla
#   needs: a gla built with --features cuda, libnvrtc (the toolkit's, on the path below), python3
#   with torch (CUDA). GLA_CACHE_DIR: a folder of cubins compiled beforehand saves the first
#   compile. SDPA_TIMEOUT (s, default 600) stops the PyTorch side.
# Writes $OUT/attn_gla.json, $OUT/attn_gla.txt, $OUT/attn_vs_sdpa.json, $OUT/attn_vs_sdpa.txt
# ($OUT defaults to bench/out).
set -uo pipefail
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
GLA="${1:-target/release/gla}"
"$GLA" bench attn --device cuda --json "$OUT/attn_gla.json" "${@:2}" 2>&1 | tee "$OUT/attn_gla.txt"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
    echo "gla bench attn failed (rc=$rc)"
    exit "$rc"
fi
timeout "${SDPA_TIMEOUT:-600}" python3 bench/attn_vs_sdpa.py --gla-json "$OUT/attn_gla.json" --out "$OUT/attn_vs_sdpa.json" 2>&1 | tee "$OUT/attn_vs_sdpa.txt"
exit "${PIPESTATUS[0]}"
