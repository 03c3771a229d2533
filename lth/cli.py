"""Command-line plumbing shared by the entry scripts: one-line errors, flag types and value checks.

The flags themselves are generated from each task's typed hparams (lth.hparams)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Callable

from lth import validate
from lth.checkpoint import trusted_checkpoints
from lth.errors import UserError


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
