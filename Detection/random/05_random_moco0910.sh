# Random-pruning control on the MoCo backbone at levels 9..10 (0.8^k of the conv weights remain), one
# process each (the original's random/05_random_moco0910.sh). Usage: sh random/05_random_moco0910.sh GPU [extra flags]
exec sh "$(dirname "$0")/../sweep.sh" random moco 9 10 "$@"
