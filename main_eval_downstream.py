"""Train one ticket (pre-trained weights + a mask) on a small data set: the transfer experiment.

Weights come from --pretrained (an entry picked by --dict_key), the mask from --mask_dir (a ticket
file, an IMP checkpoint of this toolkit or of the original code, or a plain mask dict), optionally
reversed. Example:

    python -u main_eval_downstream.py --data ../data --dataset cifar10 --arch resnet50 \\
        --save_dir eval_ticket --pretrained imagenet_weight.pt --mask_dir imp/ticket_05.pt
"""

from lth import cli, distributed
from lth.classification import SmallImageTicketTask
from lth.classification_hparams import DownstreamEval
from lth.errors import UserError
from lth.hparams import controls_record, ticket_kind
from lth.once import train_once
from lth.session import check_save_dir, open_session


def get_args_parser():
    return DownstreamEval.parser(description=__doc__.split("\n\n")[0])


def main(args) -> None:
    cli.check_common(args)
    if args.reverse_mask and not args.mask_dir:
        raise UserError("--reverse_mask needs a mask to reverse: give --mask_dir")
    hparams = DownstreamEval.from_args(args)
    session = open_session(args, *check_save_dir(args.save_dir, args.resume), hparams=hparams)
    task = SmallImageTicketTask(args)
    task.build(session)
    kind = ticket_kind(args.mask_dir, args.reverse_mask, pretrained=bool(args.pretrained))
    session.record(args, controls=controls_record(kind, args.mask_dir, task.mask_meta) if kind else None)
    train_once(task, args, session)
    distributed.teardown()


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
