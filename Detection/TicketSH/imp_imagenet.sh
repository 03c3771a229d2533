# IMP tickets of YOLOv4 from the imagenet backbone: rounds 0..18, one process per round (the original's
# TicketSH/imp_imagenet.sh). Usage: sh TicketSH/imp_imagenet.sh GPU [extra flags, e.g. --data_root PATH]
GPU=$1; shift || true
set -e
cd "$(dirname "$0")/.."  # Detection/, where the original ran its scripts (weight/, seed*_ckpt/)
PYTHON=${PYTHON:-python}
SEED=${SEED:-10}
TYPE=imagenet
for i in $(seq 0 18)
do
    echo "---------- imagenet imp ${i}"
    CUDA_VISIBLE_DEVICES=${GPU} $PYTHON -u train_imp.py --imp_type ${TYPE} --imp_num ${i} --seed ${SEED} "$@"
done
