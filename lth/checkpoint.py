"""Reading and writing files safely: atomic saves, checkpoint loading with clear errors, run records."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import platform
import re
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


@contextlib.contextmanager
def locked(path: str):
    """Hold an exclusive lock on ``path``'s companion ``.lock`` file (a read-modify-write of a file
    that parallel jobs of a sweep share); a no-op where the OS has no ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # Windows: sweeps run their jobs one at a time there
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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


# What a checkpoint may hold besides tensors and plain containers, and nothing more: numpy number
# scalars (the original's segmentation and detection scripts save best mIoU/mAP as numpy.float64)
# with the ``numpy.dtype`` (and its class) they are rebuilt with, and ``argparse.Namespace`` (the
# ``args`` many training scripts save beside the weights).
# numpy 1.x (the original pinned 1.17) writes the scalar's module as ``numpy.core.multiarray``,
# numpy 2 as ``numpy._core.multiarray``: both names are listed. Everything else (collections'
# OrderedDict/Counter, torch.Size, dtypes, optimizer and scheduler state) is already allowed by
# ``weights_only=True`` itself.
TRUST_FLAG = "--trust_checkpoint"
_NUMPY_SCALAR_TYPES = ("bool", "int8", "int16", "int32", "int64", "longlong", "uint8", "uint16", "uint32",
                       "uint64", "ulonglong", "float16", "float32", "float64")
_trusted = False


def _safe_globals() -> list:
    import argparse

    import numpy

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    # A scalar is rebuilt from its dtype, whose class (numpy.dtypes.Float64DType, ...) must be
    # allowed too: those of booleans, integers and floats, the numbers a training script computes.
    dtype_classes = {type(numpy.dtype(name)) for name in _NUMPY_SCALAR_TYPES}
    return [argparse.Namespace, numpy.dtype, *sorted(dtype_classes, key=str),
            (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]


def safe_global_names() -> list[str]:
    """The fully qualified names of the extra globals a checkpoint may hold (for docs and tests)."""
    return [entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
            for entry in _safe_globals()]


@contextlib.contextmanager
def trusted_checkpoints(enabled: bool = True):
    """Inside the block ``load_file`` also fully loads files holding other Python objects
    (``--trust_checkpoint``: unpickling such a file can run any code it contains)."""
    global _trusted
    before = _trusted
    _trusted = bool(enabled) or before
    try:
        yield
    finally:
        _trusted = before


def load_file(path: str, what: str = "checkpoint", trust: bool | None = None) -> Any:
    """``torch.load`` on CPU, turning every way a file can be wrong into a one-line ``UserError``.

    Files are read with ``weights_only=True`` plus the few globals listed above, so that loading
    a file cannot run code. A file that wants any other global is refused, naming the global and
    the ``--trust_checkpoint`` flag; with ``trust`` (default: inside ``trusted_checkpoints``) it is
    loaded in full instead, with a notice.
    """
    if not path:
        raise UserError(f"no {what} file given")
    if not os.path.isfile(path):
        raise UserError(f"{what} file '{path}' does not exist")
    if os.path.getsize(path) == 0:
        raise UserError(f"{what} file '{path}' is empty")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise UserError(f"cannot read {what} file '{path}': not a PyTorch file or corrupt "
                            f"({_first_line(error)})") from None
        wanted = _unsafe_global(error, path)
        refused = error
    except Exception as error:  # noqa: BLE001 - corrupt bytes fail in many ways (KeyError, IndexError)
        raise UserError(f"cannot read {what} file '{path}': truncated, corrupt or not a PyTorch "
                        f"file ({_first_line(error)})") from None
    if not (_trusted if trust is None else trust):
        if wanted is None:  # a pickle instruction weights-only loading lacks, or plain garbage
            raise UserError(f"cannot read {what} file '{path}': not a PyTorch file, corrupt, or a pickle "
                            f"that safe loading cannot read ({_weights_only_reason(refused)}); if you "
                            f"trust this file, pass {TRUST_FLAG} to load it fully")
        raise UserError(f"refusing to load {what} file '{path}': it holds the Python object "
                        f"'{wanted}', and loading it could run code; if you trust this file, pass "
                        f"{TRUST_FLAG} to load it fully")
    print(f"notice: {TRUST_FLAG}: loading {what} file '{path}' fully"
          + (f" (it holds '{wanted}')" if wanted else ""), file=sys.stderr)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure here means the file is unusable
        raise UserError(f"cannot read {what} file '{path}': {_first_line(error)}") from None


def _unsafe_global(error: pickle.UnpicklingError, path: str) -> str | None:
    """The global (function or class) a weights-only load refused, or None when none is named."""
    text = str(error)
    match = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"but got <class '([\w.]+)'>", text)
    if match:
        return match.group(1)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - only a better message is at stake
        names = []
    names = [name for name in names if name not in safe_global_names()]
    return names[0] if names else None


def _weights_only_reason(error: pickle.UnpicklingError) -> str:
    """The line of PyTorch's long weights-only message that says what went wrong."""
    text = str(error)
    tail = text.split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[0][:200] if lines and "WeightsUnpickler error:" in text else _first_line(error)


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
    """Write ``obj`` as strict JSON (see ``json_text``), atomically."""
    atomic_write_text(json_text(obj, indent=2) + "\n", path)


def append_jsonl(obj: dict, path: str) -> None:
    """Append ``obj`` as one strict JSON line."""
    with open(path, "a") as handle:
        handle.write(json_text(obj) + "\n")


def jsonl_text(rows: list[dict]) -> str:
    """Rows as strict JSON lines (for rewriting a whole ``.jsonl`` file)."""
    return "".join(json_text(row) + "\n" for row in rows)


def json_text(obj: Any, indent: int | None = None) -> str:
    """``obj`` as strict JSON that every parser accepts: NaN and infinities (a figure of a split a
    task does not have, the accuracy of a class absent from validation) become ``null`` at any
    depth; tensors and numpy values become numbers or lists; other objects their ``str``."""
    return json.dumps(to_json_value(obj), indent=indent, sort_keys=indent is not None, allow_nan=False)


def to_json_value(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively, in JSON's own types."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return {_json_key(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if isinstance(value, torch.Tensor):
        return to_json_value(value.item() if value.numel() == 1 else value.tolist())
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":  # numpy scalars and arrays
        return to_json_value(value.tolist())
    return str(value)


def _json_key(key: Any) -> str:
    """Keys as JSON writes them (``1`` -> ``"1"``, ``None`` -> ``"null"``), so that mixed keys sort."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(to_json_value(key))
    return str(key)


def read_jsonl(path: str) -> list[dict]:
    """The rows of a ``.jsonl`` file (``null`` where a figure was NaN; older files' bare NaN read too)."""
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]
