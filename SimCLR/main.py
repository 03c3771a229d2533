"""Find SimCLR pre-training tickets: IMP of a SimCLR ResNet, retrained with the contrastive loss.

The pre-trained weights (--sim_model) are pruned one-shot by --prun_percent, then every
--prun_epoch epochs of NT-Xent training another --prun_percent of the remaining backbone conv
weights are pruned and the weights rewound to --sim_model, --epochs epochs in all. Results go to
SAVE_DIR/EXPERIMENT. --prun_percent 0 instead trains a dense SimCLR model for --epochs. Example:

    cd SimCLR && python -u main.py simclr_r50 --gpu 0,1,2,3 --epochs 180 --prun_epoch 10 \\
        --prun_percent 0.2 --lr 1e-4 --arch resnet50 --batch_size 256 --data DIR \\
        --sim_model simclr_weight.pt --save_dir simclr_imp
"""

import os
import shlex
import sys

import torch
import torch.nn as nn

from lth import cli, distributed, pruning, validate
from lth.checkpoint import atomic_save
from lth.contrastive import contrastive_evaluate
from lth.errors import UserError
from lth.imagedata import image_folder
from lth.loaders import DeviceLoader, Loaders
from lth.imp import ImpConfig, ImpRun
from lth.models import ARCHS
from lth.session import check_same_experiment, check_save_dir, open_session
from lth.trainer import StageFiles, TrainConfig, train_stage
from SimCLR import simclr

DEFAULT_SIM_MODEL = "./simclr_pre-train_model/resnet50-1x.pth"
LATEST = "latest"
DENSE_FORMAT = "lth-simclr-dense"
DENSE_OUTPUT = "simclr_weight.pt"
# Round r's resumable state (its last epoch: the original's model_pruned{r*prun_epoch}.pt) and its
# best-validation model; the checkpoint name is the one RunDir looks for on --resume.
FILES = StageFiles(checkpoint="{stage}checkpoint.pth.tar", best="{stage}model_best.pth.tar")
MOMENTUM = 0.9  # LARS and SGD momentum, fixed as in the original
# Flags (beyond lth.trainer.IDENTITY_FLAGS) whose change makes a resumed run another experiment.
SIMCLR_IDENTITY = ("prun_percent", "prun_epoch", "mlpout", "phead", "temperature", "optimizer",
                   "image_size", "loss")


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment",
                        help="name of this run; everything is written to SAVE_DIR/EXPERIMENT")
    group = parser.add_argument_group("data and model")
    group.add_argument("--data", default="./data",
                       help="ImageFolder root with train/<class>/<images> and val/<class>/<images>")
    group.add_argument("--arch", default="resnet50", choices=ARCHS,
                       help="torchvision ResNet (ImageNet stem) under the projection head")
    group.add_argument("--sim_model", default=DEFAULT_SIM_MODEL,
                       help="SimCLR pre-trained weights ({'state_dict': torchvision names}, e.g. the "
                            "released simclr_weight.pt or this script's --prun_percent 0 output); IMP "
                            "prunes them one-shot and rewinds to them after every round")
    group.add_argument("--mlpout", type=int, default=128, help="output size of the projection head")
    group.add_argument("--phead", action="store_false",
                       help="passing it REMOVES the projection head (the original's store_false "
                            "flag): the loss then acts on the backbone features")
    group.add_argument("--image_size", type=int, default=224, help="side of the random resized crops")
    group.add_argument("--temperature", type=float, default=0.5,
                       help="NT-Xent temperature (the original hard-coded 0.5)")
    group.add_argument("--loss", default="original", choices=list(simclr.LOSS_FORMS),
                       help="NT-Xent form: original is -log(mean p) over the 2N views, what the original "
                            "SimCLR IMP code (and the paper's tickets) minimised; textbook is mean(-log p), "
                            "the SimCLR paper's cross entropy")
    group = parser.add_argument_group("optimisation (the original's defaults)")
    group.add_argument("--epochs", type=int, default=150,
                       help="training epochs in all: rounds = 1 + epochs / prun_epoch, the first "
                            "only evaluates")
    group.add_argument("--batch_size", type=int, default=256,
                       help="images per step over all GPUs; NT-Xent contrasts all 2x of them; "
                            + cli.BATCH_HELP)
    group.add_argument("--lr", type=float, default=1e-4, help="learning rate, constant")
    group.add_argument("--optimizer", default="lars", choices=["adam", "lars", "sgd"],
                       help=f"lars: trust ratio eta 1e-3; lars and sgd use momentum {MOMENTUM}; a "
                            f"fresh optimizer starts every round")
    group.add_argument("--weight_decay", type=float, default=1e-6,
                       help="weight decay of lars and sgd (adam takes none, as in the original)")
    group = parser.add_argument_group("pruning")
    group.add_argument("--prun_percent", type=float, default=0.2,
                       help="fraction of the remaining backbone conv weights pruned each time; 0 "
                            "trains a dense SimCLR model instead (random init without --sim_model)")
    group.add_argument("--prun_epoch", type=int, default=10,
                       help="epochs of training between two prunings (must divide --epochs)")
    cli.add_lrr_arg(group, "the --sim_model weights")
    cli.add_early_bird_args(group)
    group = parser.add_argument_group("run")
    group.add_argument("--save_dir", default="./output", help="parent folder of the experiment's folder")
    group.add_argument("--resume", nargs="?", const=LATEST, default="",
                       help="continue the experiment: alone, from its latest checkpoint; with a path, "
                            "from that checkpoint of this toolkit (give EXPERIMENT before --resume)")
    group.add_argument("--seed", type=int, default=2, help="random seed (0 is valid): init, data order and augmentation")
    group.add_argument("--gpu", default="0",
                       help="CUDA devices, e.g. 0 or 0,1,2,3 (sets CUDA_VISIBLE_DEVICES); several "
                            "devices re-launch the script under torchrun, one process each (DDP); "
                            "ignored without CUDA")
    group.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    group.add_argument("--workers", "-j", type=int, default=4, help="data-loading processes per GPU process")
    group.add_argument("--sync_bn", action="store_true",
                       help="synchronise batch-norm statistics across GPUs (DDP on CUDA only)")
    group.add_argument("--print_freq", type=int, default=50,
                       help="update the progress bar's loss/accuracy every this many steps")
    cli.add_speed_args(group)
    cli.add_trust_arg(group)
    return parser


def gpu_ids(text: str) -> list[int]:
    """``--gpu 0,1,2,3`` as device numbers."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--gpu expects device numbers such as 0 or 0,1,2,3, got '{text}'") from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise UserError(f"--gpu expects distinct device numbers such as 0 or 0,1,2,3, got '{text}'")
    return ids


def relaunch_command(script: str, argv: list[str], nproc: int, python: str = sys.executable) -> list[str]:
    """The same command line under torchrun, one process per listed GPU."""
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            script, *argv]


def check_args(args) -> None:
    for name in ("epochs", "batch_size", "prun_epoch", "mlpout", "image_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    validate.check_shared(args)
    validate.check_positive("temperature", args.temperature)
    validate.check_run_name(args.experiment, "EXPERIMENT")
    if args.prun_percent != 0:
        pruning.check_rate(args.prun_percent)
        if args.epochs % args.prun_epoch:
            raise UserError(f"--prun_epoch {args.prun_epoch} must divide --epochs {args.epochs} "
                            f"(rounds = 1 + epochs / prun_epoch)")
        cli.early_bird_config(args)
    gpu_ids(args.gpu)


def select_devices(args) -> int:
    """Set CUDA_VISIBLE_DEVICES from --gpu before CUDA starts; the number of CUDA devices to use.

    Under torchrun the launcher's environment already holds the choice (each process takes its
    LOCAL_RANK), so nothing is changed there.
    """
    if args.cpu or "WORLD_SIZE" in os.environ:
        return 0
    ids = gpu_ids(args.gpu)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
    if not torch.cuda.is_available():
        print(f"notice: no CUDA device; --gpu {args.gpu} ignored, running on the CPU", file=sys.stderr)
        return 0
    if torch.cuda.device_count() < len(ids):
        raise UserError(f"--gpu {args.gpu} lists {len(ids)} devices but only "
                        f"{torch.cuda.device_count()} of them exist")
    if args.batch_size % len(ids):
        raise UserError(f"--batch_size {args.batch_size} must be divisible by the {len(ids)} GPUs of --gpu")
    return len(ids)


def start_weights(args) -> dict | None:
    """The --sim_model weights, or None for a dense run from random init (--prun_percent 0 only)."""
    path = args.sim_model
    absent = path in ("", "None", "none") or (path == DEFAULT_SIM_MODEL and not os.path.exists(path))
    if absent and args.prun_percent == 0:
        print("notice: no --sim_model; training a dense SimCLR model from random init", file=sys.stderr)
        return None
    if absent or not os.path.exists(path):
        raise UserError(f"--sim_model '{path}' does not exist: IMP prunes and rewinds to SimCLR "
                        f"weights (--prun_percent 0 pre-trains a dense model from scratch instead)")
    return simclr.read_sim_weights(path)


def make_loaders(args, ctx) -> Loaders:
    transform = simclr.simclr_transform(args.image_size)
    train_set = image_folder(args.data, "train", transform)
    val_set = image_folder(args.data, "val", transform)
    per_process = distributed.per_process_batch(args.batch_size, ctx)
    common = dict(seed=args.seed, ctx=ctx, workers=args.workers)
    # The last partial batch is kept, as the original's loader kept it (under DDP every rank's
    # last batch has the same size: the sampler pads), so NT-Xent's gather stays aligned.
    loaders = Loaders(train=DeviceLoader(train_set, per_process, train=True, drop_last=False, **common),
                      val=DeviceLoader(val_set, per_process, train=False, **common),
                      test=None, num_classes=len(train_set.classes))
    if len(loaders.train) == 0:
        raise UserError(f"{args.data}/train has {len(train_set)} images, fewer than one batch of "
                        f"{per_process} per process: lower --batch_size")
    return loaders


def make_model(args, ctx, precision, weights) -> tuple[nn.Module, dict | None]:
    torch.manual_seed(args.seed)  # the head (and everything, from scratch) starts alike on every rank
    model = simclr.build_simclr_model(args.arch, args.mlpout, head=args.phead)
    loaded = None
    if weights is not None:
        loaded = simclr.load_sim_weights(model, weights, args.sim_model, quiet=not ctx.is_main)
    model = model.to(ctx.device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.sync_bn:
        if ctx.distributed and ctx.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif ctx.is_main:
            print("notice: --sync_bn needs several CUDA processes; ignored", file=sys.stderr)
    return model, loaded


def main(args) -> None:
    check_args(args)
    run, _ = check_save_dir(os.path.join(args.save_dir, args.experiment), bool(args.resume))
    if args.resume:
        check_same_experiment(run, args, SIMCLR_IDENTITY)
    # On resume the checkpoint holds the weights, the masks and the rewind point.
    weights = None if args.resume else start_weights(args)
    devices = select_devices(args)
    if devices > 1:
        command = relaunch_command(os.path.abspath(__file__), sys.argv[1:], devices)
        print(f"notice: {devices} GPUs listed; re-launching as {shlex.join(command)}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os.execv(command[0], command)
    # Device 0 is the one --gpu named (CUDA_VISIBLE_DEVICES); under torchrun, LOCAL_RANK's.
    checkpoint_path = None if args.resume in ("", LATEST) else args.resume
    session = open_session(args, run, checkpoint_path, gpu=0)
    ctx, precision = session.ctx, session.precision
    if args.batch_size % ctx.world_size:
        raise UserError(f"--batch_size {args.batch_size} must be divisible by the {ctx.world_size} processes")
    loaders = make_loaders(args, ctx)
    model, loaded = make_model(args, ctx, precision, weights)
    weights = None  # ``loaded`` keeps the part that is rewound to; free the rest of the file
    session.record(args)
    logits_fn = simclr.make_eval_logits(precision.channels_last)

    def evaluator(eval_model, loader, desc):
        return contrastive_evaluate(eval_model, loader, ctx, precision, logits_fn, desc=desc)

    stage_kwargs = {"step": simclr.make_step(args.temperature, precision.channels_last, args.loss),
                    "evaluator": evaluator}
    # The original's Adam took no weight decay.
    train_cfg = TrainConfig.from_args(args, epochs=args.prun_epoch if args.prun_percent else args.epochs,
                                      momentum=MOMENTUM, optimizer=args.optimizer,
                                      weight_decay=0.0 if args.optimizer == "adam" else args.weight_decay)
    meta = {"arch": args.arch, "dataset": os.path.basename(os.path.normpath(os.path.abspath(args.data))),
            "pretraining": "simclr"}
    if args.prun_percent:
        imp_cfg = ImpConfig(rounds=1 + args.epochs // args.prun_epoch, rate=args.prun_percent,
                            prune_type=args.prune_type or "pt_trans", random_prune=False, conv1=False,
                            seed=args.seed, meta=meta, train_round0=False, files=FILES, rewind_in_checkpoint=True,
                            early_bird=cli.early_bird_config(args))
        imp = ImpRun(model, loaders, train_cfg, imp_cfg, precision, ctx, run, vars(args),
                     strategy=simclr.CheckpointRewind(args.prun_percent), stage_kwargs=stage_kwargs)
        if args.resume:
            imp.resume(checkpoint_path)
        else:
            imp.rewind_weights = loaded  # only what --sim_model provided is ever rewound
            imp.start()
        done = "tickets (ticket_XX.pt), checkpoints, metrics.jsonl and summary.jsonl"
    else:
        train_dense(model, loaders, train_cfg, session, args, meta, stage_kwargs)
        done = f"{DENSE_OUTPUT} (usable as --sim_model), checkpoints and metrics.jsonl"
    if ctx.is_main:
        print(f"done: {done} are in {run.path}")
    distributed.teardown()


def train_dense(model, loaders, cfg, session, args, meta, stage_kwargs) -> None:
    """--prun_percent 0: plain SimCLR training; the final model is written as --sim_model reads it."""
    ctx, precision, run = session.ctx, session.precision, session.run
    progress, optimizer_state, scheduler_state = session.restore(model, DENSE_FORMAT, args)
    extra = {"format": DENSE_FORMAT, "args": vars(args), "seed": args.seed, **meta}
    progress = train_stage(model, loaders, cfg, precision, ctx, run, stage=0, progress=progress, files=FILES,
                           optimizer_state=optimizer_state, scheduler_state=scheduler_state,
                           checkpoint_extra=lambda: extra, remaining=100.0, **stage_kwargs)
    if ctx.is_main:
        atomic_save({"state_dict": pruning.dense_state_dict(model), "epochs": args.epochs,
                     "mlpout": args.mlpout, **meta}, run.file(DENSE_OUTPUT))
        run.log_round(progress.summary_row(0, 100.0))


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
