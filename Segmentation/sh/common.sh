# Sourced by the six sweep scripts: their job lists (the original's fixed flags, one job per seed
# for IMP, one per round, kind and seed for transfers), then the jobs. They set GPU first; from the
# environment: SEEDS (default SEED, default 10, the original's), PYTHON, ROUNDS (19: rounds 0..18),
# KINDS (transfer: ticket, and the controls reversed and random), OUT (folder of the run folders and
# the report, default Segmentation/), JOBS (the job list, default OUT/sweep_jobs/NAME.jsonl),
# SWEEP_MODE=list (write the list and stop; run it with `python ../main_sweep.py run JOBS [--index I]`,
# or on SLURM as `python ../main_sweep.py slurm JOBS` prints). Finished jobs are skipped, started ones resumed; each job's output is kept in JOBS.logs/.
# Runs from Segmentation/, as the original's scripts.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python}"
SEEDS="${SEEDS:-${SEED:-10}}"
ROUNDS="${ROUNDS:-19}"
OUT="${OUT:-.}"

run_list() {  # run_list JOBS: run it here, unless SWEEP_MODE=list
    if [ "${SWEEP_MODE:-run}" = list ]; then
        return 0
    fi
    "$PYTHON" ../main_sweep.py run "$1"
}

# imp_sweep SCRIPT NAME [flags]: rounds 0..ROUNDS-1, round i in NAME_i (the original's
# seed10_imp_imagenet_${i}), one resumable job per seed; NAME may hold {seed}.
imp_sweep() {
    local script=$1 name=$2
    shift 2
    local jobs="${JOBS:-$OUT/sweep_jobs/${name//\{seed\}/S}.jsonl}"
    "$PYTHON" ../main_sweep.py make segmentation-imp --jobs "$jobs" --python "$PYTHON" --seeds "$SEEDS" \
        --gpu "${GPU}" --rounds "$ROUNDS" --out "$OUT" "$script" "$name" -- "$@"
    run_list "$jobs"
}

# transfer_sweep SCRIPT NAME MASK_DIR [flags]: a mask file is one run (NAME_01, as the original's);
# a folder of IMP outputs is rounds 0..ROUNDS-1 (round 0 dense; round i from seg_backbone_imp{i}.pth,
# ticket_{ii}.pt or mask-{i}.pt found there), round i in NAME_{ii}; KINDS="ticket reversed random"
# adds the reversed masks (NAME_reversed_{ii}) and random pruning at each mask's sparsity
# (NAME_random_{ii}, the control of the paper's Fig. 4).
transfer_sweep() {
    local script=$1 name=$2 masks=$3
    shift 3
    local jobs="${JOBS:-$OUT/sweep_jobs/${name//\{seed\}/S}.jsonl}"
    "$PYTHON" ../main_sweep.py make segmentation-transfer --jobs "$jobs" --python "$PYTHON" --seeds "$SEEDS" \
        --gpu "${GPU}" --rounds "$ROUNDS" --out "$OUT" --kinds "${KINDS:-ticket}" "$script" "$name" "$masks" -- "$@"
    run_list "$jobs"
}
