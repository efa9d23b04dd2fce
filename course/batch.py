"""Regrading a folder of submissions (python -m course.autograder batch FOLDER --out summary.csv): each
submission by a grader process of its own, one thread each, several at once; each grading runs its
children under a user id of its own.
"""
import concurrent.futures
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from codebase.runtime.cpus import usable_cpus
from course import report
from course.collect import ROOT, submissions_in
from course.options import DEFAULTS, option_argv
from course.settings import worst_case_seconds


def batch(folder, out, options=DEFAULTS, jobs=None, log=print):
    """Grade every submission in `folder`, `jobs` at once.

    Writes a results.json per submission into <out without .csv>/ and a row per submission
    to the CSV `out`: the total, then a column per test.

    Returns:
        rows: [(name, results.json as a dict or None, the grader's problem or "")]
    """
    out = Path(out)
    entries = submissions_in(folder)
    if not entries:
        raise SystemExit(f"error: no submissions (folders or zips) in {folder}")
    per_student = out.with_suffix("")
    per_student.mkdir(parents=True, exist_ok=True)
    flags = option_argv(replace(options, threads=1))
    limit = worst_case_seconds(options.train_seconds)
    rows = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or usable_cpus()) as pool:
        futures = {pool.submit(grade_one, path, per_student / f"{name}.json", flags, limit): name
                   for name, path in entries.items()}
        for i, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            name, (results, problem) = futures[future], future.result()
            log(f"[{i}/{len(entries)}] {name}: {results['score'] if results else 'ERROR ' + problem}")
            rows.append((name, results, problem))
    report.write_summary(out, rows)
    log(f"Wrote {out} ({len(rows)} submissions) and one results.json each in {per_student}/.")
    return rows


def grade_one(path, target, flags, limit):
    """Grade the submission `path` into `target` by a grader process, stopped past `limit` s.

    Returns:
        results: its results.json as a dict, or None
        problem: str: why the grader failed, or ""
    """
    target.unlink(missing_ok=True)  # an earlier batch's file must not pass for this grading's
    argv = [sys.executable, "-m", "course.autograder", "grade", str(path), "--out", str(target), *flags]
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
        return json.loads(target.read_text()), problem
    except (OSError, ValueError):
        return None, problem or "no results.json"
