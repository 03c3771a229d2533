# IMP tickets of YOLOv4 from the moco backbone: rounds 0..18, one process per round (the original's
# TicketSH/imp_moco.sh). Usage: sh TicketSH/imp_moco.sh GPU [extra flags, e.g. --data_root PATH]
GPU=$1; shift || true
set -e
cd "$(dirname "$0")/.."  # Detection/, where the original ran its scripts (weight/, seed*_ckpt/)
PYTHON=${PYTHON:-python}
SEED=${SEED:-10}
TYPE=moco
for i in $(seq 0 18)
do
    echo "---------- moco imp ${i}"
    CUDA_VISIBLE_DEVICES=${GPU} $PYTHON -u train_imp.py --imp_type ${TYPE} --imp_num ${i} --seed ${SEED} "$@"
done
