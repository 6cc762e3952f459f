#!/usr/bin/env bash
# Lab A/B on the GPU machine, one call (~3 minutes): the K <= 128 backward's last launch as the
# lab variant gla_chunk_bwd2k64_bf16 (GLA_LAB_BWD2=k64: K tiles of 64, two blocks per SM, split
# dg scans) against the default gla_chunk_bwd2_bf16, same binary. First `gla check --device cuda`
# with the variant (every chunked-backward row goes through it), then `gla bench ops` twice each,
# interleaved. Merge the variant as the default only if the check passes and it is faster.
# Usage, from the repo root there:  bench/lab_bwd2.sh [path/to/gla]
set -uo pipefail
OUT="${OUT:-bench/out}"; mkdir -p "$OUT"
G="${1:-target/release/gla}"
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
GLA_LAB_BWD2=k64 timeout 240 "$G" check --device cuda > "$OUT/check_k64.txt" 2>&1
echo "check with GLA_LAB_BWD2=k64: rc=$?; $(tail -1 "$OUT/check_k64.txt")"
grep FAIL "$OUT/check_k64.txt" | head -10
for i in 1 2; do
    "$G" bench ops --device cuda --reps 10 --json "$OUT/ops_base$i.json" > "$OUT/ops_base$i.txt" 2>&1
    GLA_LAB_BWD2=k64 "$G" bench ops --device cuda --reps 10 --json "$OUT/ops_k64_$i.json" > "$OUT/ops_k64_$i.txt" 2>&1
done
echo "fwd+bwd ms (base run 1, k64 run 1, base run 2, k64 run 2):"
for f in ops_base1 ops_k64_1 ops_base2 ops_k64_2; do echo "$f: $(grep 'fwd+bwd' "$OUT/$f.txt" | awk '{printf "%s=%s ", $1, $4}')"; done
