# Transfer the imagenet tickets 1..18 to YOLOv4 on the imagenet backbone (the original's TicketSH/transfer_imagenet.sh).
# The mask folder is MASKROOT (default the original's ./Maskall/img1-mask, relative to Detection/): mask-{i}.pt,
# ticket_{i:02d}.pt or backbone_imp{i}.pth files. Usage: MASKROOT=DIR sh TicketSH/transfer_imagenet.sh GPU [extra flags]
export MASKROOT=${MASKROOT:-./Maskall/img1-mask}
exec sh "$(dirname "$0")/../sweep.sh" transfer imagenet 1 18 "$@"
