"""Shared test set-up."""
import sys
from pathlib import Path

import pytest
import torch

# Fits on tens of images, on purpose (tiny data keeps the suite fast): the detectors then warn
# that their fit is small. Each of these warnings is asserted by its own test (test_detectors:
# knn / nnguide "fewer than k", vim "fewer than the ... feature dimensions", she "no correctly
# classified"; test_evidence: "gives no pseudo-AUROC"); a test module marked ``tiny_fits`` expects
# them and does not report them.
TINY_FIT_WARNINGS = (
    'ignore:knn. the ID bank has:UserWarning',
    'ignore:nnguide. the ID bank has:UserWarning',
    'ignore:vim. fitted on:UserWarning',
    'ignore:she. no correctly classified:UserWarning',
    'ignore:evidence source .* gives no pseudo-AUROC:UserWarning',
)


def pytest_configure(config):
    config.addinivalue_line('markers', 'tiny_fits: detectors fitted on tens of images; their small-fit warnings '
                                       'are expected (tests/conftest.py TINY_FIT_WARNINGS)')


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker('tiny_fits'):
            for spec in TINY_FIT_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(spec))


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
