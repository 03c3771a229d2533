"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Two cores are shared by the test process and the runs it starts: one OpenMP thread each
    avoids oversubscription (a second thread mostly waits on memory-bound tensor ops)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
