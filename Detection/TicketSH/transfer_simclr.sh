# Transfer the simclr tickets 1..18 to YOLOv4 on the simclr backbone (the original's TicketSH/transfer_simclr.sh).
# The mask folder is MASKROOT (default the original's ./Maskall/simclr1-mask, relative to Detection/): mask-{i}.pt,
# ticket_{i:02d}.pt or backbone_imp{i}.pth files. Usage: MASKROOT=DIR sh TicketSH/transfer_simclr.sh GPU [extra flags]
export MASKROOT=${MASKROOT:-./Maskall/simclr1-mask}
exec sh "$(dirname "$0")/../sweep.sh" transfer simclr 1 18 "$@"
