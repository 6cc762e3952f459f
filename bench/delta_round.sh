#!/usr/bin/env bash
# The delta-rule family's whole record in one device call (how the 2026-12-04 298b029 records in
# bench/results/ were made): `gla check --device cuda`, `gla bench delta`, 340M-class training of
# Gated DeltaNet / DeltaNet / GLA, Gated DeltaNet decode, MQAR across families (two settings),
# GPU-vs-CPU greedy ids of the MQAR checkpoints, then fla's delta ops on the same shapes until the
# time budget (about 470 s in all) runs out. Prints a summary last; archives the logs.
# Usage, from the repo root on the GPU machine: OUT=/tmp/out bench/delta_round.sh [path/to/gla]
#   GLA_CACHE_DIR: a folder of cubins compiled here beforehand saves the first compile there.
#   fla's wheels in .whl/ (bench/fla_env.sh); .triton-autotune/ restores fla's autotuning.
set -u
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
G="${1:-target/release/gla}"
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
S=$(date +%s)
t() { echo "[$(( $(date +%s) - S ))s] $*"; }
SUM=$OUT/summary.txt
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader > $OUT/gpu.txt
t "check" | tee -a $SUM
timeout 200 $G check --device cuda --json $OUT/check.json > $OUT/check.txt 2>&1; echo "check rc=$?" >> $SUM
tail -2 $OUT/check.txt >> $SUM; grep -E " (FAIL|fail)" $OUT/check.txt | head -20 >> $SUM
t "bench delta" | tee -a $SUM
timeout 60 $G bench delta --device cuda --json $OUT/delta_gla.json --shape 32,2048,16,128,128 --shape 8,8192,16,128,128 --shape 2,32768,16,128,128 --shape 8,1024,8,64,64 > $OUT/delta_gla.txt 2>&1; echo "bench delta rc=$?" >> $SUM
cat $OUT/delta_gla.txt >> $SUM
GDN340='{"model_type":"gated_deltanet","hidden_size":1024,"num_heads":6,"head_dim":256,"expand_v":2,"num_hidden_layers":21,"vocab_size":32000,"use_gate":true,"use_short_conv":true,"tie_word_embeddings":false}'
GLA340=''
DN340='{"model_type":"delta_net","hidden_size":1024,"num_heads":8,"num_hidden_layers":24,"vocab_size":32000,"tie_word_embeddings":true}'
for c in GDN340 DN340 GLA340; do
  t "train $c" | tee -a $SUM
  timeout 60 $G bench train --device cuda ${!c:+--config "${!c}"} --batch 8 --seq-len 2048 --steps 6 --warmup 2 --json $OUT/train_$c.json > $OUT/train_$c.txt 2>&1; echo "train $c rc=$?" >> $SUM
  tail -3 $OUT/train_$c.txt >> $SUM
done
for c in GDN340; do
  t "generate $c" | tee -a $SUM
  timeout 60 $G bench generate --device cuda ${!c:+--config "${!c}"} --json $OUT/gen_$c.json > $OUT/gen_$c.txt 2>&1; echo "generate $c rc=$?" >> $SUM
  tail -4 $OUT/gen_$c.txt >> $SUM
done
t "mqar" | tee -a $SUM
DEVICE=cuda STEPS=2000 JOBS=3 PAIRS="0,1" EXTRA="--vocab 512" OUT=$OUT/mqar64 timeout 120 bash tools/mqar_family.sh $G > $OUT/mqar64.txt 2>&1 &
DEVICE=cuda STEPS=2000 JOBS=6 PAIRS="0,1 1,2" EXTRA="--vocab 512 --d-model 128 --heads 2" OUT=$OUT/mqar128 timeout 120 bash tools/mqar_family.sh $G > $OUT/mqar128.txt 2>&1 &
wait
echo "mqar done" >> $SUM
tail -5 $OUT/mqar64.txt >> $SUM; tail -8 $OUT/mqar128.txt >> $SUM
for a in delta_net gated_deltanet; do
  timeout 30 $G generate --model $OUT/mqar128/$a-s0-d1 --device cuda --prompt-ids 1,2,3,4 --max-new-tokens 12 --print-ids --ignore-eos > $OUT/gen_cli_$a.txt 2>&1; echo "generate cli $a rc=$?" >> $SUM
  timeout 60 $G generate --model $OUT/mqar128/$a-s0-d1 --device cpu --prompt-ids 1,2,3,4 --max-new-tokens 12 --print-ids --ignore-eos > $OUT/gen_cli_cpu_$a.txt 2>&1
  tail -n 2 $OUT/gen_cli_$a.txt $OUT/gen_cli_cpu_$a.txt >> $SUM
done
(cd $OUT && tar czf mqar.tgz mqar64/*/metrics.jsonl mqar64/*.log mqar128/*/metrics.jsonl mqar128/*.log mqar128/*/loss_curve.png mqar64.txt mqar128.txt 2>/dev/null; rm -rf mqar64 mqar128)
t "fla" | tee -a $SUM
left=$(( 470 - ($(date +%s) - S) ))
(
  source bench/fla_env.sh
  fla_autotune_restore
  timeout $(( left > 30 ? left : 30 )) python3 bench/delta_vs_fla.py --gla-json $OUT/delta_gla.json --out $OUT/delta_vs_fla.json > $OUT/delta_vs_fla.txt 2>&1
  echo "fla rc=$?" >> $SUM
  fla_autotune_save
) > $OUT/fla.log 2>&1
tail -14 $OUT/delta_vs_fla.txt >> $SUM 2>/dev/null
(cd $OUT && tar czf logs.tgz check.txt delta_gla.txt delta_gla.json train_* gen_* fla.log gpu.txt delta_vs_fla.txt 2>/dev/null && rm -f check.txt delta_gla.txt delta_gla.json train_* gen_* fla.log gpu.txt delta_vs_fla.txt)
t "done" | tee -a $SUM
cat $SUM | tail -60
