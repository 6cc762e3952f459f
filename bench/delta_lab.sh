#!/usr/bin/env bash
# The delta rule's chunked kernels under each state-pass plan of the lab override
# (GLA_DELTA_LAB, src/delta/dispatch.rs `lab`), side by side in one device call: first
# `gla bench delta --stages` at the shapes of record (bf16, B*T = 65536, H = 16, K = V = 128) for
# each plan, then `gla check --device cuda --filter delta` on each plan of CHECKS (default: the
# residual forward and the fused state-gradient pass everywhere; `base`: the default policy),
# then fla 0.6.0's delta ops while time is left.
# Prints a table last: forward and forward+backward ms per plan and shape, and the per-launch
# times of one DeltaNet forward+backward per shape.
# Usage, from the repo root on the GPU machine: OUT=/tmp/out bench/delta_lab.sh [path/to/gla]
#   GLA_CACHE_DIR: cubins compiled beforehand; fla's wheels in .whl/ (bench/fla_env.sh).
#   PLANS: the plans to time (default below); CHECKS: the plans to check (`base`: the default);
#   BUDGET: seconds in all (default 540: under the device's 600 s a call).
#   SHAPES: `gla bench` shape flags (default: the shapes of record), e.g. the wide heads:
#   PLANS="base fp=0,bp=0 wb=1" SHAPES="--shape 8,2048,6,256,512 --shape 8,2048,32,256,256";
#   the backward's one-plane tiles split again: PLANS="base wm=0 dm=0 wm=0,dm=0" CHECKS="wm=0,dm=0".
set -u
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
G="${1:-target/release/gla}"
OUT="${OUT:-bench/out}"
BUDGET="${BUDGET:-540}"
PLANS="${PLANS:-base h=resb2}"
CHECKS="${CHECKS:-h=resb2,hb=dv2}"
mkdir -p "$OUT"
S=$(date +%s)
t() { echo "[$(( $(date +%s) - S ))s] $*"; }
SUM=$OUT/summary.txt
: > "$SUM"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader > "$OUT/gpu.txt" 2>&1
SHAPES="${SHAPES:---shape 32,2048,16,128,128 --shape 8,8192,16,128,128 --shape 2,32768,16,128,128}"
for plan in $PLANS; do
  tag=${plan//[=,]/_}
  lab=$plan; [ "$plan" = base ] && lab=""
  t "bench delta plan=$plan" | tee -a "$SUM"
  GLA_DELTA_LAB="$lab" timeout 75 "$G" bench delta --device cuda $SHAPES --stages --json "$OUT/bench_$tag.json" > "$OUT/bench_$tag.txt" 2>&1
  echo "bench $plan rc=$?" >> "$SUM"
done
# the checks take what the benchmarks left, in CHECKS order (the first at most 240 s, each later
# one only with 40 s left)
left() { echo $(( BUDGET - ($(date +%s) - S) )); }
cap() { local l; l=$(left); [ "$l" -gt "$1" ] && l=$1; echo $(( l > 5 ? l : 5 )); }
first=1
for plan in $CHECKS; do
  tag=${plan//[=,]/_}
  lab=$plan; [ "$plan" = base ] && lab=""
  if [ $first = 0 ] && [ "$(left)" -lt 40 ]; then echo "check $plan: no time left" >> "$SUM"; continue; fi
  t "check delta, plan $plan" | tee -a "$SUM"
  GLA_DELTA_LAB="$lab" timeout "$(cap $([ $first = 1 ] && echo 240 || echo 150))" "$G" check --device cuda --filter delta > "$OUT/check_$tag.txt" 2>&1
  echo "check $plan rc=$? $(tail -1 "$OUT/check_$tag.txt")" >> "$SUM"
  grep -E "FAIL|fail" "$OUT/check_$tag.txt" | head -20 >> "$SUM"
  first=0
done
left=$(left)
if [ -d .whl ] && [ "$left" -gt 60 ] && [ -f "$OUT/bench_base.json" ]; then
  t "fla (${left}s left)" | tee -a "$SUM"
  (
    source bench/fla_env.sh
    fla_autotune_restore
    timeout $(( left - 10 )) python3 bench/delta_vs_fla.py --gla-json "$OUT/bench_base.json" --out "$OUT/delta_vs_fla.json" > "$OUT/delta_vs_fla.txt" 2>&1
    echo "fla rc=$?"
  ) > "$OUT/fla.log" 2>&1
  tail -1 "$OUT/fla.log" >> "$SUM"
fi
python3 - "$OUT" "$PLANS" >> "$SUM" <<'EOF'
import json, os, re, sys
out, plans = sys.argv[1], sys.argv[2].split()
def tag(p): return re.sub(r"[=,]", "_", p)
# the shapes in the order the benchmarks ran them (B x T x H x K x V)
res = {}
for p in plans:
    f = os.path.join(out, f"bench_{tag(p)}.json")
    if os.path.exists(f):
        res[p] = json.load(open(f))["results"]
def sname(r): return "x".join(str(x) for x in r["shape"])
shapes = []
for rs in res.values():
    for r in rs:
        if sname(r) not in shapes: shapes.append(sname(r))
print("\nms (median), bf16")
print(f"{'plan':<24}{'op':<6}{'pass':<9}" + "".join(f"{s:>20}" for s in shapes))
for p in plans:
    if p not in res:
        print(f"{p:<24}(no result)"); continue
    for op in ("delta", "gdn"):
        for ps in ("fwd", "fwd+bwd"):
            ms = {sname(r): r["ms"] for r in res[p] if r["op"] == op and r["pass"] == ps}
            print(f"{p:<24}{op:<6}{ps:<9}" + "".join(f"{ms.get(s, float('nan')):>20.3f}" for s in shapes))
# a launch's plan variants in one row
def base_name(n): return re.sub(r"_(v32b2|b2|v32|rdv2|dv2|s2|wg_d1|wg|vb2_m1|vb2|m1)_", "_", n)
for shape in shapes:
    print(f"\nper launch, delta {shape}, one forward+backward (ms; a kernel launched more than once: the sum)")
    tabs = {}
    for p in plans:
        f = os.path.join(out, f"bench_{tag(p)}.txt")
        if not os.path.exists(f): continue
        txt = open(f).read().split("\n")
        on, d = False, {}
        for line in txt:
            if line.startswith(f"delta {shape}: one forward+backward"): on = True; continue
            if on and not line.startswith("  "): break
            if on:
                m = re.match(r"\s+(\S+)\s+([\d.]+) ms", line)
                if m: d.setdefault(m.group(1), []).append(float(m.group(2)))
        tabs[p] = d
    names = []
    for d in tabs.values():
        for n in d:
            if base_name(n) not in names: names.append(base_name(n))
    print(f"{'launch':<28}" + "".join(f"{p[:16]:>17}" for p in tabs))
    for n in names:
        row = []
        for p, d in tabs.items():
            v = [sum(x) for k, x in d.items() if base_name(k) == n]
            row.append(f"{v[0]:>17.3f}" if v else f"{'-':>17}")
        print(f"{n:<28}" + "".join(row))
f = os.path.join(out, "delta_vs_fla.txt")
if os.path.exists(f):
    print("\nfla side by side (bench/delta_vs_fla.py, default plan):")
    print("".join(open(f).readlines()[-14:]))
EOF
t "done" | tee -a "$SUM"
cat "$SUM"
