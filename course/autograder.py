"""Grade GMVAE submissions: on Gradescope, or locally exactly as Gradescope does.

    python -m course.autograder build autograder.zip               # the zip to upload to Gradescope
    python -m course.autograder grade SUBMISSION --out results.json # a folder or a zip, as Gradescope would
    python -m course.autograder batch FOLDER --out summary.csv      # every folder or zip in FOLDER, in parallel

The student's code computes; the grader judges. What is graded (the points are in course/settings.py):
- each of the two functions, by the self-check's checks of it (codebase/check/registry.py): the
  self-check's probe runs the student's code in a sandboxed process on inputs drawn for this grading
  (a new seed each time, recorded in results.json) and writes the raw results; the judge
  (course/judge.py), a process that never imports the student's code, compares them with the
  references computed afresh for that seed and gives the self-check's own PASS or FAIL lines;
- a real training run of the submitted code in the graded setting (20,000 iterations, seed 0,
  CPU): the judge loads its final checkpoint (weights only), checks that it is the starter GMVAE's,
  and computes NELBO, KL and Rec itself with the reference bound on the course's subset; they are
  scored against codebase/check/figures.py's accepted ranges with partial credit (course/scoring.py);
- the 10 x 20 sample grid, drawn by the judge from those weights.
Nothing that the student's process prints or writes decides a score: its output is only shown.

A grading is a pipeline of steps (grade): start, read_submission (course/collect.py), run_submission
(course/runs.py, in course/sandbox.py's sandbox), score (course/scoring.py), check_untouched, and
results.json (course/report.py). The student's files are dropped into a fresh copy of the student
starter (course.handout's, which holds no solution); everything else in the submission is ignored.
This process never imports the submission; it writes results.json itself, last.
"""
import argparse
import base64
import hashlib
import io
import math
import os
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from codebase.runtime.cpus import usable_cpus
from course import report, runs, scoring
from course.batch import batch
from course.collect import MANIFEST, ROOT, STUDENT_FILES, Found, SubmissionError, collect, starter_files
from course.options import DEFAULTS, Options, add_option_flags, options_of, positive
from course.sandbox import Sandbox, StillWriting
from course.settings import FIGURE_TESTS, FUNCTION_TESTS, GRID_TEST, POINTS, accepted_ranges
from course.untrusted import remove

TEMPLATES = ROOT / "course" / "gradescope"
# The grading code, which the zip holds beside the starter; the references the judge computes with.
GRADER_FILES = tuple(f"course/{name}" for name in (
    "__init__.py", "autograder.py", "batch.py", "child.py", "collect.py", "confine.py", "judge.py", "options.py",
    "report.py", "runs.py", "sandbox.py", "scoring.py", "settings.py", "untrusted.py", "gradescope/requirements.txt"))
REFERENCES = "codebase/check/references.py"
# Hashed before and after the student's code runs: the grading code and the project modules it reads.
HASHED_FILES = GRADER_FILES + (REFERENCES, "codebase/config.py") + tuple(f"codebase/check/{name}.py" for name in (
    "figures", "registry", "judge", "compare", "bounds", "functions", "calls", "mistakes", "inputs", "probe"))
WRITABLE = ("logs", "checkpoints", "home", "probe")  # all the student's code may write in the work folder


# ---------------------------------------------------------------------------------------------
# Grading one submission: the steps
# ---------------------------------------------------------------------------------------------

@dataclass
class Grading:
    """One grading, as its steps fill it in."""
    out: Path  # results.json
    options: Options
    data_dir: Path  # MNIST
    threads: int  # for the student's code and the judge
    seed: int  # of the checks' inputs
    box: Sandbox
    untouched: tuple  # (the grading code's hash, results.json's state) before the student's code ran
    notes: list = field(default_factory=list)  # lines for the student, above the scores
    tests: list = field(default_factory=list)  # results.json's tests
    extra: dict = field(default_factory=dict)  # results.json's extra_data, for staff


@dataclass
class Ran:
    """What the student's code and the judge left, read before their folders are removed."""
    probed: runs.Probed
    trained: runs.Trained = None  # None: no training test is wanted
    judged: dict = None  # the judge's verdicts and figures; None if it failed
    judge_error: Exception = None
    grid_png: bytes = None  # the sample grid the judge drew


def grade(submission, out, options=DEFAULTS):
    """Grade a submission and write results.json; returns the results as a dict.

    Raises:
        GraderError, SandboxError: nothing can be graded here (main writes a results.json for staff)
    """
    os.umask(0o022)  # the grader's own files: never writable by the sandbox user, whatever umask it inherits
    began = time.monotonic()
    grading = start(Path(out).resolve(), options)
    found = read_submission(submission, grading)
    try:
        score(run_submission(found, grading), grading)
    except StillWriting as e:  # only as a user other than root: its process could not be killed
        grading.tests = scoring.still_writing([name for name in POINTS if options.wanted(name)], e)
    check_untouched(grading)
    results = report.results(grading.notes, grading.tests, grading.seed, options.only, grading.extra,
                             time.monotonic() - began)
    report.write_results(grading.out, results)
    return results


def start(out, options):
    """The grading's MNIST, threads, checks' seed and sandbox, and the state of what the student's code
    must leave alone."""
    data_dir = Path(options.data_dir or ROOT / "data").resolve()
    if not (data_dir / "MNIST" / "raw").is_dir():
        raise runs.GraderError(f"no MNIST in {data_dir}; run python -m codebase.data --data-dir {data_dir} "
                               "first (setup.sh does so in the grading image)")
    threads = options.threads or usable_cpus()
    # Seeds from 2: 1 is the starter's (its stored expected values are for it).
    seed = options.check_seed if options.check_seed is not None else secrets.randbelow(2**31 - 2) + 2
    box = Sandbox.open(sys.executable, data_dir, ROOT / REFERENCES, options.memory_gb, threads)
    grading = Grading(out, options, data_dir, threads, seed, box, (grader_digest(), file_state(out)))
    grading.extra = {"iter_max": options.iter_max, "sandbox": box.describe(), "check_seed": seed}
    return grading


def read_submission(submission, grading):
    """The student's files (collect.Found), and the notes on what was taken, or why nothing could be."""
    try:
        found = collect(submission)
    except SubmissionError as e:
        found = Found(missing=list(STUDENT_FILES))
        grading.notes.append(f"Your submission could not be read: {e}.")
    grading.notes += report.found_notes(found)
    return found


def run_submission(found, grading):
    """The probe, the training run and the judge, in a work folder of the starter and the student's files
    and a trusted folder for what the judge reads; both are removed after, and the sandbox closed."""
    trusted = Path(tempfile.mkdtemp(prefix="autograder-trusted-"))  # root's alone: 0700
    workdir = None
    try:
        workdir = grading.box.make_workdir({**starter_files(), **found.files}, WRITABLE)
        return run_in(workdir, trusted, grading)
    finally:
        grading.box.close()
        for folder in (workdir, trusted):
            if folder is not None:
                remove(folder)


def run_in(workdir, trusted, grading):
    """run_submission's runs, each part's wall time in extra_data.seconds (for course/README.md's limits)."""
    options, box, wanted = grading.options, grading.box, grading.options.wanted
    seconds = grading.extra["seconds"] = {}
    names = runs.checks_to_probe([name for name in FUNCTION_TESTS if wanted(name)])
    clock = time.monotonic()
    ran = Ran(runs.probe(names, workdir, box, grading.seed, trusted, options.check_seconds) if names
              else runs.Probed())
    seconds["probe"], clock = round(time.monotonic() - clock, 1), time.monotonic()
    if any(wanted(name) for name in (*FIGURE_TESTS, GRID_TEST)):
        ran.trained = runs.train(workdir, box, options, grading.threads, grading.data_dir, trusted)
    seconds["training"], clock = round(time.monotonic() - clock, 1), time.monotonic()
    try:
        ran.judged = runs.judge(grading.seed, ran.probed.kept, trusted, ran.trained, grading.data_dir,
                                grading.threads)
        seconds["judge"] = round(time.monotonic() - clock, 1)
    except (runs.GraderError, subprocess.TimeoutExpired, OSError, ValueError) as e:
        ran.judge_error = e
    grid = trusted / "judged.png"
    if grid.is_file():
        ran.grid_png = grid.read_bytes()
    return ran


def score(ran, grading):
    """The tests' entries from the judge's word, and what extra_data shows of the training."""
    wanted = grading.options.wanted
    if ran.judged is None:
        grading.tests = [scoring.grader_failed(name, ran.judge_error) for name in POINTS if wanted(name)]
        return
    grading.tests += [scoring.function_test(name, ran.judged["checks"], ran.probed) for name in FUNCTION_TESTS
                      if wanted(name)]
    if ran.trained is None:
        return
    ranges = accepted_ranges(grading.options.test_ranges)
    judged = ran.judged.get("training")
    grading.tests += [t for t in scoring.training_tests(ran.trained, judged, ranges, grading.options.iter_max)
                      if wanted(t["name"])]
    grading.extra["figures"] = (judged or {}).get("figures")
    grading.extra["ranges"] = ranges
    if ran.trained.step:
        grading.extra["training_step"] = ran.trained.step  # as the run says: compiled or eager (--compile)
    if ran.trained.claimed:
        grading.extra["figures_printed_by_the_run"] = {t: v if math.isfinite(v) else str(v)
                                                       for t, v in ran.trained.claimed.items()}
    if ran.grid_png is not None:
        grading.extra["sample_grid_png_base64"] = base64.b64encode(ran.grid_png).decode()
    if grading.options.test_ranges:
        grading.notes.append(f"Figures graded against TEST ranges {ranges}, not the course's.")


def check_untouched(grading):
    """Warnings for staff where the grading code or results.json changed while the student's code ran
    (only possible where the grader is not root)."""
    digest, out_state = grading.untouched
    if grader_digest() != digest:
        grading.notes.append("Warning: the grading code changed while your code ran; graded with the code loaded "
                             "before. Staff will review this submission.")
        grading.extra["grader_changed"] = True
    if file_state(grading.out) != out_state:
        grading.notes.append(f"Warning: something other than the grader wrote {grading.out.name} while your code "
                             "ran; it has been replaced. Staff will review this submission.")
        grading.extra["results_written_by_submission"] = True


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
    a.add_argument("--jobs", type=positive(int), help="submissions at once (default: the number of CPUs)")
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
        report.write_results(out.resolve(), report.failed(e))
        print(f"error: the autograder failed: {scoring.one_line(e)}", file=sys.stderr)
        return 1
    print(results["output"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
