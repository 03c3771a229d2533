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
from Detection.hparams import DetectionTransfer
from Detection.task import read_backbone_masks
from lth import cli, distributed, pruning
from lth.errors import UserError
from lth.hparams import controls_record, ticket_kind
from lth.once import train_once
from lth.session import check_save_dir, open_session

MASK_NAMES = ("mask-{i}.pt", "ticket_{i:02d}.pt", "backbone_imp{i}.pth")


def get_args_parser():
    return DetectionTransfer.parser(description=__doc__.split("\n\n")[0])


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
    hparams = DetectionTransfer.from_args(args)
    path = mask_file(args.mask_dir, args.mask_num)
    masks, meta = read_backbone_masks(path)  # read before anything is written: a bad mask changes nothing
    if args.reverse_mask:
        masks = pruning.reverse_mask(masks)
    sweep = args.save_dir or runner.default_save_dir(args.seed, args.transfer_type, "transfer")
    args.save_dir = os.path.join(sweep, f"model{args.mask_num}")
    run, resume_file = check_save_dir(args.save_dir, args.resume)
    session = open_session(args, run, resume_file, default_seed=runner.config.DEFAULTS["seed"], hparams=hparams)
    label = f"transfer {args.mask_num}" + (" (reversed)" if args.reverse_mask else "")
    task = runner.DetectionTask(args, args.transfer_type, run.path, sweep_dir=sweep, label=label, row_extra={
        "mask_num": args.mask_num, "mask": path, "reverse_mask": args.reverse_mask,
        "mask_meta": {k: v for k, v in meta.items() if isinstance(v, (int, float, str))}})
    task.build(session)
    if not args.resume:
        task.strategy.apply_ticket(task.model, masks)  # checked against the model before anything is written
    kind = ticket_kind(path, args.reverse_mask, pretrained=args.pretrained != "none")
    session.record(args, controls=controls_record(kind, args.mask_dir, meta))
    stage = max(args.mask_num, 0)
    progress = train_once(task, args, session, stage=stage)
    distributed.teardown()
    return task.summary_row(progress, stage, task.strategy.remaining(task.model))


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
