"""Grade GMVAE submissions: on Gradescope, or locally exactly as Gradescope does.

    python -m course.autograder build autograder.zip               # the zip to upload to Gradescope
    python -m course.autograder grade SUBMISSION --out results.json # a folder or a zip, as Gradescope would
    python -m course.autograder batch FOLDER --out summary.csv      # every folder or zip in FOLDER, in parallel

The student's code computes; the grader judges. What is graded (the points are in POINTS):
- each of the two functions, by the self-check's checks of it (codebase/check/registry.py): the
  self-check's probe runs the student's code in a sandboxed process on inputs drawn for this grading
  (a new seed each time, recorded in results.json) and writes the raw results; the judge
  (course/judge.py), a process that never imports the student's code, compares them with the
  references computed afresh for that seed and gives the self-check's own PASS or FAIL lines;
- a real training run of the submitted code in the graded setting (20,000 iterations, seed 0,
  CPU): the judge loads its final checkpoint (weights only), checks that it is the starter GMVAE's,
  and computes NELBO, KL and Rec itself with the reference bound on the course's subset; they are
  scored against codebase/check/figures.py's accepted ranges with partial credit (see figure_score);
- the 10 x 20 sample grid, drawn by the judge from those weights.
Nothing that the student's process prints or writes decides a score: its output is only shown.

Only two files are taken from a submission, codebase/utils.py and codebase/models/gmvae.py, found
as loose files, in a codebase/ tree or anywhere in a whole repository (a folder or a zip); they are
dropped into a fresh copy of the student starter (course.handout's, which holds no solution).
Everything else in the submission is ignored. How the student's code is isolated is
course/sandbox.py's. This process imports neither torch nor the submission; it writes
results.json itself, last.
"""
import argparse
import base64
import concurrent.futures
import csv
import hashlib
import io
import json
import math
import os
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from codebase.check import figures as reference
from codebase.check.registry import CHECKS, checks_of, context_of
from codebase.config import Config
from codebase.runtime.cpus import usable_cpus
from course.sandbox import (CAN_RUN_SECONDS, KEEP_BYTES, MEMORY_GB, Sandbox, StillWriting, clean, list_beneath,
                            read_beneath, remove, shown)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the repository, or /autograder/source in the grading image
TEMPLATES = HERE / "gradescope"
# Written into the zip only: the starter's paths, so the image need not regenerate the starter.
MANIFEST = TEMPLATES / "starter_files.txt"

# ---------------------------------------------------------------------------------------------
# The points table: edit here. The defaults sum to 100.
# ---------------------------------------------------------------------------------------------
POINTS = {
    "log_normal_mixture": 30,
    "GMVAE.negative_elbo_bound": 30,
    "Training: NELBO": 15,
    "Training: KL": 10,
    "Training: Rec": 10,
    "Sample grid": 5,
}
# A function test scores the share of the registry's checks of that function that pass; the checks of
# the functions it builds on run beside them, unscored, so that its output can say when one fails too.
FUNCTION_TESTS = tuple(name for name in POINTS if checks_of(name))
FIGURE_TESTS = {"Training: NELBO": "nelbo", "Training: KL": "kl", "Training: Rec": "rec"}
GRID_TEST = "Sample grid"

# The files a student writes, and the short names they may upload them under.
STUDENT_FILES = {"codebase/utils.py": "utils.py", "codebase/models/gmvae.py": "gmvae.py"}
MODEL = "gmvae"
GRADED = Config(model=MODEL)  # its defaults are the graded setting (seed 0, z 10, k 500)
GRADED_ITER = reference.GRADED_SETTING[MODEL]["iter_max"]

# Limits, each with its margin over what was measured (see course/README.md, "Limits").
CHECK_SECONDS = 60  # one check of the probe: under a second when the code is sound
STARTUP_SECONDS = 120  # the probe's start (Python, torch and the student's modules) and its first check
PROBE_SECONDS = 300  # every run of the probe together (a hang costs CHECK_SECONDS and one rerun)
PROBE_RUNS = 3  # the probe's first run and the reruns after a check that hung or crashed
TRAIN_SECONDS = 1260  # the training run: 3 x 401.5 s, a correct run on the slowest CPU measured (2-core AVX2 EPYC)
JUDGE_SECONDS = 300  # the judge: about 10 s
MAX_SOURCE_BYTES = 256 << 10  # a student file larger than this is refused (the answer files are 8 kB)
MAX_UNZIPPED_BYTES = 512 << 20  # a submission zip larger than this, unpacked, is refused
MAX_INNER_ZIP_BYTES = 64 << 20  # a zip inside the submission larger than this is not opened
MAX_RESULT_BYTES = 32 << 20  # one check's results from the probe (sample_gaussian's 200,000 draws: 2.4 MB)
MAX_CHECKPOINT_BYTES = 64 << 20  # the run's final checkpoint (about 8 MB)
# The grading code, which the zip holds beside the starter; the references the judge computes with.
GRADER_FILES = ("course/__init__.py", "course/autograder.py", "course/judge.py", "course/sandbox.py",
                "course/gradescope/requirements.txt")
REFERENCES = "codebase/check/references.py"
# Hashed before and after the student's code runs: the grading code and the project modules it reads.
HASHED_FILES = GRADER_FILES + (REFERENCES, "codebase/config.py", "codebase/check/figures.py",
                               "codebase/check/registry.py", "codebase/check/judge.py")
IGNORED_PARTS = {"__MACOSX", ".git", "__pycache__", ".ipynb_checkpoints"}
WRITABLE = ("logs", "checkpoints", "home", "probe")  # all the student's code may write in the work folder


def worst_case_seconds(options):
    """The longest a grading can take: every limit reached, and a minute of the grader's own work."""
    return CAN_RUN_SECONDS + PROBE_SECONDS + options.train_seconds + JUDGE_SECONDS + 60


class SubmissionError(ValueError):
    """The submission cannot be read at all (not a folder or zip, a broken zip); one line."""


class GraderError(RuntimeError):
    """The grader cannot grade anything (no MNIST, say): the instructor's problem, not the student's."""


# ---------------------------------------------------------------------------------------------
# How a grading runs: one dataclass for the parser, grade, batch and the tests
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    iter_max: int = GRADED_ITER  # training iterations
    data_dir: str = None  # MNIST; None: data/ beside course/
    threads: int = None  # CPU threads for the student's code; None: every usable CPU
    check_seconds: float = CHECK_SECONDS
    train_seconds: float = TRAIN_SECONDS
    memory_gb: float = MEMORY_GB
    only: tuple = ()  # the tests to run; (): all
    check_seed: int = None  # the seed of the checks' inputs; None: a new one (a regrade gives the old one)
    test_ranges: tuple = ()  # ((term, low, high), ...): ranges for short runs in tests, never for grading


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value
    return parse


def _ranges(text):
    """--test-ranges nelbo=100:400,kl=0:50."""
    ranges = []
    for part in text.split(","):
        term, _, span = part.partition("=")
        low, _, high = span.partition(":")
        if term not in FIGURE_TESTS.values():
            raise argparse.ArgumentTypeError(f"unknown figure {term!r}")
        ranges.append((term, float(low), float(high)))
    return tuple(ranges)


# {Options field: (flag, argparse arguments)}: the one place the grading flags are written.
FLAGS = {
    "iter_max": ("--iter_max", dict(type=_positive(int), help="training iterations")),
    "data_dir": ("--data-dir", dict(help="MNIST (default: data/ beside course/)")),
    "threads": ("--threads", dict(type=_positive(int), help="CPU threads for training (default: every usable CPU)")),
    "check_seconds": ("--check-timeout", dict(type=_positive(float), help="seconds for each check of the probe")),
    "train_seconds": ("--train-timeout", dict(type=_positive(float), help="seconds for the training run")),
    "memory_gb": ("--memory-gb", dict(type=_positive(float), help="address-space cap of each child, in GB")),
    "only": ("--only", dict(action="append", choices=list(POINTS), metavar="TEST",
                            help="run only this test (repeatable); the others are left out of the results")),
    "check_seed": ("--check-seed", dict(type=int, help="the checks' inputs of an earlier grading (its results.json "
                                                       "has it as extra_data.check_seed); default: new ones")),
    "test_ranges": ("--test-ranges", dict(type=_ranges, help=argparse.SUPPRESS)),
}


def add_option_flags(parser):
    defaults = Options()
    for name, (flag, kwargs) in FLAGS.items():
        default = getattr(defaults, name)
        help_text = kwargs.get("help")
        if help_text and help_text != argparse.SUPPRESS and default not in (None, ()):
            kwargs = {**kwargs, "help": f"{help_text} (default: {default:g})"}
        parser.add_argument(flag, dest=name, default=None if name == "only" else default, **kwargs)


def options_of(args):
    return Options(**{name: (tuple(getattr(args, name) or ()) if name == "only" else getattr(args, name))
                      for name in FLAGS})


def option_argv(options):
    """The flags that give `options` again, for a child grader (batch)."""
    argv = []
    for name, (flag, _) in FLAGS.items():
        value = getattr(options, name)
        if value in (None, ()) or value == getattr(Options(), name):
            continue
        if name == "only":
            argv += [a for test in value for a in (flag, test)]
        elif name == "test_ranges":
            argv += [flag, ",".join(f"{t}={lo}:{hi}" for t, lo, hi in value)]
        else:
            argv += [flag, str(Path(value).resolve()) if name == "data_dir" else str(value)]
    return argv


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
    """{relative posix path: (a callable returning the bytes, the size)} of a folder or zip's files."""
    path = Path(submission)
    if path.is_dir():
        entries, todo = {}, [path]
        while todo:  # without recursion: a submission's folders may go thousands deep
            for p in sorted(todo.pop().iterdir()):
                rel = p.relative_to(path)
                if p.is_symlink() or IGNORED_PARTS & set(rel.parts):
                    continue  # a link could point at the grader's own files
                if p.is_dir():
                    todo.append(p)
                elif p.is_file():
                    entries[rel.as_posix()] = (lambda p=p: p.read_bytes(), p.stat().st_size)
        return entries
    if path.is_file() and zipfile.is_zipfile(path):
        return _zip_entries(path, path.name)
    if path.exists():
        raise SubmissionError(f"{shown(path.name)} is neither a folder nor a zip")
    raise SubmissionError(f"{shown(path)} does not exist")


def _zip_entries(file, name):
    """_submission_entries of a zip: `file` is its path or a file object, `name` what messages call it.
    Reading an entry raises SubmissionError if the zip is damaged there (a bad CRC, a cut-off end)."""
    try:
        archive = zipfile.ZipFile(file)
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise SubmissionError(f"{shown(name)} is not a readable zip ({shown(e)})") from None
    if sum(i.file_size for i in infos) > MAX_UNZIPPED_BYTES:
        raise SubmissionError(f"{shown(name)} unpacks to more than {MAX_UNZIPPED_BYTES >> 20} MB")

    def reader(info):
        def read():
            try:
                return archive.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as e:
                raise SubmissionError(f"{shown(name)} is damaged at {shown(info.filename)} ({shown(e)})") from None
        return read

    entries = {}
    for info in infos:
        parts = [p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".")]
        link = stat.S_ISLNK(info.external_attr >> 16)
        if info.is_dir() or link or ".." in parts or IGNORED_PARTS & set(parts):
            continue
        entries["/".join(parts)] = (reader(info), info.file_size)
    return entries


def _with_inner_zips(entries, notes):
    """entries, and the files of each zip among them as "<zip's path>/<path inside>": students upload
    a folder that holds their zipped repository, or a zip of a zip. One level deep; a zip that cannot
    be opened is named in `notes` and left as a file."""
    found = dict(entries)
    for name, (read, size) in entries.items():
        if not name.lower().endswith(".zip"):
            continue
        if size > MAX_INNER_ZIP_BYTES:
            notes.append(f"{shown(name)} is {size / (1 << 20):,.0f} MB, over the {MAX_INNER_ZIP_BYTES >> 20} MB "
                         "of a zip that is looked into: not opened.")
            continue
        try:
            inner = _zip_entries(io.BytesIO(read()), name)
        except SubmissionError as e:
            notes.append(f"{e}: not opened.")
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
    found = Found()
    entries = _with_inner_zips(_submission_entries(submission), found.notes)
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
            found.notes.append(f"{len(candidates)} files could be {target}; graded {shown(name)}.")
        try:
            if size > MAX_SOURCE_BYTES:
                raise SubmissionError(f"{shown(name)} is {size:,} bytes, over the {MAX_SOURCE_BYTES:,} accepted")
            data = read()
            data.decode("utf-8")
        except (SubmissionError, UnicodeDecodeError) as e:
            reason = e if isinstance(e, SubmissionError) else f"{shown(name)} is not UTF-8 text"
            found.notes.append(f"{reason}: not graded.")
            found.missing.append(target)
            continue
        found.files[target], found.where[target] = data, shown(name)
    found.ignored = len(entries) - len(found.where)
    return found


def syntax_errors(found):
    """One line per student file that does not compile (compiling runs none of its code)."""
    lines = []
    for target, data in found.files.items():
        try:
            compile(data, target, "exec", dont_inherit=True)
        except SyntaxError as e:
            lines.append(f"{found.where[target]} does not compile: {shown(e.msg)} (line {e.lineno}).")
        except (ValueError, RecursionError, MemoryError) as e:
            lines.append(f"{found.where[target]} does not compile: {type(e).__name__}: {shown(e)}.")
    return lines


def starter_files():
    """{path: bytes} of the student starter: from the image's manifest, or made by course.handout."""
    if MANIFEST.is_file():
        return {name: (ROOT / name).read_bytes() for name in MANIFEST.read_text().split()}
    from course import handout
    # The work folder runs the probe and the run script, which need no stored expected values.
    return handout.starter_files(set(handout.VARIANTS["default"]), stored=False)


# ---------------------------------------------------------------------------------------------
# Running the student's code, and keeping what it leaves
# ---------------------------------------------------------------------------------------------

def child_env(workdir, threads):
    """A clean environment: none of the grader's variables reach the student's code."""
    n = str(threads)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir / "home"),
            "TMPDIR": str(workdir / "home"), "MPLCONFIGDIR": str(workdir / "home"), "MPLBACKEND": "Agg",
            "USER": "student", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def printed(outcome, what="Your code printed"):
    """A note on what a child printed (its output is only ever shown), or ''."""
    parts = []
    for name, capture in (("output", outcome.out), ("error output", outcome.err)):
        text = capture.text().strip()
        if text:
            kept = f" (kept: the first and last {KEEP_BYTES:,})" if capture.total > 2 * KEEP_BYTES else ""
            parts.append(f"{what} {capture.total:,} bytes of {name}{kept}:\n{clean(text)}")
    return "".join(f"\n\n{p}" for p in parts)


@dataclass
class Probed:
    """What the probe runs left: the checks whose results were kept, and why the others have none."""
    kept: list = field(default_factory=list)
    problems: dict = field(default_factory=dict)  # {check name: why it has no results}
    first: object = None  # the first run's Outcome, whose output the student sees


def probe(names, workdir, box, seed, trusted, options):
    """Run the self-check's probe on `names` in the sandbox, one file per check as it finishes, and copy
    each result into `trusted`. A check that hangs or crashes costs only itself: the rest run again."""
    done, todo, spent = Probed(), list(names), 0.0
    argv = [sys.executable, "-m", "codebase.check.probe", "--seed", str(seed), "--out", str(workdir / "probe")]
    for run in range(PROBE_RUNS):
        if not todo or spent >= PROBE_SECONDS:
            break
        box.reset(workdir / "probe")
        count = lambda: len(set(list_beneath(workdir, "probe")) & {f"{i}.pt" for i in range(len(todo))})
        outcome = box.run(argv + [a for name in todo for a in ("--only", name)], workdir,
                          child_env(workdir, 1), PROBE_SECONDS - spent,
                          progress=(count, options.check_seconds, STARTUP_SECONDS))
        spent += outcome.seconds
        done.first = done.first or outcome
        finished, why = 0, ""
        for i, name in enumerate(todo):
            data, why = read_beneath(workdir, f"probe/{i}.pt", MAX_RESULT_BYTES)
            if data is None:
                break
            (trusted / f"{name}.pt").write_bytes(data)
            done.kept.append(name)
            finished = i + 1
        if finished == len(todo):
            return done
        if outcome.stopped:  # a bound of the whole user, not of one check: the rest would hit it again
            for name in todo[finished:]:
                done.problems[name] = f"the self-check was {outcome.why(box.memory_gb)}"
            return done
        if why not in ("", "missing"):  # it finished, but its results are not a file to be read
            done.problems[todo[finished]] = f"the results of this check are {why}, and were not read"
        elif outcome.timed_out:
            done.problems[todo[finished]] = (f"Timed out after {options.check_seconds:g} s on this check: is there "
                                             "an endless loop or a sleep in your code?")
        else:
            done.problems[todo[finished]] = ("the self-check stopped while running this check "
                                             f"({outcome.why(box.memory_gb)})")
        todo = todo[finished + 1:]
    for name in todo:
        done.problems[name] = "not run: the self-check ran out of time on the checks before it"
    return done


@dataclass
class Trained:
    outcome: object = None
    checkpoint: Path = None  # the trusted copy of the final checkpoint, or None
    failure: str = ""  # why the run counts for nothing, or ""
    claimed: dict = None  # the figures the run printed into its results.json (only shown)


def train(workdir, box, options, data_dir, trusted):
    """The training run in the graded setting, in the sandbox; its final checkpoint copied to `trusted`."""
    for name in ("logs", "checkpoints"):
        box.reset(workdir / name)  # nothing the probe wrote may pose as the run's output
    threads = options.threads or usable_cpus()
    argv = [sys.executable, reference.RUN_SCRIPTS[MODEL], "--iter_max", str(options.iter_max), "--seed",
            str(GRADED.seed), "--device", "cpu", "--threads", str(threads), "--data-dir", str(data_dir)]
    outcome = box.run(argv, workdir, child_env(workdir, threads), options.train_seconds)
    setting = f"{options.iter_max:,} iterations, seed {GRADED.seed}, on the CPU"
    run = Trained(outcome)
    raw, _ = read_beneath(workdir, GRADED.log_dir / "results.json", 1 << 20)
    try:  # the student's process wrote it: anything may be in it, and it is only shown
        claimed = json.loads(raw)
        run.claimed = {t: float(claimed[t]) for t in FIGURE_TESTS.values()}
    except Exception:
        run.claimed = None
    relative = GRADED.checkpoint_path(options.iter_max)
    data, why = read_beneath(workdir, relative, MAX_CHECKPOINT_BYTES)
    if outcome.stopped:
        run.failure = f"The training run ({setting}) was {outcome.why(box.memory_gb)}."
    elif outcome.timed_out:
        run.failure = f"The training run ({setting}) timed out after {options.train_seconds:g} s."
    elif outcome.returncode != 0:
        run.failure = f"The training run ({setting}) failed ({outcome.why(box.memory_gb)})."
    elif data is None:
        run.failure = f"The training run ({setting}) finished, but left no checkpoint {relative} ({why})."
    else:
        run.checkpoint = trusted / "model.pt"
        run.checkpoint.write_bytes(data)
    return run


def run_judge(seed, checks, trusted, run, data_dir, threads):
    """course.judge on what the children left, from the grading code's own folder; its JSON."""
    argv = [sys.executable, "-m", "course.judge", "--seed", str(seed), "--probe", str(trusted), "--out",
            str(trusted / "judged.json"), "--checks", *checks]
    if run is not None and run.checkpoint is not None:
        argv += ["--checkpoint", str(run.checkpoint), "--data-dir", str(data_dir)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": str(threads), "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(trusted),
           "HOME": str(trusted)}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=JUDGE_SECONDS)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise GraderError(f"the judge failed: {lines[-1] if lines else f'exit status {done.returncode}'}")
    return json.loads((trusted / "judged.json").read_text())


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

def entry(name, score, output, **extra):
    """One entry of results.json's tests."""
    points = POINTS[name]
    score = round(min(max(score, 0.0), points), 2)
    return {"name": name, "score": score, "max_score": points, "output": output.strip(),
            "visibility": "visible", **extra}


def function_test(name, verdicts, probed):
    """A function test: the share of its checks that pass, with their lines, and the checks of the
    functions it builds on that fail too."""
    line = lambda c: verdicts[c.name]["line"] if c.name in verdicts else \
        f"FAIL  {c.name}: {probed.problems.get(c.name, 'no results')}"
    own = checks_of(name)
    passed = sum(bool(verdicts.get(c.name, {}).get("passed")) for c in own)
    shown_lines = "\n".join(line(c) for c in own)
    failing = [line(c) for c in context_of(name) if not verdicts.get(c.name, {}).get("passed")]
    if failing:
        shown_lines += "\n\nFunctions it builds on that fail too (fix these first):\n" + "\n".join(failing)
    head = f"{passed} of {len(own)} checks passed." if passed < len(own) else f"All {len(own)} checks passed."
    extra = printed(probed.first) if probed.first else ""
    return entry(name, POINTS[name] * passed / len(own), f"{head}\n{shown_lines}{extra}")


def figure_score(value, low, high, points):
    """Partial credit for a figure: full points inside [low, high], falling linearly to 0 at one
    half-width (high - low) / 2 outside it; 0 for nan or inf."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    half = (high - low) / 2
    off = max(low - value, value - high, 0.0)
    return points * max(0.0, 1.0 - off / half)


def training_tests(run, judged, ranges, options):
    """The figure tests and the grid test, from the judge's figures of the run's final weights."""
    setting = f"{options.iter_max:,} iterations, seed {GRADED.seed}, on the CPU"
    problem = run.failure or (judged or {}).get("problem")
    if problem:
        if not run.failure:
            problem = f"The training run ({setting}) finished, but its final checkpoint cannot be graded: {problem}."
        extra = printed(run.outcome, "The run") if run.outcome else ""
        return [entry(name, 0, f"{problem}{extra}") for name in FIGURE_TESTS] + [
            entry(GRID_TEST, 0, "No sample grid: the training run left no weights to draw it from.")]
    figures = judged["figures"]
    labels = reference.TERM_LABELS
    about = (f"Computed by the grader from your trained weights ({setting}) with the reference bound, on the "
             "course's 100-image test subset: " + ", ".join(f"{labels[t]} {figures[t]:.2f}" for t in labels) + ".")
    if run.claimed:
        about += "\nYour run printed: " + ", ".join(f"{labels[t]} {run.claimed[t]:.2f}" for t in labels) + "."
        # Each figure is a mean over 100 evaluations on both sides: a gap of more than 5 standard errors
        # of their difference (and 0.05 nats) is not noise.
        off = [t for t in labels if not math.isfinite(run.claimed[t]) or abs(run.claimed[t] - figures[t])
               > 5 * math.sqrt(2) * figures[f"{t}_sd"] / 10 + 0.05]
        if off:
            about += (f" Its {', '.join(labels[t] for t in off)} differ{'s' if len(off) == 1 else ''} from the "
                      "grader's by more than the Monte-Carlo noise: a sign that your negative_elbo_bound computes "
                      "something else than the bound (see its test above).")
    if options.iter_max != GRADED_ITER:
        about += f" (A shortened run: the graded setting is {GRADED_ITER:,} iterations.)"
    tests = []
    for name, term in FIGURE_TESTS.items():
        low, high = ranges[term]
        value, points, label = figures[term], POINTS[name], labels[term]
        score = figure_score(value, low, high, points)
        if score == points:
            verdict = f"{label} {value:.2f} is inside the accepted {low:g} to {high:g}: full marks."
        elif score > 0:
            verdict = (f"{label} {value:.2f} is outside the accepted {low:g} to {high:g}, but within "
                       f"{(high - low) / 2:g} of it: partial credit.")
        else:
            verdict = (f"{label} {value:.2f} is far outside the accepted {low:g} to {high:g}: run "
                       "python -m codebase.check and look at your training curve (logs/<run>/metrics.csv).")
        tests.append(entry(name, score, f"{verdict}\n{about}"))
    grid = judged["grid"]
    drawn = (f"Drawn by the grader from your trained weights: {grid['rows'] * grid['cols']} samples x ~ p(x) in "
             f"{grid['rows']} rows of {grid['cols']}, {grid['ink']:.0%} of their pixels on.")
    if tests[0]["score"] > 0:
        tests.append(entry(GRID_TEST, POINTS[GRID_TEST], drawn))
    else:  # samples of a model that does not fit the data are no digits
        tests.append(entry(GRID_TEST, 0, f"{drawn} They count once the weights model the data: the NELBO is "
                                         "outside the accepted range and its partial-credit band."))
    return tests


def grader_failed(name, error):
    detail = "".join(traceback.format_exception_only(type(error), error)).strip()
    return entry(name, 0, f"The autograder failed on this test ({detail}): an error of the autograder, "
                         "not of your code; staff will regrade.", status="failed")


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


def accepted_ranges(test_ranges=()):
    """{term: (low, high)}: the course's (codebase/check/figures.py), or those a test gave."""
    ranges = {term: reference.accepted_range(MODEL, term) for term in FIGURE_TESTS.values()}
    ranges.update({term: (low, high) for term, low, high in test_ranges})
    return ranges


def grade(submission, out, options=Options()):
    """Grade a submission and write results.json; returns the results as a dict.

    Raises:
        GraderError, SandboxError: nothing can be graded here (main writes a results.json for staff)
    """
    os.umask(0o022)  # the grader's own files: never writable by the sandbox user, whatever umask it inherits
    began = time.monotonic()
    out = Path(out).resolve()
    data_dir = Path(options.data_dir or ROOT / "data").resolve()
    if not (data_dir / "MNIST" / "raw").is_dir():
        raise GraderError(f"no MNIST in {data_dir}; run python -m codebase.data --data-dir {data_dir} "
                          "first (setup.sh does so in the grading image)")
    threads = options.threads or usable_cpus()
    # Seeds from 2: 1 is the starter's (its stored expected values are for it).
    seed = options.check_seed if options.check_seed is not None else secrets.randbelow(2**31 - 2) + 2
    box = Sandbox.open(sys.executable, data_dir, ROOT / REFERENCES, options.memory_gb, threads)
    digest, out_before = grader_digest(), file_state(out)
    notes, tests = [], []
    extra = {"iter_max": options.iter_max, "sandbox": box.describe(), "check_seed": seed}
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

    wanted = lambda name: not options.only or name in options.only
    functions = [name for name in FUNCTION_TESTS if wanted(name)]
    needed = {c.name for name in functions for c in checks_of(name) + context_of(name)}
    names = [c.name for c in CHECKS if c.name in needed]
    trusted = Path(tempfile.mkdtemp(prefix="autograder-trusted-"))  # root's alone: 0700
    workdir = None
    try:
        workdir = box.make_workdir({**starter_files(), **found.files}, WRITABLE)
        seconds = extra["seconds"] = {}  # each part's wall time, for the limits (course/README.md)
        clock = time.monotonic()
        probed = probe(names, workdir, box, seed, trusted, options) if names else Probed()
        seconds["probe"], clock = round(time.monotonic() - clock, 1), time.monotonic()
        training = any(wanted(name) for name in (*FIGURE_TESTS, GRID_TEST))
        run = train(workdir, box, options, data_dir, trusted) if training else None
        seconds["training"], clock = round(time.monotonic() - clock, 1), time.monotonic()
        try:
            judged = run_judge(seed, probed.kept, trusted, run, data_dir, threads)
            seconds["judge"] = round(time.monotonic() - clock, 1)
        except (GraderError, subprocess.TimeoutExpired, OSError, ValueError) as e:
            tests = [grader_failed(name, e) for name in POINTS if wanted(name)]
            judged = None
        if judged is not None:
            tests += [function_test(name, judged["checks"], probed) for name in functions]
            if training:
                ranges = accepted_ranges(options.test_ranges)
                training_judged = judged.get("training")
                tests += [t for t in training_tests(run, training_judged, ranges, options) if wanted(t["name"])]
                extra["figures"] = (training_judged or {}).get("figures")
                extra["ranges"] = ranges
                if run.claimed:
                    extra["figures_printed_by_the_run"] = {t: v if math.isfinite(v) else str(v)
                                                           for t, v in run.claimed.items()}
                grid = trusted / "judged.png"
                if grid.is_file():
                    extra["sample_grid_png_base64"] = base64.b64encode(grid.read_bytes()).decode()
                if options.test_ranges:
                    notes.append(f"Figures graded against TEST ranges {ranges}, not the course's.")
    except StillWriting as e:  # only as a user other than root: its process could not be killed
        tests = [entry(name, 0, f"Your code kept writing into its folder after it ended ({shown(e)}); nothing "
                                "more could be graded.") for name in POINTS if wanted(name)]
    finally:
        box.close()
        for folder in (workdir, trusted):
            if folder is not None:
                remove(folder)

    if grader_digest() != digest:
        notes.append("Warning: the grading code changed while your code ran; graded with the code loaded "
                     "before. Staff will review this submission.")
        extra["grader_changed"] = True
    if file_state(out) != out_before:
        notes.append(f"Warning: something other than the grader wrote {out.name} while your code ran; it has "
                     "been replaced. Staff will review this submission.")
        extra["results_written_by_submission"] = True
    if options.only:
        notes.append(f"Only these tests were run (--only): {', '.join(options.only)}.")
    total = round(sum(t["score"] for t in tests), 2)
    possible = sum(POINTS[t["name"]] for t in tests)
    lines = [f"Score: {total:g} / {possible:g}."] + [f"- {t['name']}: {t['score']:g} / {t['max_score']:g}"
                                                     for t in tests]
    output = "\n".join(notes + [""] + lines + [
        "", "The grader ran your functions on inputs of its own (seed " + str(seed) + ") and judged what they "
            "returned; each test below shows the self-check's lines, as python -m codebase.check prints them on "
            "your machine."])
    for number, t in enumerate(tests, start=1):
        t["number"] = str(number)
    results = {"score": total, "execution_time": round(time.monotonic() - began, 1), "output": output,
               "tests": tests, "extra_data": extra}
    write_results(out, results)
    return results


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


def batch(folder, out, options=Options(), jobs=None, log=print):
    """Grade every submission in `folder`, one process and one thread each, `jobs` at once; each
    grading runs its children under a user id of its own.

    Writes a results.json per submission into <out without .csv>/ and a row per submission
    to the CSV `out`: the total, then a column per test.
    """
    out = Path(out)
    entries = submissions_in(folder)
    if not entries:
        raise SystemExit(f"error: no submissions (folders or zips) in {folder}")
    per_student = out.with_suffix("")
    per_student.mkdir(parents=True, exist_ok=True)
    jobs = jobs or usable_cpus()
    limit = worst_case_seconds(options)
    child_options = option_argv(replace(options, threads=1))

    def one(name, path):
        target = per_student / f"{name}.json"
        target.unlink(missing_ok=True)  # an earlier batch's file must not pass for this grading's
        argv = [sys.executable, "-m", "course.autograder", "grade", str(path), "--out", str(target), *child_options]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=limit)
            lines = err.strip().splitlines()
            problem = (lines[-1] if lines else f"exit status {proc.returncode}") if proc.returncode else ""
        except subprocess.TimeoutExpired:
            proc.terminate()  # the grader kills its children and removes its folders on SIGTERM
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
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
            log(f"[{i}/{len(entries)}] {name}: {results['score'] if results else 'ERROR ' + problem}")
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
    """{path: (bytes, mode)} of the autograder zip: the starter, the grading code, the references,
    setup.sh and run_autograder."""
    from course import handout
    starter = handout.starter_files(set(handout.VARIANTS["default"]))
    files = {name: (data, 0o644) for name, data in starter.items()}
    for name in GRADER_FILES + (REFERENCES,):
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

def build_parser():
    p = argparse.ArgumentParser(prog="python -m course.autograder",
                                description="Gradescope autograder for the GMVAE problem set.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the Gradescope autograder zip")
    b.add_argument("zip", help="where to write it, e.g. autograder.zip")
    g = sub.add_parser("grade", help="grade one submission (a folder or a zip) as Gradescope does")
    g.add_argument("submission")
    g.add_argument("--out", required=True, help="results.json")
    add_option_flags(g)
    a = sub.add_parser("batch", help="grade every folder and zip in FOLDER, a row each in a CSV")
    a.add_argument("folder")
    a.add_argument("--out", required=True, help="summary.csv")
    add_option_flags(a)
    a.add_argument("--jobs", type=_positive(int), help="submissions at once (default: the number of CPUs)")
    return p


def _stop_on_sigterm(signum, frame):
    """SIGTERM (batch's time limit) as SystemExit, so that a grading kills its children and removes its
    folders on the way out."""
    raise SystemExit(128 + signum)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "build":
        path = build(args.zip)
        print(f"Wrote {path}: upload it as the autograder of the Gradescope assignment.")
        return 0
    options = options_of(args)
    if args.command == "batch":
        batch(Path(args.folder), args.out, options, args.jobs)
        return 0
    out = Path(args.out)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        results = grade(args.submission, out, options)
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
