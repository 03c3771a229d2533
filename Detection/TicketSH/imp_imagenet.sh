# IMP tickets of YOLOv4 from the imagenet backbone, rounds 0..18 as one resumable job per seed (the original's
# TicketSH/imp_imagenet.sh ran one process per round). Usage: sh TicketSH/imp_imagenet.sh GPU [extra flags, e.g. --data_root PATH]
exec sh "$(dirname "$0")/../sweep.sh" imp imagenet 0 18 "$@"
