"""Reading and writing files safely: atomic saves, checkpoint loading with clear errors, run records."""

from __future__ import annotations

import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
from typing import Any

import torch

from lth.errors import UserError

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    A kill or a full disk mid-write leaves the previous file intact instead of a corrupt one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(text: str, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _publish(tmp: str, path: str) -> None:
    """Give the finished temp file the usual permissions (mkstemp makes it 0600) and move it in."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def load_file(path: str, what: str = "checkpoint") -> Any:
    """``torch.load`` on CPU, turning every way a file can be wrong into a one-line ``UserError``.

    Files are first read with ``weights_only=True``; a file that also pickles Python objects (as
    some released checkpoints do) is then read in full, with a notice, since users pass files
    they downloaded themselves.
    """
    if not path:
        raise UserError(f"no {what} file given")
    if not os.path.isfile(path):
        raise UserError(f"{what} file '{path}' does not exist")
    if os.path.getsize(path) == 0:
        raise UserError(f"{what} file '{path}' is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error) and "Weights only load failed" not in str(error):
            raise UserError(f"cannot read {what} file '{path}': not a PyTorch file or corrupt "
                            f"({_first_line(error)})") from None
    except Exception as error:  # noqa: BLE001 - corrupt bytes fail in many ways (KeyError, IndexError)
        raise UserError(f"cannot read {what} file '{path}': truncated, corrupt or not a PyTorch "
                        f"file ({_first_line(error)})") from None
    print(f"notice: {what} file '{path}' holds Python objects besides tensors; loading it fully "
          f"(only pass files you trust)", file=sys.stderr)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure here means the file is unusable
        raise UserError(f"cannot read {what} file '{path}': {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def code_version() -> str:
    """The git commit of this checkout (with ``+dirty`` when it has local changes), or 'unknown'."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=_REPO_ROOT,
                                capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


def library_versions() -> dict[str, str]:
    import numpy
    import torchvision

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": numpy.__version__}
    if torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
        versions["gpu"] = torch.cuda.get_device_name()
    return versions


def run_record(args: dict) -> dict:
    """What makes a run reproducible: its arguments, command line, code and library versions."""
    return {"args": args, "argv": sys.argv, "code_version": code_version(),
            "versions": library_versions(), "host": platform.node()}


def write_json(obj: Any, path: str) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def append_jsonl(obj: dict, path: str) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(obj, default=_json_default) + "\n")


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return str(value)
