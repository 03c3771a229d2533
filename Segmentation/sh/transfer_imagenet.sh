#!/usr/bin/env bash
# Transfer of backbone tickets to DeepLabV3+ from imagenet weights (the original's sh/transfer_imagenet.sh).
# Usage: Segmentation/sh/transfer_imagenet.sh GPU MASK_DIR [more flags]   (or MASK_DIR=... as a variable)
# MASK_DIR: a mask file (one run, e.g. the original's mask-1.pt) or a folder of IMP outputs (rounds 0..18).
# KINDS="ticket reversed random" adds the controls; SEEDS, PYTHON, ROUNDS, JOBS, SWEEP_MODE: see common.sh.
set -e
GPU=$1
MASK_DIR=$(realpath "${2:-${MASK_DIR:?give the mask file or folder as the second argument or as MASK_DIR}}")
source "$(dirname "$0")/common.sh"
transfer_sweep main_transfer_imagenet.py "seed{seed}_imagenet" "${MASK_DIR}" "${@:3}"
