# Sourced by the six sweep scripts: the original's fixed flags, the round loop, and mask lookup.
# They set GPU and SEED first; these functions run from Segmentation/, as the original's scripts.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

original_flags() {
    echo --model deeplabv3plus_resnet50 --year 2012 --crop_val --batch_size 4 --gpu_id ${GPU} --random_seed ${SEED}
}

# imp_sweep SCRIPT NAME [flags]: rounds 0..18, round i in NAME_i (the original's seed10_imp_imagenet_${i})
imp_sweep() {
    local script=$1 name=$2
    shift 2
    for i in {0..18}
    do
        python -u ${script} $(original_flags) --imp_num ${i} "$@" ${name}_${i}
    done
}

# transfer_sweep SCRIPT NAME MASK_DIR [flags]: a mask file is one run (NAME_01, as the original's);
# a folder of IMP outputs is rounds 0..18 (round 0 dense; round i from seg_backbone_imp{i}.pth,
# ticket_{ii}.pt or mask-{i}.pt found there), round i in NAME_{ii}.
transfer_sweep() {
    local script=$1 name=$2 masks=$3
    shift 3
    if [ -f "${masks}" ]; then
        python -u ${script} $(original_flags) --mask_dir "${masks}" "$@" ${name}_01
        return
    fi
    for i in {0..18}
    do
        local round mask=""
        round=$(printf %02d ${i})
        if [ ${i} -gt 0 ]; then
            for file in seg_backbone_imp${i}.pth ticket_${round}.pt mask-${i}.pt; do
                if [ -f "${masks}/${file}" ]; then mask="${masks}/${file}"; break; fi
            done
            if [ -z "${mask}" ]; then echo "error: no mask of round ${i} in ${masks}" >&2; return 2; fi
            python -u ${script} $(original_flags) --mask_dir "${mask}" "$@" ${name}_${round}
        else
            python -u ${script} $(original_flags) "$@" ${name}_${round}
        fi
    done
}
