#!/usr/bin/env bash
# IMP of DeepLabV3+ from imagenet weights, rounds 0..18, round i in seed{S}_imp_imagenet_i (the original's sh/imp_imagenet.sh).
# Usage: Segmentation/sh/imp_imagenet.sh GPU [more flags, e.g. --data_root DIR --pretrained FILE]
# (GPU "" leaves the device to a scheduler; SEEDS, PYTHON, ROUNDS, JOBS, SWEEP_MODE: see common.sh)
set -e
GPU=$1
source "$(dirname "$0")/common.sh"
imp_sweep main_imp_imagenet.py "seed{seed}_imp_imagenet" "${@:2}"
