# Transfer mask i of each pre-training (ImageNet, SimCLR, MoCo) to YOLOv4 (the original's TicketSH/transfer.sh).
# Mask folders: IMG_MASKROOT, SIMCLR_MASKROOT, MOCO_MASKROOT (defaults the original's ./Maskall/...).
# Usage: sh TicketSH/transfer.sh GPU i [extra flags]
GPU=$1; i=$2; shift 2 || true
set -e
cd "$(dirname "$0")/.."  # Detection/, where the original ran its scripts (weight/, seed*_ckpt/)
PYTHON=${PYTHON:-python}
SEED=${SEED:-10}
for pair in imagenet:${IMG_MASKROOT:-./Maskall/img1-mask} simclr:${SIMCLR_MASKROOT:-./Maskall/simclr1-mask} \
            moco:${MOCO_MASKROOT:-./Maskall/moco1-mask}
do
    TYPE=${pair%%:*}; MASKROOT=${pair#*:}
    echo "---------- ${TYPE} transfer ${i}"
    CUDA_VISIBLE_DEVICES=${GPU} $PYTHON -u train_transfer.py --transfer_type ${TYPE} \
        --mask_dir ${MASKROOT} --mask_num ${i} --seed ${SEED} "$@"
done
