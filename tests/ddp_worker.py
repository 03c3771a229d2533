"""Run by tests/test_distributed.py under torchrun: one IMP rank, then save this rank's final masks."""

import os
import sys

import torch

import main_imp_downstream
import pruning_utils

if __name__ == "__main__":
    out, flags = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(1)
    imp = main_imp_downstream.main(main_imp_downstream.get_args_parser().parse_args(flags))
    torch.save(pruning_utils.current_masks(imp.model), os.path.join(out, f"masks_rank{os.environ['RANK']}.pt"))
