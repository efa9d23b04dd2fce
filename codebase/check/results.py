"""The self-check's --results: each model's newest trained run against the course's accepted ranges.

    python -m codebase.check --results [--logs logs]

The ranges, labels, run scripts and graded setting are codebase/check/figures.py's: this module
only reads a run's results.json and says whether its NELBO, KL and Rec lie in them, and if not,
the likely reason. A run writes results.json at its end only (and removes an earlier run's when
it starts), so a run without one has not finished.
"""
import json
import math
from pathlib import Path

from codebase.check.compare import Failure
from codebase.check.figures import GRADED_SETTING, MODEL_LABELS, RUN_SCRIPTS, accepted_range
from codebase.check.figures import TERM_LABELS as TERMS
from codebase.config import TRAINING_CURVE
from codebase.runtime.errors import first_line


def newest_run(logs, model):
    """The newest run folder logs/model=<model>_*/, by its results.json or metrics.csv, or None."""
    def changed(folder):
        return max((p.stat().st_mtime for p in (folder / "results.json", folder / "metrics.csv") if p.is_file()),
                   default=None)

    found = [f for f in Path(logs).glob(f"model={model}_*") if f.is_dir() and changed(f) is not None]
    return max(found, key=changed, default=None)


def _why(model, term, value, results):
    """The likely cause of a figure outside its range."""
    script, graded = RUN_SCRIPTS[model], GRADED_SETTING[model]
    high = accepted_range(model, term)[1]
    config = results.get("config") if isinstance(results.get("config"), dict) else {}
    iterations = results.get("iterations", config.get("iter_max"))
    changed = [f"{key}={config[key]}" for key, value in graded.items() if key in config and config[key] != value]
    again = f"run python -m codebase.check, then python {script} --overwrite"
    if isinstance(iterations, (int, float)) and iterations < graded["iter_max"]:
        return f"the run trained {iterations:g} iterations; the graded setting is {graded['iter_max']}: " \
               f"run python {script} --overwrite"
    if changed:
        return (f"the run used {', '.join(changed)}; the range is for the graded setting "
                f"({', '.join(f'{k}={v}' for k, v in graded.items())}): run python {script}")
    if term != "nelbo":
        return (f"the NELBO is in range but its split into KL and Rec is not: a term of the bound that is scaled "
                f"or estimated wrongly, or a training that went differently: {again}")
    if value > high:
        return f"a bound that is too loose (a reversed sign, a term counted twice) or training that went wrong: {again}"
    return ("a NELBO this low is too good to be a bound: a term is left out or averaged where it should be summed "
            f"(e.g. rec averaged over the 784 pixels, or the KL missing): {again}")


def check_results(logs, model):
    """The newest run's NELBO, KL and Rec against the accepted ranges; returns the PASS line's note."""
    label, script = MODEL_LABELS[model], RUN_SCRIPTS[model]
    folder = newest_run(logs, model)
    if folder is None:
        raise Failure(f"no results in {logs}/ (no {logs}/model={model}_*/results.json)",
                      f"the {label} has not been trained and evaluated yet: run python {script}")
    path = folder / "results.json"
    if not path.is_file():
        raise Failure(f"no results.json in {folder}: the run has not finished (it is training, or it stopped "
                      "before its end)", f"if it stopped, python {script} --resume, with the flags it was "
                      f"started with, continues it; its curve so far is in {folder / 'metrics.csv'}")
    try:
        results = json.loads(path.read_text())
        values = {term: float(results[term]) for term in TERMS}
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise Failure(f"{path} cannot be read ({first_line(e)})",
                      f"the run stopped while writing it: run python {script} again") from None
    if not all(math.isfinite(v) for v in values.values()):
        raise Failure(f"expected a finite NELBO, KL and Rec in {path}, got {values['nelbo']}, {values['kl']}, "
                      f"{values['rec']}", f"training diverged: run python -m codebase.check, then python {script} "
                                          "--overwrite")
    nelbo, kl, rec = values.values()
    if abs(kl + rec - nelbo) > 1e-3 * abs(nelbo) + 1e-3:
        raise Failure(f"expected nelbo = kl + rec = {kl + rec:.2f} in {path}, got {nelbo:.2f}",
                      "the bound's nelbo is not kl + rec: run python -m codebase.check")
    ranges = {t: accepted_range(model, t) for t in TERMS}
    figures = ", ".join(f"{TERMS[t]} {values[t]:.2f} (accepted {low:g} to {high:g})"
                        for t, (low, high) in ranges.items())
    outside = [t for t, (low, high) in ranges.items() if not low <= values[t] <= high]
    curve = folder / TRAINING_CURVE
    if not outside:
        return f"{figures}; {path}; the curves: {curve}"
    term = outside[0]
    (low, high), value = ranges[term], values[term]
    off, where = (value - high, "above") if value > high else (low - value, "below")
    raise Failure(f"expected {TERMS[term]} {low:g} to {high:g}, got {value:.2f}, {off:.2f} {where} the range "
                  f"({figures}) in {path}", f"{_why(model, term, value, results)}; the curves: {curve}")


def main(logs, only=None):
    """Print a PASS or FAIL line for each model that has a run in `logs`, or for every model when none has
    (a student who trains only the GMVAE, as the problem set asks, is not failed for the VAE); returns 0 if
    every line is a PASS, else 1."""
    models = [model for model in MODEL_LABELS if newest_run(logs, model)] or list(MODEL_LABELS)
    models = [m for m in models if not only or any(text in f"results: {MODEL_LABELS[m]}" for text in only)]
    failed = 0
    for model in models:
        name = f"results: {MODEL_LABELS[model]}"
        try:
            note = check_results(logs, model)
        except Failure as e:
            failed += 1
            cause = f"; likely cause: {e.cause}" if e.cause else ""
            print(f"FAIL  {name}: {e.message}{cause}", flush=True)
        else:
            print(f"PASS  {name}: {note}", flush=True)
    print(f"{len(models) - failed} passed, {failed} failed")
    return 1 if failed else 0
