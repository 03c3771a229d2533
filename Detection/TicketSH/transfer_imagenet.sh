# Transfer the imagenet tickets 1..18 to YOLOv4 on the imagenet backbone (the original's TicketSH/transfer_imagenet.sh).
# The mask folder is MASKROOT (default the original's ./Maskall/img1-mask): mask-{i}.pt, ticket_{i:02d}.pt
# or backbone_imp{i}.pth files. Usage: MASKROOT=path sh TicketSH/transfer_imagenet.sh GPU [extra flags]
GPU=$1; shift || true
set -e
cd "$(dirname "$0")/.."  # Detection/, where the original ran its scripts (weight/, seed*_ckpt/)
PYTHON=${PYTHON:-python}
SEED=${SEED:-10}
TYPE=imagenet
MASKROOT=${MASKROOT:-./Maskall/img1-mask}
for i in $(seq 1 18)
do
    echo "---------- imagenet transfer ${i}"
    CUDA_VISIBLE_DEVICES=${GPU} $PYTHON -u train_transfer.py --transfer_type ${TYPE} \
        --mask_dir ${MASKROOT} --mask_num ${i} --seed ${SEED} "$@"
done
