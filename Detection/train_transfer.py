"""Transfer a ticket to detection: YOLOv4 trained with a fixed backbone mask on the pre-trained weights.

The mask may be any this toolkit reads: its tickets (classification, SimCLR, MoCo, detection), the
original's mask-{i}.pt, a checkpoint holding masks, or the original's backbone_imp{n}.pth. The
run goes to --save_dir/model{mask_num}. Example (the original's TicketSH/transfer_imagenet.sh, with
the mask folder as a variable):

    MASKROOT=./Maskall/img1-mask
    for i in $(seq 1 18); do python -u train_transfer.py --transfer_type imagenet \\
        --mask_dir $MASKROOT/mask-$i.pt --mask_num $i --seed 10; done
"""

import os

from Detection import runner
from Detection.task import DetectionPruning, read_backbone_masks
from lth import cli, distributed, pruning
from lth.errors import UserError
from lth.session import check_save_dir, open_session

MASK_NAMES = ("mask-{i}.pt", "ticket_{i:02d}.pt", "backbone_imp{i}.pth")


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_argument_group("transfer (the original's flags)")
    group.add_argument("--transfer_type", default="imagenet", choices=runner.PRETRAINED_TYPES,
                       help="which pre-trained backbone the mask is put on")
    group.add_argument("--mask_dir", required=True,
                       help="the mask file (the original passes MASKROOT/mask-{i}.pt), or a folder holding "
                            "mask-{i}.pt, ticket_{i:02d}.pt or backbone_imp{i}.pth for i = --mask_num")
    group.add_argument("--mask_num", type=int, default=-1,
                       help="the mask's number: names the run's folder model{i} and its summary row")
    group.add_argument("--reverse_mask", action="store_true",
                       help="train the complement of the mask (1 - mask): the reversed-mask control")
    runner.add_common_args(parser)
    return parser


def mask_file(mask_dir: str, number: int) -> str:
    if os.path.isfile(mask_dir):
        return mask_dir
    if os.path.isdir(mask_dir):
        for pattern in MASK_NAMES:
            path = os.path.join(mask_dir, pattern.format(i=number))
            if os.path.isfile(path):
                return path
        names = ", ".join(pattern.format(i=number) for pattern in MASK_NAMES)
        raise UserError(f"mask folder '{mask_dir}' holds none of {names} (--mask_num {number})")
    raise UserError(f"--mask_dir '{mask_dir}' does not exist")


def main(args) -> dict:
    runner.check_args(args)
    path = mask_file(args.mask_dir, args.mask_num)
    masks, meta = read_backbone_masks(path)  # read before anything is written: a bad mask changes nothing
    if args.reverse_mask:
        masks = pruning.reverse_mask(masks)
    sweep = args.save_dir or runner.default_save_dir(args.seed, args.transfer_type, "transfer")
    args.save_dir = os.path.join(sweep, f"model{args.mask_num}")
    run, resume_file = check_save_dir(args.save_dir, args.resume)
    session = open_session(args, run, resume_file, default_seed=runner.config.DEFAULTS["seed"])
    setup = runner.build(args, session.ctx, session.precision, args.transfer_type, run.path)
    strategy = DetectionPruning(runner.config.DEFAULTS["prune_rate"])
    if not args.resume:
        strategy.apply_ticket(setup.model, masks)  # checked against the model before anything is written
    session.record(args)
    label = f"transfer {args.mask_num}" + (" (reversed)" if args.reverse_mask else "")
    row = runner.train_single(args, session, setup, max(args.mask_num, 0), lambda: None, sweep, label,
                              {"mask_num": args.mask_num, "mask": path, "reverse_mask": args.reverse_mask,
                               "mask_meta": {k: v for k, v in meta.items() if isinstance(v, (int, float, str))}})
    distributed.teardown()
    return row


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
