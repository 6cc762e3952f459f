#!/usr/bin/env bash
# One device call that checks a head no GPU has run yet and times what the open speed issues
# track, gla only (no PyTorch, no fla autotuning; about 5 minutes on an H200):
#   1. gla check --device cuda --quick (every family's table without the T = 65536 and > 2^31
#      rows), and the attention rows again on the 8x32 forward tile (GLA_ATTN_FWD=8x32);
#   2. gla bench attn (forward, forward+backward, decode; again with GLA_ATTN_SPLITS=2 and 4, the
#      backward's L2 working-set question), gla bench delta --stages (and the lab's plans,
#      GLA_DELTA_LAB, checked and timed) and gla bench
#      bidir --stages (and each launch of one forward+backward);
#   3. gla bench vig (ViG-T/S/B at 224 / 512 / 1024, inference and training) and ViG-T at 224 and
#      1024 again with --profile (the kernels of one iteration, summed per kernel); the 340M GLA
#      training step with --profile;
#   4. the delta lab variants, last (what the budget cuts first).
# The side-by-side calls against PyTorch come after it: bench/attn_vs_sdpa.sh, bench/delta_vs_fla.sh,
# bench/vig_vs_deit.sh. Prints a summary last.
# Usage, from the repo root on the GPU machine: OUT=/tmp/out bench/verify_round.sh [path/to/gla]
#   GLA_CACHE_DIR: cubins compiled beforehand (`gla kernels compile --cache DIR`, no GPU needed)
#   save the first compile.
# Writes $OUT/summary.txt and $OUT/logs.tar.xz (each step's full output).
set -u
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
G="${1:-target/release/gla}"
OUT="${OUT:-bench/out}"
L="$OUT/logs"
mkdir -p "$L"
S=$(date +%s)
SUM="$OUT/summary.txt"
: > "$SUM"
# BUDGET: seconds for the whole script (default 540, under the device's 600 s per call, so that
# the archive is always written); a step gets at most what is left less 25 s, none under 30 s
BUDGET="${BUDGET:-540}"
# step NAME TIMEOUT CMD...: runs CMD into $L/NAME.txt, adds its status and last lines to the summary
step() {
    local name=$1 limit=$2
    shift 2
    local left=$(( BUDGET - ($(date +%s) - S) - 25 ))
    if [ "$left" -lt 30 ]; then
        echo "[$(( $(date +%s) - S ))s] $name: skipped, the budget is spent" | tee -a "$SUM"
        : > "$L/$name.txt"
        return 124
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "[$(( $(date +%s) - S ))s] $name" | tee -a "$SUM"
    timeout "$limit" "$@" > "$L/$name.txt" 2>&1
    local rc=$?
    echo "  rc=$rc" >> "$SUM"
    return $rc
}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader > "$L/gpu.txt" 2>&1
step check 240 "$G" check --device cuda --quick --json "$L/check.json"
tail -1 "$L/check.txt" >> "$SUM"
grep -E " (FAIL|fail)" "$L/check.txt" | head -20 >> "$SUM"
step check_attn_8x32 120 env GLA_ATTN_FWD=8x32 "$G" check --device cuda --quick --filter attn
tail -1 "$L/check_attn_8x32.txt" >> "$SUM"
# the 8-warp backward, which the warpgroup kernels replace on sm_90a for D = 128
step check_attn_bwd8w 120 env GLA_ATTN_BWD=8w "$G" check --device cuda --quick --filter attn
tail -1 "$L/check_attn_bwd8w.txt" >> "$SUM"
step bench_attn 150 "$G" bench attn --device cuda --json "$L/attn.json"
tail -14 "$L/bench_attn.txt" >> "$SUM"
# the backward's L2 working set: more splits put fewer (sequence, head) pairs in flight
for n in 2 4; do
    step "bench_attn_splits$n" 120 env GLA_ATTN_SPLITS=$n "$G" bench attn --device cuda --decode-batch none
    tail -6 "$L/bench_attn_splits$n.txt" | sed "s/^/  splits $n: /" >> "$SUM"
done
step bench_delta 150 "$G" bench delta --device cuda --stages --json "$L/delta.json"
grep -vE "^ " "$L/bench_delta.txt" | tail -14 >> "$SUM"
step bench_bidir 120 "$G" bench bidir --device cuda --stages --json "$L/bidir.json"
grep -E "^[0-9]+x" "$L/bench_bidir.txt" | head -22 >> "$SUM"
step bench_vig 240 "$G" bench vig --device cuda --reps 6 --json "$L/vig.json"
grep -E "^vig-" "$L/bench_vig.txt" >> "$SUM"
step profile_vig 120 "$G" bench vig --device cuda --models vig-t --sizes 224,1024 --batch 128,8 --train-batch 128,8 \
    --reps 3 --profile --json "$L/vig_profile.json"
grep -E "^vig-|profile:" "$L/profile_vig.txt" >> "$SUM"
step profile_train 150 "$G" bench train --device cuda --steps 5 --profile --json "$L/train_profile.json"
grep -E "profile:|tokens" "$L/profile_train.txt" | head -4 >> "$SUM"
# the lab's delta variant (GLA_DELTA_LAB): the residual forward forced on training workspaces
# (h=resb2): checked, then timed at T = 2048 beside the default (bench_delta above)
step check_delta_lab 150 env GLA_DELTA_LAB=h=resb2 "$G" check --device cuda --quick --filter delta
tail -1 "$L/check_delta_lab.txt" >> "$SUM"
grep -E " (FAIL|fail)" "$L/check_delta_lab.txt" | head -10 >> "$SUM"
for lab in h=resb2; do
    step "bench_delta_${lab/=/_}" 90 env GLA_DELTA_LAB=$lab "$G" bench delta --device cuda --shape 32,2048,16,128,128 --stages
    grep -E "^[0-9]+x|dqk|wy|delta_h" "$L/bench_delta_${lab/=/_}.txt" | head -12 | sed "s/^/  $lab: /" >> "$SUM"
done
echo "[$(( $(date +%s) - S ))s] done" | tee -a "$SUM"
tar -C "$OUT" -cJf "$OUT/logs.tar.xz" logs && rm -rf "$L"
cat "$SUM"
