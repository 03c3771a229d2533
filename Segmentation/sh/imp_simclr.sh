#!/usr/bin/env bash
# IMP of DeepLabV3+ from simclr weights, rounds 0..18, round i in seed{S}_imp_simclr_i (the original's sh/imp_simclr.sh).
# Usage: Segmentation/sh/imp_simclr.sh GPU [more flags, e.g. --data_root DIR --pretrained FILE]
# (GPU "" leaves the device to a scheduler; SEEDS, PYTHON, ROUNDS, JOBS, SWEEP_MODE: see common.sh)
set -e
GPU=$1
source "$(dirname "$0")/common.sh"
imp_sweep main_imp_simclr.py "seed{seed}_imp_simclr" "${@:2}"
