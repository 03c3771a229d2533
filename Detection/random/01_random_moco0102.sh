# Random-pruning control on the MoCo backbone at levels 1..2 (0.8^k of the conv weights remain), one
# process each (the original's random/01_random_moco0102.sh). Usage: sh random/01_random_moco0102.sh GPU [extra flags]
exec sh "$(dirname "$0")/../sweep.sh" random moco 1 2 "$@"
