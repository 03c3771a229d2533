# Transfer mask i of each pre-training (ImageNet, SimCLR, MoCo) to YOLOv4 (the original's TicketSH/transfer.sh).
# Mask folders: IMG_MASKROOT, SIMCLR_MASKROOT, MOCO_MASKROOT (defaults the original's ./Maskall/...,
# relative to the folder it runs from, Detection/ in the original). Usage: sh TicketSH/transfer.sh GPU i [extra flags]
set -e
GPU=$1; i=$2
shift 2
SWEEP="$(dirname "$0")/../sweep.sh"
MASKROOT=${IMG_MASKROOT:-./Maskall/img1-mask} sh "$SWEEP" transfer imagenet "$i" "$i" "$GPU" "$@"
MASKROOT=${SIMCLR_MASKROOT:-./Maskall/simclr1-mask} sh "$SWEEP" transfer simclr "$i" "$i" "$GPU" "$@"
MASKROOT=${MOCO_MASKROOT:-./Maskall/moco1-mask} sh "$SWEEP" transfer moco "$i" "$i" "$GPU" "$@"
