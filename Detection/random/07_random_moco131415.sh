# Random-pruning control on the MoCo backbone at levels 13..15 (0.8^k of the conv weights remain), one
# process each (the original's random/07_random_moco131415.sh). Usage: sh random/07_random_moco131415.sh GPU [extra flags]
exec sh "$(dirname "$0")/../sweep.sh" random moco 13 15 "$@"
