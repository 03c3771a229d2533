# Random-pruning control on the MoCo backbone at levels 5..6 (0.8^k of the conv weights remain), one
# process each (the original's random/03_random_moco0506.sh). Usage: sh random/03_random_moco0506.sh GPU [extra flags]
exec sh "$(dirname "$0")/../sweep.sh" random moco 5 6 "$@"
