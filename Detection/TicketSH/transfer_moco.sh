# Transfer the moco tickets 1..18 to YOLOv4 on the moco backbone (the original's TicketSH/transfer_moco.sh).
# The mask folder is MASKROOT (default the original's ./Maskall/moco1-mask, relative to Detection/): mask-{i}.pt,
# ticket_{i:02d}.pt or backbone_imp{i}.pth files. Usage: MASKROOT=DIR sh TicketSH/transfer_moco.sh GPU [extra flags]
export MASKROOT=${MASKROOT:-./Maskall/moco1-mask}
exec sh "$(dirname "$0")/../sweep.sh" transfer moco 1 18 "$@"
