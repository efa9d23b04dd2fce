import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codebase.data import ensure_mnist  # noqa: E402


@pytest.fixture(scope="session")
def mnist_dir():
    """The repository's MNIST cache, fetched (and md5-checked) on first use."""
    ensure_mnist(ROOT / "data")
    return ROOT / "data"
