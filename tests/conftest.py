import contextlib
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
                     help="also run the tests marked slow (training, grading, the sandbox, the write-up's "
                          "regeneration) and network (the package index): the whole suite, as .ci/run does")


def pytest_collection_modifyitems(config, items):
    # Deselected rather than skipped: a run leaves them out and says how many.
    import torch

    marks = set() if config.getoption("--full") else {"slow", "network"}
    marks |= set() if torch.cuda.is_available() else {"cuda"}
    marks |= set() if os.geteuid() == 0 else {"root"}
    left_out = [item for item in items if any(item.get_closest_marker(mark) for mark in marks)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item not in left_out]


@contextlib.contextmanager
def once_per_run(tmp_path_factory, name):
    """A folder shared by every xdist worker of this pytest run, and whether it is still to be filled.

    The first worker to ask fills it under a lock while the others wait; the rest find it done.
    Yields (folder, todo); the caller fills the folder when todo is True.
    """
    from filelock import FileLock  # torch's own dependency

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        folder.mkdir(exist_ok=True)
        yield folder, not done.exists()
        done.touch()


@pytest.fixture(scope="session")
def mnist_dir():
    """The repository's MNIST cache, fetched (and md5-checked) on first use."""
    ensure_mnist(ROOT / "data")
    return ROOT / "data"


@pytest.fixture(scope="module")
def starter(tmp_path_factory, mnist_dir):
    """The default starter, written once per module; its data/ points at the test MNIST cache."""
    from course import handout

    dest = tmp_path_factory.mktemp("handout") / "starter"
    assert handout.main([str(dest)]) == 0
    (dest / "data").symlink_to(mnist_dir, target_is_directory=True)
    return dest


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
    """The Gradescope autograder zip, built once per run."""
    from course import autograder

    with once_per_run(tmp_path_factory, "zip") as (folder, todo):
        if todo:
            assert autograder.main(["build", str(folder / "autograder.zip")]) == 0
    return folder / "autograder.zip"


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
