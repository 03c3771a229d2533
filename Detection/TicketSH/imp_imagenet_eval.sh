# Evaluate round 7 (or the one given) of the imagenet IMP run (the original's TicketSH/imp_imagenet_eval.sh,
# whose train_imp_eval.py crashes). Usage: sh TicketSH/imp_imagenet_eval.sh GPU [round [extra flags]]
GPU=$1; ROUND=${2:-7}
shift; [ $# -gt 0 ] && shift
exec sh "$(dirname "$0")/../sweep.sh" eval imagenet "$ROUND" "$ROUND" "$GPU" "$@"
