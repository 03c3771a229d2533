"""Find MoCo v2 pre-training tickets: IMP of both MoCo encoders, rewound to the pre-trained weights each round."""

import os
import sys

import argparse
import hashlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import ImageFilter

from lth import cli, distributed, pruning, validate
from lth.checkpoint import atomic_save, trusted_checkpoints
from lth.contrastive import TwoViews, contrastive_evaluate
from lth.engine import StepResult
from lth.errors import UserError
from lth.imagedata import IMAGENET_MEAN, IMAGENET_STD, image_folder
from lth.loaders import DeviceLoader, Loaders
from lth.imp import ImpConfig, ImpRun, PruneStrategy
from lth.models import ARCHS
from lth.plots import plot_training_curves
from lth.runs import RunDir
from lth.session import check_same_experiment, check_save_dir, open_session
from lth.trainer import StageFiles, TrainConfig, train_stage
from MoCo.builder import MoCo
from MoCo.weights import export_checkpoint, load_moco_weights

DENSE_FORMAT = "lth-moco-dense"
DENSE_FILES = StageFiles(checkpoint="checkpoint.pth.tar", best="model_best.pth.tar")
EXPORT_NAME = "moco_pretrain.pth.tar"
NO_WEIGHTS = ("", "none", "None")
# Flags that define the experiment beyond the trainer's own list; a resume must keep them.
MOCO_IDENTITY = ("retrain_epoch", "prune_percent", "moco_dim", "moco_k", "moco_m", "moco_t", "mlp",
                 "aug_plus", "pretrained_path")


EPILOG = """\
Round 0 only evaluates the pre-trained model and prunes it one-shot; every later round trains
--retrain_epoch epochs at a fixed learning rate, prunes --prune_percent of encoder_q's remaining conv
weights by global magnitude, gives encoder_k the same mask and rewinds both encoders to the
pre-trained encoder_q. The original's command line:

  cd MoCo && CUDA_VISIBLE_DEVICES=0,1,2,3 python -u main_moco_imp.py DIR \\
      --pretrained_path moco_v2_800ep_pretrain.pth.tar -a resnet50 --batch-size 256 \\
      --dist-url 'tcp://127.0.0.1:5234' --multiprocessing-distributed --world-size 1 --rank 0 \\
      --mlp --moco-t 0.2 --aug-plus --cos --epochs 180 --retrain_epoch 10 --save_dir moco_imp

or, with torchrun: torchrun --nproc_per_node 4 MoCo/main_moco_imp.py DIR ... (same flags).
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the flags' help, and the epilog's command line kept as written."""


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__, epilog=EPILOG, formatter_class=_HelpFormatter)
    parser.add_argument("data", metavar="DIR",
                        help="ImageFolder root: DIR/train/<class>/<images> (training) and "
                             "DIR/val/<class>/<images> (the contrastive top-1/5 test)")
    group = parser.add_argument_group("MoCo (the original's flags and defaults)")
    group.add_argument("-a", "--arch", default="resnet50", choices=ARCHS,
                       help="encoder: a torchvision ResNet with the ImageNet stem")
    group.add_argument("--pretrained_path", default="moco_v2_800ep_pretrain.pth.tar",
                       help="weights loaded into both encoders and rewound to after every pruning: "
                            "moco_v2_800ep_pretrain.pth.tar (module.encoder_q.*), moco.pt (plain names) "
                            f"or a file this script wrote ({EXPORT_NAME}); 'none' starts from random init")
    group.add_argument("--epochs", type=int, default=180,
                       help="training epochs in all; IMP prunes every --retrain_epoch of them")
    group.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=256,
                       help="batch size of all processes together (the queue size must be a multiple of it); "
                            + cli.BATCH_HELP + " (the original's -b was per node: the same on one node)")
    group.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=3e-4,
                       help="SGD learning rate, fixed throughout (the original's fix_lr)")
    group.add_argument("--schedule", type=int, nargs="*", default=None,
                       help="accepted for compatibility and ignored: IMP keeps the learning rate fixed "
                            "(so did the original)")
    group.add_argument("--cos", action="store_true",
                       help="accepted for compatibility and ignored: IMP keeps the learning rate fixed "
                            "(so did the original)")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum factor of the query encoder's optimizer")
    group.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4,
                       help="SGD weight decay")
    group.add_argument("--moco-dim", dest="moco_dim", type=int, default=128,
                       help="feature dimension (the output of fc)")
    group.add_argument("--moco-k", dest="moco_k", type=int, default=65536,
                       help="queue size: number of negative keys (a multiple of the global batch)")
    group.add_argument("--moco-m", dest="moco_m", type=float, default=0.999,
                       help="momentum of the key encoder's update")
    group.add_argument("--moco-t", dest="moco_t", type=float, default=0.07,
                       help="softmax temperature (MoCo v2 uses 0.2)")
    group.add_argument("--mlp", action="store_true",
                       help="MoCo v2's 2-layer MLP head (fc.0, ReLU, fc.2) instead of a linear fc")
    group.add_argument("--aug-plus", dest="aug_plus", action="store_true",
                       help="MoCo v2's augmentation (colour jitter p 0.8, grayscale, Gaussian blur) "
                            "instead of MoCo v1's")
    group = parser.add_argument_group("pruning")
    group.add_argument("--retrain_epoch", type=int, default=10,
                       help="epochs trained between two prunings: 1 + --epochs // --retrain_epoch rounds; "
                            "0 disables pruning and trains MoCo densely for --epochs (pre-training from "
                            f"--pretrained_path or from scratch), writing {EXPORT_NAME}")
    group.add_argument("--prune_percent", type=float, default=0.2,
                       help="fraction of the remaining conv weights of encoder_q pruned each time, in (0, 1) "
                            "(fixed at 0.2 in the original)")
    cli.add_lrr_arg(group, "encoder_q's starting weights (--pretrained_path, else the random init)")
    cli.add_early_bird_args(group)
    group.add_argument("--image_size", type=int, default=224,
                       help="side of the random crops both views are made of")
    group = parser.add_argument_group("distributed (the original's flags)")
    group.add_argument("--world-size", dest="world_size", type=int, default=-1,
                       help="number of nodes with --multiprocessing-distributed (-1: one); under torchrun "
                            "its WORLD_SIZE is used")
    group.add_argument("--rank", type=int, default=-1,
                       help="this node's rank with --multiprocessing-distributed (-1: 0); under torchrun "
                            "its RANK is used")
    group.add_argument("--dist-url", dest="dist_url", default="tcp://127.0.0.1:23456",
                       help="tcp://HOST:PORT of the rank-0 node for --multiprocessing-distributed "
                            "(or env:// to use MASTER_ADDR/MASTER_PORT); pass tcp://127.0.0.1:PORT on one machine")
    group.add_argument("--dist-backend", dest="dist_backend", default="nccl",
                       help="accepted for compatibility: NCCL is used on CUDA and gloo on the CPU")
    group.add_argument("--multiprocessing-distributed", dest="multiprocessing_distributed", action="store_true",
                       help="start one process per visible GPU (PyTorch DDP, shuffle-BN across them); on a "
                            "machine without CUDA one CPU process runs")
    group.add_argument("--sync_bn", action="store_true",
                       help="synchronise encoder_q's batch norms across CUDA processes (encoder_k keeps "
                            "shuffle-BN)")
    cli.add_runtime_args(parser, names=cli.EXAMPLES_NAMES, workers=32, resume_path=True)
    parser.set_defaults(print_freq=10)
    return parser


# --------------------------------------------------------------------------------------------
# How the job is laid out over processes
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Launch:
    spawn: int  # processes this command starts itself (0: it runs in this process)
    local: int  # processes on this node, which share -j (-b is shared by all processes)
    world: int  # processes in the whole job


def launch_plan(args) -> Launch:
    """torchrun's layout when it started us, else one process per GPU with
    --multiprocessing-distributed, else this single process."""
    if "WORLD_SIZE" in os.environ:
        world = int(os.environ["WORLD_SIZE"])
        return Launch(0, int(os.environ.get("LOCAL_WORLD_SIZE", world)), world)
    if not args.multiprocessing_distributed:
        return Launch(0, 1, 1)
    gpus = 0 if args.cpu else torch.cuda.device_count()
    nodes = max(args.world_size, 1)
    if gpus == 0:
        if nodes > 1:
            raise UserError("--multiprocessing-distributed over several nodes (--world-size > 1) needs CUDA "
                            "devices; start CPU jobs with torchrun")
        return Launch(0, 1, 1)
    if gpus == 1 and nodes == 1:
        return Launch(0, 1, 1)
    return Launch(gpus, gpus, gpus * nodes)


def dist_address(url: str) -> tuple[str, str]:
    if url.startswith("env://"):
        return os.environ.get("MASTER_ADDR", "127.0.0.1"), os.environ.get("MASTER_PORT", "29500")
    if url.startswith("tcp://"):
        host, _, port = url[len("tcp://"):].rpartition(":")
        if host and port.isdigit():
            return host.strip("[]"), port
    raise UserError(f"--dist-url must be tcp://HOST:PORT or env://, got '{url}'")


def check_args(args, launch: Launch) -> None:
    for flag, value in (("epochs", args.epochs), ("batch-size", args.batch_size),
                        ("moco-dim", args.moco_dim), ("moco-k", args.moco_k)):
        if value < 1:
            raise UserError(f"--{flag} must be at least 1, got {value}")
    validate.check_shared(args)
    if not 0 <= args.retrain_epoch <= args.epochs:
        raise UserError(f"--retrain_epoch must lie in [0, --epochs {args.epochs}], got {args.retrain_epoch}")
    pruning.check_rate(args.prune_percent)
    cli.early_bird_config(args)
    validate.check_fraction("moco-m", args.moco_m)
    validate.check_positive("moco-t", args.moco_t)
    if args.image_size < 32:
        raise UserError(f"--image_size must be at least 32, got {args.image_size}")
    if args.multiprocessing_distributed and args.world_size > 1 and args.rank < 0 and "WORLD_SIZE" not in os.environ:
        raise UserError("--world-size > 1 runs over several nodes: give each node its --rank")
    if args.batch_size % launch.world:
        raise UserError(f"--batch-size {args.batch_size} is the global batch and must divide equally among "
                        f"the {launch.world} processes")
    global_batch = args.batch_size
    if args.moco_k % global_batch:
        raise UserError(f"--moco-k {args.moco_k} must be a multiple of the global batch {global_batch} "
                        f"(--batch-size {args.batch_size} over {launch.world} process(es)): the queue "
                        f"is refilled one global batch at a time")


# --------------------------------------------------------------------------------------------
# Data, model, step
# --------------------------------------------------------------------------------------------

class GaussianBlur:
    """MoCo v2's blur: PIL's ``ImageFilter.GaussianBlur`` with a radius drawn uniformly from ``sigma``.

    The original drew the radius with Python's ``random``; torch's generator is used here, which
    the data loader seeds per (seed, epoch), so runs stay reproducible.
    """

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, image):
        radius = float(torch.empty(()).uniform_(self.sigma[0], self.sigma[1]))
        return image.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma})"


def moco_augmentation(size: int, plus: bool) -> T.Compose:
    """MoCo v2's augmentation (``plus``) or MoCo v1's, ending in ImageNet normalisation."""
    crop = T.RandomResizedCrop(size, scale=(0.2, 1.0))
    finish = [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if plus:
        return T.Compose([crop, T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                          T.RandomGrayscale(p=0.2), T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5), *finish])
    return T.Compose([crop, T.RandomGrayscale(p=0.2), T.ColorJitter(0.4, 0.4, 0.4, 0.4), *finish])


def make_loaders(args, ctx, launch: Launch) -> Loaders:
    transform = TwoViews(moco_augmentation(args.image_size, args.aug_plus))
    train_set = image_folder(args.data, "train", transform)
    val_set = image_folder(args.data, "val", transform)  # the original tests with the training views
    per_process = args.batch_size // launch.world  # check_args made sure it divides
    workers = -(-args.workers // launch.local)
    common = dict(seed=args.seed, ctx=ctx, workers=workers)
    loaders = Loaders(train=DeviceLoader(train_set, per_process, train=True, **common),
                      # The last partial batch is dropped in both, as the original's loaders did.
                      val=DeviceLoader(val_set, per_process, train=False, drop_last=True, **common),
                      test=None, num_classes=len(train_set.classes))
    for split, loader, dataset in (("train", loaders.train, train_set), ("val", loaders.val, val_set)):
        if len(loader) == 0:
            raise UserError(f"{os.path.join(args.data, split)} has {len(dataset)} images, fewer than one "
                            f"batch of {per_process} per process: lower --batch-size")
    return loaders


def make_model(args, ctx, precision, weights: str | None) -> MoCo:
    torch.manual_seed(args.seed)  # encoders and queue start alike on every rank
    model = MoCo(args.arch, args.moco_dim, args.moco_k, args.moco_m, args.moco_t, args.mlp)
    if weights:
        load_moco_weights(model, weights, quiet=not ctx.is_main)
    model = model.to(ctx.device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.sync_bn:
        if ctx.distributed and ctx.device.type == "cuda":
            model.encoder_q = nn.SyncBatchNorm.convert_sync_batchnorm(model.encoder_q)
        elif ctx.is_main:
            print("notice: --sync_bn needs several CUDA processes; ignored", file=sys.stderr)
    return model


def _views(batch, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch[0]  # (B, 2, C, H, W) from TwoViews; the class labels are not used
    views = images[:, 0], images[:, 1]
    if channels_last:
        views = tuple(view.contiguous(memory_format=torch.channels_last) for view in views)
    return views


def moco_step(channels_last: bool):
    def step(model: nn.Module, batch) -> StepResult:
        im_q, im_k = _views(batch, channels_last)
        logits, targets = model(im_q, im_k)
        hits = (logits.detach().argmax(1) == targets).sum()
        return StepResult(F.cross_entropy(logits.float(), targets), hits, targets.size(0))
    return step


def moco_evaluator(ctx, precision):
    """Contrastive top-1/5 on DIR/val: each query against its key and the current queue."""
    def logits_fn(model: nn.Module, batch):
        return model.contrastive_logits(*_views(batch, precision.channels_last))

    def run(model: nn.Module, loader, desc: str) -> dict:
        return contrastive_evaluate(model, loader, ctx, precision, logits_fn, ks=(1, 5), desc=desc)
    return run


# --------------------------------------------------------------------------------------------
# Pruning both encoders
# --------------------------------------------------------------------------------------------

class MocoPruning(PruneStrategy):
    """encoder_q is pruned and makes the ticket; encoder_k takes its mask; both rewind to encoder_q's start."""

    def target(self, model: MoCo) -> nn.Module:
        return model.encoder_q

    def prune(self, model: MoCo, seed: int) -> None:
        super().prune(model, seed)
        pruning.apply_mask(model.encoder_k, pruning.extract_mask(model.encoder_q), conv1=self.conv1)
        model.freeze_key_encoder()

    def rewind(self, model: MoCo, weights: dict) -> None:
        # The rewind point holds the whole model; its encoder_q is the pre-trained query encoder.
        start = {key[len("encoder_q."):]: value for key, value in weights.items() if key.startswith("encoder_q.")}
        for encoder in (model.encoder_q, model.encoder_k):
            pruning.rewind(encoder, start, conv1=self.conv1)
        model.freeze_key_encoder()

    def restore(self, model: MoCo, state_dict: dict) -> None:
        for name in ("encoder_q", "encoder_k"):
            prefix = f"{name}."
            masks = {key[len(prefix):]: value for key, value in state_dict.items()
                     if key.startswith(prefix) and key.endswith(pruning.MASK_SUFFIX)}
            if masks:
                pruning.apply_mask(getattr(model, name), masks, conv1=self.conv1)
        model.freeze_key_encoder()


def mask_digest(masks: dict) -> str:
    """A short fingerprint of a mask dict (equal masks, equal digest), to compare ranks and files."""
    digest = hashlib.sha256()
    for key in sorted(masks):
        digest.update(key.encode())
        digest.update(masks[key].detach().to("cpu").ne(0).to(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Driving
# --------------------------------------------------------------------------------------------

def main(args) -> None:
    launch = launch_plan(args)
    check_args(args, launch)
    _, resume_file = check_save_dir(args.save_dir, args.resume)
    first = os.environ.get("RANK", "0") == "0"
    if first and (args.cos or args.schedule is not None):
        print("notice: --cos/--schedule are accepted for compatibility and ignored: the learning rate "
              f"stays at --lr {args.lr} (as in the original)", file=sys.stderr)
    if args.multiprocessing_distributed and "WORLD_SIZE" not in os.environ and launch.spawn == 0 and first:
        where = "the CPU" if args.cpu or not torch.cuda.is_available() else "the only GPU"
        print(f"notice: --multiprocessing-distributed: running one process on {where}", file=sys.stderr)
    if launch.spawn:
        host, port = dist_address(args.dist_url)
        try:
            torch.multiprocessing.spawn(_spawned, args=(launch, host, port, args, resume_file),
                                        nprocs=launch.spawn)
        except torch.multiprocessing.ProcessExitedException as error:
            sys.exit(error.exit_code or 1)
    else:
        worker(args, launch, resume_file)


def _spawned(local_rank: int, launch: Launch, host: str, port: str, args, resume_file) -> None:
    """One process of --multiprocessing-distributed: torchrun's environment, then the common path."""
    node = max(args.rank, 0)
    os.environ.update(RANK=str(node * launch.local + local_rank), WORLD_SIZE=str(launch.world),
                      LOCAL_RANK=str(local_rank), LOCAL_WORLD_SIZE=str(launch.local),
                      MASTER_ADDR=host, MASTER_PORT=port)
    cli.set_deterministic(args.deterministic)  # a spawned process starts with PyTorch's defaults
    try:
        with trusted_checkpoints(args.trust_checkpoint):  # a fresh interpreter: run_main's setting is lost
            worker(args, launch, resume_file)
    except UserError as error:
        print(f"error: {cli.user_message(error)}", file=sys.stderr)
        sys.exit(error.exit_status)
    except KeyboardInterrupt:
        sys.exit(130)


def worker(args, launch: Launch, resume_file: str | None) -> None:
    weights = None if args.pretrained_path in NO_WEIGHTS else args.pretrained_path
    seed_source = RunDir(os.path.dirname(resume_file) or ".") if resume_file else RunDir(args.save_dir)
    if args.resume:
        check_same_experiment(seed_source, args, MOCO_IDENTITY)
    session = open_session(args, RunDir(args.save_dir), resume_file)
    ctx, run, precision = session.ctx, session.run, session.precision
    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    if ctx.is_main and ctx.distributed and args.dist_backend not in ("nccl", backend):
        # The default (nccl) is silently gloo on the CPU; only an explicit other choice is worth a word.
        print(f"notice: --dist-backend {args.dist_backend} ignored: using {backend}", file=sys.stderr)
    loaders = make_loaders(args, ctx, launch)
    # On resume the checkpoint holds the weights, the masks and the rewind point.
    model = make_model(args, ctx, precision, None if args.resume else weights)
    session.record(args)
    cfg = TrainConfig.from_args(args, epochs=args.retrain_epoch or args.epochs, warmup=0, milestones=[])
    stage_kwargs = dict(step=moco_step(precision.channels_last), evaluator=moco_evaluator(ctx, precision),
                        after_step_factory=lambda _: model.momentum_update)
    if args.retrain_epoch == 0:
        train_dense(model, loaders, cfg, args, session, stage_kwargs)
    else:
        imp_cfg = ImpConfig(rounds=1 + args.epochs // args.retrain_epoch, rate=args.prune_percent,
                            prune_type=args.prune_type or ("pt_trans" if weights else "lt"), random_prune=False,
                            conv1=False, seed=args.seed, train_round0=False, early_bird=cli.early_bird_config(args),
                            meta={"arch": args.arch, "dataset": os.path.basename(os.path.normpath(args.data)),
                                  "pretraining": "moco"}, rewind_in_checkpoint=True)
        if args.epochs % args.retrain_epoch and ctx.is_main:
            print(f"notice: --epochs {args.epochs} is not a multiple of --retrain_epoch {args.retrain_epoch}: "
                  f"{imp_cfg.rounds - 1} rounds train {(imp_cfg.rounds - 1) * args.retrain_epoch} epochs",
                  file=sys.stderr)
        strategy = MocoPruning(args.prune_percent, random=False, conv1=False)
        imp = ImpRun(model, loaders, cfg, imp_cfg, precision, ctx, run, vars(args), strategy=strategy,
                     stage_kwargs=stage_kwargs)
        if args.resume:
            imp.resume(resume_file)
        else:
            imp.start()
        if ctx.distributed:
            # Every rank must end with the ticket rank 0 wrote; print each rank's fingerprint to compare.
            same = all(torch.equal(a, b) for a, b in zip(strategy.masks(model).values(),
                                                          pruning.current_masks(model.encoder_k).values()))
            print(f"rank {ctx.rank}: mask digest {mask_digest(strategy.masks(model))}; encoder_k's mask "
                  f"{'equals' if same else 'DIFFERS from'} encoder_q's", flush=True)
        if ctx.is_main:
            print(f"done: tickets (ticket_XX.pt), checkpoints, metrics.jsonl and summary.jsonl are in {args.save_dir}")
    distributed.teardown()


def train_dense(model, loaders, cfg, args, session, stage_kwargs) -> None:
    """--retrain_epoch 0: dense MoCo training, resumable; the result is written in the released layout."""
    ctx, precision, run = session.ctx, session.precision, session.run
    progress, optimizer_state, scheduler_state = session.restore(model, DENSE_FORMAT, args)
    if args.resume:
        model.freeze_key_encoder()
    extra = {"format": DENSE_FORMAT, "args": vars(args), "arch": args.arch, "seed": args.seed}
    progress = train_stage(model, loaders, cfg, precision, ctx, run, stage=0, files=DENSE_FILES,
                           progress=progress, optimizer_state=optimizer_state, scheduler_state=scheduler_state,
                           checkpoint_extra=lambda: extra, remaining=100.0, **stage_kwargs)
    if ctx.is_main:
        run.log_round(progress.summary_row(0, 100.0))
        plot_training_curves(progress.history, run.file("net_train.png"), title="dense MoCo training")
        atomic_save(export_checkpoint(model, epoch=progress.next_epoch), run.file(EXPORT_NAME))
        print(f"done: {run.file(EXPORT_NAME)} holds the trained MoCo model; pass it as --pretrained_path "
              f"here or as --pretrained to main_eval_downstream.py")


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
