#!/usr/bin/env bash
# IMP of DeepLabV3+ from simclr weights, rounds 0..18, one command per round (the original's sh/imp_simclr.sh).
# Usage: Segmentation/sh/imp_simclr.sh GPU [more flags, e.g. --data_root DIR --pretrained FILE]
# Runs from Segmentation/ as the original; the rounds write into seed${SEED}_imp_simclr_outbackbone/.
set -e
GPU=$1
SEED=10
cd "$(dirname "$0")/.."
for i in {0..18}
do
    python -u main_imp_simclr.py \
    --model deeplabv3plus_resnet50 \
    --year 2012 \
    --crop_val \
    --gpu_id ${GPU} \
    --random_seed ${SEED} \
    --batch_size 4 \
    --imp_num ${i} \
    "${@:2}" \
    seed${SEED}_imp_simclr_${i}
done
