"""Shared test fixtures."""

import os
import shutil

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test runs two pytest-xdist workers on two cores: one thread each (and in the scripts they
    # start) keeps them from oversubscribing the cores, which costs far more than it gains.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (sweep scripts end to end) keep the suite within its budget by running
    only when LTH_SLOW_TESTS=1."""
    if os.environ.get("LTH_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow (a sweep end to end): set LTH_SLOW_TESTS=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Two cores are shared by the test process and the runs it starts: one OpenMP thread each
    avoids oversubscription (a second thread mostly waits on memory-bound tensor ops)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """Makes folders that live as long as one test module, then removes them: runs write
    checkpoints of 45-700 MB, and pytest would keep every one of them until the session ends
    (about 22 GB for the suite; CI machines have less free disk than that)."""
    made = []

    def make(name: str):
        path = tmp_path_factory.mktemp(name)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def _refuse_constant(name):
    raise ValueError(f"not strict JSON: bare {name}")


def strict_json_files(folder) -> dict:
    """Every ``*.json``/``*.jsonl`` file under ``folder``, parsed as strict JSON (a bare NaN,
    Infinity or -Infinity fails, as in jq and browsers): ``{path: object or list of rows}``."""
    import json
    import pathlib

    parsed = {}
    for path in sorted(pathlib.Path(folder).rglob("*.json*")):
        if path.suffix not in (".json", ".jsonl"):
            continue
        text = path.read_text()
        try:
            if path.suffix == ".json":
                parsed[path] = json.loads(text, parse_constant=_refuse_constant)
            else:
                parsed[path] = [json.loads(line, parse_constant=_refuse_constant)
                                for line in text.splitlines() if line.strip()]
        except ValueError as error:
            raise AssertionError(f"{path}: {error}") from None
    return parsed


@pytest.fixture(scope="session")
def assert_strict_json():
    """Checks that a run folder's JSON files are all strict JSON; returns them parsed."""
    def check(folder, *expected: str) -> dict:
        import pathlib

        parsed = {str(path.relative_to(folder)): value
                  for path, value in strict_json_files(pathlib.Path(folder)).items()}
        assert parsed and set(expected) <= set(parsed), (sorted(parsed), expected)
        return parsed
    return check
