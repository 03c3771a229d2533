# Random-pruning control on the MoCo backbone at levels 3..4 (0.8^k of the conv weights remain), one
# process each (the original's random/02_random_moco0304.sh). Usage: sh random/02_random_moco0304.sh GPU [extra flags]
exec sh "$(dirname "$0")/../sweep.sh" random moco 3 4 "$@"
