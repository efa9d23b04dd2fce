"""The grader's sandbox (course/sandbox.py) against a hostile submission, as root, as on Gradescope.

Each attack is one that broke an earlier grader: the fallback to root, a setsid daemon outliving
its child, one submission reaching another in a batch, a folder written to after its child ended,
a run folder that is a symbolic link, umask 000, a fork bomb, files beyond the disk bound,
setuid programs, a connection to the machine's own listener, and hangs. They need root to switch
users, and are left out (deselected, and counted) where the tests do not run as root; they grade
with real trainings, so they run only with --full. CI runs them, as root.
"""
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from course import autograder
from course.sandbox import Sandbox
from course.settings import FIGURE_TESTS, FUNCTION_TESTS, GRADED, GRID_TEST, LIMITS
from course.untrusted import remove

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
UTILS, GMVAE = (ROOT / "codebase/utils.py").read_text(), (ROOT / "codebase/models/gmvae.py").read_text()
TEST_RANGES = "nelbo=200:240,kl=4:8,rec=195:235"  # as in test_autograder: 20 iterations of the model answer
RUN = GRADED.run_name

# A double-forked, setsid daemon that writes into logs/ for two minutes and looks for other gradings.
DAEMON = '''
import os as _os, sys as _sys, time as _time, glob as _glob
if _os.fork() == 0:
    _os.setsid()
    if _os.fork() == 0:
        _end = _time.time() + 120
        while _time.time() < _end:
            with open(f"/tmp/daemon-trace-{_os.getuid()}", "a") as _f:
                _f.write(f"{_time.time()}\\n")
            try:
                _os.makedirs("logs", exist_ok=True)
                open("logs/daemon.txt", "a").write("still here\\n")
            except OSError:
                pass
            for _other in _glob.glob("/tmp/autograder-*/codebase/models/gmvae.py"):
                try:
                    open(_other).read()
                    open(_other.replace("codebase/models/gmvae.py", "logs/pwned"), "w").write("x")
                    open(f"/tmp/daemon-reached-{_os.getuid()}", "w").write(_other)
                except OSError:
                    pass
            _time.sleep(0.2)
        _os._exit(0)
    _os._exit(0)
'''
def symlinked_run(secret):
    """Module code that, in the training run, makes the run's folders links to a root-only folder."""
    return f'''
import os as _os, sys as _sys
if _sys.argv and _sys.argv[0].endswith("run_gmvae.py"):
    for _kind in ("logs", "checkpoints"):
        _os.makedirs(_kind, exist_ok=True)
        _os.symlink({str(secret)!r} + "/" + _kind, _kind + "/" + {RUN!r})
    _os._exit(0)
'''


FORK_BOMB = '''
import os as _os
while True:
    try:
        _os.fork()
    except OSError:
        pass
'''
BIG_FILES = '''
import os as _os
for _i in range(12):  # 1.2 GB of allocated blocks, half here and half in the shared /tmp where it may write
    _path = f"home/big-{_i}" if _i % 2 else f"/tmp/big-{_os.getuid()}-{_i}"
    try:
        _fd = _os.open(_path, _os.O_CREAT | _os.O_WRONLY)
    except OSError:  # a read-only /tmp (the sandbox's private mounts)
        _fd = _os.open(f"home/big-{_i}", _os.O_CREAT | _os.O_WRONLY)
    _os.posix_fallocate(_fd, 0, 100 << 20)
    _os.close(_fd)
'''
DEEP_TREE = '''
import os as _os
_here = _os.getcwd()
_os.chdir("home")
for _ in range(1500 if not _os.path.exists("d") else 0):  # deeper than shutil.rmtree and Path.rglob recurse
    _os.mkdir("d")
    _os.chdir("d")
_os.chdir(_here)
'''
JSON_BOMB = f'''
import os as _os, sys as _sys
if _sys.argv and _sys.argv[0].endswith("run_gmvae.py"):  # a results.json no parser survives, then a real run
    _os.makedirs("logs/{RUN}", exist_ok=True)
    open("logs/{RUN}/results.json", "w").write("[" * 200000)
'''
FORGED_RESULTS = '''
import torch as _torch
_save = _torch.save
def _forged(obj, f, *args, **kwargs):  # every check's results replaced by ones that break a careless judge
    _huge = _torch.zeros(10**6).expand(10**6, 10**6)
    _save({"name": obj.get("name"), "error": {"frames": [{"x": 1}], "message": "m"},
           "results": {"error at 97": "s", "draw": {"type": "tuple", "items": [_huge]}}},
          f, *args, **kwargs)
def _save_or_forge(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and "results" in obj:
        return _forged(obj, f, *args, **kwargs)
    return _save(obj, f, *args, **kwargs)
_torch.save = _save_or_forge
'''
PRIVILEGES = '''
import sys as _sys
print([line.strip() for line in open("/proc/self/status") if line.startswith("NoNewPrivs")], file=_sys.stderr)
try:
    open("codebase/check/probe.py", "a").write("# changed")
except OSError as _e:
    print("starter file:", type(_e).__name__, file=_sys.stderr)
'''


def phones_home(port):
    """Module code that connects to 127.0.0.1:`port` and says how that went, on its error output."""
    return f'''
import socket as _socket, sys as _sys
try:
    _socket.create_connection(("127.0.0.1", {port}), timeout=5).sendall(b"the student's code got out")
    print("network: connected", file=_sys.stderr)
except OSError as _e:
    print("network:", type(_e).__name__, _e, file=_sys.stderr)
'''


def write_files(folder, files):
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def leftovers(results):
    """pids of live processes of the user ids of these gradings (results.json's extra_data.sandbox)."""
    uids = {int(r["extra_data"]["sandbox"].split()[2].rstrip(",")) for r in results.values()}
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) in uids and not fields["State"].strip().startswith("Z"):
            found.append(int(status.parent.name))
    return found


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    """A root-only folder holding a checkpoint and a results.json that no submission may get graded on."""
    folder = tmp_path_factory.mktemp("secret")
    for kind in ("logs", "checkpoints"):
        (folder / kind).mkdir()
    (folder / "logs" / "results.json").write_text(json.dumps({"nelbo": 12345.678, "kl": 17.5, "rec": 80.0}))
    from codebase.models import GMVAE as Model
    torch.save({"model": Model().state_dict()}, folder / "checkpoints" / "model-00020.pt")
    os.chmod(folder, 0o700)
    return folder


@pytest.fixture(scope="module")
def listener():
    """A TCP server on 127.0.0.1 that no submission may reach."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


@pytest.fixture(scope="module")
def attacks(grader_python, grading_source, mnist_dir, secret, listener, tmp_path_factory):
    """Grade the attacks in one batch, two at a time, under umask 000; {name: results.json}."""
    tmp = tmp_path_factory.mktemp("attacks")
    folder = tmp / "submissions"
    answer = {"gmvae.py": GMVAE}
    write_files(folder / "daemon", {"utils.py": UTILS + DAEMON, **answer})
    write_files(folder / "victim", {"utils.py": UTILS, **answer})
    write_files(folder / "symlinked_run", {"utils.py": UTILS + symlinked_run(secret), **answer})
    write_files(folder / "fork_bomb", {"utils.py": UTILS + FORK_BOMB, **answer})
    write_files(folder / "big_files", {"utils.py": UTILS + BIG_FILES, **answer})
    write_files(folder / "privileges", {"utils.py": UTILS + PRIVILEGES, **answer})
    write_files(folder / "deep_tree", {"utils.py": UTILS + DEEP_TREE, **answer})
    write_files(folder / "json_bomb", {"utils.py": UTILS + JSON_BOMB, **answer})
    write_files(folder / "forged_results", {"utils.py": UTILS + FORGED_RESULTS, **answer})
    write_files(folder / "phones_home", {"utils.py": UTILS + phones_home(listener.getsockname()[1]), **answer})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    began = time.monotonic()
    done = subprocess.run([grader_python, "-m", "course.autograder", "batch", str(folder), "--out",
                           str(tmp / "attacks.csv"), "--iter_max", "20", "--test-ranges", TEST_RANGES,
                           "--data-dir", str(mnist_dir), "--jobs", "2"],
                          cwd=grading_source("attacks_source"), env=env, capture_output=True, text=True, timeout=3600,
                          preexec_fn=lambda: os.umask(0))
    assert done.returncode == 0, done.stderr
    results = {p.stem: json.loads(p.read_text()) for p in (tmp / "attacks").glob("*.json")}
    return {"results": results, "seconds": time.monotonic() - began}


def by_name(results):
    return {t["name"]: t for t in results["tests"]}


def test_as_root_it_refuses_to_grade_rather_than_run_code_as_root(tmp_path, mnist_dir):
    hidden = tmp_path / "hidden"  # a Python in a folder that only root may enter, as one under /root is
    hidden.mkdir(mode=0o700)
    (hidden / "python").symlink_to(sys.executable)
    marker = tmp_path / "ran"
    submission = write_files(tmp_path / "sub", {"utils.py": UTILS + f"\nopen({str(marker)!r}, 'w').write('x')\n",
                                                "gmvae.py": GMVAE})
    out = tmp_path / "results.json"
    done = subprocess.run([str(hidden / "python"), "-m", "course.autograder", "grade", str(submission), "--out",
                           str(out), "--data-dir", str(mnist_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1 and "refusing to run the submission as root" in done.stderr
    results = json.loads(out.read_text())
    assert results["score"] == 0 and "refusing to run the submission as root" in results["output"]
    assert "setup.sh" in results["output"]  # what staff should do
    assert not marker.exists()  # the submission's code never ran


def test_a_daemon_does_not_outlive_its_grading_and_reaches_no_other(attacks):
    results = attacks["results"]
    assert not leftovers(results)
    assert not list(Path("/tmp").glob("daemon-reached-*"))  # never read another grading's files
    assert not list(Path("/tmp").glob("daemon-trace-*"))  # its files outside the work folder are gone
    assert results["victim"]["score"] == 100
    # It kept writing into logs/ until the grader reset it: that costs nothing, and blames nobody.
    assert results["daemon"]["score"] == 100, json.dumps(results["daemon"], indent=1)[:3000]
    assert not [t for t in results["daemon"]["tests"] if "autograder failed" in t["output"]]
    uids = {r["extra_data"]["sandbox"] for r in results.values()}
    assert len(uids) == len(results) and all(u.startswith("as uid ") for u in uids)  # a user of its own each


def test_a_run_folder_that_is_a_symbolic_link_is_never_followed(attacks):
    results = attacks["results"]["symlinked_run"]
    tests = by_name(results)
    assert "12345" not in json.dumps(results)  # the root-only figures were never read
    for name in FIGURE_TESTS:
        assert tests[name]["score"] == 0 and "a symbolic link" in tests[name]["output"], tests[name]["output"]
    assert tests[GRID_TEST]["score"] == 0


def test_a_fork_bomb_is_stopped_at_the_process_bound(attacks):
    tests = by_name(attacks["results"]["fork_bomb"])
    for name in (FUNCTION_TESTS + tuple(FIGURE_TESTS)):  # it forks as its module loads
        assert tests[name]["score"] == 0
        assert "processes and threads; the limit is " in tests[name]["output"], tests[name]
    assert not leftovers(attacks["results"])


def test_files_beyond_the_disk_bound_stop_the_child_and_are_removed(attacks):
    tests = by_name(attacks["results"]["big_files"])
    said = f"more than {LIMITS.disk_mb:,} MB of disk, the limit"
    for name in FIGURE_TESTS:
        assert tests[name]["score"] == 0 and said in tests[name]["output"], tests[name]["output"]
    # The checks that finished before the grader saw the files keep their results; the others are told.
    assert said in tests[FUNCTION_TESTS[-1]]["output"]
    assert not [p for p in Path("/tmp").glob("big-*")]


def test_setuid_programs_give_nothing_and_umask_000_opens_no_starter_file(attacks):
    results = attacks["results"]["privileges"]
    output = by_name(results)[FUNCTION_TESTS[0]]["output"]
    assert "['NoNewPrivs:\\t1']" in output, output
    assert "starter file: PermissionError" in output
    assert results["score"] == 100


def test_what_a_submission_leaves_cannot_make_the_grader_fail(attacks):
    """A tree deeper than Python's recursion, a results.json no parser survives, and result files forged to
    break the judge: each is the submission's doing, and the rest is graded."""
    results = attacks["results"]
    for name in ("deep_tree", "json_bomb", "forged_results"):
        assert "autograder failed" not in json.dumps(results[name]), json.dumps(results[name])[:3000]
    assert results["deep_tree"]["score"] == 100 and results["json_bomb"]["score"] == 100
    forged = by_name(results["forged_results"])
    assert all(forged[n]["score"] == 0 for n in FUNCTION_TESTS)
    assert forged["Training: NELBO"]["score"] == 15  # its training was real, and is graded for what it is
    uids = {int(r["extra_data"]["sandbox"].split()[2].rstrip(",")) for r in results.values()}
    assert not [p for p in Path("/tmp").glob("autograder-*") if p.stat().st_gid in uids]  # work folders removed


def test_student_code_reaches_no_listener_on_the_machine_and_the_grading_says_so(attacks, listener):
    results = attacks["results"]["phones_home"]
    output = by_name(results)[FUNCTION_TESTS[0]]["output"]
    assert "network: PermissionError" in output, output  # socket() itself is refused
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing connected, in the probe or in the training
    assert "no internet sockets" in results["extra_data"]["sandbox"] or "no network" in results["extra_data"]["sandbox"]
    assert results["score"] == 100, json.dumps(results, indent=1)[:6000]  # Unix sockets are all that torch needs


def test_the_sandbox_user_cannot_enter_another_gradings_folder_or_signal_its_processes(grader_python, mnist_dir):
    a, b = Sandbox.open(grader_python, mnist_dir), Sandbox.open(grader_python, mnist_dir)
    folder_a = a.make_workdir({"codebase/models/gmvae.py": b"mine"}, autograder.WRITABLE)
    folder_b = b.make_workdir({"codebase/models/gmvae.py": b"secret"}, autograder.WRITABLE)
    try:
        assert a.uid != b.uid
        sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=b._preexec(folder_b), cwd=folder_b)
        probe = f'''
import os, signal
for what, do in [("read", lambda: open({str(folder_b / "codebase/models/gmvae.py")!r}).read()),
                 ("list", lambda: os.listdir({str(folder_b)!r})),
                 ("write", lambda: open({str(folder_b / "logs/x")!r}, "w")),
                 ("signal", lambda: os.kill({sleeper.pid}, signal.SIGKILL))]:
    try:
        do()
        print(what, "allowed")
    except OSError as e:
        print(what, type(e).__name__)
'''
        outcome = a.run([grader_python, "-c", probe], folder_a, {"PATH": "/usr/bin:/bin"}, 60)
        assert outcome.out.text().split("\n")[:4] == ["read PermissionError", "list PermissionError",
                                                      "write PermissionError", "signal PermissionError"]
        assert sleeper.poll() is None  # a's end killed every process of a, and none of b
    finally:
        a.close()
        b.close()  # kills the sleeper
        remove(folder_a)
        remove(folder_b)
    assert sleeper.wait(timeout=10) == -9


def test_where_the_sandbox_user_could_read_the_references_it_refuses_to_grade(tmp_path, grader_python, mnist_dir):
    # This repository, which holds the answer, read by all: a local regrade from it as root is refused.
    submission = write_files(tmp_path / "sub", {"utils.py": UTILS, "gmvae.py": GMVAE})
    out = tmp_path / "results.json"
    done = subprocess.run([grader_python, "-m", "course.autograder", "grade", str(submission), "--out", str(out),
                           "--data-dir", str(mnist_dir)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1 and "which computes the answer; refusing to grade" in done.stderr, done.stderr
    assert "refusing to grade" in json.loads(out.read_text())["output"]


# Hangs where a student's code can: its log_normal_mixture sleeps in the probe's checks, and its bound sleeps
# in training after 300 steps (the probe's calls are not counted: there the bound runs as written).
HANGS_IN_CHECKS = '''
import sys as _sys, time as _time
_mixture = log_normal_mixture
def log_normal_mixture(*args, **kwargs):
    if not _sys.argv[0].endswith("run_gmvae.py"):
        _time.sleep(10**6)
    return _mixture(*args, **kwargs)
'''
HANGS_IN_TRAINING = '''
import sys as _sys, time as _time
_bound, _calls = GMVAE.negative_elbo_bound, [0]
def _hanging(self, *args, **kwargs):
    _calls[0] += _sys.argv[0].endswith("run_gmvae.py")
    if _calls[0] > 300:
        print(f"hanging from {_time.time():.1f}", file=_sys.stderr, flush=True)
        _time.sleep(10**6)
    return _bound(self, *args, **kwargs)
GMVAE.negative_elbo_bound = _hanging
'''


def test_a_submission_that_hangs_ends_within_five_minutes_of_its_last_progress(tmp_path, grader_python,
                                                                               grading_source, mnist_dir):
    submission = write_files(tmp_path / "hangs", {"utils.py": UTILS + HANGS_IN_CHECKS,
                                                   "gmvae.py": GMVAE + HANGS_IN_TRAINING})
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([grader_python, "-m", "course.autograder", "grade", str(submission), "--out", str(out),
                           "--iter_max", "2000", "--test-ranges", TEST_RANGES, "--data-dir", str(mnist_dir)],
                          cwd=grading_source("hangs_source"), env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    tests, seconds = by_name(results), results["extra_data"]["seconds"]
    stalled = re.findall(r"No progress for (\d+) s at this check", tests[FUNCTION_TESTS[0]]["output"])
    assert stalled and {int(s) for s in stalled} <= {LIMITS.check_seconds, LIMITS.startup_seconds}, tests
    assert tests[FUNCTION_TESTS[0]]["score"] == 0
    training = tests["Training: NELBO"]["output"]
    reached = re.search(rf"no progress for {LIMITS.progress_seconds:g} s at iteration (\d+)", training)
    assert reached and 0 < int(reached[1]) <= 300, training
    # Its last progress: the row before it hung (less than a row's 50 steps before it said so).
    hung = float(re.search(r"hanging from ([0-9.]+)", training)[1])
    assert time.time() - hung < 300, seconds
    # Each check that hangs costs its window, and the probe runs at most probe_runs times.
    assert seconds["probe"] <= LIMITS.probe_runs * (LIMITS.startup_seconds + 10) < 300, seconds
