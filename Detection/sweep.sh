# The loop behind the sweeps in TicketSH/ and random/ (the original's script names and arguments):
#   sh sweep.sh KIND TYPE FIRST LAST GPU [extra flags...]
# KIND: imp (train_imp.py), eval (eval.py), random (train_random.py) or transfer (train_transfer.py,
# mask folder from MASKROOT); TYPE: imagenet, moco or simclr; rounds or masks FIRST..LAST, one
# process each, on CUDA device GPU; SEED (default 10, the original's) and PYTHON come from the
# environment. Runs in the caller's folder, so relative paths given to it (--data_root, --pretrained,
# --save_dir, MASKROOT) and the defaults (weight/, seed*_ckpt/, ./Maskall) are the caller's; run it from
# Detection/ to use the original's layout, as the original's sweeps were.
set -e
KIND=$1; TYPE=$2; FIRST=$3; LAST=$4; GPU=$5
shift 5
HERE="$(dirname "$0")"
PYTHON=${PYTHON:-python}
SEED=${SEED:-10}
for i in $(seq "$FIRST" "$LAST")
do
    echo "---------- ${TYPE} ${KIND} ${i}"
    case "$KIND" in
        imp) script=train_imp.py; set_flags="--imp_type ${TYPE} --imp_num ${i}" ;;
        eval) script=eval.py; set_flags="--imp_type ${TYPE} --imp_num ${i}" ;;
        random) script=train_random.py; set_flags="--imp_type ${TYPE} --imp_num ${i}" ;;
        transfer) script=train_transfer.py
                  set_flags="--transfer_type ${TYPE} --mask_dir ${MASKROOT:?set MASKROOT to the mask folder} --mask_num ${i}" ;;
        *) echo "sweep.sh: unknown kind '$KIND' (imp, eval, random, transfer)" >&2; exit 2 ;;
    esac
    # shellcheck disable=SC2086  (set_flags is split into words on purpose)
    CUDA_VISIBLE_DEVICES=${GPU} $PYTHON -u "$HERE/$script" $set_flags --seed "${SEED}" "$@"
done
