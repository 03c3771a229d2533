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
from lth.errors import UserError
from lth.models import ARCHS
from lth.once import train_once
from lth.session import check_save_dir, open_session


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", metavar="DIR",
                        help="VisDA-2017 root: DIR/train/image_list.txt and DIR/validation/image_list.txt, "
                             "lines 'relative/path label' (labels 0-11)")
    group = parser.add_argument_group("model")
    group.add_argument("-a", "--arch", default="resnet50", choices=ARCHS,
                       help="torchvision ResNet (ImageNet stem) with a 12-way fc")
    group.add_argument("--image_size", type=int, default=224,
                       help="training crop size and validation resize (size x size)")
    cli.add_optim_args(parser, batch_size=64, names=cli.EXAMPLES_NAMES)
    parser.set_defaults(lr=1e-3, weight_decay=5e-4, epochs=20, warmup=0, decreasing_lr=[10])
    group = cli.add_ticket_args(parser, weights_note="; fc is not loaded, conv1 is")
    group.add_argument("--conv1", action="store_true",
                       help="also mask the stem conv1 (the mask must then hold conv1.weight_mask)")
    cli.add_runtime_args(parser, names=cli.EXAMPLES_NAMES, workers=4, save_dir="results/", resume_path=True)
    return parser


def main(args) -> None:
    cli.check_common(args)
    if args.reverse_mask and not args.mask_dir:
        raise UserError("--reverse_mask needs a mask to reverse: give --mask_dir")
    if args.image_size < 1:
        raise UserError(f"--image_size must be positive, got {args.image_size}")
    session = open_session(args, *check_save_dir(args.save_dir, args.resume))
    task = VisdaTicketTask(args)
    task.build(session)
    session.record(args)
    train_once(task, args, session)
    distributed.teardown()


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
