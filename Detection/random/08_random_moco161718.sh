# Random-pruning control on the MoCo backbone at levels 16..18 (0.8^k of the conv weights remain), one
# process each (the original's random/08_random_moco161718.sh). Usage: sh random/08_random_moco161718.sh GPU [extra flags]
exec sh "$(dirname "$0")/../sweep.sh" random moco 16 18 "$@"
