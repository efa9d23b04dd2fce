"""Scoring: results.json's test entries, from the judge's verdicts and figures.

- A function test scores the share of its checks (the registry's) that pass, and shows the
  self-check's own lines, with those of the functions it builds on that fail too.
- A figure test scores the judge's figure of the trained weights against its accepted range, with
  partial credit outside it (figure_score).
- The grid test counts once the NELBO earns points: samples of a model that does not fit are no digits.
Each entry's output says why it got its score; nothing the student's process printed decides one.
"""
import math
import traceback

from codebase.check.figures import TERM_LABELS
from codebase.check.registry import checks_of, context_of
from course.settings import FIGURE_TESTS, GRADED_ITER, GRID_TEST, LIMITS, POINTS, training_setting
from course.untrusted import clean, shown


def entry(name, score, output, **extra):
    """One entry of results.json's tests: `score` clamped to [0, its points] and rounded."""
    points = POINTS[name]
    score = round(min(max(score, 0.0), points), 2)
    return {"name": name, "score": score, "max_score": points, "output": output.strip(),
            "visibility": "visible", **extra}


def printed(outcome, what="Your code printed"):
    """A note on what a child printed (its output is only ever shown), or ''."""
    parts = []
    for name, capture in (("output", outcome.out), ("error output", outcome.err)):
        text = capture.text().strip()
        if text:
            kept = f" (kept: the first and last {LIMITS.keep_bytes:,})" if capture.total > 2 * LIMITS.keep_bytes else ""
            parts.append(f"{what} {capture.total:,} bytes of {name}{kept}:\n{clean(text)}")
    return "".join(f"\n\n{p}" for p in parts)


def function_test(name, verdicts, probed):
    """A function test: the share of its checks that pass, with their lines, and the checks of the
    functions it builds on that fail too.

    verdicts: {check name: {"passed": bool, "line": str}}: the judge's
    probed: runs.Probed: why the checks without a verdict have none, and the probe's first Outcome
    """
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


def credit_band(low, high):
    """(lowest, highest): where a figure's partial credit falls to 0, one half-width outside [low, high]."""
    half = (high - low) / 2
    return low - half, high + half


def figure_score(value, low, high, points):
    """Partial credit for a figure: full points inside [low, high], falling linearly to 0 at one
    half-width (high - low) / 2 outside it (credit_band); 0 for nan or inf."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    half = (high - low) / 2
    off = max(low - value, value - high, 0.0)
    return points * max(0.0, 1.0 - off / half)


def training_tests(run, judged, ranges, iter_max):
    """The figure tests and the grid test, from the judge's figures of the run's final weights.

    run: runs.Trained: the training run
    judged: {"figures", "grid"} or {"problem"} or None: the judge's word on its final weights
    ranges: {term: (low, high)}: the accepted ranges
    """
    problem = run.failure or (judged or {}).get("problem")
    if problem:
        return _without_weights(problem, run, iter_max)
    figures = judged["figures"]
    about = _about(figures, run.claimed, iter_max)
    tests = []
    for name, term in FIGURE_TESTS.items():
        low, high = ranges[term]
        score = figure_score(figures[term], low, high, POINTS[name])
        tests.append(entry(name, score, f"{_verdict(term, figures[term], low, high, score, POINTS[name])}\n{about}"))
    return tests + [_grid_test(judged["grid"], tests[0]["score"] > 0)]


def _without_weights(problem, run, iter_max):
    """Every training test at 0: the run or its weights failed, as `problem` says."""
    if not run.failure:
        problem = (f"The training run ({training_setting(iter_max)}) finished, but its final checkpoint cannot be "
                   f"graded: {problem}.")
    extra = printed(run.outcome, "The run printed") if run.outcome else ""
    return [entry(name, 0, f"{problem}{extra}") for name in FIGURE_TESTS] + [
        entry(GRID_TEST, 0, "No sample grid: the training run left no weights to draw it from.")]


def _about(figures, claimed, iter_max):
    """Where the figures come from; beside them, those the run printed, and whether they differ."""
    labels = TERM_LABELS
    about = (f"Computed by the grader from your trained weights ({training_setting(iter_max)}) with the reference "
             "bound, on the course's 100-image test subset: "
             + ", ".join(f"{labels[t]} {figures[t]:.2f}" for t in labels) + ".")
    if claimed:
        about += "\nYour run printed: " + ", ".join(f"{labels[t]} {claimed[t]:.2f}" for t in labels) + "."
        # Each figure is a mean over 100 evaluations on both sides: a gap of more than 5 standard errors
        # of their difference (and 0.05 nats) is not noise.
        off = [t for t in labels if not math.isfinite(claimed[t]) or abs(claimed[t] - figures[t])
               > 5 * math.sqrt(2) * figures[f"{t}_sd"] / 10 + 0.05]
        if off:
            about += (f" Its {', '.join(labels[t] for t in off)} differ{'s' if len(off) == 1 else ''} from the "
                      "grader's by more than the Monte-Carlo noise: a sign that your negative_elbo_bound computes "
                      "something else than the bound (see its test above).")
    if iter_max != GRADED_ITER:
        about += f" (A shortened run: the graded setting is {GRADED_ITER:,} iterations.)"
    return about


def _verdict(term, value, low, high, score, points):
    """A figure test's first line: inside its range, near it, or far outside."""
    label = TERM_LABELS[term]
    if score == points:
        return f"{label} {value:.2f} is inside the accepted {low:g} to {high:g}: full marks."
    if score > 0:
        return (f"{label} {value:.2f} is outside the accepted {low:g} to {high:g}, but within "
                f"{(high - low) / 2:g} of it: partial credit.")
    return (f"{label} {value:.2f} is far outside the accepted {low:g} to {high:g}: run "
            "python -m codebase.check and look at your training curve (logs/<run>/metrics.csv).")


def _grid_test(grid, nelbo_scored):
    """The grid test: it counts once the NELBO earns points."""
    drawn = (f"Drawn by the grader from your trained weights: {grid['rows'] * grid['cols']} samples x ~ p(x) in "
             f"{grid['rows']} rows of {grid['cols']}, {grid['ink']:.0%} of their pixels on.")
    if nelbo_scored:
        return entry(GRID_TEST, POINTS[GRID_TEST], drawn)
    # Samples of a model that does not fit the data are no digits.
    return entry(GRID_TEST, 0, f"{drawn} They count once the weights model the data: the NELBO is outside the "
                               "accepted range and its partial-credit band.")


def one_line(error):
    """An exception as its type and message, as Python prints them."""
    return "".join(traceback.format_exception_only(type(error), error)).strip()


def grader_failed(name, error):
    """A test the grader could not score, through no fault of the student's."""
    return entry(name, 0, f"The autograder failed on this test ({one_line(error)}): an error of the autograder, "
                         "not of your code; staff will regrade.", status="failed")


def still_writing(names, error):
    """The tests `names` at 0: the student's process kept writing into its folder (not as root)."""
    return [entry(name, 0, f"Your code kept writing into its folder after it ended ({shown(error)}); nothing "
                           "more could be graded.") for name in names]
