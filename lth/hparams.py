"""Typed experiment descriptions: frozen dataclasses whose fields generate the scripts' flags, and the
experiment identity hashed from them (the way of facebookresearch/open_lth).

A task describes its experiment as one frozen dataclass (a subclass of ``Hparams``) composed of shared
pieces (``Run`` here; data, model, optimisation and ticket pieces beside the tasks). Each field is made
with ``hparam(default, help, ...)``: its help text, option strings (the original's spellings as
aliases), choices, argparse group, the source of its default, and its ROLE:

- ``EXPERIMENT`` (the default): it changes what is computed; hashed into the experiment id.
- ``RUNTIME``: where results go, how fast or on which device it runs, what is printed or written,
  flags accepted for compatibility and ignored. Never hashed; a resume may change it.
- ``SEED``: which replicate. Not hashed (runs that differ only in their seed are pooled), but a
  resume must keep it.
- ``POSITION``: which piece of one experiment a command runs (Segmentation's ``--imp_num``). Not
  hashed, but a resume must keep it.

Every non-experiment field says ``why``. ``experiment_id(hparams)`` is the first 16 hex digits of
the sha256 of the canonical JSON (sorted keys) of the task name and the experiment fields; run.json
records it under ``"experiment"`` and ``--resume`` compares it (``resume_mismatch``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

from lth.cli import ArgumentParser, optional_int

EXPERIMENT, RUNTIME, SEED, POSITION = "experiment", "runtime", "seed", "position"
ROLES = (EXPERIMENT, RUNTIME, SEED, POSITION)
_KEY = "hparam"
_REGISTRY: dict[str, type] = {}


@dataclass(frozen=True)
class Spec:
    """What a field's flag looks like and what the field is for (see ``hparam``)."""
    help: str
    flags: tuple[str, ...] = ()  # option strings in the order --help shows them; () means ("--NAME",)
    role: str = EXPERIMENT
    why: str = ""  # why the field is not an experiment field
    source: str = ""  # where the default comes from (the original's file and flag, or ours)
    group: str | None = None  # argparse group title; None: the parser's own section
    choices: tuple | None = None
    type: Callable | None = None  # None: int/float from the annotation, str otherwise
    action: str | None = None  # "store_true" or "store_false"
    nargs: str | int | None = None
    const: Any = None
    metavar: str | None = None
    required: bool = False
    positional: bool = False
    # The script replaces a None given on the command line by a value it works out (a default weight
    # file); records written before the experiment key hold that value, so None is not compared.
    filled_in: bool = False
    # A field added after runs were recorded: left out of the hash while it holds its default, so the
    # ids of those runs (which computed exactly the default) stay valid and they still resume.
    omit_default: bool = False


def hparam(default: Any = dataclasses.MISSING, help: str = "", **spec) -> Any:
    """A field of an hparams dataclass; ``spec`` holds the other ``Spec`` attributes.

    Lists are given as tuples (the dataclass is frozen); a field without a default is required.
    """
    made = Spec(help=help, **spec)
    _check_spec(made)
    return dataclasses.field(default=default, metadata={_KEY: made})


def like(cls: type, name: str, **changes) -> Any:
    """Field ``name`` of ``cls`` with some attributes changed (``default`` included): how a task
    takes a shared piece with its own default, spelling or help."""
    base = {f.name: f for f in dataclasses.fields(cls)}[name]
    default = changes.pop("default", base.default)
    return hparam(default, **{**dataclasses.asdict(base.metadata[_KEY]), **changes})


def _check_spec(spec: Spec) -> None:
    if spec.role not in ROLES:
        raise ValueError(f"unknown role {spec.role!r}: one of {ROLES}")
    if spec.role != EXPERIMENT and not spec.why:
        raise ValueError(f"a {spec.role} field must say why it is not part of the experiment")
    if not spec.help.strip():
        raise ValueError("every field needs a help text")


@dataclass(frozen=True, kw_only=True)
class Hparams:
    """Base of every task's hparams. ``TASK`` names the task (its entry script); ``GROUPS`` gives the
    order of the argparse groups in --help (None: the parser's own sections); ``ORDER`` may give the
    order of a group's fields where it differs from the dataclass order (``{title: names}``);
    ``PARSER_DEFAULTS`` are set on the parsed Namespace without a flag."""
    TASK: ClassVar[str] = ""
    GROUPS: ClassVar[tuple[str | None, ...]] = ()
    ORDER: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    # Attributes every parsed Namespace carries without a flag (argparse's set_defaults).
    PARSER_DEFAULTS: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("TASK"):
            _REGISTRY[cls.TASK] = cls

    @classmethod
    def parser(cls, **kwargs) -> argparse.ArgumentParser:
        """An ``lth.cli.ArgumentParser`` (``kwargs``: description, epilog, ...) with the flags of ``cls``."""
        parser = ArgumentParser(**kwargs)
        add_flags(parser, cls)
        return parser

    @classmethod
    def from_args(cls, args) -> "Hparams":
        return from_args(cls, args)

    @property
    def experiment_id(self) -> str:
        return experiment_id(self)


def spec_of(field: dataclasses.Field) -> Spec:
    return field.metadata[_KEY]


def hparam_fields(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` in the order --help shows them: by ``GROUPS``, then by ``ORDER`` or
    the dataclass order within a group."""
    fields = [f for f in dataclasses.fields(cls) if _KEY in f.metadata]
    groups = list(cls.GROUPS)
    unknown = {spec_of(f).group for f in fields} - set(groups)
    if unknown:
        raise TypeError(f"{cls.__name__}: groups {sorted(map(str, unknown))} are missing from GROUPS")
    ordered = []
    for title in groups:
        members = [f for f in fields if spec_of(f).group == title]
        order = cls.ORDER.get(title)
        if order:
            by_name = {f.name: f for f in members}
            if sorted(order) != sorted(by_name):
                raise TypeError(f"{cls.__name__}.ORDER[{title!r}] must name exactly that group's fields")
            members = [by_name[name] for name in order]
        ordered.extend(members)
    return ordered


def option_strings(field: dataclasses.Field) -> list[str]:
    spec = spec_of(field)
    return list(spec.flags) or [f"--{field.name}"]


def flag_name(cls, name: str) -> str:
    """How messages name field ``name``: its first long option string (its name for a positional)."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    if spec_of(field).positional:
        return name.upper()
    strings = option_strings(field)
    return next((s for s in strings if s.startswith("--")), strings[0])


def _arg_type(field: dataclasses.Field, spec: Spec):
    if spec.type is not None:
        return spec.type
    if field.type in (int, float):
        return field.type
    annotation = str(field.type).replace(" ", "")
    for name, kind in (("int", int), ("float", float)):
        if annotation in (name, f"{name}|None", f"None|{name}"):
            return kind
    return None


def add_flags(parser: argparse.ArgumentParser, cls) -> None:
    """Add the flags of ``cls``'s fields to ``parser``: groups, aliases, help and defaults from the fields."""
    groups: dict[str | None, Any] = {None: parser}
    for field in hparam_fields(cls):
        spec = spec_of(field)
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        add_field(groups[spec.group], cls, field.name)
    if cls.PARSER_DEFAULTS:
        parser.set_defaults(**cls.PARSER_DEFAULTS)


def add_field(container, cls, name: str) -> None:
    """Add the flag of field ``name`` of ``cls`` to ``container`` (a parser or an argument group)."""
    field = _field(cls, name)
    spec = spec_of(field)
    kwargs: dict[str, Any] = {"help": spec.help}
    if field.default is not dataclasses.MISSING:
        kwargs["default"] = field.default
    if spec.action:
        kwargs["action"] = spec.action
    else:
        for key in ("nargs", "const", "metavar"):
            if getattr(spec, key) is not None:
                kwargs[key] = getattr(spec, key)
        if spec.choices is not None:
            kwargs["choices"] = list(spec.choices)
        kind = _arg_type(field, spec)
        if kind is not None:
            kwargs["type"] = kind
    if spec.positional:
        container.add_argument(field.name, **kwargs)
    else:
        if spec.required:
            kwargs["required"] = True
        container.add_argument(*option_strings(field), dest=field.name, **kwargs)


def from_args(cls, args) -> Hparams:
    """The frozen hparams of parsed ``args`` (an argparse Namespace or anything with the attributes)."""
    values = {}
    for field in dataclasses.fields(cls):
        if _KEY in field.metadata:
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


# --------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------

def fields_of_role(cls, *roles: str) -> list[str]:
    return [f.name for f in hparam_fields(cls) if spec_of(f).role in roles]


def runtime_names(cls) -> set[str]:
    """Names of the fields that are not part of the experiment (runtime, seed and position): what
    ``lth.report`` may ignore when it compares recorded args."""
    return set(fields_of_role(cls, RUNTIME, SEED, POSITION))


def canonical(value: Any, cls=None, name: str | None = None) -> Any:
    """``value`` in its JSON form for hashing: tuples as lists, an int given to a float field as a
    float (``--warmup_epochs 2`` and the default 2 are one experiment)."""
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    if cls is not None and name is not None and isinstance(value, int) and not isinstance(value, bool):
        field = {f.name: f for f in dataclasses.fields(cls)}[name]
        if _arg_type(field, spec_of(field)) is float:
            return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def experiment_fields(hparams: Hparams) -> dict:
    """``{name: canonical value}`` of the experiment fields (an ``omit_default`` field only when it is
    not at its default)."""
    cls = type(hparams)
    return {name: canonical(getattr(hparams, name), cls, name) for name in fields_of_role(cls, EXPERIMENT)
            if not _omitted(cls, name, getattr(hparams, name))}


def _omitted(cls, name: str, value: Any) -> bool:
    field = _field(cls, name)
    return spec_of(field).omit_default and canonical(value, cls, name) == canonical(field.default, cls, name)


def identity_hash(task: str, fields: Mapping[str, Any]) -> str:
    """First 16 hex digits of sha256 of the canonical JSON of ``{"task": task, "hparams": fields}``;
    a reader may re-hash a recorded ``experiment.hparams`` with it."""
    text = json.dumps({"task": task, "hparams": dict(fields)}, sort_keys=True, separators=(",", ":"),
                      allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def experiment_id(hparams: Hparams) -> str:
    return identity_hash(type(hparams).TASK, experiment_fields(hparams))


def experiment_record(hparams: Hparams) -> dict:
    """run.json's ``"experiment"``: ``{"id", "task", "hparams"}`` (the hashed fields)."""
    return {"id": experiment_id(hparams), "task": type(hparams).TASK, "hparams": experiment_fields(hparams)}


def task_class(task: str):
    """The hparams class of a recorded task name, or None (a task this code does not know, or whose
    hparams module is not imported)."""
    return _REGISTRY.get(task)


def registered() -> dict[str, type]:
    """``{task: hparams class}`` of every task whose hparams module is imported."""
    return dict(_REGISTRY)


def twin_id(hparams: Hparams, cls=None, **changes) -> str:
    """Id of the experiment of class ``cls`` (default: the same) built from ``hparams``' fields of the
    same names, with ``changes``: the experiment a control run controls (e.g. ``random_prune=False``)."""
    cls = cls or type(hparams)
    values = {}
    for field in dataclasses.fields(cls):
        if _KEY not in field.metadata:
            continue
        if field.name in changes:
            values[field.name] = changes[field.name]
        elif hasattr(hparams, field.name):
            values[field.name] = getattr(hparams, field.name)
    return experiment_id(cls(**values))


def resume_mismatch(hparams: Hparams, seed: int | None, record: Mapping, where: str) -> str | None:
    """Why a run described by ``record`` (run.json, or a checkpoint: ``args`` and maybe ``experiment``)
    cannot be resumed as ``hparams`` with ``seed`` (None: take the recorded one): one line, or None
    when it can. Records without ``experiment`` (written before it existed) are compared on the
    experiment fields their ``args`` hold."""
    cls = type(hparams)
    args = record.get("args") or {}
    if not isinstance(args, Mapping):
        args = vars(args) if hasattr(args, "__dict__") else {}
    recorded = record.get("experiment")
    if isinstance(recorded, Mapping) and recorded.get("task") and recorded.get("task") != cls.TASK:
        return f"{where} holds a run of {recorded['task']}, not of {cls.TASK}: it cannot be resumed by this script"
    if isinstance(recorded, Mapping) and "hparams" in recorded:
        old_fields, old_id = recorded.get("hparams") or {}, recorded.get("id")
        if old_id != experiment_id(hparams):
            for name, value in experiment_fields(hparams).items():
                if name not in old_fields and spec_of(_field(cls, name)).omit_default:  # recorded at its default
                    return _changed(cls, name, value, _field(cls, name).default, where, old_id)
                if name not in old_fields:
                    return (f"{flag_name(cls, name)} ({value!r}) was not recorded by the run in {where}, another "
                            f"version of this script's experiment (id {old_id}); start a new run in another folder")
                if canonical(old_fields[name]) != value:
                    return _changed(cls, name, value, old_fields[name], where, old_id)
            for name in set(old_fields) - set(experiment_fields(hparams)):  # now at its omitted default
                if name in {f.name for f in dataclasses.fields(cls)} and spec_of(_field(cls, name)).omit_default:
                    return _changed(cls, name, canonical(getattr(hparams, name)), old_fields[name], where, old_id)
            return (f"the run in {where} is experiment {old_id}, not {experiment_id(hparams)} (its fields "
                    f"{sorted(set(old_fields) - set(experiment_fields(hparams)))} are no longer known); "
                    f"start a new run in another folder")
    else:  # written before run.json recorded the experiment
        for name in fields_of_role(cls, EXPERIMENT):
            value = getattr(hparams, name)
            if name not in args or (value is None and spec_of(_field(cls, name)).filled_in):
                continue
            if canonical(args[name], cls, name) != canonical(value, cls, name):
                return _changed(cls, name, canonical(value, cls, name), args[name], where, None)
    for name in fields_of_role(cls, POSITION):
        if name in args and args[name] != getattr(hparams, name):
            return _changed(cls, name, getattr(hparams, name), args[name], where, None)
    old_seed = args.get("seed")
    if seed is not None and old_seed is not None and old_seed != seed:
        return (f"--seed is {seed} but the run being resumed in {where} used {old_seed}: another seed is another "
                f"replicate: start a new run in another folder")
    return None


def _field(cls, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def _changed(cls, name: str, new: Any, old: Any, where: str, old_id: str | None) -> str:
    which = f" (experiment {old_id})" if old_id else ""
    return (f"{flag_name(cls, name)} is {new!r} but the run being resumed in {where}{which} used {old!r}: "
            f"a resume keeps the run's experiment: to change it, start a new run in another folder")


# --------------------------------------------------------------------------------------------
# Controls
# --------------------------------------------------------------------------------------------

def controls_record(kind: str, ticket: str | None, ticket_meta: Mapping | None = None,
                    ticket_experiment: str | None = None) -> dict:
    """run.json's ``"controls"`` of a run that controls or transfers a ticket: ``kind`` (random_prune,
    reverse_mask, reinit, transfer), the ticket file as given, and the experiment id and seed the
    ticket's metadata carries (None for tickets written before they did, the original's masks, and
    other mask files). ``ticket_experiment`` overrides the id for a control that reads no ticket
    (the experiment it controls)."""
    meta = ticket_meta or {}
    experiment = ticket_experiment or meta.get("experiment")
    seed = meta.get("seed")
    return {"kind": kind, "ticket": ticket,
            "ticket_experiment": experiment if isinstance(experiment, str) else None,
            "ticket_seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None}


def ticket_kind(mask: str | None, reverse_mask: bool = False, random_prune: bool = False,
                pretrained: bool = True) -> str | None:
    """The control a one-stage run with a mask is: random_prune, reverse_mask, reinit (the mask on
    a random init) or transfer (the mask on pre-trained weights); None without a mask (dense)."""
    if not mask:
        return None
    if random_prune:
        return "random_prune"
    if reverse_mask:
        return "reverse_mask"
    return "transfer" if pretrained else "reinit"


# --------------------------------------------------------------------------------------------
# The run flags every script shares
# --------------------------------------------------------------------------------------------

PATH_WHY = "a path: where things are, not what is computed"
BATCH_HELP = ("under torchrun the global batch: each of the N processes takes 1/N of it (a batch that does not "
              "divide is refused), so the run is the experiment one process runs, as the originals' single "
              "process with DataParallel did")
RUN = "run"
DETERMINISTIC_HELP = (
    "CUDA only: make cuDNN pick deterministic convolution algorithms (cudnn.deterministic on, "
    "cudnn.benchmark off) and PyTorch use its deterministic kernels where it has them (others "
    "warn), as the original set when given a seed, so that the same seed gives the same masks "
    "on a GPU too. Cost: only deterministic algorithms may then be chosen for convolutions, "
    "scatter/index ops and cuBLAS (a fixed workspace), which are often slower; by how much depends "
    "on the GPU and model (not measured here). On a CPU runs are deterministic without it")


@dataclass(frozen=True, kw_only=True)
class Speed(Hparams):
    """How fast the arithmetic runs: never what it computes on a CPU."""
    GROUPS = (RUN,)
    precision: str = hparam(
        "auto", "training math; auto: bf16 autocast on CUDA, fp32 on CPU (run.json and summary rows record which "
                "trained the model)", choices=("auto", "fp32", "bf16"), group=RUN,
        role=RUNTIME, why="how the arithmetic runs, like the device it runs on ('auto' picks by device); "
                          "run.json and summary rows record it", source="ours (the original trained in fp32)")
    eval_precision: str = hparam(
        "fp32", "evaluation math; fp32 (default, as the original scored): bf16 moves scores, e.g. detection box "
                "sizes by up to ~2 %% and so AP at IoU 0.90/0.95", choices=("fp32", "bf16"), group=RUN,
        role=RUNTIME, why="how the arithmetic of evaluation runs; run.json and summary rows record it",
        source="the original scored in fp32")
    channels_last: str = hparam(
        "auto", "memory layout of activations; auto: on for CUDA, off on CPU", choices=("auto", "on", "off"),
        group=RUN, role=RUNTIME, why="a memory layout: same values, other speed", source="ours")
    compile: bool = hparam(
        False, "torch.compile the model (recompiled once per round, after re-pruning)", action="store_true",
        group=RUN, role=RUNTIME, why="the same model compiled: speed only", source="ours")
    deterministic: bool = hparam(
        False, DETERMINISTIC_HELP, action="store_true", group=RUN, role=RUNTIME,
        why="which CUDA kernels run (bit-exact repeats on a GPU), not what the experiment is",
        source="original: cudnn.deterministic when given a seed")


@dataclass(frozen=True, kw_only=True)
class Trust(Hparams):
    GROUPS = (RUN,)
    trust_checkpoint: bool = hparam(
        False, "load every checkpoint, weight and mask file in full even when it holds Python objects besides "
               "tensors, numbers, argparse.Namespace and numpy scalars; unpickling such a file can run any code "
               "in it, so only pass this for files you trust (without it they are refused)",
        action="store_true", group=RUN, role=RUNTIME, why="a safety switch for loading files",
        source="ours: the original unpickled every file")


@dataclass(frozen=True, kw_only=True)
class Run(Speed, Trust):
    """The run flags of the classification scripts (tasks override defaults and spellings with ``like``)."""
    save_dir: str | None = hparam(
        None, "folder for checkpoints, tickets, metrics.jsonl and plots; must not hold another run unless --resume",
        group=RUN, required=True, role=RUNTIME, why=PATH_WHY, source="original --save_dir (effectively required)")
    resume: bool = hparam(
        False, "continue the run in --save_dir from its latest checkpoint", action="store_true", group=RUN,
        role=RUNTIME, why="continues the recorded experiment, which it is checked against", source="original --resume")
    seed: int | None = hparam(
        None, "random seed (0 is a valid seed); without it a seed is drawn and recorded", type=optional_int,
        group=RUN, role=SEED, why="which replicate: runs that differ only in their seed are pooled",
        source="original --seed None (ours also takes 0 and records a drawn seed)")
    gpu: str = hparam(
        "0", "CUDA device number for a single-process run (ignored on a CPU-only machine and under torchrun, "
             "where each process takes LOCAL_RANK)", group=RUN, role=RUNTIME, why="the device",
        source="original --gpu 0")
    cpu: bool = hparam(False, "run on the CPU even if CUDA is available", action="store_true", group=RUN,
                       role=RUNTIME, why="the device", source="ours")
    print_freq: int = hparam(50, "update the progress bar's loss/accuracy every this many steps", group=RUN,
                             role=RUNTIME, why="what is printed", source="original --print_freq 50")
    workers: int = hparam(
        0, "accepted for compatibility; small data sets live in memory and need no workers",
        flags=("--workers", "-j"), group=RUN, role=RUNTIME,
        why="processes that read the data: the data order and augmentation come from the seed and epoch",
        source="ours: in-memory data sets need none")

    # Field order of Speed and Trust (bases) comes first in the dataclass; --help shows the run
    # flags in the order they always had.
    ORDER = {RUN: ("save_dir", "resume", "seed", "gpu", "cpu", "print_freq", "precision", "eval_precision",
                   "channels_last", "compile", "deterministic", "trust_checkpoint", "workers")}


RESUME_PATH_HELP = ("continue the run in --save_dir from its latest checkpoint, or from checkpoint PATH "
                    "(the original's form)")


def resume_path(**changes) -> Any:
    """``--resume [PATH]`` (the originals of the ImageNet, VisDA and MoCo scripts)."""
    return like(Run, "resume", action=None, nargs="?", const=True, metavar="PATH",
                help=changes.pop("help", RESUME_PATH_HELP), **changes)


def workers_field(default: int, **changes) -> Any:
    """``-j``/``--workers`` of a script whose data is read from image files."""
    return like(Run, "workers", default=default,
                help=changes.pop("help", "processes that read and augment images (0: in the main process)"),
                **changes)


# The pytorch/examples spellings the ImageNet, VisDA and MoCo originals accept, beside ours.
PRINT_FREQ_EXAMPLES = ("-p", "--print_freq", "--print-freq")


@dataclass(frozen=True, kw_only=True)
class Iterations(Hparams):
    """Training counted in optimizer steps (DeepLab's way); ``TrainConfig.from_hparams`` reads it."""
    GROUPS = ("iterations",)
    total_itrs: int = hparam(30000, "optimizer steps per round (the data loop restarts as often as needed)",
                             group="iterations", source="DeepLabV3Plus-Pytorch --total_itrs 30e3")
    val_interval: int = hparam(100, "evaluate, log and checkpoint every this many iterations (and after the last)",
                               group="iterations", source="DeepLabV3Plus-Pytorch --val_interval 100")
    lr_policy: str = hparam("poly", "poly: lr x (1 - itr/total_itrs)^0.9; multistep: x0.1 at each milestone "
                                    "iteration; cosine: half a cosine to 0",
                            choices=("poly", "multistep", "cosine"), group="iterations",
                            source="DeepLabV3Plus-Pytorch --lr_policy poly")


# --------------------------------------------------------------------------------------------
# Early-bird tickets and learning-rate rewinding (issue 17), fields of every IMP script
# --------------------------------------------------------------------------------------------

EARLY_BIRD = "early-bird tickets (You et al., ICLR 2020)"
LRR_HELP = ("lrr: learning-rate rewinding (Renda et al., ICLR 2020): after each prune keep the trained "
            "weights and replay the learning-rate schedule from its start, instead of rewinding the weights")
COSTS_SOURCE = "ours (issue 17; not in the original)"


@dataclass(frozen=True, kw_only=True)
class EarlyBird(Hparams):
    """Early-bird stopping of IMP rounds (``lth.earlybird``); ``ImpRun`` reads these fields. Added after
    runs were recorded, so each leaves the experiment id alone at its default (``omit_default``)."""
    GROUPS = (EARLY_BIRD,)
    early_bird: bool = hparam(
        False, "early-bird stop in every round: a round trains only until the magnitude mask of its prune has "
               "settled (see --eb_threshold, --eb_window), then prunes; its summary row reports the network as "
               "trained so far (early_stopped: true)", action="store_true", group=EARLY_BIRD, omit_default=True,
        source=COSTS_SOURCE)
    early_bird_sparsity: float | None = hparam(
        None, "find the ticket at sparsity S (share of the pruned convs' weights removed, e.g. 0.9) in one round: "
              "round 0 trains only until its magnitude mask at S has settled, the first prune goes straight to S, "
              "and the next round trains the ticket (from the rewind point); later rounds prune the usual rate",
        metavar="S", group=EARLY_BIRD, omit_default=True, source=COSTS_SOURCE)
    eb_threshold: float = hparam(
        0.1, "early-bird: the ticket has emerged when the normalised Hamming distance between the newest mask and "
             "each of the --eb_window - 1 masks before it is at most this; masks are drawn at the round's start "
             "and at each evaluation", group=EARLY_BIRD, omit_default=True,
        source="You et al., GATECH-EIC/Early-Bird-Tickets main.py (0.1)")
    eb_window: int = hparam(
        5, "early-bird: masks compared (5: the earliest stop is after 4 evaluations)", group=EARLY_BIRD,
        omit_default=True, source="You et al., GATECH-EIC/Early-Bird-Tickets main.py (epoch_keep 5)")


def lrr_field(rewind_rule: str, group: str) -> Any:
    """``--prune_type lrr`` of an IMP script whose rewind target is fixed (``rewind_rule`` says which);
    absent (None) keeps that rule."""
    return hparam(None, f"{LRR_HELP}; by default every round rewinds to {rewind_rule}", choices=("lrr",),
                  group=group, omit_default=True, source=COSTS_SOURCE)
