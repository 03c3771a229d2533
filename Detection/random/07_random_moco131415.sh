# Random-pruning control on the MoCo backbone at sparsity levels 13..15 (0.8^k remain), one process
# each (the original's random/07_random_moco131415.sh). Usage: sh random/07_random_moco131415.sh GPU [extra flags]
GPU=$1; shift || true
set -e
cd "$(dirname "$0")/.."  # Detection/, where the original ran its scripts (weight/, seed*_ckpt/)
PYTHON=${PYTHON:-python}
SEED=${SEED:-10}
TYPE=${TYPE:-moco}
for i in $(seq 13 15)
do
    echo "---------- ${TYPE} random ${i}"
    CUDA_VISIBLE_DEVICES=${GPU} $PYTHON -u train_random.py --imp_type ${TYPE} --imp_num ${i} --seed ${SEED} "$@"
done
