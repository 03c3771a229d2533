# Random-pruning control on the MoCo backbone at levels 7..8 (0.8^k of the conv weights remain), one
# process each (the original's random/04_random_moco0708.sh). Usage: sh random/04_random_moco0708.sh GPU [extra flags]
exec sh "$(dirname "$0")/../sweep.sh" random moco 7 8 "$@"
