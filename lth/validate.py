"""Range checks of flag values, one function per concept, each raising a one-line ``UserError``.

argparse checks types; these check meaning (a NaN learning rate, a negative weight decay, a seed
the random generators cannot take). ``SHARED_CHECKS`` maps the flags several scripts share to
their check; ``check_shared(args)`` applies it to the flags a script has, and each script's own
``check_args`` calls the single functions for its own flags.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Iterable

from lth.errors import UserError

# numpy's legacy seeding and CUDA's take seeds below 2**32; the loaders multiply the seed by about
# 1e6 into torch's 64-bit generator seed, which 2**32 * 1e6 still fits.
SEED_LIMIT = 2**32


def flag(name: str) -> str:
    return name if name.startswith("-") else f"--{name}"


def check_finite(name: str, value: float) -> float:
    if value is None or not math.isfinite(float(value)):
        raise UserError(f"{flag(name)} must be a finite number, got {value}")
    return value


def check_positive(name: str, value: float) -> float:
    check_finite(name, value)
    if value <= 0:
        raise UserError(f"{flag(name)} must be positive, got {value}")
    return value


def check_nonneg(name: str, value: float) -> float:
    check_finite(name, value)
    if value < 0:
        raise UserError(f"{flag(name)} must not be negative, got {value}")
    return value


def check_at_least(name: str, value: int, minimum: int) -> int:
    if value is None or value < minimum:
        raise UserError(f"{flag(name)} must be at least {minimum}, got {value}")
    return value


def check_fraction(name: str, value: float) -> float:
    """A share or a threshold on scores that lie in [0, 1] (confidences, IoUs, momenta)."""
    check_finite(name, value)
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{flag(name)} must lie in [0, 1], got {value}")
    return value


def check_momentum(name: str, value: float) -> float:
    """SGD momentum: 0 (plain SGD) up to, not including, 1 (at 1 the velocity never decays)."""
    check_finite(name, value)
    if not 0.0 <= value < 1.0:
        raise UserError(f"{flag(name)} must lie in [0, 1), got {value}")
    return value


def check_seed(name: str, value: int | None) -> int | None:
    """None (a seed is drawn) or an integer in [0, 2**32)."""
    if value is not None and not 0 <= value < SEED_LIMIT:
        raise UserError(f"{flag(name)} must lie in [0, 2**32 - 1] (0 is a valid seed), got {value}")
    return value


def check_workers(name: str, value: int) -> int:
    if value is None or value < 0:
        raise UserError(f"{flag(name)} must be 0 (read in the main process) or more, got {value}")
    return value


def check_milestones(name: str, values: Iterable[int]) -> list[int]:
    values = list(values or [])
    negative = [value for value in values if value < 0]
    if negative:
        raise UserError(f"{flag(name)} lists {negative[0]}: the epochs (iterations) at which the learning "
                        f"rate drops must not be negative")
    return values


# The flags several scripts define, by dest; a script's check_args calls ``check_shared(args)``.
SHARED_CHECKS: dict[str, Callable] = {
    "seed": check_seed,
    "workers": check_workers,
    "lr": check_positive,
    "momentum": check_momentum,
    "weight_decay": check_nonneg,
    "warmup": check_nonneg,
    "decreasing_lr": check_milestones,
    "print_freq": check_nonneg,
}


def check_shared(args, skip: Iterable[str] = ()) -> None:
    """Apply ``SHARED_CHECKS`` to every such flag ``args`` has (``skip``: a script's own meaning)."""
    skipped = set(skip)
    for name, check in SHARED_CHECKS.items():
        if name not in skipped and hasattr(args, name):
            check(name, getattr(args, name))
    if hasattr(args, "early_bird"):  # the IMP scripts' early-bird flags (lth.hparams.EarlyBird)
        from lth.earlybird import config_of
        config_of(args)


def check_run_name(name: str, what: str = "the run name") -> str:
    """A run's folder name under --save_dir: not empty, not absolute, never climbing out with '..'
    (a name is joined to --save_dir, and a run must not write outside it)."""
    if not name or not name.strip():
        raise UserError(f"{what} is empty: give a name for its folder under --save_dir")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\", "~")) or ".." in parts:
        raise UserError(f"{what} '{name}' must be a plain name inside --save_dir (no absolute path, "
                        f"no '..', no '~')")
    return name
