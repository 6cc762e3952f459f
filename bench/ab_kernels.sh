#!/usr/bin/env bash
# Two gla binaries' kernels side by side in one device call, for changes verified without a GPU
# (bit-identical in tools/emu, fewer instructions in the SASS) that still need their time: the
# delta rule (DeltaNet and Gated DeltaNet, per launch), softmax attention, the GLA op, ViG's
# bidirectional scan, ViG-T and language-model training (fla's 340M DeltaNet and Gated DeltaNet
# configs of bench/configs/ and gla_340M, one step's kernels per launch with --profile), each at
# one shape of record, in the order A B A B so that a drift of the card shows. Then NEW's
# `gla check --device cuda --quick` unless CHECK=0. Prints a summary last; logs in $OUT/abk.tar.gz.
# Usage, from the repo root on the GPU machine:  OUT=/tmp/out bench/ab_kernels.sh OLD_GLA NEW_GLA
#   GLA_CACHE_DIR: cubins compiled beforehand for both (`gla kernels compile --cache DIR`); with
#   binaries whose kernels differ, CACHE_A and CACHE_B name each one's cache instead
#   ROUNDS (default 2), CHECK (default 1), BUDGET seconds (default 560; a step past it is skipped),
#   PARTS (default "delta attn ops bidir vig train"): the benchmarks to run
set -uo pipefail
A="$1"; B="$2"
OUT="${OUT:-bench/out}"; W="$OUT/abk"; mkdir -p "$W"
ROUNDS="${ROUNDS:-2}"; CHECK="${CHECK:-1}"; BUDGET="${BUDGET:-560}"
PARTS="${PARTS:-delta attn ops bidir vig train}"
has() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
S=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$W/card.txt" 2>&1
# run NAME LIMIT CMD...: CMD's output into $W/NAME.txt, unless the budget is spent
run() {
    local name=$1 limit=$2
    shift 2
    local left=$(( BUDGET - ($(date +%s) - S) - 20 ))
    if [ "$left" -lt 20 ]; then echo "skipped (budget)" > "$W/$name.txt"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    timeout "$limit" "$@" > "$W/$name.txt" 2>&1
}
SHAPE=32,2048,16,128,128
for r in $(seq 1 "$ROUNDS"); do
    for tag in A B; do
        G="$A"; [ "$tag" = B ] && G="$B"
        cache="${GLA_CACHE_DIR:-}"
        [ "$tag" = A ] && [ -n "${CACHE_A:-}" ] && cache=$CACHE_A
        [ "$tag" = B ] && [ -n "${CACHE_B:-}" ] && cache=$CACHE_B
        export GLA_CACHE_DIR="$cache"
        has delta && run "delta_$tag$r" 90 "$G" bench delta --device cuda --shape "$SHAPE" --stages
        has attn && run "attn_$tag$r" 60 "$G" bench attn --device cuda --shape "$SHAPE" --decode-batch none
        has ops && run "ops_$tag$r" 60 "$G" bench ops --device cuda --shape "$SHAPE"
        has bidir && run "bidir_$tag$r" 60 "$G" bench bidir --device cuda --shape 64,1024,3,32,64 --shape 64,196,3,32,64
        has vig && run "vig_$tag$r" 90 "$G" bench vig --device cuda --models vig-t --sizes 224,1024 --batch 128,8 --train-batch 128,8 --reps 6
        if has train; then
            run "train_gla_$tag$r" 60 "$G" bench train --device cuda --steps 4 --warmup 2 --profile
            for cfg in delta_net_340M gated_deltanet_340M; do
                run "train_${cfg}_$tag$r" 90 "$G" bench train --device cuda --config "bench/configs/$cfg.json" --steps 4 --warmup 2 --profile
            done
        fi
    done
done
if [ "$CHECK" = 1 ]; then
    [ -n "${CACHE_B:-}" ] && export GLA_CACHE_DIR=$CACHE_B
    run check 240 "$B" check --device cuda --quick
fi
tar czf "$OUT/abk.tar.gz" -C "$OUT" abk
{
    echo "card: $(cat "$W/card.txt")   A = $A   B = $B"
    for f in "$W"/*.txt; do
        n=$(basename "$f" .txt)
        case "$n" in
            card) ;;
            delta_*) grep -E "^[0-9]+x|^  delta_" "$f" | sed "s/^/$n  /" ;;
            attn_* | ops_* | bidir_*) grep -E "^[0-9]+x" "$f" | sed "s/^/$n  /" ;;
            vig_*) grep -E "^vig-" "$f" | sed "s/^/$n  /" ;;
            train_*) echo "$n  $(tail -1 "$f")"; grep -E "^    (conv|rmsnorm|gated_norm|delta_)" "$f" | head -8 | sed "s/^/$n  /" ;;
            check*) echo "$n  $(tail -1 "$f")"; grep -E " (FAIL|fail)" "$f" | head -10 ;;
        esac
    done
} | tee "$OUT/abk_summary.txt"
