#!/usr/bin/env bash
# One job of a sweep's job list per SLURM array task (the same list `python main_sweep.py run JOBS`
# runs as a loop on one machine). Submit from the repository root, e.g.
#
#   SWEEP_MODE=list SEEDS="0 1 2" sweeps/classification.sh          # writes sweep_cifar10/jobs.jsonl
#   python main_sweep.py slurm sweep_cifar10/jobs.jsonl --parallel 16 --sbatch_options "--gres=gpu:1"
#   # prints (N = the number of training jobs):
#   array=$(sbatch --parsable --gres=gpu:1 --array=0-$((N-1))%16 sweeps/slurm_array.sh sweep_cifar10/jobs.jsonl)
#   sbatch --dependency=afterany:$array --wrap "python main_sweep.py run sweep_cifar10/jobs.jsonl --reports"
#
# Re-submitting the array is safe: finished jobs exit at once, started ones resume, and a job that
# is running in another task is skipped (JOBS.locks/). PYTHON picks the interpreter (default python).
#SBATCH --job-name=lth-sweep
#SBATCH --cpus-per-task=8
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail
JOBS="${1:?usage: sbatch --array=0-N sweeps/slurm_array.sh JOBS}"
ROOT="${LTH_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}"
exec "${PYTHON:-python}" "$ROOT/main_sweep.py" run "$JOBS" --index "${SLURM_ARRAY_TASK_ID:?not an array task: submit with sbatch --array}"
