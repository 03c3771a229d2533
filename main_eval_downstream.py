"""Train one ticket (pre-trained weights + a mask) on a small data set: the transfer experiment.

Weights come from --pretrained (an entry picked by --dict_key), the mask from --mask_dir (a ticket
file, an IMP checkpoint of this toolkit or of the original code, or a plain mask dict), optionally
reversed. Example:

    python -u main_eval_downstream.py --data ../data --dataset cifar10 --arch resnet50 \\
        --save_dir eval_ticket --pretrained imagenet_weight.pt --mask_dir imp/ticket_05.pt
"""

from lth import cli, data, distributed
from lth.checkpoint import write_json
from lth.classification import load_task, make_model
from lth.errors import UserError
from lth.models import ARCHS, load_pretrained
from lth.plots import plot_training_curves
from lth.runs import ONE_OFF_SUMMARY
from lth.session import check_save_dir, open_session
from lth.tickets import apply_ticket_args
from lth.trainer import StageFiles, TrainConfig, train_stage

CHECKPOINT_FORMAT = "lth-eval"
EVAL_FILES = StageFiles(checkpoint="checkpoint.pth.tar", best="model_SA_best.pth.tar")


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
    run, ctx, precision = session.run, session.ctx, session.precision
    task = load_task(args, ctx, precision, args.seed)
    model = make_model(args, task.spec, ctx, precision, args.seed)
    if args.pretrained:
        # As the original: --conv1 only decides whether conv1 is masked; --load_all loads it.
        load_pretrained(model, args.pretrained, args.dict_key, fc=args.fc or args.load_all,
                        conv1=args.load_all, quiet=not ctx.is_main)
    mask_meta, remaining = apply_ticket_args(model, args, ctx.is_main)
    session.record(args)
    cfg = TrainConfig.from_args(args)
    progress, optimizer_state, scheduler_state = session.restore(model, CHECKPOINT_FORMAT, args, args.conv1)
    extra = {"format": CHECKPOINT_FORMAT, "args": vars(args), "mask_meta": mask_meta}
    progress = train_stage(model, task.loaders, cfg, precision, ctx, run, stage=0, files=EVAL_FILES,
                           progress=progress, optimizer_state=optimizer_state, scheduler_state=scheduler_state,
                           checkpoint_extra=lambda: extra, save_best=args.save_model, conv1=args.conv1)
    if ctx.is_main:
        summary = {"remaining": remaining, "reverse_mask": args.reverse_mask, "mask": args.mask_dir,
                   "pretrained": args.pretrained, "best_epoch": progress.best_epoch,
                   "best_val_acc": progress.best_val, "test_acc_at_best_val": progress.test_at_best,
                   "final_test_acc": progress.history["test_ta"][-1]}
        write_json(summary, run.file(ONE_OFF_SUMMARY))
        plot_training_curves(progress.history, run.file("net_train.png"),
                             title=f"{remaining:.2f}% of conv weights remain")
        print(f"done: test accuracy {progress.test_at_best:.2f}% at the best validation epoch "
              f"({progress.best_epoch}); results in {args.save_dir}")
    distributed.teardown()


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
