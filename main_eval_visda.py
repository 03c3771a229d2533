"""Train one ticket (pre-trained weights + a mask) on VisDA-2017: the transfer experiment.

Weights come from --pretrained (an entry picked by --dict_key; fc is dropped, conv1 is loaded), the
mask from --mask_dir (a ticket file of any pre-training, an IMP checkpoint of this toolkit or of the
original code, or a plain mask dict), optionally reversed. Validation reports top-1 and the VisDA
metric, the mean of the per-class accuracies. Example:

    python -u main_eval_visda.py /data/visda17 -a resnet50 --epochs 20 -b 256 --lr 0.001 \\
        --save_dir eval_visda --pretrained imagenet_weight.pt --mask_dir imagenet_imp/ticket_05.pt
"""

import math

from lth import cli, distributed, imagedata
from lth.checkpoint import write_json
from lth.errors import UserError
from lth.models import ARCHS, load_pretrained
from lth.plots import plot_training_curves
from lth.runs import ONE_OFF_SUMMARY
from lth.session import check_save_dir, open_session
from lth.tickets import apply_ticket_args
from lth.trainer import StageFiles, TrainConfig, train_stage

CHECKPOINT_FORMAT = "lth-eval-visda"
EVAL_FILES = StageFiles(checkpoint="checkpoint.pth.tar", best="model_best.pth.tar")


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
    run, ctx, precision = session.run, session.ctx, session.precision
    train_set, val_set = imagedata.visda_splits(args.data, args.image_size)
    loaders = imagedata.image_loaders(train_set, val_set, imagedata.VISDA_CLASSES, batch_size=args.batch_size,
                                      eval_batch_size=args.eval_batch_size, workers=args.workers,
                                      seed=args.seed, ctx=ctx, precision=precision)
    model = imagedata.image_model(args.arch, imagedata.VISDA_CLASSES, args.seed, ctx, precision)
    if args.pretrained:
        load_pretrained(model, args.pretrained, args.dict_key, fc=False, conv1=True, quiet=not ctx.is_main)
    mask_meta, remaining = apply_ticket_args(model, args, ctx.is_main)
    session.record(args)
    cfg = TrainConfig.from_args(args)
    progress, optimizer_state, scheduler_state = session.restore(model, CHECKPOINT_FORMAT, args, args.conv1)
    extra = {"format": CHECKPOINT_FORMAT, "args": vars(args), "arch": args.arch, "mask_meta": mask_meta}
    progress = train_stage(model, loaders, cfg, precision, ctx, run, stage=0, files=EVAL_FILES,
                           progress=progress, optimizer_state=optimizer_state, scheduler_state=scheduler_state,
                           checkpoint_extra=lambda: {**extra, "best_acc1": max(progress.best_val, 0.0)},
                           conv1=args.conv1)
    if ctx.is_main:
        final = run.metrics()[-1] if run.metrics() else {}
        at_best = progress.at_best
        summary = {"remaining": remaining, "reverse_mask": args.reverse_mask, "mask": args.mask_dir,
                   "pretrained": args.pretrained, "best_epoch": progress.best_epoch,
                   "best_val_acc": progress.best_val,
                   "mean_class_acc_at_best_val": at_best.get("val_mean_class_acc", math.nan),
                   "per_class_acc_at_best_val": at_best.get("val_per_class", []),
                   "final_val_acc": final.get("val_acc", math.nan),
                   "final_mean_class_acc": final.get("val_mean_class_acc", math.nan)}
        write_json(summary, run.file(ONE_OFF_SUMMARY))
        plot_training_curves(progress.history, run.file("net_train.png"),
                             title=f"{remaining:.2f}% of conv weights remain")
        print(f"done: validation top-1 {progress.best_val:.2f}% and mean class accuracy "
              f"{summary['mean_class_acc_at_best_val']:.2f}% at the best epoch ({progress.best_epoch}); "
              f"results in {args.save_dir}")
    distributed.teardown()


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
