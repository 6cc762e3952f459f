#!/usr/bin/env bash
# ViG side by side on the GPU machine, one run: `gla bench vig --device cuda --json` (our ViG-T/S/B
# inference and training), then hustvl's PyTorch ViG with fla 0.6.0's chunk_gla and timm's DeiT
# (bench/vig_vs_deit.py) on the same resolutions and batches, one table at the end.
# Usage, from the repo root there:  bench/vig_vs_deit.sh path/to/gla path/to/hustvl-ViG
#   needs: a gla built with --features cuda, libnvrtc, python3 with torch, timm and fla 0.6.0
#   (PYTHONPATH). GLA_CACHE_DIR: cubins compiled beforehand; TRITON_CACHE_DIR: fla's compiled and
#   autotuned kernels from an earlier run (with TRITON_CACHE_AUTOTUNING=1).
#   env: MODELS (t,s,b), SIZES (224,512,1024), DEIT_TIMEOUT (s, 240), PY_TIMEOUT (s, 540),
#   HUSTVL (1; 0 leaves hustvl's ViG out: ours and DeiT only, no fla autotuning, a few minutes)
# Writes $OUT/vig_gla.json, $OUT/vig_deit.json, $OUT/vig_torch.json and $OUT/vig_vs_deit.txt
# ($OUT: bench/out).
set -uo pipefail
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
GLA="${1:?path to gla}"
VIG="${2:?path to a hustvl/ViG checkout}"
MODELS="${MODELS:-t,s,b}"
SIZES="${SIZES:-224,512,1024}"
# the batch per size, as bench/vig_vs_deit.py's BATCH (224: 128, 512: 32, other sizes: 8)
BATCHES=$(echo "$SIZES" | tr ',' '\n' | while read -r s; do case "$s" in 224) echo 128;; 512) echo 32;; *) echo 8;; esac; done | paste -sd, -)
"$GLA" bench vig --device cuda --models "$(echo "$MODELS" | sed "s/\([tsb]\)/vig-\1/g")" --sizes "$SIZES" \
    --batch "$BATCHES" --train-batch "$BATCHES" --json "$OUT/vig_gla.json" 2>&1 | tee "$OUT/vig_gla.txt"
# DeiT first (no autotuning), then hustvl's ViG, whose first call of each shape waits for fla's
# Triton autotuning (minutes on a fresh machine): a run cut short keeps DeiT's rows
timeout "${DEIT_TIMEOUT:-240}" python3 bench/vig_vs_deit.py --which deit,deit-math --models "$MODELS" --sizes "$SIZES" \
    --json "$OUT/vig_deit.json" 2>&1 | tee "$OUT/vig_deit.txt"
if [ "${HUSTVL:-1}" != 0 ]; then
    timeout "${PY_TIMEOUT:-540}" python3 bench/vig_vs_deit.py --which vig --vig "$VIG" --models "$MODELS" --sizes "$SIZES" \
        --json "$OUT/vig_torch.json" 2>&1 | tee "$OUT/vig_torch.txt"
fi
python3 bench/vig_vs_deit.py --table "$OUT/vig_gla.json" "$OUT/vig_deit.json" "$OUT/vig_torch.json" | tee "$OUT/vig_vs_deit.txt"
