#!/usr/bin/env bash
# IMP of DeepLabV3+ from moco weights, rounds 0..18, round i in seed{S}_imp_moco_i (the original's sh/imp_moco.sh).
# Usage: Segmentation/sh/imp_moco.sh GPU [more flags, e.g. --data_root DIR --pretrained FILE]
# (GPU "" leaves the device to a scheduler; SEEDS, PYTHON, ROUNDS, JOBS, SWEEP_MODE: see common.sh)
set -e
GPU=$1
source "$(dirname "$0")/common.sh"
imp_sweep main_imp_moco.py "seed{seed}_imp_moco" "${@:2}"
