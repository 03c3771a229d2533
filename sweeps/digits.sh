#!/usr/bin/env bash
# The classification grid of sweeps/classification.sh end to end on the built-in digits data, in minutes.
#
# Digits has no released pre-trained weights or pre-training tickets, so a stand-in is made first:
# one IMP run (--prune_type pt) whose dense round-0 model is the "pre-trained" weights and whose
# tickets are the "pre-training tickets". The grid then runs with small flags (3 rounds at rate 0.5,
# 2 epochs, resnet18, 3 seeds) and writes the reports to OUT/report*/.
# Settings: OUT=sweep_digits SEEDS="0 1 2" ROUNDS=3 PYTHON=python
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHON="${PYTHON:-python}"
export OUT="${OUT:-sweep_digits}"
export SEEDS="${SEEDS:-0 1 2}"
export ROUNDS="${ROUNDS:-3}"
export DATASET=digits ARCH=resnet18 REWIND_EPOCH=0 TQDM_DISABLE=1
export EXTRA="--epochs 2 --batch_size 64 --lr 0.05 --decreasing_lr 1 --print_freq 0"
export IMP_EXTRA="--rate 0.5"
STANDIN="${OUT}_pretraining"

if [[ ! -f "$STANDIN/summary.jsonl" ]] || (( $(wc -l < "$STANDIN/summary.jsonl") < ROUNDS )); then
    resume=()
    if compgen -G "$STANDIN/*checkpoint.pth.tar" > /dev/null; then resume=(--resume); fi
    "$PYTHON" -u "$ROOT/main_imp_downstream.py" --dataset digits --arch resnet18 --pruning_times "$ROUNDS" \
        --prune_type pt --epochs 2 --batch_size 64 --lr 0.05 --decreasing_lr 1 --rate 0.5 --seed 1000 \
        --print_freq 0 --save_dir "$STANDIN" "${resume[@]}"
fi
export PRETRAINED="standin=$STANDIN/0model_SA_best.pth.tar"
export PT_TICKETS="standin=$STANDIN"
exec "$ROOT/sweeps/classification.sh"
