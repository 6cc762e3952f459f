#!/usr/bin/env bash
# Robustness sweep of MQAR training recipes: each recipe (a line of `gla train` flags in
# RECIPES, or the built-in list below, whose first line, empty, is the defaults) runs for several (init seed, data seed) pairs, JOBS at a
# time; prints, per recipe, the step at which each pair reached the target query accuracy (or
# its final accuracy). On the GPU (DEVICE=cuda) a run of the demo model takes seconds, so the
# sweep fits in a minute with JOBS=8; the CPU demo recipe is then confirmed on the CPU.
# Usage: tools/mqar_sweep.sh [path/to/gla]     env: DEVICE (cpu), JOBS (2), STEPS (3000),
#        PAIRS ("0,1 1,2 0,2 2,1 3,4 5,6"), RECIPES (file), OUT (sweep-out)
set -euo pipefail
GLA="${1:-target/release/gla}"
DEVICE="${DEVICE:-cpu}"
JOBS="${JOBS:-2}"
STEPS="${STEPS:-3000}"
PAIRS="${PAIRS:-0,1 1,2 0,2 2,1 3,4 5,6}"
OUT="${OUT:-sweep-out}"
mkdir -p "$OUT"
if [ -n "${RECIPES:-}" ]; then
    mapfile -t recipes < "$RECIPES"
else
    recipes=(
        ""
        "--lr 1e-2 --min-lr 2e-3 --decay-steps 800 --warmup 30"
        "--lr 3e-3 --min-lr 3e-4 --decay-steps 3000"
        "--lr 3e-3 --min-lr 3e-4 --decay-steps 3000 --warmup 200"
        "--lr 1e-2 --min-lr 1e-3 --decay-steps 3000 --weight-decay 0.1"
        "--lr 3e-3 --min-lr 3e-4 --decay-steps 3000 --d-model 128 --heads 2"
        "--lr 3e-3 --min-lr 3e-4 --decay-steps 3000 --batch-size 128"
    )
fi
jobs_file="$OUT/jobs.txt"
: > "$jobs_file"
for i in "${!recipes[@]}"; do
    for p in $PAIRS; do
        echo "$i ${p%,*} ${p#*,}" >> "$jobs_file"
    done
done
run_one() {
    local i="$1" s="$2" d="$3"
    local r="${recipes[$i]}"
    # shellcheck disable=SC2086
    "$GLA" train --device "$DEVICE" --steps "$STEPS" --seed "$s" --data-seed "$d" --eval-every 100 \
        --save-every 1000000 --out "$OUT/r$i-s$s-d$d" $r > "$OUT/r$i-s$s-d$d.log" 2>&1 || echo "failed" >> "$OUT/r$i-s$s-d$d.log"
}
export -f run_one
export GLA DEVICE STEPS OUT
export RECIPES_JOINED
RECIPES_JOINED="$(printf '%s\n' "${recipes[@]}")"
# shellcheck disable=SC2016
xargs -P "$JOBS" -L 1 bash -c 'mapfile -t recipes <<< "$RECIPES_JOINED"; run_one "$@"' _ < "$jobs_file"
printf '\n%-3s %-78s %s\n' "#" "recipe" "per (seed,data-seed): step reaching the target, or final accuracy"
for i in "${!recipes[@]}"; do
    line=""
    for p in $PAIRS; do
        s="${p%,*}"; d="${p#*,}"
        log="$OUT/r$i-s$s-d$d.log"
        res=$(grep -o "trained [0-9]* steps.*final eval query accuracy [0-9.]*%" "$log" | tail -1 |
              sed -E 's/trained ([0-9]+) steps.*accuracy ([0-9.]+)%/\1 \2/' || true)
        read -r n acc <<< "${res:-- -}"
        if [ "$n" != "-" ] && [ "$n" -lt "$STEPS" ]; then line+=" $n"; else line+=" (${acc}%)"; fi
    done
    printf '%-3s %-78s%s\n' "$i" "${recipes[$i]}" "$line"
done
