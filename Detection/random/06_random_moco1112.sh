# Random-pruning control on the MoCo backbone at levels 11..12 (0.8^k of the conv weights remain), one
# process each (the original's random/06_random_moco1112.sh). Usage: sh random/06_random_moco1112.sh GPU [extra flags]
exec sh "$(dirname "$0")/../sweep.sh" random moco 11 12 "$@"
