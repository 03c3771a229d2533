#!/usr/bin/env bash
# The paper's grid for one small classification data set (Fig. 3) as a list of independent jobs,
# run here one after the other, then the reports.
#
# Every job is one of the original README's command lines (plus --seed), once per seed:
#   - downstream IMP from each pre-training, rewinding to it:   --prune_type pt_trans --pretrained W
#   - IMP from random init and with late rewinding:             --prune_type lt / rewind_lt
#   - the random-pruning control of each of these:              ... --random_prune
#   - transfer of each pre-training's tickets at each level:     main_eval_downstream.py --mask_dir T/ticket_XX.pt
#   - the reversed masks of those tickets:                       ... --reverse_mask
#   - their random re-init (the mask on random weights):        main_eval_downstream.py --mask_dir T/ticket_XX.pt
# then main_report.py over all of it (OUT/report) and per pre-training (OUT/report_<name>); every
# curve is judged against the dense model of its own experiment.
#
# Settings (environment variables; the defaults are the paper's):
#   DATA=../data DATASET=cifar10 ARCH=resnet50 ROUNDS=19 SEEDS="0 1 2" OUT=sweep_<dataset>
#   PRETRAINED="imagenet=imagenet_weight.pt moco=moco.pt simclr=simclr_weight.pt"   name=weights
#   PT_TICKETS="imagenet=imagenet_imp moco=moco_imp simclr=simclr_imp/simclr_r50"  name=folder of
#       ticket_XX.pt found on the pre-training task (main_imp_imagenet.py, MoCo/main_moco_imp.py,
#       SimCLR/main.py); a missing folder is left out with a notice
#   LEVELS="0 1 ... ROUNDS-1"  ticket rounds to transfer (0 is the dense mask; it is not reversed)
#   REWIND_EPOCH=9  for rewind_lt     EXTRA=""  flags added to every training run (e.g. --epochs 2)
#   IMP_EXTRA=""  flags added to the IMP runs only (e.g. --rate 0.5)
#   PYTHON=python   JOBS=OUT/jobs.jsonl
#   SWEEP_MODE=run (default: every job, then the reports) or list (write JOBS and stop: run it with
#       `python main_sweep.py run JOBS [--index I]`, or on SLURM as printed by `python main_sweep.py slurm JOBS`)
# A finished job is skipped and a started one resumed, so the script can be re-run after a stop;
# each job's output is kept in JOBS.logs/. The small end-to-end version on digits: sweeps/digits.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
DATASET="${DATASET:-cifar10}"
ROUNDS="${ROUNDS:-19}"
OUT="${OUT:-sweep_${DATASET}}"
JOBS="${JOBS:-$OUT/jobs.jsonl}"
mkdir -p "$OUT"
"$PYTHON" "$ROOT/main_sweep.py" make classification --jobs "$JOBS" --python "$PYTHON" --out "$OUT" \
    --data "${DATA:-../data}" --dataset "$DATASET" --arch "${ARCH:-resnet50}" --rounds "$ROUNDS" \
    --seeds "${SEEDS:-0 1 2}" \
    --pretrained "${PRETRAINED:-imagenet=imagenet_weight.pt moco=moco.pt simclr=simclr_weight.pt}" \
    --pt_tickets "${PT_TICKETS:-imagenet=imagenet_imp moco=moco_imp simclr=simclr_imp/simclr_r50}" \
    --levels "${LEVELS:-$(seq -s ' ' 0 $((ROUNDS - 1)))}" --rewind_epoch "${REWIND_EPOCH:-9}" \
    --extra="${EXTRA:-}" --imp_extra="${IMP_EXTRA:-}" ${PENDING_TICKETS:+--pending_tickets}
if [[ "${SWEEP_MODE:-run}" == list ]]; then
    exit 0
fi
"$PYTHON" "$ROOT/main_sweep.py" run "$JOBS"
echo "reports: $OUT/report/report.md and $OUT/report_<pre-training>/report.md"
