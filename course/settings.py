"""What a grading grades and within which bounds: the points and the limits, each declared once, with
its description. course/README.md's tables are made from these declarations:

    python -m course.settings            # print the tables
    python -m course.settings --write    # rewrite them in course/README.md
    python -m course.settings --check    # exit 1 if the README's differ (a unit test does the same)

The accepted ranges of the figures are the course's, ACCEPTED in codebase/check/figures.py: they are
read from there, never copied. This module imports neither torch nor the submission.
"""
import argparse
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from codebase.check import figures
from codebase.check.registry import checks_of
from codebase.config import GRID_COLS, GRID_ROWS, Config

README = Path(__file__).resolve().parent / "README.md"
BEGIN = "<!-- generated:settings-begin: python -m course.settings --write; edit course/settings.py -->"
END = "<!-- generated:settings-end -->"

MODEL = "gmvae"
GRADED = Config(model=MODEL)  # its defaults are the graded setting (seed 0, z 10, k 500)
GRADED_ITER = figures.GRADED_SETTING[MODEL]["iter_max"]


def training_setting(iter_max):
    """The training run's setting, in words."""
    return f"{iter_max:,} iterations, seed {GRADED.seed}, on the CPU"


# ---------------------------------------------------------------------------------------------
# The points
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Test:
    """One test of results.json.

    name: str: its name, as Gradescope shows it
    points: int: its maximum score
    scored: str: how it is scored, in words
    term: str: the figure it grades ("nelbo", "kl" or "rec"), or None
    """
    name: str
    points: int
    scored: str
    term: str = None


GRID_TEST = "Sample grid"
TESTS = (
    Test("log_normal_mixture", 30, "the share of its checks (the registry's) that pass"),
    Test("GMVAE.negative_elbo_bound", 30, "the share of its checks that pass"),
    Test("Training: NELBO", 15, "the judge's NELBO of the trained weights", "nelbo"),
    Test("Training: KL", 10, "the judge's KL of them", "kl"),
    Test("Training: Rec", 10, "the judge's Rec of them", "rec"),
    Test(GRID_TEST, 5, f"the judge draws the {GRID_ROWS} × {GRID_COLS} grid from the trained weights; it counts "
                       "if their NELBO earns points"),
)
POINTS = {t.name: t.points for t in TESTS}  # in the order results.json lists the tests
# A function test scores the share of the registry's checks of that function that pass; the checks of
# the functions it builds on run beside them, unscored, so that its output can say when one fails too.
FUNCTION_TESTS = tuple(t.name for t in TESTS if checks_of(t.name))
FIGURE_TESTS = {t.name: t.term for t in TESTS if t.term}


def accepted_ranges(test_ranges=()):
    """{term: (low, high)}: the course's (codebase/check/figures.py), or those a test gave.

    test_ranges: ((term, low, high), ...): ranges for short runs in tests, never for grading
    """
    ranges = {term: figures.accepted_range(MODEL, term) for term in FIGURE_TESTS.values()}
    ranges.update({term: (low, high) for term, low, high in test_ranges})
    return ranges


# ---------------------------------------------------------------------------------------------
# The limits
# ---------------------------------------------------------------------------------------------

def limit(value, unit, bounds, flag=None):
    """A field of Limits.

    value: its value, in `unit`: "s", "GB", "MB", "bytes", "runs" or "" (a count)
    bounds: what it bounds, and what was measured, in words
    flag: the grader's flag that changes it for one grading, or None
    """
    return field(default=value, metadata={"unit": unit, "bounds": bounds, "flag": flag})


@dataclass(frozen=True)
class Limits:
    """Every limit of a grading, each with its margin over what was measured (course/README.md says on
    which machines)."""
    # The parts of a grading, in time.
    can_run_seconds: int = limit(120, "s", "the sandbox's check that its user runs the grader's Python with torch "
                                           "and reads MNIST; about 2 s")
    check_seconds: int = limit(30, "s", "each check of the probe, with no result: the probe is stopped there and "
                                        "run again from the next. Longest wait for a check's result here, 2026-12-04: "
                                        "6.3 s at a load of 5 to 6 on the 2 cores (each under a second alone)",
                               "--check-timeout")
    startup_seconds: int = limit(60, "s", "the start of the probe (Python, torch, the student's modules and the "
                                          "first check) and of the training (to its first metrics.csv row); here, "
                                          "2026-12-04: 8.2 s and 21.4 s at a load of 4 to 6 on the 2 cores (the "
                                          "training's 4.4 s at a load under 2)")
    progress_seconds: int = limit(60, "s", "the training with no new metrics.csv row (one every 50 iterations), "
                                           "or after the last to its end: it is stopped there and told so. "
                                           "Longest gap of a correct 20,000-iteration run here, 2026-12-04: 7.7 s "
                                           "(the last row to its end) at a load of 4 to 6, 4.1 s at a load under 2; 3 "
                                           "times 7.7 on a machine 1.9 times slower is 44 s")
    probe_seconds: int = limit(300, "s", "all the probe's runs together: a check that hangs costs its check_seconds "
                                         "and a rerun of the checks after it")
    probe_runs: int = limit(3, "runs", "the probe's first run and its reruns after a check that hung or crashed")
    train_seconds: int = limit(1260, "s", "the training run: 3.1 times the slowest correct run measured (401.5 s, "
                                          "on a 2-core EPYC with AVX2 only)", "--train-timeout")
    judge_seconds: int = limit(300, "s", "the judge; 4 s here")
    own_seconds: int = limit(60, "s", "the grader's own work, in the worst case below")
    gradescope_seconds: int = limit(2100, "s", "the timeout to set on Gradescope (Configure Autograder): over the "
                                               "worst case below")
    # Each child process of the student's code (course/sandbox.py).
    memory_gb: float = limit(6.0, "GB", "address space of each child; torch alone maps about 3 GB of it, training "
                                        "adds about 1.5", "--memory-gb")
    file_mb: int = limit(512, "MB", "the largest file a child may write (a checkpoint is under 10 MB)")
    disk_mb: int = limit(1024, "MB", "all the files of the sandbox user together")
    shm_mb: int = limit(64, "MB", "each child's own /dev/shm (POSIX semaphores and shared memory), a tmpfs gone with "
                                  "it, where the sandbox has private mounts")
    files: int = limit(100_000, "", "files and folders of the sandbox user (a checkpoint run leaves a few dozen)")
    processes: int = limit(64, "", "processes and threads of the sandbox user, and processes_per_thread more "
                                   "for each CPU thread it is given")
    processes_per_thread: int = limit(8, "", "the sandbox user's processes and threads for each CPU thread it is "
                                             "given, beyond processes")
    keep_bytes: int = limit(2048, "bytes", "of a child's output: this much of its start and of its end is kept")
    # What the grader reads from the submission, and from what its code wrote.
    max_source_bytes: int = limit(256 << 10, "bytes", "a student file; a larger one is refused (the answer's are 8 kB)")
    max_unzipped_bytes: int = limit(512 << 20, "bytes", "a submission zip, unpacked; a larger one is refused")
    max_inner_zip_bytes: int = limit(64 << 20, "bytes", "a zip inside the submission; a larger one is not opened")
    max_entries: int = limit(100_000, "", "files and folders of a submission looked into, in its folders and zips "
                                          "at every depth together: a zip whose directory could hold more (at 46 "
                                          "bytes a member) is not opened, a folder's deeper files are not looked at. "
                                          "Here, 2026-12-04: 200,000 files took 17 s to list, 1,000,000 zip members "
                                          "35 s and 1.1 GB to read")
    max_result_bytes: int = limit(32 << 20, "bytes", "one check's results from the probe (sample_gaussian's 200,000 "
                                                     "draws: 2.4 MB)")
    max_checkpoint_bytes: int = limit(64 << 20, "bytes", "the run's final checkpoint (about 8 MB)")
    max_printed_bytes: int = limit(1 << 20, "bytes", "the figures the run wrote into its results.json (only shown)")
    max_metrics_bytes: int = limit(1 << 20, "bytes", "the run's metrics.csv, read for its progress (20 kB)")


LIMITS = Limits()


def worst_case_parts(train_seconds=LIMITS.train_seconds):
    """The parts of the longest a grading can take, in seconds: the sandbox's check, the probe, the
    training and the judge, each at its limit, and the grader's own work."""
    return (LIMITS.can_run_seconds, LIMITS.probe_seconds, train_seconds, LIMITS.judge_seconds, LIMITS.own_seconds)


def worst_case_seconds(train_seconds=LIMITS.train_seconds):
    """The longest a grading can take (batch stops one there)."""
    return sum(worst_case_parts(train_seconds))


# ---------------------------------------------------------------------------------------------
# course/README.md's tables
# ---------------------------------------------------------------------------------------------

def shown_value(value, unit):
    """A limit's value as the README writes it: "1,260 s", "256 kB", "100,000"."""
    if unit == "bytes":
        for shift, name in ((20, "MB"), (10, "kB")):
            if value % (1 << shift) == 0:
                return f"{value >> shift:,} {name}"
        return f"{value:,} bytes"
    return f"{value:,g} {unit}".strip()


def points_table():
    from course.scoring import credit_band  # scoring reads the points from here
    ranges = accepted_ranges()
    lines = [f"**The points** (`TESTS`; they sum to {sum(POINTS.values())}) and the accepted ranges (`ACCEPTED` in "
             f"`codebase/check/figures.py`, the {figures.MODEL_LABELS[MODEL]}'s in the graded setting):", "",
             "| test | points | how it is scored |", "|---|---:|---|"]
    for t in TESTS:
        name = f"`{t.name}`" if t.name in FUNCTION_TESTS else t.name
        scored = t.scored
        if t.term:
            (low, high), (centre, half) = ranges[t.term], figures.ACCEPTED[MODEL][t.term]
            scored += (f", against {low:g} to {high:g} ({centre:g} ± {half:g}); 0 at "
                       f"{' and '.join(f'{edge:g}' for edge in credit_band(low, high))}")
        lines.append(f"| {name} | {t.points} | {scored} |")
    return lines + ["", "A figure outside its range loses its points linearly, to 0 at one half-width beyond it; nan, "
                        "inf, or a run without valid weights gives 0, with the reason."]


def limits_table():
    lines = ["**The limits** (`Limits`; a flag changes one for one grading; \"here\" is this project's 2-core "
             "AVX-512 VM):", "",
             "| limit | value | what it bounds, and what was measured |", "|---|---:|---|"]
    for f in fields(Limits):
        flag = f" (`{f.metadata['flag']}`)" if f.metadata["flag"] else ""
        value = shown_value(getattr(LIMITS, f.name), f.metadata["unit"])
        lines.append(f"| `{f.name}`{flag} | {value} | {f.metadata['bounds']} |")
    worst = worst_case_seconds()
    lines += ["", f"A grading that reaches every limit takes {' + '.join(f'{s:,}' for s in worst_case_parts())} s = "
                  f"{worst:,} s "
                  f"({worst / 60:.0f} minutes): batch stops a grading there, and Gradescope's timeout is "
                  f"{LIMITS.gradescope_seconds / 60:g} minutes ({LIMITS.gradescope_seconds:,} s)."]
    return lines


def tables():
    """course/README.md's generated part, between its markers: the points and ranges, and the limits."""
    lines = [BEGIN, ""] + points_table() + [""] + limits_table() + ["", END]
    return "\n".join(lines)


def with_tables(text):
    """The README's text with its generated part made anew.

    Raises:
        ValueError: the README lacks the markers, or has them out of order
    """
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{README} has no {BEGIN!r} ... {END!r}: put them where the tables go")
    return text[:start] + tables() + text[end + len(END):]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m course.settings", description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group()
    what.add_argument("--write", action="store_true", help="rewrite the tables in course/README.md")
    what.add_argument("--check", action="store_true", help="exit 1 if course/README.md's tables differ")
    args = p.parse_args(argv)
    if not (args.write or args.check):
        print(tables())
        return 0
    text = README.read_text()
    made = with_tables(text)
    if args.check:
        if made != text:
            print(f"{README}'s tables differ from course/settings.py: run python -m course.settings --write",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(made)
    print(f"Wrote the tables of {README}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
