#!/usr/bin/env bash
# The paper's grid for one small classification data set (Fig. 3), then the reports.
#
# Every run is one of the original README's command lines (plus --seed), once per seed:
#   - downstream IMP from each pre-training, rewinding to it:   --prune_type pt_trans --pretrained W
#   - the random-pruning control of each:                        ... --random_prune
#   - downstream IMP from random init and with late rewinding:   --prune_type lt / rewind_lt
#   - transfer of each pre-training's tickets at each level:     main_eval_downstream.py --mask_dir T/ticket_XX.pt
#   - the reversed masks of those tickets:                       ... --reverse_mask
# then main_report.py over all of it (report/) and per pre-training (report_<name>/).
#
# Settings (environment variables; the defaults are the paper's):
#   DATA=../data DATASET=cifar10 ARCH=resnet50 ROUNDS=19 SEEDS="0 1 2" OUT=sweep_<dataset>
#   PRETRAINED="imagenet=imagenet_weight.pt moco=moco.pt simclr=simclr_weight.pt"   name=weights
#   PT_TICKETS="imagenet=imagenet_imp moco=moco_imp simclr=simclr_imp/simclr_r50"  name=folder of
#       ticket_XX.pt found on the pre-training task (main_imp_imagenet.py, MoCo/main_moco_imp.py,
#       SimCLR/main.py); a missing folder is skipped with a notice
#   LEVELS="0 1 ... ROUNDS-1"  ticket rounds to transfer (0 is the dense mask; it is not reversed)
#   REWIND_EPOCH=9  for rewind_lt     EXTRA=""  flags added to every training run (e.g. --epochs 2)
#   IMP_EXTRA=""  flags added to the IMP runs only (e.g. --rate 0.5)
#   PYTHON=python
# A run that finished is skipped and one that was interrupted is resumed, so the script can be
# re-run after a stop. Example (the small end-to-end version on digits): sweeps/digits.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
DATA="${DATA:-../data}"
DATASET="${DATASET:-cifar10}"
ARCH="${ARCH:-resnet50}"
ROUNDS="${ROUNDS:-19}"
SEEDS="${SEEDS:-0 1 2}"
OUT="${OUT:-sweep_${DATASET}}"
PRETRAINED="${PRETRAINED:-imagenet=imagenet_weight.pt moco=moco.pt simclr=simclr_weight.pt}"
PT_TICKETS="${PT_TICKETS:-imagenet=imagenet_imp moco=moco_imp simclr=simclr_imp/simclr_r50}"
LEVELS="${LEVELS:-$(seq -s ' ' 0 $((ROUNDS - 1)))}"
REWIND_EPOCH="${REWIND_EPOCH:-9}"
EXTRA="${EXTRA:-}"
IMP_EXTRA="${IMP_EXTRA:-}"
read -r -a EXTRA_FLAGS <<< "$EXTRA"
read -r -a IMP_FLAGS <<< "$IMP_EXTRA"

# run_once DIR EXPECTED_LINES SCRIPT FLAGS...: skip a finished run, resume an interrupted one.
run_once() {
    local dir="$1" expected="$2" script="$3"
    shift 3
    if [[ -f "$dir/summary.json" ]] || { [[ -f "$dir/summary.jsonl" ]] && (( $(wc -l < "$dir/summary.jsonl") >= expected )); }; then
        echo "done already: $dir"
        return
    fi
    local resume=()
    if compgen -G "$dir/*checkpoint.pth.tar" > /dev/null; then resume=(--resume); fi
    echo "+ $script $* --save_dir $dir ${resume[*]}"
    "$PYTHON" -u "$ROOT/$script" "$@" --save_dir "$dir" "${resume[@]}" "${EXTRA_FLAGS[@]}"
}

weights_of() {  # weights_of NAME -> the path PRETRAINED gives for NAME
    local pair
    for pair in $PRETRAINED; do [[ "${pair%%=*}" == "$1" ]] && { echo "${pair#*=}"; return; }; done
}

mkdir -p "$OUT"
for seed in $SEEDS; do
    for pair in $PRETRAINED; do
        name="${pair%%=*}"; weights="${pair#*=}"
        run_once "$OUT/imp_pt_trans_${name}_s$seed" "$ROUNDS" main_imp_downstream.py --data "$DATA" \
            --dataset "$DATASET" --arch "$ARCH" --pruning_times "$ROUNDS" "${IMP_FLAGS[@]}" --prune_type pt_trans \
            --pretrained "$weights" --seed "$seed"
        run_once "$OUT/random_pt_trans_${name}_s$seed" "$ROUNDS" main_imp_downstream.py --data "$DATA" \
            --dataset "$DATASET" --arch "$ARCH" --pruning_times "$ROUNDS" "${IMP_FLAGS[@]}" --prune_type pt_trans \
            --pretrained "$weights" --random_prune --seed "$seed"
    done
    run_once "$OUT/imp_lt_s$seed" "$ROUNDS" main_imp_downstream.py --data "$DATA" --dataset "$DATASET" \
        --arch "$ARCH" --pruning_times "$ROUNDS" "${IMP_FLAGS[@]}" --prune_type lt --seed "$seed"
    run_once "$OUT/imp_rewind_lt_s$seed" "$ROUNDS" main_imp_downstream.py --data "$DATA" --dataset "$DATASET" \
        --arch "$ARCH" --pruning_times "$ROUNDS" "${IMP_FLAGS[@]}" --prune_type rewind_lt --rewind_epoch "$REWIND_EPOCH" --seed "$seed"
    for pair in $PT_TICKETS; do
        name="${pair%%=*}"; tickets="${pair#*=}"; weights="$(weights_of "$name")"
        if [[ ! -d "$tickets" ]]; then
            echo "notice: no ticket folder '$tickets' for '$name': its transfer runs are skipped" >&2
            continue
        fi
        if [[ -z "$weights" ]]; then
            echo "notice: PRETRAINED has no weights named '$name': its transfer runs are skipped" >&2
            continue
        fi
        for level in $LEVELS; do
            ticket="$tickets/$(printf 'ticket_%02d.pt' "$level")"
            [[ -f "$ticket" ]] || { echo "notice: $ticket is missing: skipped" >&2; continue; }
            run_once "$OUT/transfer_${name}_r${level}_s$seed" 1 main_eval_downstream.py --data "$DATA" \
                --dataset "$DATASET" --arch "$ARCH" --pretrained "$weights" --mask_dir "$ticket" --seed "$seed"
            if (( 10#$level > 0 )); then
                run_once "$OUT/reversed_${name}_r${level}_s$seed" 1 main_eval_downstream.py --data "$DATA" \
                    --dataset "$DATASET" --arch "$ARCH" --pretrained "$weights" --mask_dir "$ticket" \
                    --reverse_mask --seed "$seed"
            fi
        done
    done
done

# The reports: everything, then each pre-training with its controls, judged against its own dense model.
"$PYTHON" "$ROOT/main_report.py" "$OUT" --out "$OUT/report" --title "$ARCH on $DATASET"
for pair in $PRETRAINED; do
    name="${pair%%=*}"; weights="${pair#*=}"
    runs=("$OUT"/imp_pt_trans_"${name}"_s* "$OUT"/random_pt_trans_"${name}"_s*)
    compgen -G "$OUT/transfer_${name}_r*" > /dev/null && runs+=("$OUT"/transfer_"${name}"_r* "$OUT"/reversed_"${name}"_r*)
    "$PYTHON" "$ROOT/main_report.py" "${runs[@]}" --out "$OUT/report_$name" \
        --baseline "IMP (pt_trans from $(basename "$weights"))" --title "$ARCH on $DATASET, $name pre-training"
done
echo "reports: $OUT/report/report.md and $OUT/report_<pre-training>/report.md"
