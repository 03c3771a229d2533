"""Train one ticket (pre-trained weights + a mask) on VisDA-2017: the transfer experiment.

Weights come from --pretrained (an entry picked by --dict_key; fc is dropped, conv1 is loaded), the
mask from --mask_dir (a ticket file of any pre-training, an IMP checkpoint of this toolkit or of the
original code, or a plain mask dict), optionally reversed. Validation reports top-1 and the VisDA
metric, the mean of the per-class accuracies. Example:

    python -u main_eval_visda.py /data/visda17 -a resnet50 --epochs 20 -b 256 --lr 0.001 \\
        --save_dir eval_visda --pretrained imagenet_weight.pt --mask_dir imagenet_imp/ticket_05.pt
"""

from lth import cli, distributed
from lth.classification import VisdaTicketTask
from lth.classification_hparams import VisdaEval
from lth.errors import UserError
from lth.hparams import controls_record, ticket_kind
from lth.once import train_once
from lth.session import check_save_dir, open_session


def get_args_parser():
    return VisdaEval.parser(description=__doc__.split("\n\n")[0])


def main(args) -> None:
    cli.check_common(args)
    if args.reverse_mask and not args.mask_dir:
        raise UserError("--reverse_mask needs a mask to reverse: give --mask_dir")
    if args.image_size < 1:
        raise UserError(f"--image_size must be positive, got {args.image_size}")
    hparams = VisdaEval.from_args(args)
    session = open_session(args, *check_save_dir(args.save_dir, args.resume), hparams=hparams)
    task = VisdaTicketTask(args)
    task.build(session)
    kind = ticket_kind(args.mask_dir, args.reverse_mask, pretrained=bool(args.pretrained))
    session.record(args, controls=controls_record(kind, args.mask_dir, task.mask_meta) if kind else None)
    train_once(task, args, session)
    distributed.teardown()


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
