#!/usr/bin/env bash
# IMP of DeepLabV3+ from simclr weights, rounds 0..18, one command per round (the original's sh/imp_simclr.sh).
# Usage: Segmentation/sh/imp_simclr.sh GPU [more flags, e.g. --data_root DIR --pretrained FILE]
set -e
GPU=$1
SEED=10
source "$(dirname "$0")/common.sh"
imp_sweep main_imp_simclr.py seed${SEED}_imp_simclr "${@:2}"
