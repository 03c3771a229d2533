"""Every command line of our README and of the original's README (../shared/upstream/README.md, when
it lies beside the checkout) is accepted by the parser of the script it names: same flags, same
values, placeholders filled in. Running them needs data and GPUs; their flags must never drift."""

from __future__ import annotations

import importlib
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAM = os.path.join(os.path.dirname(ROOT), "shared", "upstream", "README.md")

# What a user types for a placeholder, chosen to pass the flag's own checks (choices, types).
PLACEHOLDERS = {"dataset name": "cifar10", "lt, pt, rewind_lt, pt_trans": "lt"}


def _logical_lines(block: str) -> list[str]:
    """One line per command: comments dropped (the original writes `\\ # note` and `\\#note`),
    backslash continuations joined."""
    joined, parts = [], []
    for raw in block.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue
        if "\\#" in line:  # `--dataset [dataset name] \#cifar10, ...`: the backslash continues the line
            line = line.split("\\#")[0] + "\\"
        line = re.split(r"\s#", line)[0].rstrip()
        continued = line.endswith("\\")
        parts.append(line.rstrip("\\").strip())
        if not continued:
            joined.append(" ".join(part for part in parts if part))
            parts = []
    if parts:
        joined.append(" ".join(part for part in parts if part))
    return joined


def _fill(line: str) -> str:
    line = re.sub(r"(--dict_key \S+) \[[^\]]*\]", r"\1", line)  # `state_dict [ note ]`: the note goes
    line = re.sub(r"\[(--[\w-]+)\]", r"\1", line)  # an optional flag, [--reverse_mask]
    return re.sub(r"\[\s*([^\]]*?)\s*\]", lambda m: PLACEHOLDERS.get(m.group(1), "PATH"), line)


def readme_commands(path: str) -> list[tuple[str, str]]:
    """(folder the command runs in, command) for each python/torchrun line in the file's code blocks."""
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", open(path).read(), re.S):
        folder = ""
        for line in _logical_lines(block):
            for piece in line.split("&&"):
                piece = piece.strip()
                if piece.startswith("cd "):
                    folder = piece.split()[1]
                elif re.search(r"(^|\s)(python|torchrun)\s", piece) and "pytest" not in piece:
                    commands.append((folder, _fill(piece)))
    return commands


def _script_and_argv(folder: str, command: str) -> tuple[str, list[str]]:
    words = [word for word in shlex.split(command) if word != "..."]
    while "=" in words[0] and not words[0].startswith("-"):  # CUDA_VISIBLE_DEVICES=0,1
        words.pop(0)
    if words[0] == "torchrun":
        index = next(i for i, word in enumerate(words) if word.endswith(".py"))
        return os.path.normpath(os.path.join(folder, words[index])), words[index + 1:]
    words = [word for word in words[1:] if word != "-u"]  # python [-u]
    if words[0] == "-m":
        return words[1], words[2:]
    return os.path.normpath(os.path.join(folder, words[0])), words[1:]


def _parser_of(script: str):
    if script == "lth.tickets":
        from lth import tickets

        return tickets.get_args_parser()
    if script.startswith("Segmentation" + os.sep):
        from Segmentation import run as segrun

        mode, source = re.match(r"main_(imp|transfer)_(\w+)\.py", os.path.basename(script)).groups()
        return segrun.get_args_parser(mode, segrun.SOURCES[source])
    module = importlib.import_module(script[: -len(".py")].replace(os.sep, "."))
    return module.get_args_parser()


def _cases():
    cases = [("README.md", *command) for command in readme_commands(os.path.join(ROOT, "README.md"))]
    if os.path.isfile(UPSTREAM):
        cases += [("upstream README", *command) for command in readme_commands(UPSTREAM)]
    return cases


def test_the_readmes_have_their_commands():
    ours = readme_commands(os.path.join(ROOT, "README.md"))
    assert len(ours) >= 25 and any("Detection" == folder for folder, _ in ours)
    if os.path.isfile(UPSTREAM):
        scripts = {_script_and_argv(*command)[0] for command in readme_commands(UPSTREAM)}
        assert scripts == {"SimCLR/main.py", "MoCo/main_moco_imp.py", "main_imp_imagenet.py", "main_imp_visda.py",
                           "main_imp_downstream.py", "main_eval_downstream.py", "main_eval_visda.py"}


@pytest.mark.parametrize("source, folder, command", _cases())
def test_each_readme_command_parses_with_its_script(source, folder, command, capsys):
    script, argv = _script_and_argv(folder, command)
    parser = _parser_of(script)
    try:
        parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{source}: `{command}` is refused by {script}: {capsys.readouterr().err.strip()}")
