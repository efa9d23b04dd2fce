"""What course/confine.py keeps from a child of the student's code, each tried through Sandbox.run with a
small child: the network, System V objects that outlive it, and the machine's world-writable folders.
As root, as on Gradescope (and CI); each starts the sandbox, so they run only with --full.
"""
import os
import socket
import time
from pathlib import Path

import pytest

from course import confine
from course.sandbox import Sandbox
from course.untrusted import remove

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def box(grader_python, mnist_dir):
    box = Sandbox.open(grader_python, mnist_dir)
    workdir = box.make_workdir({"x.txt": b"x"}, ["home"])
    yield box, workdir
    box.close()
    remove(workdir)


def run(box, workdir, python, code):
    outcome = box.run([python, "-c", code], workdir, {"PATH": "/usr/bin:/bin"}, 60)
    assert outcome.returncode == 0, outcome.err.text()
    return outcome.out.text().splitlines()


def test_a_child_opens_no_internet_socket_but_unix_ones_work(box, grader_python):
    box, workdir = box
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # named in no folder: only a namespace hides it
    abstract.bind(f"\0autograder-test-{os.getpid()}")
    abstract.listen(1)
    code = f'''
import os
import os
import socket
import time
from pathlib import Path
for family in ("AF_INET", "AF_INET6"):
    try:
        socket.socket(getattr(socket, family), socket.SOCK_STREAM)
        print(family, "opened")
    except OSError as e:
        print(family, type(e).__name__)
try:
    socket.create_connection(("127.0.0.1", {listener.getsockname()[1]}), timeout=5)
    print("connected")
except OSError as e:
    print("connect", type(e).__name__)
try:
    socket.socket(socket.AF_UNIX).connect("\\0autograder-test-{os.getpid()}")
    print("abstract connected")
except OSError as e:
    print("abstract", type(e).__name__)
a, b = socket.socketpair(socket.AF_UNIX)
a.sendall(b"unix")
print(b.recv(4).decode())
import ctypes, errno, platform
libc = ctypes.CDLL(None, use_errno=True)
if platform.machine() in ("x86_64", "aarch64"):  # io_uring_setup, 425 on both: its rings can open sockets too
    print("io_uring", libc.syscall(425, 1, None), errno.errorcode[ctypes.get_errno()])
'''
    try:
        lines = run(box, workdir, grader_python, code)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever reached it
    finally:
        listener.close()
        abstract.close()
    assert lines[:3] == ["AF_INET PermissionError", "AF_INET6 PermissionError", "connect PermissionError"]
    assert lines[3] == ("abstract ConnectionRefusedError" if "netns" in box.network else "abstract connected")
    assert lines[4] == "unix"
    assert lines[5:] in ([], ["io_uring -1 EACCES"])  # refused before its arguments are looked at (EFAULT)
    assert "no internet sockets" in box.describe() or "no network" in box.describe()


def test_system_v_objects_a_child_leaves_are_removed_when_it_ends(box, grader_python):
    box, workdir = box
    code = '''
import ctypes
libc = ctypes.CDLL(None)
print(libc.shmget(0, 4096, 0o1600) >= 0, libc.semget(0, 1, 0o1600) >= 0, libc.msgget(0, 0o1600) >= 0)
'''
    assert run(box, workdir, grader_python, code) == ["True True True"]  # IPC_PRIVATE, IPC_CREAT | 0600: made
    assert confine.ipc_objects(box.uid) == []


@pytest.mark.parametrize("private", [True, False], ids=["private mounts", "without them"])
def test_the_child_writes_nowhere_outside_its_work_folder_or_what_it_writes_is_counted_and_removed(
        box, grader_python, private):
    box, workdir = box
    if private and not box.private_mounts:
        pytest.skip("this container allows no mount namespace")  # measured: this project's VM does
    box.private_mounts = private  # without them, as where the container allows no mount namespace
    code = '''
import os
for folder in ("/var/tmp", "/run/lock", "/tmp", "home"):
    try:
        with open(os.path.join(folder, f"left-{os.getuid()}"), "wb") as f:
            f.write(b"x" * 100000)
        for i in range(1000):  # many files: their removal must be bounded too
            open(os.path.join(folder, f"left-{os.getuid()}-{i}"), "w").close()
        print(folder, "written")
    except OSError as e:
        print(folder, type(e).__name__)
'''
    lines = run(box, workdir, grader_python, code)
    assert lines[-1] == "home written"
    if private:
        assert not [line for line in lines[:-1] if line.endswith("written")], lines
        return
    assert lines[:-1] == [f"{folder} written" for folder in ("/var/tmp", "/run/lock", "/tmp")]
    size, count = box.disk_use(workdir)
    assert size >= 3 * 100000 and count >= 4 * 1001  # counted against the disk and files limits
    began = time.monotonic()
    box.close()
    assert time.monotonic() - began < 30
    left = [p for folder in ("/var/tmp", "/run/lock", "/tmp") for p in Path(folder).glob(f"left-{box.uid}*")]
    assert not left
