"""Reporting: results.json as Gradescope reads it, and batch's summary CSV.

results.json is {"score", "execution_time", "output", "tests", "extra_data"}; each test is {"name",
"score", "max_score", "output", "visibility", "number"} (scoring.entry), and Gradescope shows "output"
above the tests. The grader writes it itself, atomically and last, whatever the submission did.
"""
import csv
import json
import os
import tempfile
import traceback

from course.collect import STUDENT_FILES, syntax_errors
from course.scoring import one_line
from course.settings import POINTS


def found_notes(found):
    """The lines on what was taken from the submission: the files graded, those missing, and why.

    found: collect.Found
    """
    graded = ", ".join(found.where[t] for t in STUDENT_FILES if t in found.where)
    notes = [f"Graded: {graded or 'nothing'}" + (f"; {found.ignored} other file(s) ignored (only "
             f"{' and '.join(STUDENT_FILES.values())} are graded)." if found.ignored else ".")]
    for target in found.missing:
        notes.append(f"Missing: {STUDENT_FILES[target]} ({target}); the starter's version was used, so its "
                     "functions count as not implemented. Upload it to be graded on it.")
    return notes + found.notes + syntax_errors(found)


def results(notes, tests, seed, only, extra, seconds):
    """results.json's contents; the tests are numbered in their order.

    notes: [str]: lines for the student, above the scores
    tests: [dict]: scoring's entries
    seed: int: of the checks' inputs
    only: tuple: the tests that were run (--only); (): all
    extra: dict: extra_data, for staff
    seconds: float: the grading's wall time
    """
    if only:
        notes = [*notes, f"Only these tests were run (--only): {', '.join(only)}."]
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
    return {"score": total, "execution_time": round(seconds, 1), "output": output, "tests": tests,
            "extra_data": extra}


def failed(error):
    """results.json when the grader itself failed: 0, with a word for the student and the traceback for staff.
    Called while `error` is being handled."""
    return {"score": 0, "output": f"The autograder itself failed ({one_line(error)}). This is not your fault: staff "
                                  "will regrade.",
            "tests": [], "extra_data": {"grader_error": traceback.format_exc()}}


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


def write_summary(out, rows):
    """batch's CSV: a row per submission, by name: its score, a column per test, and the grader's problem.

    rows: [(name, results.json as a dict or None, problem)]
    """
    names = list(POINTS)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", "score", *names, "problem"])
        for name, results, problem in sorted(rows, key=lambda r: r[0]):
            scores = {t["name"]: t["score"] for t in (results or {}).get("tests", [])}
            writer.writerow([name, results["score"] if results else "", *[scores.get(n, "") for n in names],
                             problem])
