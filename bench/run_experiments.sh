#!/usr/bin/env bash
# The real-data bench runs behind docs/results.md ("Selections that train better"), in the order run.
# Inputs come from bench/prepare_data.py (reads ../shared/datasets, writes bench/work/).
# On this 2-core CPU the whole script takes about two hours; every run resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
TS=".venv/bin/python -m tunesift"
W=bench/work
[ -f $W/alpaca_pool.jsonl ] || .venv/bin/python bench/prepare_data.py
COMMON="--seeds 3 --budget 0.3 --knn 16 --epochs 2 --batch-size 8 --lr 5e-4 --autocast bfloat16 --cache-dir $W/cache -q"
BASELINES="ifd,loss,selectit"

# 1. instruction stage: 160 Alpaca records, 80 held out
$TS bench --train $W/alpaca_pool.jsonl --test $W/alpaca_test.jsonl --out $W/exp1_instruction $COMMON \
  --methods base,random,delift-se,delift,donod,donod+delift,$BASELINES,full --generate-limit 30 --max-new-tokens 64
# 4. noise: 160 GSM8K train records, 20% answers swapped; evaluated on GSM8K test
$TS bench --train $W/gsm8k_noisy.jsonl --test $W/gsm8k_test.jsonl --out $W/exp4_noise $COMMON \
  --methods base,random,delift-se,delift,donod,donod+delift,$BASELINES,full --generate-limit 24 --max-new-tokens 160
# 2. task stage: mixed pool (Alpaca, GSM8K, SVAMP), target GSM8K, evaluated on GSM8K test
$TS bench --train $W/mixed_pool.jsonl --test $W/gsm8k_test.jsonl --out $W/exp2_task --stage task \
  --target $W/gsm8k_target.jsonl $COMMON --methods base,random,delift-se,delift,donod,full \
  --generate-limit 24 --max-new-tokens 160
