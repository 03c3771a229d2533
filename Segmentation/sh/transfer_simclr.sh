#!/usr/bin/env bash
# Transfer of backbone tickets to DeepLabV3+ from simclr weights (the original's sh/transfer_simclr.sh).
# Usage: Segmentation/sh/transfer_simclr.sh GPU MASK_DIR [more flags]   (or MASK_DIR=... as a variable)
# MASK_DIR: a mask file (one run, e.g. the original's mask-1.pt) or a folder of IMP outputs (rounds 0..18).
# KINDS="ticket reversed random" adds the controls; SEEDS, PYTHON, ROUNDS, JOBS, SWEEP_MODE: see common.sh.
set -e
GPU=$1
MASK_DIR=$(realpath "${2:-${MASK_DIR:?give the mask file or folder as the second argument or as MASK_DIR}}")
source "$(dirname "$0")/common.sh"
transfer_sweep main_transfer_simclr.py "seed{seed}_simclr" "${MASK_DIR}" "${@:3}"
