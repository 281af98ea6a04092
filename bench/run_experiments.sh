#!/usr/bin/env bash
# The real-data runs behind docs/results.md ("Selections that train better"), in the order run.
# Inputs come from bench/prepare_data.py (reads ../shared/datasets, writes bench/work/).
# Sized for a 2-core CPU: the first 120 pool records, 60 test records, generation for the first
# 16-20 of them; every bench resumes where it stopped (finished cells are never rerun).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
TS=".venv/bin/python -m tunesift"
W=bench/work
[ -f $W/alpaca_pool.jsonl ] || .venv/bin/python bench/prepare_data.py
COMMON="--seeds 3 --budget 0.3 --knn 16 --epochs 2 --batch-size 8 --lr 5e-4 --autocast bfloat16
  --cache-dir $W/cache -q --train-limit 120 --test-limit 60"

# 1. instruction stage: 120 Alpaca records, 60 held out
$TS bench --train $W/alpaca_pool.jsonl --test $W/alpaca_test.jsonl --out $W/e1_instruction $COMMON \
  --methods base,random,delift,delift-se,donod,ifd,loss,full --generate-limit 20 --max-new-tokens 48
# 4. noise: 120 GSM8K train records, ~20% with another record's answer; every selector's pick,
#    then fine-tune and evaluate (teacher-forced loss on GSM8K test) for the main ones.
#    On 2026-11-23: noise_check.py ran without donod+delift (then with --only ifd,loss,selectit
#    after an interruption), the bench below with these four methods; step 3 did not fit in the
#    session's CPU time (add delift,delift-se,donod+delift,ifd,selectit to extend the same bench).
.venv/bin/python bench/noise_check.py --work $W --limit 120
$TS bench --train $W/gsm8k_noisy.jsonl --test $W/gsm8k_test.jsonl --out $W/e4_noise $COMMON \
  --methods base,random,donod,loss --metrics loss,perplexity
# 3. continual stage: what FLCG picks from the mixed pool given GSM8K already trained on
.venv/bin/python bench/continual_check.py --work $W
