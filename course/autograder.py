"""Grade GMVAE submissions: on Gradescope, or locally exactly as Gradescope does.

    python -m course.autograder build autograder.zip               # the zip to upload to Gradescope
    python -m course.autograder grade SUBMISSION --out results.json # a folder or a zip, as Gradescope would
    python -m course.autograder batch FOLDER --out summary.csv      # every folder or zip in FOLDER, in parallel

What is graded (the points are in POINTS, the one table to edit):
- each student function, by the self-check (`python -m codebase.check`) run on the submitted
  code; the test's output is the self-check's own diagnosis;
- the IWAE bound of the starter on top of the student's functions (IWAE-1 = NELBO, IWAE falls with k);
- a real training run of the submitted code in the graded setting (20,000 iterations, seed 0,
  CPU): NELBO, KL and Rec against codebase/reference.py's accepted ranges, with partial credit
  (see figure_score);
- the 10 x 20 sample grid the run writes (560 pixels wide, 280 tall).

Only two files are taken from a submission, codebase/utils.py and codebase/models/gmvae.py,
found as loose files, in a codebase/ tree or anywhere in a whole repository (a folder or a
zip); they are dropped into a fresh copy of the student starter (course.handout's, which
holds no solution). Everything else in the submission is ignored.

The submission is never trusted. Its code runs only in child processes, each with a time
limit, a memory cap (RLIMIT_AS), a file-size cap and its output kept to a few kB; when the
grader is root (as on Gradescope), the children run as an unprivileged user (nobody), in a
folder where they can write only logs/, checkpoints/ and a scratch home, so they cannot write
results.json or change the grading code. This process never imports the submission (nor
torch); it writes results.json itself, last. (Not through gradescope-utils: that runs unittest
suites in the grader's own process, which is exactly what must not happen to student code, and
results.json is a small JSON object.)
"""
import argparse
import concurrent.futures
import csv
import hashlib
import io
import json
import math
import os
import re
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from codebase import reference
from codebase.config import Config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the repository, or /autograder/source in the grading image
TEMPLATES = HERE / "gradescope"
# Written into the zip only: the starter's paths, so the image need not regenerate the starter.
MANIFEST = TEMPLATES / "starter_files.txt"

# ---------------------------------------------------------------------------------------------
# The points table: edit here. The defaults sum to 100.
# ---------------------------------------------------------------------------------------------
POINTS = {
    "log_normal_mixture": 25,
    "GMVAE.negative_elbo_bound": 25,
    "IWAE bound on your functions": 10,
    "Training: NELBO": 15,
    "Training: KL": 10,
    "Training: Rec": 10,
    "Sample grid": 5,
}

# Which of the self-check's checks each function test scores, by name prefix ("GMVAE: odd batch"
# takes "GMVAE: odd batch of 97", "log_normal_mixture" also "log_normal_mixture: far points, ...").
# The points are split evenly among the test's checks. "context" checks are run beside them,
# unscored, so that the diagnosis can say when a function they build on fails too.
CHECK_TESTS = {
    "log_normal_mixture": {
        "checks": ("log_normal_mixture",),
        "context": ("log_normal", "log_sum_exp", "log_mean_exp")},
    "GMVAE.negative_elbo_bound": {
        "checks": ("GMVAE.negative_elbo_bound", "GMVAE: odd batch"),
        "context": ("log_normal", "log_sum_exp", "log_mean_exp", "log_normal_mixture", "sample_gaussian",
                    "GMVAE.negative_iwae_bound")},
    "IWAE bound on your functions": {
        "checks": ("GMVAE.negative_iwae_bound", "GMVAE: IWAE-1 = NELBO", "GMVAE: IWAE falls with k"),
        "context": ("log_normal", "log_sum_exp", "log_mean_exp", "log_normal_mixture", "sample_gaussian",
                    "GMVAE.negative_elbo_bound")},
}
FIGURE_TESTS = {"Training: NELBO": "nelbo", "Training: KL": "kl", "Training: Rec": "rec"}
GRID_TEST = "Sample grid"
# The binary-sample grid: codebase.run.SAMPLES["binary"], named here because the grader does not import torch.
GRID_NAME = "samples_binary.png"
GRID_SIZE = (560, 280)  # width, height: 20 x 10 images of 28 x 28

# The files a student writes, and the short names they may upload them under.
STUDENT_FILES = {"codebase/utils.py": "utils.py", "codebase/models/gmvae.py": "gmvae.py"}
MODEL = "gmvae"
GRADED = Config(model=MODEL)  # its defaults are the graded setting (seed 0, z 10, k 500)
GRADED_ITER = reference.GRADED_SETTING[MODEL]["iter_max"]

# Limits for the student's code; each can be changed on the command line.
CHECK_SECONDS = 120  # one self-check child: a few seconds when the code is sound
TRAIN_SECONDS = 600  # the training run: about 2 to 3 minutes on 2 CPU cores
MEMORY_GB = 6.0  # address space per child; torch alone maps about 3 GB of it, training adds about 1.5
FILE_MB = 512  # the largest file a child may write (a checkpoint is under 10 MB)
KEEP_BYTES = 2048  # of a child's other output: this much of the start and of the end
MAX_SOURCE_BYTES = 1 << 20  # a student file larger than this is refused
MAX_UNZIPPED_BYTES = 512 << 20  # a submission zip larger than this, unpacked, is refused
SANDBOX_USER = "nobody"
# The grading code, which the zip holds beside the starter.
GRADER_FILES = ("course/__init__.py", "course/autograder.py", "course/gradescope/requirements.txt")
# Hashed before and after the student's code runs: the grading code and the project modules it imports.
HASHED_FILES = GRADER_FILES + ("codebase/config.py", "codebase/reference.py")
IGNORED_PARTS = {"__MACOSX", ".git", "__pycache__", ".ipynb_checkpoints"}


class SubmissionError(ValueError):
    """The submission cannot be read at all (not a folder or zip, a broken zip); one line."""


class GraderError(RuntimeError):
    """The grader cannot grade anything (no MNIST, say): the instructor's problem, not the student's."""


# ---------------------------------------------------------------------------------------------
# Finding the student's files
# ---------------------------------------------------------------------------------------------

@dataclass
class Found:
    files: dict = field(default_factory=dict)  # {starter path: bytes}
    where: dict = field(default_factory=dict)  # {starter path: path in the submission}
    missing: list = field(default_factory=list)  # starter paths not found
    notes: list = field(default_factory=list)  # lines for the student
    ignored: int = 0  # other files in the submission


def _submission_entries(submission):
    """{relative posix path: a callable returning the bytes, and the size} of a folder or zip's files."""
    path = Path(submission)
    if path.is_dir():
        entries = {}
        for p in sorted(path.rglob("*")):
            rel = p.relative_to(path)
            if p.is_symlink() or not p.is_file() or IGNORED_PARTS & set(rel.parts):
                continue  # a link could point at the grader's own files
            entries[rel.as_posix()] = (lambda p=p: p.read_bytes(), p.stat().st_size)
        return entries
    if path.is_file() and zipfile.is_zipfile(path):
        return _zip_entries(path, path.name)
    if path.exists():
        raise SubmissionError(f"{path} is neither a folder nor a zip")
    raise SubmissionError(f"{path} does not exist")


def _zip_entries(file, name):
    """_submission_entries of a zip: `file` is its path or a file object, `name` what messages call it."""
    try:
        archive = zipfile.ZipFile(file)
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise SubmissionError(f"{name} is not a readable zip ({e})") from None
    if sum(i.file_size for i in infos) > MAX_UNZIPPED_BYTES:
        raise SubmissionError(f"{name} unpacks to more than {MAX_UNZIPPED_BYTES >> 20} MB")
    entries = {}
    for info in infos:
        parts = [p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".")]
        link = stat.S_ISLNK(info.external_attr >> 16)
        if info.is_dir() or link or ".." in parts or IGNORED_PARTS & set(parts):
            continue
        entries["/".join(parts)] = (lambda info=info: archive.read(info), info.file_size)
    return entries


def _with_inner_zips(entries):
    """entries, and the files of each zip among them as "<zip's path>/<path inside>": students upload
    a folder that holds their zipped repository, or a zip of a zip. One level deep; an unreadable
    inner zip is left as a file."""
    found = dict(entries)
    for name, (read, size) in entries.items():
        if name.lower().endswith(".zip") and size <= MAX_UNZIPPED_BYTES:
            try:
                inner = _zip_entries(io.BytesIO(read()), name)
            except SubmissionError:
                continue
            found |= {f"{name}/{inner_name}": entry for inner_name, entry in inner.items()}
    return found


def collect(submission):
    """The student's two files from a submission: loose, in a codebase/ tree, or in a whole repo,
    which may itself be a zip inside the submission.

    For each file, a path ending in its full starter path (codebase/models/gmvae.py) is
    preferred to a bare name (gmvae.py), and a shallower one to a deeper one.

    Returns:
        found: Found
    """
    entries = _with_inner_zips(_submission_entries(submission))
    found = Found()
    for target, short in STUDENT_FILES.items():
        full = [n for n in entries if n == target or n.endswith("/" + target)]
        bare = [n for n in entries if n == short or n.endswith("/" + short)]
        candidates = sorted(full or bare, key=lambda n: (n.count("/"), n))
        if not candidates:
            found.missing.append(target)
            continue
        name = candidates[0]
        read, size = entries[name]
        if len(candidates) > 1:
            found.notes.append(f"{len(candidates)} files could be {target}; graded {name}.")
        if size > MAX_SOURCE_BYTES:
            found.notes.append(f"{name} is {size:,} bytes, over the {MAX_SOURCE_BYTES:,} accepted: not graded.")
            found.missing.append(target)
            continue
        data = read()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            found.notes.append(f"{name} is not UTF-8 text: not graded.")
            found.missing.append(target)
            continue
        found.files[target], found.where[target] = data, name
    found.ignored = len(entries) - len(found.where)
    return found


def syntax_errors(found):
    """One line per student file that does not compile (compiling runs none of its code)."""
    lines = []
    for target, data in found.files.items():
        try:
            compile(data, target, "exec", dont_inherit=True)
        except SyntaxError as e:
            lines.append(f"{found.where[target]} does not compile: {e.msg} (line {e.lineno}).")
        except (ValueError, RecursionError, MemoryError) as e:
            lines.append(f"{found.where[target]} does not compile: {type(e).__name__}: {e}.")
    return lines


# ---------------------------------------------------------------------------------------------
# Running the student's code: child processes with limits
# ---------------------------------------------------------------------------------------------

VERDICT = re.compile(r"^(PASS|FAIL)  (.+)$")
TOTALS = re.compile(r"^(\d+) passed, (\d+) failed$")


class Capture:
    """A child's output stream, kept to its first and last KEEP_BYTES, with its verdict lines apart.

    The self-check's lines (PASS/FAIL and the totals) are kept whole, up to a few hundred,
    even when the student's code printed without a newline just before one (the verdict then
    ends that line); any other output only counts towards `other`, beyond the head and tail
    kept.
    """

    LONG = 4096  # the most of a line looked at for a verdict: its end

    def __init__(self, verdicts=False):
        self.head, self.tail, self.total = bytearray(), bytearray(), 0
        self.verdicts = [] if verdicts else None
        self.other = 0  # bytes that are not verdict lines
        self._line = bytearray()

    def feed(self, data):
        self.total += len(data)
        if self.verdicts is None:
            self._keep(data)
            return
        for piece in data.splitlines(keepends=True):
            self._line += piece
            if len(self._line) > 2 * self.LONG:  # only a line's end can hold a verdict
                self._keep(bytes(self._line[:-self.LONG]))
                del self._line[:-self.LONG]
            if piece.endswith((b"\n", b"\r")):
                self._end_line()

    def close(self):
        if self.verdicts is not None and self._line:
            self._end_line()

    def _end_line(self):
        text = self._line.decode("utf-8", errors="replace").rstrip("\r\n")
        self._line.clear()
        starts = [m.start() for m in re.finditer(r"(?:PASS|FAIL)  |\d+ passed, \d+ failed$", text)]
        at = next((i for i in reversed(starts) if VERDICT.match(text[i:]) or TOTALS.match(text[i:])), None)
        if at is None or len(self.verdicts) >= 500:
            self._keep((text + "\n").encode())
            return
        if at:
            self._keep((text[:at] + "\n").encode())  # the student's unfinished line before it
        self.verdicts.append(text[at:])

    def _keep(self, data):
        self.other += len(data)
        room = KEEP_BYTES - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail = (self.tail + data)[-KEEP_BYTES:]

    def text(self):
        """What was kept of the other output, with a marker where bytes were left out."""
        head = self.head.decode("utf-8", errors="replace")
        if self.other <= len(self.head) + len(self.tail):
            return head + self.tail.decode("utf-8", errors="replace")
        left_out = self.other - len(self.head) - len(self.tail)
        return (head + f"\n[... {left_out:,} bytes left out ...]\n" +
                self.tail.decode("utf-8", errors="replace"))


@dataclass
class Outcome:
    returncode: int  # negative: killed by that signal
    timed_out: bool
    out: Capture
    err: Capture


# Run as the sandbox user: can it import torch, and read MNIST? (exit 2: no torch, 3: no data)
PROBE = """import importlib.util, os, sys
if importlib.util.find_spec("torch") is None:
    sys.exit(2)
try:
    for name in os.listdir(sys.argv[1]):
        open(os.path.join(sys.argv[1], name), "rb").close()
except OSError:
    sys.exit(3)
"""


@dataclass
class Sandbox:
    """Who runs the student's code and under which limits."""
    uid: int = None  # None: as this process's user
    gid: int = None
    memory_gb: float = MEMORY_GB
    threads: int = 1
    copy_data: bool = False  # the sandbox user cannot read the MNIST folder: give it a copy
    note: str = ""  # why the code does not run as the sandbox user, for the instructor

    @staticmethod
    def make(memory_gb=MEMORY_GB, threads=1, data_dir=None):
        """As SANDBOX_USER when this process is root and that user can run this Python; else as this user."""
        if os.geteuid() != 0:
            return Sandbox(None, None, memory_gb, threads, note="the grader is not root, so the student's code "
                                                                "runs as the grader's own user")
        import pwd
        user = pwd.getpwnam(SANDBOX_USER)
        box = Sandbox(user.pw_uid, user.pw_gid, memory_gb, threads)
        raw = Path(data_dir or ROOT / "data") / "MNIST" / "raw"
        try:
            probe = run_child([sys.executable, "-c", PROBE, str(raw)], "/", box, 60, {"PATH": "/usr/bin:/bin"})
            code = probe.returncode
        except OSError as e:  # the interpreter itself cannot be run by that user
            code = f"{type(e).__name__}: {e}"
        if code == 0:
            return box
        if code == 3:
            box.copy_data = True
            return box
        return Sandbox(None, None, memory_gb, threads,
                       note=f"{SANDBOX_USER} cannot run {sys.executable} with torch ({code}), so the student's "
                            f"code runs as root: install the grader's Python where {SANDBOX_USER} can read it")

    def describe(self):
        if self.uid is None:
            return f"as this process's user (uid {os.geteuid()}): {self.note}"
        return f"as {SANDBOX_USER} (uid {self.uid})"

    def limits(self):
        """The rlimits, set in the child after fork (and after the switch of user)."""
        memory = int(self.memory_gb * (1 << 30))
        sandboxed = self.uid is not None

        def apply():
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_MB << 20, FILE_MB << 20))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if sandboxed:  # per user: only meaningful for a user that runs nothing else
                resource.setrlimit(resource.RLIMIT_NPROC, (256, 256))

        return apply


def run_child(argv, cwd, sandbox, timeout, env, verdicts=False):
    """Run argv in cwd under the sandbox; kill its whole process group after `timeout` s.

    The output is read as it comes (so a child that prints 100 MB never blocks or fills
    memory) and kept as Captures. Whatever the child started is killed with it.
    """
    extra = {}
    if sandbox.uid is not None:
        extra = {"user": sandbox.uid, "group": sandbox.gid, "extra_groups": []}
    began = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                            preexec_fn=sandbox.limits(), **extra)
    out, err = Capture(verdicts), Capture()
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    selector = selectors.DefaultSelector()
    for fd in streams:
        selector.register(fd, selectors.EVENT_READ)
    deadline, drain_until, timed_out = began + timeout, None, False
    try:
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = proc.poll() is None
                break
            if drain_until is None and proc.poll() is not None:
                drain_until = now + 2.0  # a process it left behind may hold the pipes open
            if drain_until is not None and now >= drain_until:
                break
            for key, _ in selector.select(timeout=min(deadline - now, 0.5)):
                data = os.read(key.fd, 1 << 16)
                if data:
                    streams[key.fd].feed(data)
                else:
                    selector.unregister(key.fd)
    finally:
        selector.close()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the child and all it started, still in its group
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        out.close()
    return Outcome(proc.returncode, timed_out, out, err)


def child_env(workdir, threads):
    """A clean environment: none of the grader's variables reach the student's code."""
    n = str(threads)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir / "home"),
            "TMPDIR": str(workdir / "home"), "MPLCONFIGDIR": str(workdir / "home"), "MPLBACKEND": "Agg",
            "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


# ---------------------------------------------------------------------------------------------
# The graded folder: the starter with the student's two files in it
# ---------------------------------------------------------------------------------------------

def starter_files():
    """{path: bytes} of the student starter: from the image's manifest, or made by course.handout."""
    if MANIFEST.is_file():
        return {name: (ROOT / name).read_bytes() for name in MANIFEST.read_text().split()}
    from course import handout
    return handout.starter_files(set(handout.VARIANTS["default"]))


WRITABLE = ("logs", "checkpoints", "home")  # all the student's code may write in the graded folder


def make_workdir(found, sandbox):
    """A fresh graded folder: the starter, the student's files, and the writable folders.

    Everything but WRITABLE is owned by this process and read-only to the sandbox user, so
    the student's code cannot rewrite the self-check or the run scripts it is graded by.
    """
    workdir = Path(tempfile.mkdtemp(prefix="autograder-"))
    os.chmod(workdir, 0o755)
    files = starter_files()
    files.update(found.files)
    for name, data in files.items():
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for name in WRITABLE:
        reset_writable(workdir / name, sandbox)
    return workdir


def reset_writable(path, sandbox):
    """An empty folder that the sandbox user owns (a student's earlier child may have filled it)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o755)
    if sandbox.uid is not None:
        os.chown(path, sandbox.uid, sandbox.gid)


def read_regular(path, limit=1 << 20):
    """The bytes of a regular file the student's code wrote, never following a link; None if unsafe."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(limit + 1)


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

def entry(name, score, output, **extra):
    """One entry of results.json's tests."""
    points = POINTS[name]
    score = round(min(max(score, 0.0), points), 2)
    return {"name": name, "score": score, "max_score": points, "output": output.strip(),
            "visibility": "visible", **extra}


def belongs(check, prefix):
    """Whether a check's line (its name, maybe followed by ': ...') is of a check named by `prefix`."""
    return check == prefix or (check.startswith(prefix) and check[len(prefix)] in ": ")


def printed(capture, what="Your code printed"):
    """A note on output that is not the self-check's own, or ''."""
    text = capture.text().strip()
    if not text:
        return ""
    size = f"{capture.other:,} bytes" + (f" (kept: the first and last {KEEP_BYTES:,})"
                                         if capture.other > 2 * KEEP_BYTES else "")
    return f"\n\n{what} {size}:\n{text}"


def self_check(prefixes, workdir, sandbox, timeout):
    """`python -m codebase.check --only ...` in the graded folder, as a sandboxed child."""
    argv = [sys.executable, "-m", "codebase.check"] + [a for p in prefixes for a in ("--only", p)]
    return run_child(argv, workdir, sandbox, timeout, child_env(workdir, sandbox.threads), verdicts=True)


def finished(outcome):
    return not outcome.timed_out and any(TOTALS.match(v) for v in outcome.out.verdicts)


def grade_checks(names, workdir, sandbox, timeout):
    """The function tests, scored by the share of their checks that pass.

    All of them come from one run of the self-check; if that run hangs or dies, the checks
    after the culprit never ran, so each test then gets a run of its own, with its own limit.
    """
    specs = {name: CHECK_TESTS[name] for name in names}
    prefixes = list(dict.fromkeys(p for spec in specs.values() for p in spec["checks"] + spec["context"]))
    outcome = self_check(prefixes, workdir, sandbox, timeout)
    if finished(outcome):
        return [guarded(n, lambda: score_checks(n, spec, outcome, sandbox, timeout)) for n, spec in specs.items()]
    return [guarded(n, lambda: score_checks(n, spec, self_check(spec["checks"] + spec["context"], workdir, sandbox,
                                                                 timeout), sandbox, timeout))
            for n, spec in specs.items()]


def score_checks(name, spec, outcome, sandbox, timeout):
    """A function test from a self-check run's lines: its own checks, and the failures of those it builds on."""
    lines = outcome.out.verdicts
    checks = [(v, VERDICT.match(v)[2]) for v in lines if VERDICT.match(v)]
    own = [v for v, rest in checks if any(belongs(rest, p) for p in spec["checks"])]
    context = [v for v, rest in checks if v not in own and v.startswith("FAIL")
               and any(belongs(rest, p) for p in spec["context"])]
    totals = [TOTALS.match(v) for v in lines if TOTALS.match(v)]
    shown = "\n".join(own)
    if context:
        shown += "\n\nFunctions it builds on that fail too (fix these first):\n" + "\n".join(context)
    extra = printed(outcome.out) + printed(outcome.err, "Error output")
    if outcome.timed_out:
        last = f" (the last check that finished: {checks[-1][0][:150]})" if checks else ""
        return entry(name, 0, f"Timed out after {timeout:g} s{last}: is there an endless loop or a sleep in "
                             f"your code?\n\n{shown}{extra}")
    if not totals:
        why = describe_exit(outcome, sandbox)
        return entry(name, 0, f"The self-check stopped before it finished ({why}).\n\n{shown}{extra}")
    if len(checks) != int(totals[-1][1]) + int(totals[-1][2]):
        return entry(name, 0, "The self-check's PASS and FAIL lines do not add up to its totals: your code "
                              "printed lines like them, or printed into them. Graded 0: do not print lines that "
                              f"begin with PASS or FAIL.\n\n{shown}{extra}")
    if not own:
        return entry(name, 0, f"The self-check ran none of the checks of {name}: this is an error of the "
                             f"autograder, not yours; staff will regrade.{extra}", status="failed")
    passed = sum(v.startswith("PASS") for v in own)
    head = (f"{passed} of {len(own)} checks passed." if passed < len(own) else
            f"All {len(own)} checks passed.")
    return entry(name, POINTS[name] * passed / len(own), f"{head}\n{shown}{extra}")


def describe_exit(outcome, sandbox):
    """Why a child ended without finishing, in words."""
    code = outcome.returncode
    last = [line for line in outcome.err.text().splitlines() if line.strip()]
    tail = f": {last[-1].strip()[:300]}" if last else ""
    if code == -signal.SIGKILL or "MemoryError" in tail or "can't allocate memory" in tail:
        return f"exit {code}{tail}; it may have run out of memory (the cap is {sandbox.memory_gb:g} GB)"
    if code < 0:
        return f"killed by signal {-code}{tail}"
    return f"exit status {code}{tail}"


def figure_score(value, low, high, points):
    """Partial credit for a figure: full points inside [low, high], falling linearly to 0 at one
    half-width (high - low) / 2 outside it; 0 for nan or inf."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    half = (high - low) / 2
    off = max(low - value, value - high, 0.0)
    return points * max(0.0, 1.0 - off / half)


def grade_training(workdir, sandbox, timeout, iter_max, data_dir, ranges):
    """The training run: the three figure tests and the grid test."""
    for name in ("logs", "checkpoints"):
        reset_writable(workdir / name, sandbox)  # nothing a check child wrote may pose as the run's output
    argv = [sys.executable, reference.RUN_SCRIPTS[MODEL], "--iter_max", str(iter_max), "--seed", str(GRADED.seed),
            "--device", "cpu", "--threads", str(sandbox.threads), "--data-dir", str(data_dir)]
    outcome = run_child(argv, workdir, sandbox, timeout, child_env(workdir, sandbox.threads))
    setting = f"{iter_max:,} iterations, seed {GRADED.seed}, on the CPU"
    run_dir = workdir / GRADED.log_dir
    results, failure = None, None
    if outcome.timed_out:
        failure = f"The training run ({setting}) timed out after {timeout:g} s."
    elif outcome.returncode != 0:
        failure = f"The training run ({setting}) failed ({describe_exit(outcome, sandbox)})."
    else:
        raw = read_regular(run_dir / "results.json")
        try:
            results = json.loads(raw) if raw else None
            figures = {t: float(results[t]) for t in FIGURE_TESTS.values()}
        except (ValueError, TypeError, KeyError):
            results = None
        if results is None:
            failure = f"The training run ({setting}) finished but left no readable {run_dir.name}/results.json."
        elif results.get("iterations") != iter_max:
            failure = f"The run's results.json reports {results.get('iterations')} iterations, not {iter_max}."
    tests = []
    if failure:
        extra = printed(outcome.err, "The run's last output")
        for name in FIGURE_TESTS:
            tests.append(entry(name, 0, f"{failure}{extra}"))
        tests.append(entry(GRID_TEST, 0, "No sample grid: the training run did not finish."))
        return tests, None
    summary = ", ".join(f"{reference.TERM_LABELS[t]} {figures[t]:.2f}" for t in ("nelbo", "kl", "rec"))
    full = results.get("test_nelbo")
    about = (f"Your run ({setting}): {summary} on the course's 100-image test subset"
             + (f"; NELBO {full:.2f} on the full test split." if isinstance(full, (int, float)) else "."))
    if abs(figures["kl"] + figures["rec"] - figures["nelbo"]) > 1e-3 * abs(figures["nelbo"]) + 1e-3:
        about += " Note: NELBO is not KL + Rec; see GMVAE.negative_elbo_bound."
    if iter_max != GRADED_ITER:
        about += f" (A shortened run: the graded setting is {GRADED_ITER:,} iterations.)"
    for name, term in FIGURE_TESTS.items():
        low, high = ranges[term]
        value, points, label = figures[term], POINTS[name], reference.TERM_LABELS[term]
        score = figure_score(value, low, high, points)
        if score == points:
            verdict = f"{label} {value:.2f} is inside the accepted {low:g} to {high:g}: full marks."
        elif score > 0:
            verdict = (f"{label} {value:.2f} is outside the accepted {low:g} to {high:g}, but within "
                       f"{(high - low) / 2:g} of it: partial credit.")
        elif math.isfinite(value):
            verdict = (f"{label} {value:.2f} is far outside the accepted {low:g} to {high:g}: run "
                       "python -m codebase.check and look at your training curve (logs/<run>/metrics.csv).")
        else:
            verdict = (f"{label} is {value}, not a number: training diverged or a log-density "
                       "underflowed; run python -m codebase.check.")
        tests.append(entry(name, score, f"{verdict}\n{about}"))
    tests.append(grade_grid(run_dir))
    return tests, figures


def png_size(data):
    """(width, height) of PNG bytes, read from the header alone, or None."""
    if not data or len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def grade_grid(run_dir):
    size = png_size(read_regular(run_dir / GRID_NAME, limit=64))
    if size is None:
        return entry(GRID_TEST, 0, f"The run wrote no sample grid ({GRID_NAME}) in {run_dir.name}/.")
    width, height = size
    if size == GRID_SIZE:
        return entry(GRID_TEST, POINTS[GRID_TEST], f"{GRID_NAME}: {width} x {height} pixels, 10 rows of 20 "
                                                  "samples, as Problem 3.3 asks.")
    return entry(GRID_TEST, 0, f"{GRID_NAME} is {width} x {height} pixels; a grid of 10 rows of 20 images of "
                              f"28 x 28 is {GRID_SIZE[0]} x {GRID_SIZE[1]}.")


# ---------------------------------------------------------------------------------------------
# Grading one submission
# ---------------------------------------------------------------------------------------------

def grader_digest():
    """A hash of the grading code, to see whether anything changed it while the student's code ran."""
    digest = hashlib.sha256()
    for name in HASHED_FILES:
        path = ROOT / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"(missing)"))
    return digest.hexdigest()


def file_state(path):
    try:
        info = os.lstat(path)
        return (info.st_mtime_ns, info.st_size, info.st_ino)
    except OSError:
        return None


def accepted_ranges(test_ranges=None):
    """{term: (low, high)}: the course's (codebase/reference.py), or those a test gave."""
    ranges = {term: reference.accepted_range(MODEL, term) for term in FIGURE_TESTS.values()}
    ranges.update(test_ranges or {})
    return ranges


def grade(submission, out, iter_max=GRADED_ITER, data_dir=None, threads=None, check_seconds=CHECK_SECONDS,
          train_seconds=TRAIN_SECONDS, memory_gb=MEMORY_GB, only=None, test_ranges=None):
    """Grade a submission and write results.json; returns the results as a dict."""
    began = time.monotonic()
    out = Path(out).resolve()
    data_dir = Path(data_dir or ROOT / "data").resolve()
    threads = threads or len(os.sched_getaffinity(0))
    sandbox = Sandbox.make(memory_gb, threads, data_dir)
    digest, out_before = grader_digest(), file_state(out)
    notes, tests, extra = [], [], {"iter_max": iter_max, "sandbox": sandbox.describe()}
    try:
        found = collect(submission)
    except SubmissionError as e:
        found = Found(missing=list(STUDENT_FILES))
        notes.append(f"Your submission could not be read: {e}.")
    graded = ", ".join(found.where[t] for t in STUDENT_FILES if t in found.where)
    notes.append(f"Graded: {graded or 'nothing'}" + (f"; {found.ignored} other file(s) ignored (only "
                 f"{' and '.join(STUDENT_FILES.values())} are graded)." if found.ignored else "."))
    for target in found.missing:
        notes.append(f"Missing: {STUDENT_FILES[target]} ({target}); the starter's version was used, so its "
                     "functions count as not implemented. Upload it to be graded on it.")
    notes += found.notes + syntax_errors(found)
    if not (data_dir / "MNIST" / "raw").is_dir():
        raise GraderError(f"no MNIST in {data_dir}; run python -m codebase.data --data-dir {data_dir} "
                          "first (setup.sh does so in the grading image)")

    wanted = lambda name: not only or name in only
    workdir = make_workdir(found, sandbox)
    if sandbox.copy_data:  # a copy that the sandbox user can read
        shutil.copytree(data_dir / "MNIST" / "raw", workdir / "data" / "MNIST" / "raw")
        data_dir = workdir / "data"
    try:
        names = [name for name in CHECK_TESTS if wanted(name)]
        if names:
            tests += grade_checks(names, workdir, sandbox, check_seconds)
        if any(wanted(name) for name in (*FIGURE_TESTS, GRID_TEST)):
            ranges = accepted_ranges(test_ranges)
            try:
                run_tests, figures = grade_training(workdir, sandbox, train_seconds, iter_max, data_dir, ranges)
            except Exception as e:  # a bug of the grader: say so, and grade the rest
                run_tests, figures = [grader_failed(n, e) for n in (*FIGURE_TESTS, GRID_TEST)], None
            tests += [t for t in run_tests if wanted(t["name"])]
            # JSON has no nan: Gradescope would refuse the whole file.
            extra["figures"] = {t: v if math.isfinite(v) else str(v) for t, v in (figures or {}).items()}
            extra["ranges"] = ranges
            if test_ranges:
                notes.append(f"Figures graded against TEST ranges {test_ranges}, not the course's.")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    if grader_digest() != digest:
        notes.append("Warning: the grading code changed while your code ran; graded with the code loaded "
                     "before. Staff will review this submission.")
        extra["grader_changed"] = True
    if file_state(out) != out_before:
        notes.append(f"Warning: something other than the grader wrote {out.name} while your code ran; it has "
                     "been replaced. Staff will review this submission.")
        extra["results_written_by_submission"] = True
    if sandbox.uid is None:
        print(f"Note: the student's code ran {sandbox.describe()}.", file=sys.stderr)
    if only:
        notes.append(f"Only these tests were run (--only): {', '.join(only)}.")
    total = round(sum(t["score"] for t in tests), 2)
    possible = sum(POINTS[t["name"]] for t in tests)
    lines = [f"Score: {total:g} / {possible:g}."] + [f"- {t['name']}: {t['score']:g} / {t['max_score']:g}"
                                                     for t in tests]
    output = "\n".join(notes + [""] + lines + [
        "", "Each test below shows the self-check's diagnosis; run python -m codebase.check on your own "
            "machine for the same lines."])
    for number, t in enumerate(tests, start=1):
        t["number"] = str(number)
    results = {"score": total, "execution_time": round(time.monotonic() - began, 1), "output": output,
               "tests": tests, "extra_data": extra}
    write_results(out, results)
    return results


def guarded(name, make):
    """A test's result; an error of the grader itself gives 0 with a message, and the rest goes on."""
    try:
        return make()
    except Exception as e:
        return grader_failed(name, e)


def grader_failed(name, error):
    detail = "".join(traceback.format_exception_only(type(error), error)).strip()
    return entry(name, 0, f"The autograder failed on this test ({detail}): an error of the autograder, "
                         "not of your code; staff will regrade.", status="failed")


def write_results(out, results):
    """Write results.json atomically: a reader never sees half of it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_symlink():
        out.unlink()
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(results, f, indent=2, allow_nan=False)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)


# ---------------------------------------------------------------------------------------------
# Regrading a folder of submissions
# ---------------------------------------------------------------------------------------------

def worst_case_seconds(check_seconds, train_seconds):
    """The longest a grading can take: the self-check, its reruns after a hang, training, and slack."""
    return check_seconds * (len(CHECK_TESTS) + 1) + train_seconds + 120


def submissions_in(folder):
    """{name: path} of the submissions in a folder: each subfolder and each zip."""
    found = {}
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or path.name in IGNORED_PARTS:
            continue
        if path.is_dir():
            found[path.name] = path
        elif path.is_file() and path.suffix.lower() == ".zip":
            # alice.zip beside a folder alice/ is another submission: it keeps its suffix in its name.
            found[path.name if (path.parent / path.stem).is_dir() else path.stem] = path
    return found


def batch(folder, out, jobs=None, pass_on=(), limit=None, log=print):
    """Grade every submission in `folder`, one process and one thread each, `jobs` at once.

    Writes a results.json per submission into <out without .csv>/ and a row per submission
    to the CSV `out`: the total, then a column per test.
    """
    out = Path(out)
    entries = submissions_in(folder)
    if not entries:
        raise SystemExit(f"error: no submissions (folders or zips) in {folder}")
    per_student = out.with_suffix("")
    per_student.mkdir(parents=True, exist_ok=True)
    jobs = jobs or len(os.sched_getaffinity(0))
    limit = limit or worst_case_seconds(CHECK_SECONDS, TRAIN_SECONDS)

    def one(name, path):
        target = per_student / f"{name}.json"
        target.unlink(missing_ok=True)  # an earlier batch's file must not pass for this grading's
        argv = [sys.executable, "-m", "course.autograder", "grade", str(path), "--out", str(target),
                "--threads", "1", *pass_on]
        try:
            done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=limit)
            lines = done.stderr.strip().splitlines()
            problem = (lines[-1] if lines else f"exit status {done.returncode}") if done.returncode else ""
        except subprocess.TimeoutExpired:
            problem = f"the grader itself ran over {limit} s"
        try:
            return name, json.loads(target.read_text()), problem
        except (OSError, ValueError):
            return name, None, problem or "no results.json"

    rows = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, name, path) for name, path in entries.items()]
        for i, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            name, results, problem = future.result()
            score = results["score"] if results else ""
            log(f"[{i}/{len(entries)}] {name}: {score if results else 'ERROR ' + problem}")
            rows.append((name, results, problem))
    names = list(POINTS)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", "score", *names, "problem"])
        for name, results, problem in sorted(rows, key=lambda r: r[0]):
            scores = {t["name"]: t["score"] for t in (results or {}).get("tests", [])}
            writer.writerow([name, results["score"] if results else "", *[scores.get(n, "") for n in names],
                             problem])
    log(f"Wrote {out} ({len(rows)} submissions) and one results.json each in {per_student}/.")
    return rows


# ---------------------------------------------------------------------------------------------
# The Gradescope zip
# ---------------------------------------------------------------------------------------------

def zip_files():
    """{path: (bytes, mode)} of the autograder zip: the starter, the grading code, setup.sh, run_autograder."""
    from course import handout
    starter = handout.starter_files(set(handout.VARIANTS["default"]))
    files = {name: (data, 0o644) for name, data in starter.items()}
    for name in GRADER_FILES:
        files[name] = ((ROOT / name).read_bytes(), 0o644)
    files["setup.sh"] = ((TEMPLATES / "setup.sh").read_bytes(), 0o755)
    files["run_autograder"] = ((TEMPLATES / "run_autograder").read_bytes(), 0o755)
    files[MANIFEST.relative_to(ROOT).as_posix()] = ("".join(f"{n}\n" for n in sorted(starter)).encode(), 0o644)
    return dict(sorted(files.items()))


def build(zip_path):
    """Write the Gradescope zip (deterministic bytes, like the starter's)."""
    from course.handout import ZIP_TIME
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, (data, mode) in zip_files().items():
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | mode) << 16
            archive.writestr(info, data, compresslevel=9)
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(f".{zip_path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(zip_path)
    return zip_path


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------

def _ranges(text):
    """--test-ranges nelbo=100:400,kl=0:50: ranges for short runs in tests, never for grading."""
    ranges = {}
    for part in text.split(","):
        term, _, span = part.partition("=")
        low, _, high = span.partition(":")
        if term not in FIGURE_TESTS.values():
            raise argparse.ArgumentTypeError(f"unknown figure {term!r}")
        ranges[term] = (float(low), float(high))
    return ranges


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value
    return parse


def build_parser():
    p = argparse.ArgumentParser(prog="python -m course.autograder",
                                description="Gradescope autograder for the GMVAE problem set.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the Gradescope autograder zip")
    b.add_argument("zip", help="where to write it, e.g. autograder.zip")

    def grading_flags(q):
        q.add_argument("--out", required=True, help="results.json (grade) or summary.csv (batch)")
        q.add_argument("--iter_max", type=_positive(int), default=GRADED_ITER,
                       help=f"training iterations (default: the graded {GRADED_ITER})")
        q.add_argument("--data-dir", dest="data_dir", help="MNIST (default: data/ beside course/)")
        q.add_argument("--check-timeout", dest="check_seconds", type=_positive(float), default=CHECK_SECONDS,
                       help=f"seconds for each self-check test (default {CHECK_SECONDS})")
        q.add_argument("--train-timeout", dest="train_seconds", type=_positive(float), default=TRAIN_SECONDS,
                       help=f"seconds for the training run (default {TRAIN_SECONDS})")
        q.add_argument("--memory-gb", dest="memory_gb", type=_positive(float), default=MEMORY_GB,
                       help=f"address-space cap of each child, in GB (default {MEMORY_GB:g})")
        q.add_argument("--only", action="append", choices=list(POINTS), metavar="TEST",
                       help="run only this test (repeatable); the others are left out of the results")
        q.add_argument("--test-ranges", dest="test_ranges", type=_ranges, help=argparse.SUPPRESS)

    g = sub.add_parser("grade", help="grade one submission (a folder or a zip) as Gradescope does")
    g.add_argument("submission")
    grading_flags(g)
    g.add_argument("--threads", type=_positive(int), help="CPU threads for training (default: every usable CPU)")
    a = sub.add_parser("batch", help="grade every folder and zip in FOLDER, a row each in a CSV")
    a.add_argument("folder")
    grading_flags(a)
    a.add_argument("--jobs", type=_positive(int), help="submissions at once (default: the number of CPUs)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "build":
        path = build(args.zip)
        print(f"Wrote {path}: upload it as the autograder of the Gradescope assignment.")
        return 0
    flags = dict(iter_max=args.iter_max, data_dir=args.data_dir, check_seconds=args.check_seconds,
                 train_seconds=args.train_seconds, memory_gb=args.memory_gb, only=args.only,
                 test_ranges=args.test_ranges)
    if args.command == "batch":
        pass_on = ["--iter_max", str(args.iter_max), "--check-timeout", str(args.check_seconds),
                   "--train-timeout", str(args.train_seconds), "--memory-gb", str(args.memory_gb)]
        pass_on += ["--data-dir", str(Path(args.data_dir).resolve())] if args.data_dir else []
        pass_on += [a for t in args.only or () for a in ("--only", t)]
        if args.test_ranges:
            pass_on += ["--test-ranges", ",".join(f"{t}={lo}:{hi}" for t, (lo, hi) in args.test_ranges.items())]
        batch(Path(args.folder), args.out, args.jobs, pass_on,
              worst_case_seconds(args.check_seconds, args.train_seconds))
        return 0
    out = Path(args.out)
    try:
        results = grade(args.submission, out, threads=args.threads, **flags)
    except Exception as e:  # never leave Gradescope without a results.json
        detail = "".join(traceback.format_exception_only(type(e), e)).strip()
        write_results(out.resolve(), {"score": 0, "output": f"The autograder itself failed ({detail}). This is "
                                                            "not your fault: staff will regrade.",
                                      "tests": [], "extra_data": {"grader_error": traceback.format_exc()}})
        print(f"error: the autograder failed: {detail}", file=sys.stderr)
        return 1
    print(results["output"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
