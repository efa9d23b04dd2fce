import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if "PYTEST_XDIST_WORKER" in os.environ:
    # Several workers share the cores: one thread each, for torch here and in every process a
    # test starts (OpenMP threads that outnumber the cores run several times slower each).
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
sys.path.insert(0, str(ROOT))

from codebase.data import ensure_mnist  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="also run the tests marked network (they reach the package index) and full "
                          "(the Gradescope-style grading with 20,000 iterations, a few minutes)")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (left out where there is none)")


def pytest_collection_modifyitems(config, items):
    # Deselected rather than skipped: a run leaves them out and says how many.
    import torch

    marks = set() if config.getoption("--full") else {"network", "full"}
    marks |= set() if torch.cuda.is_available() else {"cuda"}
    left_out = [item for item in items if any(item.get_closest_marker(mark) for mark in marks)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item not in left_out]


@pytest.fixture(scope="session")
def mnist_dir():
    """The repository's MNIST cache, fetched (and md5-checked) on first use."""
    ensure_mnist(ROOT / "data")
    return ROOT / "data"
