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
from codebase.data import ensure_mnist  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="also run the tests marked network (they reach the package index) and full "
                          "(the Gradescope-style grading with 20,000 iterations, a few minutes)")


def pytest_configure(config):
    config.addinivalue_line("markers", "network: reaches the package index (run with --full; the README's test "
                                       "command and CI do)")
    config.addinivalue_line("markers", "full: the full Gradescope-style grading of the model answer, 20,000 "
                                       "iterations (run with --full)")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (left out where there is none)")
    config.addinivalue_line("markers", "root: switches users, as the grader does on Gradescope (left out where "
                                       "the tests do not run as root)")


def pytest_collection_modifyitems(config, items):
    # Deselected rather than skipped: a run leaves them out and says how many.
    import torch

    marks = set() if config.getoption("--full") else {"network", "full"}
    marks |= set() if torch.cuda.is_available() else {"cuda"}
    marks |= set() if os.geteuid() == 0 else {"root"}
    left_out = [item for item in items if any(item.get_closest_marker(mark) for mark in marks)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item not in left_out]


@pytest.fixture(scope="session")
def mnist_dir():
    """The repository's MNIST cache, fetched (and md5-checked) on first use."""
    ensure_mnist(ROOT / "data")
    return ROOT / "data"


@pytest.fixture(scope="session")
def grader_python(mnist_dir):
    """A Python that the grader's sandbox user can run, with this one's packages.

    As root (CI, this project's machines) this Python lives in root's home, which other users cannot
    enter, and the grader refuses to grade with it. As setup.sh does on Gradescope, the tests then make
    a venv from the system's Python, in a folder all may read, that finds this one's packages through a
    .pth file. Not root: this Python (the grader runs the student's code as this user, outside a sandbox).
    """
    import shutil
    import site
    import subprocess
    import tempfile

    from course.sandbox import Sandbox, SandboxError

    if os.geteuid() != 0:
        yield sys.executable
        return
    folder = Path(tempfile.mkdtemp(prefix="grader-python-"))  # beside pytest's own, which only root may enter
    os.chmod(folder, 0o755)
    try:
        system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        subprocess.run([system, "-m", "venv", "--without-pip", str(folder / "venv")], check=True, timeout=300)
        purelib = subprocess.run([str(folder / "venv/bin/python"), "-c",
                                  "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        Path(purelib, "grader.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
        python = str(folder / "venv/bin/python")
        try:
            Sandbox.open(python, mnist_dir).close()
        except SandboxError as e:
            pytest.fail(f"this machine cannot give the grader a Python its sandbox user can run: {e}")
        yield python
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def autograder_zip(tmp_path_factory):
    """The Gradescope autograder zip, built once."""
    from course import autograder

    path = tmp_path_factory.mktemp("zip") / "autograder.zip"
    assert autograder.main(["build", str(path)]) == 0
    return path


@pytest.fixture(scope="session")
def grading_source(autograder_zip, mnist_dir, tmp_path_factory):
    """unpack(folder): the zip as Gradescope lays it out in /autograder/source, with MNIST where setup.sh puts
    it, in a folder that only root may enter (the grading code and the references are root's alone on
    Gradescope; as root, the grader refuses to grade where the sandbox user could read the references)."""
    import zipfile

    def unpack(name):
        dest = tmp_path_factory.mktemp(name)
        os.chmod(dest, 0o700)
        with zipfile.ZipFile(autograder_zip) as z:
            z.extractall(dest)
        (dest / "data").symlink_to(mnist_dir, target_is_directory=True)
        return dest

    return unpack
