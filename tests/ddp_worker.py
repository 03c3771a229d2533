"""Run by tests/test_distributed.py under torchrun: one IMP rank, then save this rank's final masks."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import main_imp_downstream  # noqa: E402
import pruning_utils  # noqa: E402

if __name__ == "__main__":
    out, flags = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(1)
    imp = main_imp_downstream.main(main_imp_downstream.get_args_parser().parse_args(flags))
    torch.save(pruning_utils.current_masks(imp.model), os.path.join(out, f"masks_rank{os.environ['RANK']}.pt"))
