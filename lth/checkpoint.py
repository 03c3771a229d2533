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


TEMP_PREFIX = ".tmp-"  # what an interrupted atomic write leaves behind (``remove_stale_temp_files``)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    A kill or a full disk mid-write leaves the previous file intact instead of a corrupt one; a
    write the system refuses (full disk, read-only or missing folder) is a one-line ``UserError``.
    """
    def write(handle) -> None:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    _atomic_write(path, "wb", write, suffix=".pt")


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
    _atomic_write(path, "w", lambda handle: handle.write(text))


def _atomic_write(path: str, mode: str, write, suffix: str = "") -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=directory)
        with os.fdopen(fd, mode) as handle:
            write(handle)
        _publish(tmp, path)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        reason = _os_reason(error)
        if reason is None:
            raise
        raise UserError(f"cannot write '{path}': {reason}; the previous version of the file, if any, "
                        f"is intact") from None


def _os_reason(error: BaseException) -> str | None:
    """What the system said when refusing a write (torch.save re-raises OSError as RuntimeError),
    or None for any other failure (a bug, an interrupt), which is raised as it is."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    text = str(error)
    if isinstance(error, RuntimeError) and ("errno" in text.lower() or "No space left" in text
                                            or "file write failed" in text or "Read-only" in text):
        return _first_line(error)
    return None


def remove_stale_temp_files(directory: str) -> list[str]:
    """Delete what interrupted atomic writes left in ``directory`` (a killed checkpoint write leaves
    a partial copy as large as the checkpoint); returns their names. Call it only where no other
    process is writing (a run's own folder, once its resume has been accepted)."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith(TEMP_PREFIX) and os.path.isfile(path) and not os.path.islink(path):
            try:
                size = os.path.getsize(path)
                os.remove(path)
            except OSError:
                continue
            removed.append(f"{name} ({size / 2**20:.1f} MB)")
    return removed


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
    # Both are given through checked wrappers: ``numpy.dtype("S2000000000")`` and a scalar of it
    # built without data would make a 441-byte file allocate 2 GB.
    dtype_classes = {type(numpy.dtype(name)) for name in _NUMPY_SCALAR_TYPES}

    def checked_scalar(dtype, *data):
        _check_numeric_dtype(dtype)
        if len(data) != 1 or not isinstance(data[0], bytes) or len(data[0]) != dtype.itemsize:
            raise pickle.UnpicklingError(f"a numpy {dtype} scalar needs exactly {dtype.itemsize} bytes of data")
        return scalar(dtype, data[0])

    def checked_dtype(spec, *flags):
        return _check_numeric_dtype(numpy.dtype(spec, *flags))

    return [argparse.Namespace, (checked_dtype, "numpy.dtype"), *sorted(dtype_classes, key=str),
            (checked_scalar, "numpy.core.multiarray.scalar"), (checked_scalar, "numpy._core.multiarray.scalar")]


def _check_numeric_dtype(dtype):
    """Booleans, integers and floats of at most 16 bytes: the numbers a training script saves."""
    import numpy

    if not isinstance(dtype, numpy.dtype) or dtype.kind not in "biuf" or dtype.itemsize > 16 \
            or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"numpy dtype {dtype!r} is not a plain number type")
    return dtype


# A checkpoint may make its loader allocate at most this much more than its size on disk: stored
# tensors take their size in the file; views that share storage (tied weights, the same tensor
# under two keys) count once per view. Zero-stride tensors and deflated zip records that claim
# gigabytes from a few hundred bytes are refused before they are materialised.
ALLOC_FACTOR = 4
ALLOC_SLACK = 64 * 2**20


def allocation_budget(file_size: int) -> int:
    return ALLOC_FACTOR * file_size + ALLOC_SLACK


class _TooLarge(Exception):
    """Raised inside a load when the file asks for more memory than ``allocation_budget``."""


def _check_zip_records(path: str, size: int) -> int | None:
    """The bytes a zip checkpoint's records declare once decompressed, when over the budget."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None  # torch.load names what is wrong with it
    return declared if declared > allocation_budget(size) else None


def _loaded_bytes(obj: Any) -> int:
    """Memory the loaded objects address: every tensor view's numel x element size (a zero-stride
    view of one byte counts its whole shape: that is what ``.float()`` or ``.clone()`` costs), and
    every bytes/str. Shared objects count once."""
    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, (bytes, bytearray, str)):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            stack.extend(vars(item).values())
    return total


@contextlib.contextmanager
def _bounded_bytearray(budget: int):
    """torch's own allow-list has ``bytearray``, and ``bytearray(10**10)`` from a tiny file
    allocates 10 GB; within the block it refuses sizes over ``budget``."""
    import torch._weights_only_unpickler as unpickler

    try:
        allowed = unpickler._get_allowed_globals()
    except AttributeError:  # another torch: its allow-list is left as it is
        yield
        return
    original = allowed.get("builtins.bytearray")

    def checked(*args):
        if args and isinstance(args[0], int) and args[0] > budget:
            raise _TooLarge(args[0])
        return bytearray(*args)

    if original is not None:
        allowed["builtins.bytearray"] = checked
    try:
        yield
    finally:
        if original is not None:
            allowed["builtins.bytearray"] = original


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
    size = os.path.getsize(path)
    if size == 0:
        raise UserError(f"{what} file '{path}' is empty")
    declared = _check_zip_records(path, size)
    if declared is not None:
        raise _too_large(what, path, size, declared)
    try:
        with torch.serialization.safe_globals(_safe_globals()), _bounded_bytearray(allocation_budget(size)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        loaded = _loaded_bytes(obj)
        if loaded > allocation_budget(size):
            raise _too_large(what, path, size, loaded)
        return obj
    except _TooLarge as error:
        raise _too_large(what, path, size, int(error.args[0])) from None
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise UserError(f"cannot read {what} file '{path}': not a PyTorch file or corrupt "
                            f"({_first_line(error)})") from None
        wanted = _unsafe_global(error, path)
        refused = error
    except UserError:
        raise
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


def _too_large(what: str, path: str, size: int, wanted: int) -> UserError:
    return UserError(f"refusing to load {what} file '{path}': its {size:,} bytes would take "
                     f"{wanted / 2**20:,.0f} MB of memory (at most {ALLOC_FACTOR}x the file size + "
                     f"{ALLOC_SLACK // 2**20} MB is allowed): a corrupt or crafted file")


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
    """Append ``obj`` as one strict JSON line, after dropping a half-written last line (a run
    killed mid-append leaves one), which would otherwise merge with this one."""
    line = json_text(obj) + "\n"
    try:
        prefix = _repair_tail(path)
        with open(path, "a") as handle:
            handle.write(prefix + line)
    except OSError as error:
        raise UserError(f"cannot write '{path}': {error.strerror or error}") from None


def _repair_tail(path: str) -> str:
    """Make ``path`` end at a line break: a complete last line without one gets it (returned, to be
    written first); an incomplete one is cut off, with a notice."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return ""
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return ""
        handle.seek(0)
        text = handle.read()  # a log of JSON lines: small
        cut = text.rfind(b"\n")
        if _parses(text[cut + 1:]):
            return "\n"
        handle.truncate(cut + 1)
    _notice_partial(path)
    return ""


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


_NOTICED: set[str] = set()


def _notice_partial(path: str) -> None:
    key = os.path.abspath(path)
    if key not in _NOTICED:
        _NOTICED.add(key)
        print(f"notice: the last line of '{path}' was half-written (the run stopped while writing it); "
              f"it is dropped", file=sys.stderr)


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
    """The rows of a ``.jsonl`` file (``null`` where a figure was NaN; older files' bare NaN read too).

    A half-written last line (a run killed mid-append) is left out with a notice; any other line
    that is not a JSON object is a one-line ``UserError`` naming the file and line.
    """
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().split("\n")
    except OSError as error:
        raise UserError(f"cannot read '{path}': {error.strerror or error}") from None
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    rows = []
    for index, (number, line) in enumerate(numbered):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif index == len(numbered) - 1:
            _notice_partial(path)  # the last line: cut short by a kill while it was appended
        else:
            raise UserError(f"'{path}' line {number} is not a JSON object: the file is damaged; "
                            f"remove that line to continue")
    return rows
