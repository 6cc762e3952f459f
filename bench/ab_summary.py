"""Summary table of bench/ab_binaries.sh: per benchmark, binary A and B in both rounds (the
median of the two rounds is compared), B/A ratio of time (ops, train ms/step) or of rate (decode
tokens/s). Usage: python3 bench/ab_summary.py DIR"""
import json
import os
import statistics
import sys

w = sys.argv[1]


def load(name):
    p = os.path.join(w, name)
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


rows = []


def add(label, unit, a, b, lower_is_better):
    if not a or not b:
        rows.append((label, unit, "missing", "missing", ""))
        return
    ma, mb = statistics.median(a), statistics.median(b)
    # ratio > 1: B is faster
    ratio = ma / mb if lower_is_better else mb / ma
    rows.append((label, unit, " / ".join(f"{x:.3f}" for x in a), " / ".join(f"{x:.3f}" for x in b), f"{ratio:.3f}"))


ops = {t: [load(f"ops_{t}{r}.json") for r in (1, 2)] for t in "AB"}
keys = []
for rep in ops["A"] + ops["B"]:
    for e in (rep or {}).get("results", []):
        k = (tuple(e["shape"]), e["pass"])
        if k not in keys:
            keys.append(k)
for shape, pas in keys:
    vals = {t: [e["ms"] for rep in ops[t] if rep for e in rep["results"] if (tuple(e["shape"]), e["pass"]) == (shape, pas)] for t in "AB"}
    add(f"ops {','.join(map(str, shape))} {pas}", "ms", vals["A"], vals["B"], True)
tr = {t: [r["ms_per_step"] for r in (load(f"train_{t}{i}.json") for i in (1, 2)) if r] for t in "AB"}
add("train 340M 8x2048", "ms/step", tr["A"], tr["B"], True)
for batch in (1, 16):
    g = {t: [e["decode_tokens_per_s"] for r in (load(f"gen_{t}{i}.json") for i in (1, 2)) if r for e in r["results"] if e["batch"] == batch] for t in "AB"}
    add(f"generate decode batch {batch}", "tokens/s", g["A"], g["B"], False)
    g = {t: [e["ttft_ms"] for r in (load(f"gen_{t}{i}.json") for i in (1, 2)) if r for e in r["results"] if e["batch"] == batch] for t in "AB"}
    add(f"generate ttft batch {batch}", "ms", g["A"], g["B"], True)
print(f"{'benchmark':<44} {'unit':<9} {'A (rounds 1 / 2)':<22} {'B (rounds 1 / 2)':<22} B vs A (>1: B faster)")
for r in rows:
    print(f"{r[0]:<44} {r[1]:<9} {r[2]:<22} {r[3]:<22} {r[4]}")
