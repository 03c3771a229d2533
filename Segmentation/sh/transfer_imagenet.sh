#!/usr/bin/env bash
# Transfer of backbone tickets to DeepLabV3+ from imagenet weights (the original's sh/transfer_imagenet.sh).
# Usage: Segmentation/sh/transfer_imagenet.sh GPU MASK_DIR [more flags]   (or MASK_DIR=... as a variable)
#   MASK_DIR a mask file (the original's ../Maskall/img2-mask/mask-1.pt, a ticket_XX.pt, a
#   seg_backbone_impN.pth): one run, as the original; a folder of IMP outputs: rounds 0..18, round 0
#   dense, round i from seg_backbone_imp{i}.pth, ticket_{ii}.pt or mask-{i}.pt found there.
set -e
GPU=$1
MASK_DIR=${2:-${MASK_DIR:?give the mask file or folder as the second argument or as MASK_DIR}}
MASK_DIR=$(realpath "${MASK_DIR}")
SEED=10
cd "$(dirname "$0")/.."
transfer() {
    python -u main_transfer_imagenet.py \
    --model deeplabv3plus_resnet50 \
    --year 2012 \
    --crop_val \
    --batch_size 4 \
    --gpu_id ${GPU} \
    --random_seed ${SEED} \
    "${@}"
}
if [ -f "${MASK_DIR}" ]; then
    transfer --mask_dir "${MASK_DIR}" "${@:3}" seed${SEED}_imagenet_01
    exit 0
fi
for i in {0..18}
do
    round=$(printf %02d ${i})
    if [ ${i} -eq 0 ]; then
        transfer "${@:3}" seed${SEED}_imagenet_${round}
        continue
    fi
    MASK=""
    for name in seg_backbone_imp${i}.pth ticket_${round}.pt mask-${i}.pt; do
        if [ -f "${MASK_DIR}/${name}" ]; then MASK="${MASK_DIR}/${name}"; break; fi
    done
    if [ -z "${MASK}" ]; then echo "error: no mask of round ${i} in ${MASK_DIR}" >&2; exit 2; fi
    transfer --mask_dir "${MASK}" "${@:3}" seed${SEED}_imagenet_${round}
done
