#!/usr/bin/env bash
# MQAR across the model families at equal size and steps: GLA, DeltaNet and Gated DeltaNet (`gla
# train --arch`), each for the same (init seed, data seed) pairs, on one MQAR setting; prints one
# table of held-out query accuracy (at fixed steps, the best, the final) per family and pair, and
# the parameter counts. Every run uses the same recipe and runs all STEPS (no early stop).
# An ARCHS entry `<arch>+attn` is the hybrid stack of that family: `--attn-layers $ATTN` (fla's
# softmax attention at those layers, the family's mixer elsewhere) plus ATTN_FLAGS.
# Usage: tools/mqar_family.sh [path/to/gla]   env: DEVICE (cpu), JOBS (1), STEPS (1500),
#        SEQ (256), KV (32), PAIRS ("0,1"), ARCHS ("gla delta_net gated_deltanet"),
#        ATTN ("1"), ATTN_FLAGS (""), EXTRA (more `gla train` flags for every run),
#        OUT (mqar-family), RUN_LIMIT (seconds: stop each run after this long, the table then
#        shows the evaluations it reached; default none)
set -euo pipefail
GLA="${1:-target/release/gla}"
DEVICE="${DEVICE:-cpu}"
JOBS="${JOBS:-1}"
STEPS="${STEPS:-1500}"
SEQ="${SEQ:-256}"
KV="${KV:-32}"
PAIRS="${PAIRS:-0,1}"
ARCHS="${ARCHS:-gla delta_net gated_deltanet}"
ATTN="${ATTN:-1}"
ATTN_FLAGS="${ATTN_FLAGS:-}"
OUT="${OUT:-mqar-family}"
mkdir -p "$OUT"
jobs_file="$OUT/jobs.txt"
: > "$jobs_file"
for a in $ARCHS; do
    for p in $PAIRS; do
        echo "$a ${p%,*} ${p#*,}" >> "$jobs_file"
    done
done
run_one() {
    local a="$1" s="$2" d="$3" hybrid=""
    # <arch>+attn: the family's hybrid stack
    [[ "$a" == *+attn ]] && hybrid="--attn-layers $ATTN $ATTN_FLAGS"
    # shellcheck disable=SC2086
    ${RUN_LIMIT:+timeout "$RUN_LIMIT"} "$GLA" train --arch "${a%+attn}" --device "$DEVICE" --steps "$STEPS" --decay-steps "$STEPS" --seed "$s" --data-seed "$d" \
        --seq-len "$SEQ" --kv-pairs "$KV" --eval-every 100 --stop-at-acc 1.01 --save-every 1000000 \
        --out "$OUT/$a-s$s-d$d" ${EXTRA:-} $hybrid > "$OUT/$a-s$s-d$d.log" 2>&1 || echo "failed" >> "$OUT/$a-s$s-d$d.log"
}
export -f run_one
export GLA DEVICE STEPS SEQ KV OUT EXTRA ATTN ATTN_FLAGS RUN_LIMIT
xargs -P "$JOBS" -L 1 bash -c 'run_one "$@"' _ < "$jobs_file"
python3 - "$OUT" "$STEPS" <<'PY'
import json, math, os, sys
out, steps = sys.argv[1], int(sys.argv[2])
marks = [m for m in (200, 500, 1000, 2000) if m < steps]
print(f"\n{'arch':<20} {'seeds':<6} {'params':>8} " + " ".join(f"{'@' + str(m):>7}" for m in marks) + f" {'best':>7} {'final':>7} {'s':>6}")
for line in open(os.path.join(out, "jobs.txt")):
    a, s, d = line.split()
    run = os.path.join(out, f"{a}-s{s}-d{d}")
    ev, el = {}, None
    try:
        for line in open(os.path.join(run, "metrics.jsonl")):
            try:
                r = json.loads(line)
            except ValueError:  # a line torn by RUN_LIMIT's kill
                continue
            if r.get("kind") == "eval":
                ev[r["step"]] = r["acc"]
                el = r.get("elapsed_s")
    except OSError:
        print(f"{a:<20} {s},{d:<4} no metrics (see {run}.log)")
        continue
    params = "?"
    for root, _, files in os.walk(run):  # the parameter count from a checkpoint's safetensors header
        for f in files:
            if f == "model.safetensors" and params == "?":
                with open(os.path.join(root, f), "rb") as fh:
                    n = int.from_bytes(fh.read(8), "little")
                    hdr = json.loads(fh.read(n))
                params = str(sum(math.prod(v["shape"]) for k, v in hdr.items() if k != "__metadata__"))
    at = lambda k: f"{ev[k]:7.3f}" if k in ev else f"{'-':>7}"
    last = max(ev) if ev else None
    best = max(ev.values()) if ev else float("nan")
    print(f"{a:<20} {s},{d:<4} {params:>8} " + " ".join(at(m) for m in marks) + f" {best:7.3f} {at(last) if last else '-':>7} {el or 0:6.0f}")
PY
