"""The original's module name for pruning: global magnitude pruning, masks, rewinding and ticket files.

Kept at the top level for the code and notebooks that ``import pruning_utils``; the code lives in
``lth.pruning`` (``torch.nn.utils.prune``-based pruning, mask extraction, rewinding, mask reversal)
and ``lth.tickets`` (ticket files). Code inside this repository imports those modules directly.
"""

from lth.pruning import (MASK_SUFFIX, ORIG_SUFFIX, apply_mask, check_mask_values, check_rate, current_masks,
                         dense_state_dict, effective_weight, extract_mask, fit_masks, global_prune, is_pruned, mask_remaining,
                         masks_in_place, masks_to, prunable_convs, remove_prune, reverse_mask, rewind, sparsity,
                         stem_conv_name, strip_prefixes, sync_masks, transferable_weights)
from lth.tickets import TICKET_FORMAT, TICKET_VERSION, is_ticket, pack_masks, read_masks, save_ticket, unpack_masks

__all__ = ["MASK_SUFFIX", "ORIG_SUFFIX", "apply_mask", "check_mask_values", "check_rate", "current_masks",
           "dense_state_dict", "effective_weight", "extract_mask", "fit_masks", "global_prune", "is_pruned", "mask_remaining",
           "masks_in_place", "masks_to", "prunable_convs", "remove_prune", "reverse_mask", "rewind", "sparsity",
           "stem_conv_name", "strip_prefixes", "sync_masks", "transferable_weights",
           "TICKET_FORMAT", "TICKET_VERSION", "is_ticket", "pack_masks", "read_masks", "save_ticket", "unpack_masks"]
