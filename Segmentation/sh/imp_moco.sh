#!/usr/bin/env bash
# IMP of DeepLabV3+ from moco weights, rounds 0..18, one command per round (the original's sh/imp_moco.sh).
# Usage: Segmentation/sh/imp_moco.sh GPU [more flags, e.g. --data_root DIR --pretrained FILE]
set -e
GPU=$1
SEED=10
source "$(dirname "$0")/common.sh"
imp_sweep main_imp_moco.py seed${SEED}_imp_moco "${@:2}"
