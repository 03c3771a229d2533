# Evaluate round 5 (or the one given) of the moco IMP run (the original's TicketSH/imp_moco_eval.sh,
# whose train_imp_eval.py crashes). Usage: sh TicketSH/imp_moco_eval.sh GPU [round [extra flags]]
GPU=$1; ROUND=${2:-5}
shift; [ $# -gt 0 ] && shift
exec sh "$(dirname "$0")/../sweep.sh" eval moco "$ROUND" "$ROUND" "$GPU" "$@"
