"""Test-suite settings: one intra-op thread. The tests run tiny tensors, where a second OpenMP thread only
adds synchronization (and on a loaded 2-core CI box makes small ops up to 100× slower)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
