#!/usr/bin/env bash
# The committed digits results (results/digits_*.md, results/anl_digits.md, results/digits/): run on a
# quiet machine, since the tables include measured latency. About 25 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
$PY scripts/compare_methods.py --task digits --methods gbn l1 random --targets 0.5 0.7 --seeds 0 1 2 \
    --out results/digits_gbn_l1_random.md
# Why GBN trails L1 after the full fine-tune on digits: a short fine-tune, and mean-scored residual groups.
$PY scripts/compare_methods.py --task digits --methods gbn l1 random --targets 0.7 --seeds 0 1 2 \
    --out results/digits_finetune1.md finetune.epochs=1 tracking=none
$PY scripts/compare_methods.py --task digits --methods gbn --targets 0.5 0.7 --seeds 0 1 2 \
    --out results/digits_gbn_mean_group_score.md method.group_score=mean tracking=none
$PY scripts/anl_study.py --task digits --seeds 0 1 2 --out results/anl_digits.md
$PY -m harness compare task=digits --out results/digits
