"""Regrading a folder of submissions (python -m course.autograder batch FOLDER --out summary.csv): each
submission by a grader process of its own, one thread each, several at once; each grading runs its
children under a user id of its own.

One student's code must not read another's submission or results. Every process's command line is
visible in /proc to the sandbox user, so nothing named on one may be readable by it: each submission is
copied into a folder of root's alone and graded from there, the per-student results folder is root's
alone, and as root a FOLDER that other users can reach is refused (it is named on batch's own command line).
"""
import collections
import concurrent.futures
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from codebase.runtime.cpus import usable_cpus
from course import report
from course.collect import IGNORED_PARTS, ROOT, submissions_in
from course.options import DEFAULTS, option_argv
from course.settings import LIMITS, worst_case_seconds
from course.untrusted import shown


def batch(folder, out, options=DEFAULTS, jobs=None, log=print):
    """Grade every submission in `folder`, `jobs` at once.

    Writes a results.json per submission into <out without .csv>/ and a row per submission
    to the CSV `out`: the total, then a column per test.

    Returns:
        rows: [(name, results.json as a dict or None, the grader's problem or "")]
    """
    out = Path(out)
    if os.geteuid() == 0 and reachable_by_others(folder):
        raise SystemExit(f"error: other users can reach {shown(folder)} (every folder on its path is searchable by "
                         "all), so one student's code could read the other submissions there: make it, or a folder "
                         "above it, root's alone (chmod 700) and batch again")
    entries = submissions_in(folder)
    if not entries:
        raise SystemExit(f"error: no submissions (folders or zips) in {folder}")
    per_student = out.with_suffix("")
    per_student.mkdir(parents=True, exist_ok=True)
    os.chmod(per_student, 0o700)  # a grading's results are no other grading's to read
    flags = option_argv(replace(options, threads=1))
    limit = worst_case_seconds(options.train_seconds)
    rows = []
    copies = Path(tempfile.mkdtemp(prefix="autograder-batch-"))  # root's alone: 0700
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or usable_cpus()) as pool:
            futures = {pool.submit(grade_one, path, per_student / f"{name}.json", flags, limit, copies): name
                       for name, path in entries.items()}
            for i, future in enumerate(concurrent.futures.as_completed(futures), start=1):
                name, (results, problem) = futures[future], future.result()
                log(f"[{i}/{len(entries)}] {name}: {results['score'] if results else 'ERROR ' + problem}")
                rows.append((name, results, problem))
    finally:
        remove_copies(copies)
    report.write_summary(out, rows)
    log(f"Wrote {out} ({len(rows)} submissions) and one results.json each in {per_student}/.")
    return rows


def reachable_by_others(path):
    """Whether a user who owns nothing on the path and has no groups, as the sandbox's, can reach `path`:
    every folder from / down to it searchable by all (its names can be guessed, or listed)."""
    path = Path(path).resolve()
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (path, *path.parents))


def private_copy(path, copies):
    """A copy of the submission `path` (a folder or a zip) under its own name, in a new folder inside
    `copies`, of root's alone. Of a folder, only what collect() would look at: its folders and regular
    files, without following a link, shallowest first and in collect's order, max_entries of them and one
    more (so that collect says it stopped); a file larger than any that collect() reads is copied as a
    sparse file of its size, which collect names as too large. An upload of a million files, or of
    gigabytes, costs the copy no more than collect."""
    folder = Path(tempfile.mkdtemp(dir=copies))
    copy = folder / path.name
    if not path.is_dir():
        shutil.copyfile(path, copy, follow_symlinks=False)
        return copy
    todo, left = collections.deque([(path, copy)]), LIMITS.max_entries + 1
    largest = max(LIMITS.max_source_bytes, LIMITS.max_inner_zip_bytes)
    copy.mkdir(mode=0o700)
    while todo:  # without recursion (as shutil.copytree would): a submission's folders may go thousands deep
        source, dest = todo.popleft()
        for entry in sorted(os.scandir(source), key=lambda e: e.name):
            if left <= 0:
                return copy
            if entry.name in IGNORED_PARTS:
                continue
            left -= 1
            if entry.is_dir(follow_symlinks=False):
                (dest / entry.name).mkdir(mode=0o700)
                todo.append((Path(entry.path), dest / entry.name))
            elif entry.is_file(follow_symlinks=False):
                size = entry.stat(follow_symlinks=False).st_size
                if size > largest:
                    with open(dest / entry.name, "wb") as f:
                        f.truncate(size)
                else:
                    shutil.copyfile(entry.path, dest / entry.name, follow_symlinks=False)
    return copy


def remove_copies(top):
    """Remove a tree of private_copy's (folders and regular files, root's), without recursion."""
    folders, todo = [], [str(top)]
    while todo:
        folder = todo.pop()
        folders.append(folder)
        for entry in os.scandir(folder):
            if entry.is_dir(follow_symlinks=False):
                todo.append(entry.path)
            else:
                os.unlink(entry.path)
    for folder in reversed(folders):
        os.rmdir(folder)


def grade_one(path, target, flags, limit, copies):
    """Grade a private copy (in `copies`) of the submission `path` into `target` by a grader process,
    stopped past `limit` s; the copy is removed after.

    Returns:
        results: its results.json as a dict, or None
        problem: str: why the grader failed, or ""
    """
    target.unlink(missing_ok=True)  # an earlier batch's file must not pass for this grading's
    try:
        copy = private_copy(path, copies)
    except OSError as e:
        return None, f"the submission cannot be copied: {shown(e)}"
    try:
        return _graded(copy, target, flags, limit)
    finally:
        remove_copies(copy.parent)


def _graded(path, target, flags, limit):
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
