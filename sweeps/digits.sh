#!/usr/bin/env bash
# The classification grid of sweeps/classification.sh end to end on the built-in digits data.
#
# Digits has no released pre-trained weights or pre-training tickets, so a stand-in is made first
# (a one-job list, OUT/pretraining_jobs.jsonl): one IMP run (--prune_type pt) whose dense round-0
# model is the "pre-trained" weights and whose tickets are the "pre-training tickets". The grid then
# runs with small flags (ROUNDS rounds at rate 0.5, EPOCHS epochs, resnet18, SEEDS) and writes the
# reports to OUT/report*/.
# Settings: OUT=sweep_digits SEEDS="0 1 2" ROUNDS=3 EPOCHS=2 PYTHON=python, EXTRA (more flags of
# every run), SWEEP_MODE=list (write both job lists and print how to run them on SLURM; run nothing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHON="${PYTHON:-python}"
export OUT="${OUT:-sweep_digits}"
export SEEDS="${SEEDS:-0 1 2}"
export ROUNDS="${ROUNDS:-3}"
EPOCHS="${EPOCHS:-2}"
# rewind_lt rewinds to the weights after its first epoch (1 to --epochs; 0 is not a rewind point)
export DATASET=digits ARCH=resnet18 REWIND_EPOCH=1 TQDM_DISABLE=1
export EXTRA="--epochs $EPOCHS --batch_size 64 --lr 0.05 --decreasing_lr 1 --print_freq 0 ${EXTRA:-}"
export IMP_EXTRA="--rate 0.5"
STANDIN="${OUT}_pretraining"
mkdir -p "$OUT"
read -r -a EXTRA_FLAGS <<< "$EXTRA"
"$PYTHON" "$ROOT/main_sweep.py" make command --jobs "$OUT/pretraining_jobs.jsonl" --name pretraining \
    --save_dir "$STANDIN" --rounds "$ROUNDS" -- "$PYTHON" -u "$ROOT/main_imp_downstream.py" --dataset digits \
    --arch resnet18 --pruning_times "$ROUNDS" --prune_type pt --rate 0.5 --seed 1000 --save_dir "$STANDIN" \
    "${EXTRA_FLAGS[@]}"
export PRETRAINED="standin=$STANDIN/0model_SA_best.pth.tar"
export PT_TICKETS="standin=$STANDIN"
export PENDING_TICKETS=1  # the grid's transfer jobs wait for the stand-in's tickets
if [[ "${SWEEP_MODE:-run}" == list ]]; then
    "$ROOT/sweeps/classification.sh"
    echo "on SLURM: the stand-in first, then the grid once it is done:"
    "$PYTHON" "$ROOT/main_sweep.py" slurm "$OUT/pretraining_jobs.jsonl" --python "$PYTHON"
    "$PYTHON" "$ROOT/main_sweep.py" slurm "$OUT/jobs.jsonl" --python "$PYTHON"
    exit 0
fi
"$PYTHON" "$ROOT/main_sweep.py" run "$OUT/pretraining_jobs.jsonl"
exec "$ROOT/sweeps/classification.sh"
