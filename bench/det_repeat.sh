#!/usr/bin/env bash
# Two identical GPU training runs (same seeds, MQAR demo, 300 steps): are their losses bitwise
# equal? Prints the first step where the two metrics.jsonl differ, or "identical".
# Usage, from the repo root on the GPU machine:  bench/det_repeat.sh [path/to/gla] [steps]
set -uo pipefail
G="${1:-target/release/gla}"; STEPS="${2:-300}"
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
D=$(mktemp -d)
for r in a b; do
    "$G" train --device cuda --steps "$STEPS" --eval-every 100 --out "$D/$r" > "$D/$r.log" 2>&1 || { echo "run $r failed:"; tail -5 "$D/$r.log"; exit 1; }
done
python3 - "$D/a/metrics.jsonl" "$D/b/metrics.jsonl" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
keys = ("loss", "acc", "grad_norm", "ppl")
n = 0
for x, y in zip(a, b):
    for k in keys:
        if k in x and x.get(k) != y.get(k):
            print(f"differ at step {x.get('step')}: {k} {x[k]!r} vs {y.get(k)!r}"); sys.exit(1)
    n += 1
print(f"identical: {n} metric lines, last loss {a[-1].get('loss')}")
PY
