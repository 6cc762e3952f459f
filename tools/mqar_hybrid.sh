#!/usr/bin/env bash
# MQAR of pure GLA, pure Gated DeltaNet and their hybrid stacks (one softmax-attention layer in
# four: fla's `attn` key, `gla train --attn-layers`) at equal size and steps, through
# tools/mqar_family.sh (same recipe, same (init, data) seed pairs, one table of held-out query
# accuracy with the parameter counts).
# Defaults: T = 512, 64 key-value pairs, vocab 1024, 4 layers of D = 128 with 2 heads, the
# attention at layer 1 (2 heads of 64, full causal), 5000 steps at lr 1e-3 (cosine to 1e-4): the
# GPU setting (bench/results/README.md; at lr 3e-3 every stack stays at chance).
# CPU check (a tiny setting): DEVICE=cpu STEPS=4 SEQ=64 KV=4 VOCAB=128 D=32 tools/mqar_hybrid.sh target/release/gla
# Usage: tools/mqar_hybrid.sh [path/to/gla]   env: DEVICE (cuda), JOBS (4), STEPS (5000),
#        SEQ (512), KV (64), VOCAB (1024), D (128), HEADS (2), LAYERS (4), ATTN ("1"),
#        LR (1e-3), PAIRS ("0,1"), EXTRA (more flags for every run), OUT (mqar-hybrid)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export DEVICE="${DEVICE:-cuda}" JOBS="${JOBS:-4}" STEPS="${STEPS:-5000}" SEQ="${SEQ:-512}" KV="${KV:-64}"
export PAIRS="${PAIRS:-0,1}" ATTN="${ATTN:-1}" OUT="${OUT:-mqar-hybrid}"
export ARCHS="gla gla+attn gated_deltanet gated_deltanet+attn"
export EXTRA="--vocab ${VOCAB:-1024} --d-model ${D:-128} --heads ${HEADS:-2} --layers ${LAYERS:-4} --lr ${LR:-1e-3} --min-lr $(python3 -c "print(${LR:-1e-3} / 10)") ${EXTRA:-}"
exec bash "$here/mqar_family.sh" "$@"
