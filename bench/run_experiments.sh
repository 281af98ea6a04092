#!/usr/bin/env bash
# The real-data runs behind docs/results.md. Every bench resumes where it stopped (finished cells
# are never rerun), so any of these may be stopped and rerun, in this session or a later one.
#
#   bash bench/run_experiments.sh            # "small": the runs behind "Selections that train better"
#   bash bench/run_experiments.sh grid       # issue 17's evidence grid: 1,000 records, 3 seeds (bench/evidence.py)
#   bash bench/run_experiments.sh smoke      # the grid at 40 records, 1 seed, random + rds: does it start?
#
# Extra arguments after the mode go to bench/evidence.py (e.g. `grid --device cuda`, `grid --only random,rds`).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
MODE=${1:-small}
shift || true
case "$MODE" in
  grid)  # the five experiments in order; then the summary of what is done
    .venv/bin/python bench/evidence.py run all "$@"
    .venv/bin/python bench/evidence.py summary "$@"
    exit 0 ;;
  smoke)
    .venv/bin/python bench/evidence.py run all --smoke "$@"
    .venv/bin/python bench/evidence.py summary --smoke "$@"
    exit 0 ;;
  small) ;;
  *) echo "unknown mode '$MODE': use small, grid or smoke" >&2; exit 2 ;;
esac
# "small": inputs from bench/prepare_data.py (reads ../shared/datasets, writes bench/work/), sized for a
# 2-core CPU: the first 120 pool records (all 160 of the mixed pool), 60 test records, generation for the
# first 16-20 of them.
TS=".venv/bin/python -m tunesift"
W=bench/work
[ -f $W/alpaca_pool.jsonl ] || .venv/bin/python bench/prepare_data.py
COMMON="--seeds 3 --budget 0.3 --knn 16 --epochs 2 --batch-size 8 --lr 5e-4 --autocast bfloat16
  --cache-dir $W/cache -q --test-limit 60"

# 1. instruction stage: 120 Alpaca records, 60 held out
$TS bench --train $W/alpaca_pool.jsonl --test $W/alpaca_test.jsonl --out $W/e1_instruction $COMMON --train-limit 120 \
  --methods base,random,delift,delift-se,donod,ifd,loss,full --generate-limit 20 --max-new-tokens 48
#    the same picks, evaluated on 60 AlpacaEval instructions
$TS bench --train $W/alpaca_pool.jsonl --test $W/alpaca_eval_test.jsonl --out $W/e1_alpaca_eval $COMMON \
  --train-limit 120 --methods base,random,delift,delift-se --generate-limit 20 --max-new-tokens 48
# 4. noise: 120 GSM8K train records, ~20% with another record's answer; every selector's pick,
#    then fine-tune and evaluate (teacher-forced loss on GSM8K test).
.venv/bin/python bench/noise_check.py --work $W --limit 120
$TS bench --train $W/gsm8k_noisy.jsonl --test $W/gsm8k_test.jsonl --out $W/e4_noise $COMMON --train-limit 120 \
  --methods base,random,donod,loss,selectit,delift,delift-se,donod+delift --metrics loss,perplexity
# 2. task stage: the mixed pool (Alpaca + GSM8K + SVAMP, 160), target = 30 GSM8K train records,
#    evaluated on GSM8K test; k = 8 to halve the two DELIFT kernels (pool x pool, pool x target)
$TS bench --train $W/mixed_pool.jsonl --test $W/gsm8k_test.jsonl --out $W/e2_task ${COMMON/--knn 16/--knn 8} \
  --train-limit 160 --stage task --target $W/gsm8k_target.jsonl \
  --methods base,random,delift-se,delift,less,donod,full --metrics loss,perplexity
# 3. continual stage: what FLCG picks from the mixed pool given GSM8K already trained on
#    (the embedding kernel, then DELIFT's model kernel at k = 8, whose pool kernel step 2 cached)
.venv/bin/python bench/continual_check.py --work $W --only random,delift-se
.venv/bin/python bench/continual_check.py --work $W --knn 8 --only delift
# 5. transfer: select with SmolLM2-135M (the cached selections of step 1), train and evaluate Gemma 3 270M
$TS bench --train $W/alpaca_pool.jsonl --test $W/alpaca_test.jsonl --out $W/e5_transfer $COMMON --train-limit 120 \
  --select-model default --train-model gemma3-270m --methods base,random,delift \
  --metrics loss,perplexity,rougeL --generate-limit 20 --max-new-tokens 48
