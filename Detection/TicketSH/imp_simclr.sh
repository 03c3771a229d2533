# IMP tickets of YOLOv4 from the simclr backbone, rounds 0..18 as one resumable job per seed (the original's
# TicketSH/imp_simclr.sh ran one process per round). Usage: sh TicketSH/imp_simclr.sh GPU [extra flags, e.g. --data_root PATH]
exec sh "$(dirname "$0")/../sweep.sh" imp simclr 0 18 "$@"
