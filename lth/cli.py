"""Command-line plumbing shared by the entry scripts: one-line errors and the common flag groups."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Callable, Mapping, Sequence

from lth import validate
from lth.checkpoint import trusted_checkpoints
from lth.errors import UserError

# Extra option strings of the original ImageNet/VisDA/MoCo scripts (pytorch/examples style), by dest;
# pass as ``names`` to the flag groups so that their command lines keep working.
EXAMPLES_NAMES = {"batch_size": ("-b", "--batch-size"), "lr": ("--learning-rate",),
                  "weight_decay": ("--wd", "--weight-decay"), "print_freq": ("-p", "--print-freq")}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults shown in ``--help`` and errors on one line (exit status 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_main(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
             argv: list[str] | None = None) -> None:
    """Parse, run, and turn a ``UserError`` into ``error: ...`` on stderr with exit status 2 (3 for a
    run that diverged, ``TrainingDiverged``)."""
    args = parser.parse_args(argv)
    try:
        set_deterministic(getattr(args, "deterministic", False))
        with trusted_checkpoints(getattr(args, "trust_checkpoint", False)):
            main(args)
    except UserError as error:
        print(f"error: {user_message(error)}", file=sys.stderr)
        sys.exit(error.exit_status)
    except OSError as error:
        if error.errno not in SYSTEM_ERRNOS:
            raise
        # A write the system refused where no reader or writer of ours turned it into a UserError
        # (a plot, a prediction image): still one line, naming the file.
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        sys.exit(UserError.exit_status)
    except KeyboardInterrupt:
        print("interrupted: the last completed epoch's checkpoint is intact; continue with --resume",
              file=sys.stderr)
        sys.exit(130)


# What the system says when it cannot read or write a file: not a bug of the toolkit.
SYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                 errno.EISDIR, errno.EIO, errno.ENAMETOOLONG, errno.ENOENT}


def os_error_message(error: OSError) -> str:
    where = f"'{error.filename}'" if error.filename else "a file"
    return (f"cannot access {where}: {error.strerror or error}; the last checkpoint written, if any, "
            f"is intact (continue with --resume once the cause is fixed)")


def user_message(error: UserError) -> str:
    """The error's one line; one raised in a DataLoader worker (a bad file found when read) arrives
    re-raised with the worker's traceback, whose last line holds the message."""
    text = str(error)
    if text.startswith("Caught UserError in DataLoader worker"):
        last = text.strip().splitlines()[-1]
        return last.split("UserError: ", 1)[1] if "UserError: " in last else last
    return text


def milestones(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 91,136, got '{text}'")


def optional_int(text: str) -> int | None:
    if text in ("", "None", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'")


def add_data_args(parser: argparse.ArgumentParser, datasets: list[str], default: str) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="../data",
                       help="folder holding the data set in torchvision's on-disk layout "
                            "(ignored for the built-in digits set)")
    group.add_argument("--dataset", default=default, choices=datasets,
                       help="which data set; 'digits' is scikit-learn's 8x8 handwritten digits, "
                            "shipped inside the package (no files needed)")
    group.add_argument("--download", action="store_true",
                       help="let torchvision download the data set into --data if it is missing "
                            "(never done otherwise)")


DETERMINISTIC_HELP = (
    "CUDA only: make cuDNN pick deterministic convolution algorithms (cudnn.deterministic on, "
    "cudnn.benchmark off) and PyTorch use its deterministic kernels where it has them (others "
    "warn), as the original set when given a seed, so that the same seed gives the same masks "
    "on a GPU too. Cost: only deterministic algorithms may then be chosen for convolutions, "
    "scatter/index ops and cuBLAS (a fixed workspace), which are often slower; by how much depends "
    "on the GPU and model (not measured here). On a CPU runs are deterministic without it")


def set_deterministic(enabled: bool) -> None:
    """--deterministic: deterministic cuDNN and PyTorch kernels (a no-op when not ``enabled``).

    The cuBLAS workspace setting must precede the first CUDA matrix product; ``run_main`` calls
    this before the script's ``main``. Ops without a deterministic kernel warn instead of failing
    (``warn_only``), so no run stops because of the flag.
    """
    if not enabled:
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def add_speed_args(group) -> None:
    """--precision, --channels_last, --compile and --deterministic: how fast the math runs (never what
    it computes on CPU)."""
    group.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                       help="training math; auto: bf16 autocast on CUDA, fp32 on CPU (run.json and summary "
                            "rows record which trained the model)")
    group.add_argument("--eval_precision", default="fp32", choices=["fp32", "bf16"],
                       help="evaluation math; fp32 (default, as the original scored): bf16 moves scores, e.g. "
                            "detection box sizes by up to ~2 %% and so AP at IoU 0.90/0.95")
    group.add_argument("--channels_last", default="auto", choices=["auto", "on", "off"],
                       help="memory layout of activations; auto: on for CUDA, off on CPU")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the model (recompiled once per round, after re-pruning)")
    group.add_argument("--deterministic", action="store_true", help=DETERMINISTIC_HELP)


def add_trust_arg(group) -> None:
    """--trust_checkpoint: the one way to load a checkpoint that holds arbitrary Python objects."""
    group.add_argument("--trust_checkpoint", action="store_true",
                       help="load every checkpoint, weight and mask file in full even when it holds "
                            "Python objects besides tensors, numbers, argparse.Namespace and numpy "
                            "scalars; unpickling such a file can run any code in it, so only pass "
                            "this for files you trust (without it they are refused)")


def add_ticket_args(parser: argparse.ArgumentParser, weights_note: str = "") -> argparse._ArgumentGroup:
    """--pretrained, --dict_key, --mask_dir and --reverse_mask: what a ticket is made of.

    Returns the group so that a script can add its own ticket flags to it.
    """
    group = parser.add_argument_group("ticket")
    group.add_argument("--pretrained", default=None,
                       help="weights to start from (torchvision state_dict, simclr_weight.pt, moco.pt, "
                            f"MoCo v2 checkpoint, or an IMP checkpoint){weights_note}; random init when omitted")
    group.add_argument("--dict_key", default=None,
                       help="entry of the --pretrained file holding the weights; 'None' uses the whole "
                            "file (default: 'state_dict' when present, else the whole file)")
    group.add_argument("--mask_dir", default=None,
                       help="the ticket's mask: a ticket_XX.pt (from any IMP script), an IMP checkpoint "
                            "({round}model_SA_best.pth.tar, {round}model_best.pth.tar, MoCo/SimCLR "
                            "checkpoints) or a {layer.weight_mask: tensor} file; dense training when omitted")
    group.add_argument("--reverse_mask", action="store_true",
                       help="train the complement of the mask (1 - mask): the reversed-mask control")
    return group


def add_model_args(parser: argparse.ArgumentParser, archs: tuple[str, ...], conv1_loads: bool = True) -> None:
    """--arch, --conv1, --fc; ``conv1_loads=False`` where --conv1 only masks conv1 (the eval script)."""
    group = parser.add_argument_group("model")
    group.add_argument("--arch", default="resnet50", choices=archs,
                       help="ResNet depth (torchvision definition with the CIFAR 3x3 stem, no max-pool)")
    group.add_argument("--conv1", action="store_true",
                       help="also prune the stem conv1 and load it from pre-trained weights "
                            "(by default it stays dense and keeps its random init)" if conv1_loads else
                       "also mask the stem conv1 (its weights come from --pretrained only with --load_all, "
                       "as in the original; by default it stays dense)")
    group.add_argument("--fc", action="store_true",
                       help="also load the classifier fc from pre-trained weights (needs the same "
                            "number of classes)")


def _names(flag: str, names: Mapping[str, Sequence[str]] | None) -> list[str]:
    """``flag`` plus the extra option strings ``names`` gives for its dest (originals' spellings);
    short ones first, so that usage lines read like the original's (``-b``), then ``flag``."""
    extra = list((names or {}).get(flag.lstrip("-"), ()))
    return [*(name for name in extra if not name.startswith("--")), flag,
            *(name for name in extra if name.startswith("--"))]


BATCH_HELP = ("under torchrun the global batch: each of the N processes takes 1/N of it (a batch that does "
              "not divide is refused), so the run is the experiment one process runs, as the originals' "
              "single process with DataParallel did")


def add_optim_args(parser: argparse.ArgumentParser, batch_size: int,
                   names: Mapping[str, Sequence[str]] | None = None) -> None:
    """The optimisation flags; ``names`` adds option strings by dest (e.g. ``EXAMPLES_NAMES``)."""
    group = parser.add_argument_group("optimisation (the original's defaults)")
    group.add_argument(*_names("--batch_size", names), dest="batch_size", type=int, default=batch_size,
                       help="training batch size; " + BATCH_HELP)
    group.add_argument("--eval_batch_size", type=int, default=None,
                       help="evaluation batch size, global as --batch_size (default: 4x --batch_size; no "
                            "gradients are kept)")
    group.add_argument(*_names("--lr", names), dest="lr", type=float, default=0.1,
                       help="initial learning rate of SGD")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum factor (0 for plain SGD)")
    group.add_argument(*_names("--weight_decay", names), dest="weight_decay", type=float, default=2e-4,
                       help="SGD weight decay")
    group.add_argument("--epochs", type=int, default=182, help="training epochs per round")
    group.add_argument("--warmup", type=int, default=1,
                       help="epochs of linear per-step learning-rate warm-up at the start of each round")
    group.add_argument("--decreasing_lr", type=milestones, default=milestones("91,136"),
                       help="epochs at which the learning rate is multiplied by 0.1")


def add_early_bird_args(group) -> None:
    """--early_bird, --early_bird_sparsity, --eb_threshold and --eb_window: early-bird tickets
    (You et al., ICLR 2020; ``lth.earlybird``), for every IMP script. ``early_bird_config`` reads them."""
    group.add_argument("--early_bird", action="store_true",
                       help="early-bird stop in every round: a round trains only until the magnitude mask of "
                            "its prune has settled (see --eb_threshold, --eb_window), then prunes; its summary "
                            "row reports the network as trained so far (early_stopped: true)")
    group.add_argument("--early_bird_sparsity", type=float, default=None, metavar="S",
                       help="find the ticket at sparsity S (share of the pruned convs' weights removed, e.g. "
                            "0.9) in one round: round 0 trains the dense network only until its magnitude mask "
                            "at S has settled, the first prune goes straight to S, and the next round trains "
                            "the ticket (from the --prune_type's rewind point); later rounds prune the usual rate")
    group.add_argument("--eb_threshold", type=float, default=0.1,
                       help="early-bird: the ticket has emerged when the normalised Hamming distance between "
                            "the newest mask and each of the --eb_window - 1 masks before it is at most this "
                            "(the paper's 0.1); masks are drawn at the round's start and at each evaluation")
    group.add_argument("--eb_window", type=int, default=5,
                       help="early-bird: masks compared (the paper's 5: the earliest stop is after 4 epochs)")


def early_bird_config(args: argparse.Namespace):
    """The ``EarlyBirdConfig`` of the --early_bird flags, or None when neither mode is asked for;
    a bad value is a ``UserError`` (call it among a script's argument checks)."""
    from lth.earlybird import EarlyBirdConfig

    if not args.early_bird and args.early_bird_sparsity is None:
        return None
    if getattr(args, "random_prune", False):
        raise UserError("--early_bird waits for the magnitude mask to settle, but --random_prune draws masks "
                        "that do not depend on training: drop one of the two")
    return EarlyBirdConfig(threshold=args.eb_threshold, window=args.eb_window,
                           sparsity=args.early_bird_sparsity, every_round=args.early_bird)


LRR_HELP = ("lrr: learning-rate rewinding (Renda et al., ICLR 2020): after each prune keep the trained "
            "weights and replay the learning-rate schedule from its start, instead of rewinding the weights")


def add_lrr_arg(group, rewind_rule: str) -> None:
    """--prune_type lrr for an IMP script whose rewind target is fixed (``rewind_rule`` says what it is)."""
    group.add_argument("--prune_type", default=None, choices=["lrr"],
                       help=f"{LRR_HELP}; by default every round rewinds to {rewind_rule}")


def add_iteration_args(parser: argparse.ArgumentParser, total_itrs: int, val_interval: int,
                       lr_policies: Sequence[str] = ("poly", "multistep", "cosine")) -> argparse._ArgumentGroup:
    """--total_itrs, --val_interval and --lr_policy: training counted in iterations (DeepLab's way).

    ``TrainConfig.from_args`` reads them. Returns the group so that a script can add its own flags.
    """
    group = parser.add_argument_group("iterations")
    group.add_argument("--total_itrs", type=int, default=total_itrs,
                       help="optimizer steps per round (the data loop restarts as often as needed)")
    group.add_argument("--val_interval", type=int, default=val_interval,
                       help="evaluate, log and checkpoint every this many iterations (and after the last)")
    group.add_argument("--lr_policy", default=lr_policies[0], choices=list(lr_policies),
                       help="poly: lr x (1 - itr/total_itrs)^0.9; multistep: x0.1 at each milestone "
                            "iteration; cosine: half a cosine to 0")
    return group


def add_runtime_args(parser: argparse.ArgumentParser, names: Mapping[str, Sequence[str]] | None = None,
                     workers: int | None = None, save_dir: str | None = None,
                     resume_path: bool = False) -> None:
    """The run flags. ``names`` adds option strings by dest; ``workers`` (image-file data sets) is
    the default of -j, which then starts loader processes; ``save_dir`` makes --save_dir optional
    with that default; ``resume_path`` also accepts the originals' ``--resume PATH``."""
    group = parser.add_argument_group("run")
    group.add_argument("--save_dir", default=save_dir, required=save_dir is None,
                       help="folder for checkpoints, tickets, metrics.jsonl and plots; must not "
                            "hold another run unless --resume")
    if resume_path:
        group.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                           help="continue the run in --save_dir from its latest checkpoint, or from "
                                "checkpoint PATH (the original's form)")
    else:
        group.add_argument("--resume", action="store_true",
                           help="continue the run in --save_dir from its latest checkpoint")
    group.add_argument(*_names("--seed", names), dest="seed", type=optional_int, default=None,
                       help="random seed (0 is a valid seed); without it a seed is drawn and recorded")
    group.add_argument(*_names("--gpu", names), dest="gpu", default="0",
                       help="CUDA device number for a single-process run (ignored on a CPU-only "
                            "machine and under torchrun, where each process takes LOCAL_RANK)")
    group.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    group.add_argument(*_names("--print_freq", names), dest="print_freq", type=int, default=50,
                       help="update the progress bar's loss/accuracy every this many steps")
    add_speed_args(group)
    add_trust_arg(group)
    if workers is None:
        group.add_argument("--workers", "-j", type=int, default=0,
                           help="accepted for compatibility; small data sets live in memory and need no workers")
    else:
        group.add_argument("--workers", "-j", type=int, default=workers,
                           help="processes that read and augment images (0: in the main process)")


def check_common(args: argparse.Namespace) -> None:
    """Value checks that argparse's types cannot express."""
    for name in ("batch_size", "epochs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        raise UserError(f"--eval_batch_size must be at least 1, got {args.eval_batch_size}")
    validate.check_shared(args)


def check_save_dir(run, resume: bool | str) -> str | None:
    """Check ``run`` (a RunDir) for a fresh start or a resume; returns the file of ``--resume PATH``.

    A bare ``--resume`` needs a checkpoint in --save_dir; ``--resume PATH`` needs only the file (the
    run then continues in --save_dir, which may be new).
    """
    if isinstance(resume, str):
        if not os.path.isfile(resume):
            raise UserError(f"--resume: checkpoint file '{resume}' does not exist")
        run.check_location()
        return resume
    run.check(bool(resume))
    return None
