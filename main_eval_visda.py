"""Train one ticket (pre-trained weights + a mask) on VisDA-2017: the transfer experiment.

Weights come from --pretrained (an entry picked by --dict_key; fc is dropped, conv1 is loaded), the
mask from --mask_dir (a ticket file of any pre-training, an IMP checkpoint of this toolkit or of the
original code, or a plain mask dict), optionally reversed. Validation reports top-1 and the VisDA
metric, the mean of the per-class accuracies. Example:

    python -u main_eval_visda.py /data/visda17 -a resnet50 --epochs 20 -b 256 --lr 0.001 \\
        --save_dir eval_visda --pretrained imagenet_weight.pt --mask_dir imagenet_imp/ticket_05.pt
"""

from lth import cli
from lth.classification import VisdaTicketTask
from lth.classification_hparams import VisdaEval
from lth.errors import UserError
from lth.once import transfer_ticket


def get_args_parser():
    return VisdaEval.parser(description=__doc__.split("\n\n")[0])


def main(args) -> None:
    cli.check_common(args)
    if args.image_size < 1:
        raise UserError(f"--image_size must be positive, got {args.image_size}")
    transfer_ticket(args, VisdaEval, VisdaTicketTask)


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
