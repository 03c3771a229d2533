# The sweeps in TicketSH/ and random/ (the original's script names and arguments), as job lists:
#   sh sweep.sh KIND TYPE FIRST LAST GPU [extra flags...]
# KIND: imp (train_imp.py: rounds FIRST..LAST, one resumable job per seed: a round starts from the
# previous one), eval (eval.py), random (train_random.py), transfer (train_transfer.py, masks from
# MASKROOT) or reversed (train_transfer.py --reverse_mask): one job per level and seed. TYPE:
# imagenet, moco or simclr; GPU: the CUDA device ("" leaves the choice to a scheduler).
# Environment: SEEDS (default SEED, default 10, the original's), PYTHON, OUT (folder of the run folders
# and the report, default Detection/), JOBS (the job list, default OUT/sweep_jobs/KIND_TYPE_FIRST-LAST.jsonl),
# SWEEP_MODE=list (write the list and stop; run it with
# `python main_sweep.py run JOBS [--index I]`, or on SLURM as `python main_sweep.py slurm JOBS`
# prints). Finished jobs are skipped, started ones resumed, each job's output is kept in JOBS.logs/;
# the list ends with the report of TYPE's IMP and controls (report_TYPE/, the paper's Fig. 4).
# Runs the scripts in the caller's folder, so relative paths given to it (--data_root, --pretrained,
# --save_dir, MASKROOT, OUT) and the defaults (weight/, seed*_ckpt/, ./Maskall) are the caller's; run it
# from Detection/ to use the original's layout, as the original's sweeps were.
set -e
KIND=$1; TYPE=$2; FIRST=$3; LAST=$4; GPU=$5
shift 5
HERE="$(dirname "$0")"
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-${SEED:-10}}
OUT=${OUT:-.}
JOBS=${JOBS:-$OUT/sweep_jobs/${KIND}_${TYPE}_${FIRST}-${LAST}.jsonl}
"$PYTHON" "$HERE/../main_sweep.py" make detection --jobs "$JOBS" --python "$PYTHON" --seeds "$SEEDS" --gpu "$GPU" \
    --out "$OUT" --maskroot "${MASKROOT:-}" "$KIND" "$TYPE" "$FIRST" "$LAST" -- "$@"
if [ "${SWEEP_MODE:-run}" = list ]; then
    exit 0
fi
"$PYTHON" "$HERE/../main_sweep.py" run "$JOBS"
