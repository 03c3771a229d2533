"""Train one ticket (pre-trained weights + a mask) on a small data set: the transfer experiment.

Weights come from --pretrained (an entry picked by --dict_key), the mask from --mask_dir (a ticket
file, an IMP checkpoint of this toolkit or of the original code, or a plain mask dict), optionally
reversed. Example:

    python -u main_eval_downstream.py --data ../data --dataset cifar10 --arch resnet50 \\
        --save_dir eval_ticket --pretrained imagenet_weight.pt --mask_dir imp/ticket_05.pt
"""

from lth import cli
from lth.classification import SmallImageTicketTask
from lth.classification_hparams import DownstreamEval
from lth.once import transfer_ticket


def get_args_parser():
    return DownstreamEval.parser(description=__doc__.split("\n\n")[0])


def main(args) -> None:
    cli.check_common(args)
    transfer_ticket(args, DownstreamEval, SmallImageTicketTask)


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
