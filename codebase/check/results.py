"""python -m codebase.check --results: each model's newest run, judged for plausibility first, then against
the accepted ranges of figures.py.

Figures that no correct bound gives fail whatever the run's length, and so does a run whose last attempt
stopped (logs/<run>/stopped.json). A run writes results.json at its end only, so a run without one has not
finished. A plausible run shorter than the graded setting, or in another setting, is not judged (SKIP, exit
status 3): a correct bound needs the whole run to reach the ranges.
"""
import json
import math
from pathlib import Path

from codebase.check.compare import Failure
from codebase.check.figures import GRADED_SETTING, MODEL_LABELS, accepted_range, training_nelbo
from codebase.check.figures import TERM_LABELS as TERMS
from codebase.config import STOPPED, TRAINING_CURVE, Config
from codebase.runtime.errors import first_line
from codebase.runtime.metrics import KL_FLOOR

SKIPPED = 3  # the exit status when nothing failed but a run could not be judged
FAR_ABOVE = 1.5  # a NELBO this many times the model answer's at that many iterations cannot be a correct bound's


class Unjudged(Exception):
    """Plausible figures of a run that the ranges do not apply to (too short, another setting)."""


def _changed(path):
    return path.stat().st_mtime if path.is_file() else None


def newest_run(logs, model):
    """The newest run folder logs/model=<model>_*/, by its results.json, metrics.csv or stopped.json, or None."""
    changed = lambda run: max(filter(None, map(_changed, (run / "results.json", run / "metrics.csv", run / STOPPED))),
                              default=None)
    found = [f for f in Path(logs).glob(f"model={model}_*") if f.is_dir() and changed(f) is not None]
    return max(found, key=changed, default=None)


def _stopped(folder, model):
    """Raise Failure if the run's last attempt stopped (stopped.json newer than any results.json)."""
    record, results = folder / STOPPED, folder / "results.json"
    if _changed(record) is None or (_changed(results) or 0) > _changed(record):
        return
    try:
        stop = json.loads(record.read_text())
        config, message = Config.from_dict(stop["config"]), str(stop["message"]).splitlines()
        when = f"at iteration {int(stop['iteration'])}" if stop.get("iteration") else "before training"
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise Failure(f"{record} cannot be read ({first_line(e)})", f"run python run_{model}.py again") from None
    earlier = f" (the figures in {results} are an earlier run's)" if results.is_file() else ""
    raise Failure(f"the run's last attempt stopped {when}: {message[0] if message else '?'}{earlier}",
                  f"mistaken code: run python -m codebase.check to find it, then {config.command('--overwrite')}")


def _plausible(model, values, iterations, path):
    """Raise Failure if no correct bound gives these figures, whatever the run's length."""
    nelbo, kl, rec = values.values()
    check = f"run python -m codebase.check --only {MODEL_LABELS[model]}.negative_elbo_bound"
    if not all(math.isfinite(v) for v in values.values()):
        raise Failure(f"expected a finite NELBO, KL and Rec in {path}, got {nelbo}, {kl}, {rec}",
                      f"training diverged, as a mistaken bound does: {check}")
    wrong = [f"{name} {value:.2f}" for name, value, bad in (
        ("NELBO", nelbo, nelbo <= 0), ("KL", kl, kl < KL_FLOOR), ("Rec", rec, rec < 0)) if bad]
    if wrong:
        raise Failure(f"{', '.join(wrong)} in {path}: no negative ELBO gives that (Rec = -log p(x|z) >= 0 and the "
                      "KL >= 0)", f"a sign or a term of the bound is wrong (a reversed KL trains to such figures): "
                                  f"{check}")
    if abs(kl + rec - nelbo) > 1e-3 * abs(nelbo) + 1e-3:
        raise Failure(f"expected nelbo = kl + rec = {kl + rec:.2f} in {path}, got {nelbo:.2f}",
                      f"the bound's nelbo is not kl + rec: {check}")
    known = training_nelbo(model, iterations)
    if known and nelbo > FAR_ABOVE * known[1]:
        raise Failure(f"NELBO {nelbo:.2f} in {path} is far above what a correct bound gives after {iterations:g} "
                      f"iterations (about {known[1]} at {known[0]}, the model answer's training curve)",
                      f"a bound summed over the batch, or a term counted twice, not a short run: {check}")


def _why(model, term, value, config):
    """The likely cause of a figure outside its range, in the graded setting."""
    again = f"run python -m codebase.check, then {config.command('--overwrite')}"
    if term != "nelbo":
        return (f"the NELBO is in range but its split into KL and Rec is not: a term of the bound that is scaled "
                f"or estimated wrongly, or a training that went differently: {again}")
    if value > accepted_range(model, term)[1]:
        return f"a bound that is too loose (a reversed sign, a term counted twice) or training that went wrong: {again}"
    return ("a NELBO this low is too good to be a bound: a term is left out or averaged where it should be summed "
            f"(e.g. rec averaged over the 784 pixels, or the KL missing): {again}")


def _unjudged(model, values, iterations, config, path, too_good):
    """Raise Unjudged if the run is not in the graded setting. A shorter run gives higher figures, so one
    `too_good` for the ranges is judged whatever its length."""
    graded = GRADED_SETTING[model]
    changed = [f"{key}={getattr(config, key)}" for key in graded if key != "iter_max"
               and getattr(config, key) != graded[key]]
    if changed:
        raise Unjudged(f"the run used {', '.join(changed)}; the ranges are for the graded setting "
                       f"({', '.join(f'{k}={v}' for k, v in graded.items())}): {values} in {path} cannot be "
                       "judged")
    if iterations < graded["iter_max"] and not too_good:
        known = training_nelbo(model, iterations)
        about = f"at {known[0]} iterations a correct bound gives about {known[1]}; " if known else ""
        full = Config.from_dict({**config.as_dict(), "iter_max": graded["iter_max"]})
        raise Unjudged(f"too short to judge: NELBO {values['nelbo']:.2f} after {iterations:g} iterations in {path} "
                       f"({about}the graded setting trains {graded['iter_max']}). The whole run: "
                       f"{full.command('--overwrite')}")


def check_results(logs, model):
    """The PASS line's note on the newest run's NELBO, KL and Rec; Failure if no correct bound gives them, they
    lie outside the ranges or the run stopped; Unjudged for a plausible run not in the graded setting."""
    folder = newest_run(logs, model)
    if folder is None:
        raise Failure(f"no results in {logs}/ (no {logs}/model={model}_*/results.json)",
                      f"the {MODEL_LABELS[model]} has not been trained and evaluated yet: run python run_{model}.py")
    _stopped(folder, model)
    path = folder / "results.json"
    if not path.is_file():
        raise Failure(f"no results.json in {folder}: the run has not finished (it is training, or it was "
                      "interrupted)", f"if it was interrupted, python run_{model}.py --resume, with the flags it was "
                                      f"started with, continues it; its curve so far is in {folder / 'metrics.csv'}")
    try:
        results = json.loads(path.read_text())
        values = {term: float(results[term]) for term in TERMS}
        config = Config.from_dict({"model": model, **(results.get("config") or {})})
        iterations = float(results.get("iterations", config.iter_max))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise Failure(f"{path} cannot be read ({first_line(e)})",
                      f"the run stopped while writing it: run python run_{model}.py again") from None
    _plausible(model, values, iterations, path)
    ranges = {t: accepted_range(model, t) for t in TERMS}
    figures = ", ".join(f"{TERMS[t]} {values[t]:.2f} (accepted {low:g} to {high:g})"
                        for t, (low, high) in ranges.items())
    outside = [t for t, (low, high) in ranges.items() if not low <= values[t] <= high]
    curve = folder / TRAINING_CURVE
    too_good = values["nelbo"] < ranges["nelbo"][0]
    _unjudged(model, {t: round(v, 2) for t, v in values.items()}, iterations, config, path, too_good)
    if not outside:
        return f"{figures}; {path}; the curves: {curve}"
    term = outside[0]
    (low, high), value = ranges[term], values[term]
    off, where = (value - high, "above") if value > high else (low - value, "below")
    raise Failure(f"expected {TERMS[term]} {low:g} to {high:g}, got {value:.2f}, {off:.2f} {where} the range "
                  f"({figures}) in {path}", f"{_why(model, term, value, config)}; the curves: {curve}")


def main(logs, only=None):
    """Print a PASS, FAIL or SKIP line for each model that has a run in `logs`, or for every model when none
    has (a student who trains only the GMVAE, as the problem set asks, is not failed for the VAE); returns 0
    if every line is a PASS, 1 if one is a FAIL, else SKIPPED."""
    models = [model for model in MODEL_LABELS if newest_run(logs, model)] or list(MODEL_LABELS)
    models = [m for m in models if not only or any(text in f"results: {MODEL_LABELS[m]}" for text in only)]
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    for model in models:
        name = f"results: {MODEL_LABELS[model]}"
        try:
            line = f"PASS  {name}: {check_results(logs, model)}"
        except Failure as e:
            line = f"FAIL  {name}: {e.message}" + (f"; likely cause: {e.cause}" if e.cause else "")
        except Unjudged as e:
            line = f"SKIP  {name}: {e}"
        counts[line[:4]] += 1
        print(line, flush=True)
    skipped = f", {counts['SKIP']} not judged (not the graded setting)" if counts["SKIP"] else ""
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed{skipped}")
    return 1 if counts["FAIL"] else SKIPPED if counts["SKIP"] else 0
