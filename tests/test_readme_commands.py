"""Every command line of our README and docs/*.md, and of the original's README
(../shared/upstream/README.md, when it lies beside the checkout), is accepted by the parser of the
script it names: same flags, same values, placeholders filled in. Commands are read from code blocks
and from the inline code of table rows. Running them needs data and GPUs; their flags must never drift."""

from __future__ import annotations

import glob
import importlib
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUR_DOCS = ["README.md", *sorted(os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
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


COMMAND = re.compile(r"(^|\s)(python|torchrun)\s")


def _code_pieces(path: str) -> list[str]:
    """The text of every fenced code block, then every table cell that is one inline command (the
    task pages and the README list their commands in tables; code inside a sentence is not a
    command line)."""
    text = open(path).read()
    pieces = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    outside = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    for line in outside.splitlines():
        if line.lstrip().startswith("|"):
            cells = [re.fullmatch(r"\s*`([^`]+)`\s*", cell) for cell in line.strip().strip("|").split("|")]
            pieces += [cell.group(1) for cell in cells if cell and COMMAND.search(cell.group(1))]
    return pieces


def readme_commands(path: str) -> list[tuple[str, str]]:
    """(folder the command runs in, command) for each python/torchrun line in the file's code blocks
    and table rows."""
    commands = []
    for block in _code_pieces(path):
        folder = ""
        for line in _logical_lines(block):
            for piece in line.split("&&"):
                piece = piece.strip()
                if piece.startswith("cd "):
                    folder = piece.split()[1]
                elif COMMAND.search(piece) and "pytest" not in piece:
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
    cases = [(doc, *command) for doc in OUR_DOCS for command in readme_commands(os.path.join(ROOT, doc))]
    if os.path.isfile(UPSTREAM):
        cases += [("upstream README", *command) for command in readme_commands(UPSTREAM)]
    return cases


def test_the_readmes_have_their_commands():
    ours = {doc: readme_commands(os.path.join(ROOT, doc)) for doc in OUR_DOCS}
    every = [command for commands in ours.values() for command in commands]
    assert len(every) >= 60 and any("Detection" == folder for folder, _ in every)
    assert any("Segmentation" == folder for folder, _ in every)
    scripts = {_script_and_argv(*command)[0] for command in every}
    for page in ("CLASSIFICATION", "IMAGENET_VISDA", "SIMCLR", "MOCO", "DETECTION", "SEGMENTATION", "REPORTS"):
        assert ours[os.path.join("docs", page + ".md")], f"docs/{page}.md lists no command"
    assert len(ours["README.md"]) >= 12  # one command per paper experiment
    if os.path.isfile(UPSTREAM):
        theirs = {_script_and_argv(*command)[0] for command in readme_commands(UPSTREAM)}
        assert theirs == {"SimCLR/main.py", "MoCo/main_moco_imp.py", "main_imp_imagenet.py", "main_imp_visda.py",
                          "main_imp_downstream.py", "main_eval_downstream.py", "main_eval_visda.py"}
        assert theirs <= scripts  # each script of the original is documented with a command here


def test_table_rows_and_code_blocks_are_both_read(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("| what | command |\n|---|---|\n| a | `cd Detection && python -u eval.py --imp_num 3` |\n"
                    "| b | `--random_prune` |\n| c | see `python -m lth.tickets` |\n\n"
                    "```\npython -u main_report.py runs --out r  # note\n```\nProse with `python x.py` is not one.\n")
    assert readme_commands(str(page)) == [("", "python -u main_report.py runs --out r"),
                                          ("Detection", "python -u eval.py --imp_num 3")]


@pytest.mark.parametrize("source, folder, command", _cases())
def test_each_readme_command_parses_with_its_script(source, folder, command, capsys):
    script, argv = _script_and_argv(folder, command)
    parser = _parser_of(script)
    try:
        parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{source}: `{command}` is refused by {script}: {capsys.readouterr().err.strip()}")
