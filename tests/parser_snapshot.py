"""Writes tests/parsers.json: every entry script's flags (option strings, dest, default, choices, ...),
the record tests/test_hparams.py holds the generated parsers to. Run from the repository root after a
deliberate flag change: ``PYTHONPATH=$PWD python tests/parser_snapshot.py``."""

from __future__ import annotations

import argparse
import importlib
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOT = os.path.join(ROOT, "tests", "parsers.json")
# Scripts whose parser is their module's ``get_args_parser()``.
MODULES = ("main_imp_downstream", "main_eval_downstream", "main_imp_imagenet", "main_imp_visda", "main_eval_visda",
           "SimCLR.main", "MoCo.main_moco_imp", "Detection.train_imp", "Detection.train_random",
           "Detection.train_transfer", "Detection.eval")
SEGMENTATION = tuple((mode, source) for mode in ("imp", "transfer") for source in ("imagenet", "moco", "simclr"))


def parsers() -> dict[str, argparse.ArgumentParser]:
    """``{script path: its parser}`` for every entry script of a task."""
    found = {}
    for name in MODULES:
        found[name.replace(".", "/") + ".py"] = importlib.import_module(name).get_args_parser()
    from Segmentation import run as segrun

    for mode, source in SEGMENTATION:
        found[f"Segmentation/main_{mode}_{source}.py"] = segrun.get_args_parser(mode, segrun.SOURCES[source])
    return found


def _plain(value):
    """A default or const as JSON: tuples as lists, other objects by their repr."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def describe(parser: argparse.ArgumentParser) -> dict:
    """``{"actions": {key: properties}, "groups": [[title, [keys in display order]]]}``; an action's
    key is its first option string (its dest for a positional)."""
    group_of = {}
    groups = []
    for group in parser._action_groups:
        keys = []
        for action in group._group_actions:
            if isinstance(action, argparse._HelpAction):
                continue
            key = action.option_strings[0] if action.option_strings else action.dest
            group_of[key] = group.title
            keys.append(key)
        if keys:
            groups.append([group.title, keys])
    actions = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        key = action.option_strings[0] if action.option_strings else action.dest
        actions[key] = {
            "option_strings": list(action.option_strings), "dest": action.dest, "default": _plain(action.default),
            "const": _plain(action.const), "choices": None if action.choices is None else _plain(list(action.choices)),
            "required": bool(action.required), "nargs": action.nargs,
            "type": None if action.type is None else getattr(action.type, "__name__", repr(action.type)),
            "action": type(action).__name__, "metavar": _plain(action.metavar),
            "help": bool(action.help and action.help.strip()), "group": group_of[key]}
    return {"actions": actions, "groups": groups}


def dumps(data: dict) -> str:
    """The snapshot as JSON with one action per line, so that a change reads as a one-line diff."""
    lines = ["{"]
    for i, (script, entry) in enumerate(sorted(data.items())):
        lines.append(f"{json.dumps(script)}: {{")
        lines.append(f' "groups": {json.dumps(entry["groups"])},')
        lines.append(' "actions": {')
        actions = sorted(entry["actions"].items())
        for j, (key, props) in enumerate(actions):
            lines.append(f"  {json.dumps(key)}: {json.dumps(props, sort_keys=True)}" + ("," if j < len(actions) - 1 else ""))
        lines.append(" }}" + ("," if i < len(data) - 1 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def snapshot() -> dict:
    return {script: describe(parser) for script, parser in sorted(parsers().items())}


if __name__ == "__main__":
    with open(SNAPSHOT, "w") as handle:
        handle.write(dumps(snapshot()))
    print(f"wrote {SNAPSHOT}")
