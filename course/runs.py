"""The children of a grading: the student's code run in the sandbox, and the judge beside it.

- probe: the self-check's probe runs the student's functions on the checks' inputs, one result file
  per check; each is copied into the trusted folder, which only root can enter.
- train: the training run in the graded setting; its final checkpoint is copied there too.
- judge: course.judge, a process that never imports the student's code, judges those copies.
Whatever the student's process prints or writes is only shown: nothing of it decides a score.
"""
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from codebase.check import figures
from codebase.check.registry import CHECKS, checks_of, context_of
from course.collect import ROOT
from course.settings import FIGURE_TESTS, GRADED, LIMITS, MODEL, training_setting
from course.untrusted import list_beneath, read_beneath


class GraderError(RuntimeError):
    """The grader cannot grade anything (no MNIST, say): the instructor's problem, not the student's."""


def child_env(workdir, threads):
    """A clean environment: none of the grader's variables reach the student's code."""
    n = str(threads)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir / "home"),
            "TMPDIR": str(workdir / "home"), "MPLCONFIGDIR": str(workdir / "home"), "MPLBACKEND": "Agg",
            # torch.compile's cache, in the sandbox user's own folder: nothing else is writable there.
            "TORCHINDUCTOR_CACHE_DIR": str(workdir / "home" / "inductor"),
            "USER": "student", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def checks_to_probe(functions):
    """The names of the checks of `functions` and of the functions they build on, in the registry's order."""
    needed = {c.name for name in functions for c in checks_of(name) + context_of(name)}
    return [c.name for c in CHECKS if c.name in needed]


# ---------------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------------

@dataclass
class Probed:
    """What the probe runs left: the checks whose results were kept, and why the others have none."""
    kept: list = field(default_factory=list)
    problems: dict = field(default_factory=dict)  # {check name: why it has no results}
    first: object = None  # the first run's Outcome, whose output the student sees


def probe(names, workdir, box, seed, trusted, check_seconds):
    """Run the self-check's probe on `names` in the sandbox, one file per check as it finishes, and copy
    each result into `trusted`. A check that hangs or crashes costs only itself: the rest run again."""
    probed, todo, spent = Probed(), list(names), 0.0
    for _ in range(LIMITS.probe_runs):
        if not todo or spent >= LIMITS.probe_seconds:
            break
        outcome = _probe_once(todo, workdir, box, seed, check_seconds, LIMITS.probe_seconds - spent)
        spent += outcome.seconds
        probed.first = probed.first or outcome
        finished, why = _keep_results(todo, workdir, trusted, probed)
        if finished == len(todo):
            return probed
        if outcome.stopped:  # a bound of the whole user, not of one check: the rest would hit it again
            for name in todo[finished:]:
                probed.problems[name] = f"the self-check was {outcome.why(box.memory_gb)}"
            return probed
        probed.problems[todo[finished]] = _why_none(why, outcome, box.memory_gb, check_seconds)
        todo = todo[finished + 1:]
    for name in todo:
        probed.problems[name] = "not run: the self-check ran out of time on the checks before it"
    return probed


def _probe_once(todo, workdir, box, seed, check_seconds, seconds):
    """One run of the probe on the checks `todo`, into an empty probe/; its Outcome."""
    box.reset(workdir / "probe")
    files = {f"{i}.pt" for i in range(len(todo))}
    count = lambda: len(set(list_beneath(workdir, "probe")) & files)
    argv = [sys.executable, "-m", "codebase.check.probe", "--seed", str(seed), "--out", str(workdir / "probe")]
    argv += [a for name in todo for a in ("--only", name)]
    return box.run(argv, workdir, child_env(workdir, 1), seconds,
                   progress=(count, check_seconds, LIMITS.startup_seconds))


def _keep_results(todo, workdir, trusted, probed):
    """Copy the result files of the checks that finished, in order, into `trusted`.

    Returns:
        finished: int: how many of `todo` have results
        why: str: why the next has none, in a few words ("missing", "a symbolic link"), or ""
    """
    finished, why = 0, ""
    for i, name in enumerate(todo):
        data, why = read_beneath(workdir, f"probe/{i}.pt", LIMITS.max_result_bytes)
        if data is None:
            break
        (trusted / f"{name}.pt").write_bytes(data)
        probed.kept.append(name)
        finished = i + 1
    return finished, why


def _why_none(why, outcome, memory_gb, check_seconds):
    """Why the check the probe was running has no results, for the student."""
    if why not in ("", "missing"):  # it finished, but its results are not a file to be read
        return f"the results of this check are {why}, and were not read"
    if outcome.stalled:
        window = check_seconds if outcome.steps else LIMITS.startup_seconds  # the first check's has the start's
        return (f"No progress for {window:g} s at this check (it returned nothing): is there an endless loop or a "
                "sleep in your code?")
    if outcome.timed_out:
        return "The self-check ran out of time on this check: is there an endless loop or a sleep in your code?"
    return f"the self-check stopped while running this check ({outcome.why(memory_gb)})"


# ---------------------------------------------------------------------------------------------
# The training run
# ---------------------------------------------------------------------------------------------

@dataclass
class Trained:
    outcome: object = None
    checkpoint: Path = None  # the trusted copy of the final checkpoint, or None
    failure: str = ""  # why the run counts for nothing, or ""
    claimed: dict = None  # the figures the run printed into its results.json (only shown)
    step: str = None  # how the run says its training step ran, "compiled" or "eager" (only shown)


def train(workdir, box, options, threads, data_dir, trusted):
    """The training run in the graded setting, in the sandbox; its final checkpoint copied to `trusted`."""
    for name in ("logs", "checkpoints"):
        box.reset(workdir / name)  # nothing the probe wrote may pose as the run's output
    argv = [sys.executable, figures.RUN_SCRIPTS[MODEL], "--iter_max", str(options.iter_max), "--seed",
            str(GRADED.seed), "--device", "cpu", "--threads", str(threads), "--data-dir", str(data_dir),
            "--no-check"]  # the functions' checks are the probe's, on the grader's own inputs
    # Watched by its progress too: a run that stops advancing is stopped long before its time is up.
    reached = lambda: _iteration_reached(workdir)
    outcome = box.run(argv, workdir, child_env(workdir, threads), options.train_seconds,
                      progress=(reached, LIMITS.progress_seconds, LIMITS.startup_seconds))
    run = Trained(outcome, claimed=_claimed(workdir), step=_claimed(workdir, step=True))
    # Imported here, as it imports torch: the grader must start, and refuse to grade (Sandbox.open), with a
    # Python that has none.
    from codebase.runtime import checkpoint
    relative = checkpoint.path_for(GRADED.checkpoint_dir, options.iter_max)
    data, why = read_beneath(workdir, relative, LIMITS.max_checkpoint_bytes)
    run.failure = _failure(outcome, box.memory_gb, options)
    if not run.failure and data is None:
        run.failure = (f"The training run ({training_setting(options.iter_max)}) finished, but left no checkpoint "
                       f"{relative} ({why}).")
    elif not run.failure:
        run.checkpoint = trusted / "model.pt"
        run.checkpoint.write_bytes(data)
    return run


def _iteration_reached(workdir):
    """The iteration of the last whole row of the run's metrics.csv (its progress), or 0."""
    raw, _ = read_beneath(workdir, GRADED.log_dir / "metrics.csv", LIMITS.max_metrics_bytes)
    rows = (raw or b"").rsplit(b"\n", 2)  # a row is whole once its newline is written
    try:
        return int(rows[-2].split(b",")[0]) if len(rows) > 2 else 0
    except ValueError:  # the header, or what the student's code wrote there
        return 0


def _claimed(workdir, step=False):
    """The figures the run wrote into its results.json, or with `step` how it says its step ran
    ("compiled" or "eager"); None where it wrote none."""
    raw, _ = read_beneath(workdir, GRADED.log_dir / "results.json", LIMITS.max_printed_bytes)
    try:  # the student's process wrote it: anything may be in it, and it is only shown
        claimed = json.loads(raw)
        if step:
            return {"compiled": "compiled", "eager": "eager"}.get(claimed["compile"]["path"])
        return {t: float(claimed[t]) for t in FIGURE_TESTS.values()}
    except Exception:
        return None


def _failure(outcome, memory_gb, options):
    """Why the run ended without finishing, in a sentence, or ""."""
    setting = training_setting(options.iter_max)
    if outcome.stopped:
        return f"The training run ({setting}) was {outcome.why(memory_gb)}."
    if outcome.stalled:
        window = LIMITS.progress_seconds if outcome.steps else LIMITS.startup_seconds
        return (f"The training run ({setting}) was stopped: no progress for {window:g} s at iteration "
                f"{outcome.steps:,} (its metrics.csv gains a row every {GRADED.log_every} iterations). Is there an "
                "endless loop or a sleep in your code?")
    if outcome.timed_out:
        return f"The training run ({setting}) timed out after {options.train_seconds:g} s."
    if outcome.returncode != 0:
        return f"The training run ({setting}) failed ({outcome.why(memory_gb)})."
    return ""


# ---------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------

def judge(seed, checks, trusted, trained, data_dir, threads):
    """course.judge on what the children left, from the grading code's own folder; its JSON.

    Raises:
        GraderError: the judge failed (subprocess.TimeoutExpired past LIMITS.judge_seconds)
    """
    argv = [sys.executable, "-m", "course.judge", "--seed", str(seed), "--probe", str(trusted), "--out",
            str(trusted / "judged.json"), "--checks", *checks]
    if trained is not None and trained.checkpoint is not None:
        argv += ["--checkpoint", str(trained.checkpoint), "--data-dir", str(data_dir)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": str(threads), "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(trusted),
           "HOME": str(trusted)}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LIMITS.judge_seconds)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise GraderError(f"the judge failed: {lines[-1] if lines else f'exit status {done.returncode}'}")
    return json.loads((trusted / "judged.json").read_text())
