"""Shared test set-up."""
import sys
from pathlib import Path

import pytest
import torch

# the benchmarks' library (benchmarks/lib, imported as ``lib``, as the benchmark scripts do)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))


@pytest.fixture(autouse=True, scope='module')
def one_torch_thread_per_module():
    """One thread for a module's module-scoped fixtures too (a trained model shared by its tests),
    which run before any function-scoped fixture."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tests use tiny models, for which one thread is faster; and small LAPACK / matmul
    calls slow down a hundredfold when two threads compete with other processes for the
    2 cores of a CI machine. Each test starts with one thread; the count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
