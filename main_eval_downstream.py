"""Train one ticket (pre-trained weights + a mask) on a small data set: the transfer experiment.

Weights come from --pretrained (an entry picked by --dict_key), the mask from --mask_dir (a ticket
file, an IMP checkpoint of this toolkit or of the original code, or a plain mask dict), optionally
reversed. Example:

    python -u main_eval_downstream.py --data ../data --dataset cifar10 --arch resnet50 \\
        --save_dir eval_ticket --pretrained imagenet_weight.pt --mask_dir imp/ticket_05.pt
"""

from lth import cli, data, distributed
from lth.classification import SmallImageTicketTask
from lth.errors import UserError
from lth.models import ARCHS
from lth.once import train_once
from lth.session import check_save_dir, open_session


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_data_args(parser, list(data.DATASETS), default="cifar10")
    cli.add_model_args(parser, ARCHS, conv1_loads=False)
    cli.add_optim_args(parser, batch_size=128)
    group = cli.add_ticket_args(parser)
    group.add_argument("--load_all", action="store_true",
                       help="load every weight of --pretrained, fc and conv1 included (shapes must fit); "
                            "without it conv1 and fc keep their random init, as in the original")
    group.add_argument("--save_model", action="store_true",
                       help="also keep the best-validation model as model_SA_best.pth.tar")
    cli.add_runtime_args(parser)
    return parser


def main(args) -> None:
    cli.check_common(args)
    if args.reverse_mask and not args.mask_dir:
        raise UserError("--reverse_mask needs a mask to reverse: give --mask_dir")
    session = open_session(args, *check_save_dir(args.save_dir, args.resume))
    task = SmallImageTicketTask(args)
    task.build(session)
    session.record(args)
    train_once(task, args, session)
    distributed.teardown()


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
