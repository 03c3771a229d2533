# Evaluate round 5 of the moco IMP run (the original's TicketSH/imp_moco_eval.sh, whose train_imp_eval.py
# crashes). Usage: sh TicketSH/imp_moco_eval.sh GPU [round] [extra flags]
GPU=$1; shift || true
i=${1:-5}; shift || true
set -e
cd "$(dirname "$0")/.."  # Detection/, where the original ran its scripts (weight/, seed*_ckpt/)
PYTHON=${PYTHON:-python}
SEED=${SEED:-10}
TYPE=moco
echo "---------- moco imp eval ${i}"
CUDA_VISIBLE_DEVICES=${GPU} $PYTHON -u eval.py --imp_type ${TYPE} --imp_num ${i} --seed ${SEED} "$@"
