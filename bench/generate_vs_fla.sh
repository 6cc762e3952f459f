#!/usr/bin/env bash
# Generation side by side on the GPU machine, one run: fla + transformers `generate` on a random
# 340M-class GLA that fla saves in bf16 (bench/generate_vs_fla.py), then `gla bench generate
# --device cuda --model` on the same directory; prints one table.
# Usage, from the repo root there:  bench/generate_vs_fla.sh [path/to/gla]
#   needs: a gla built with --features cuda, libnvrtc (bench/fla_env.sh sets the path), python3 with torch,
#   triton and transformers, fla's wheels in .whl/ (installed here into /tmp/site).
# Writes $OUT/gen_fla.json, $OUT/gen_gla.json and logs ($OUT defaults to bench/out).
set -euo pipefail
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
GLA="${1:-target/release/gla}"
MODEL="${MODEL_DIR:-/tmp/gla340m-fla}"
source "$(dirname "$0")/fla_env.sh"
python3 bench/generate_vs_fla.py --model-dir "$MODEL" --out "$OUT/gen_fla.json" 2>&1 | tee "$OUT/gen_fla.txt"
"$GLA" bench generate --device cuda --model "$MODEL" --json "$OUT/gen_gla.json" 2>&1 | tee "$OUT/gen_gla.txt"
python3 - "$OUT/gen_fla.json" "$OUT/gen_gla.json" <<'EOF'
import json, sys
fla, gla = (json.load(open(p)) for p in sys.argv[1:3])
by = {r["batch"]: r for r in fla["results"]}
print(f"\n{'batch':>5} {'who':>4} {'TTFT ms':>9} {'decode tok/s':>13} {'ms/step':>8} {'gla/fla decode':>15}")
for g in gla["results"]:
    f = by.get(g["batch"])
    if f:
        print(f"{f['batch']:>5} {'fla':>4} {f['ttft_ms']:9.1f} {f['decode_tokens_per_s']:13.1f} {f['ms_per_step']:8.2f}")
    ratio = f"{g['decode_tokens_per_s'] / f['decode_tokens_per_s']:.2f}x" if f else "-"
    print(f"{g['batch']:>5} {'gla':>4} {g['ttft_ms']:9.1f} {g['decode_tokens_per_s']:13.1f} {g['ms_per_step']:8.2f} {ratio:>15}")
EOF
