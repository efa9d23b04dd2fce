"""Batch mode keeps students apart: each submission is graded from a copy in a folder of root's alone,
the per-student results are root's alone, and as root a submissions folder that other users can reach
is refused, since batch names it on its own command line, which every process can read in /proc.
"""
import json
import os
import stat
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pytest

from course import batch as batch_module
from course import collect, handout
from course.batch import batch, reachable_by_others

ROOT = Path(__file__).resolve().parents[1]


def write(folder, files):
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return folder


def export(folder, depth=100):
    """A folder of submissions: alice's as a folder (with a link, a FIFO and a deep tree), bob's as a zip."""
    deep = "/".join(["d"] * depth)
    write(folder, {"alice/codebase/utils.py": "a = 1\n", f"alice/{deep}/gmvae.py": "b = 2\n"})
    (folder / "alice" / "link.py").symlink_to("/etc/passwd")
    os.mkfifo(folder / "alice" / "fifo")
    with zipfile.ZipFile(folder / "bob.zip", "w") as z:
        z.writestr("utils.py", "c = 3\n")
    return folder


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_each_submission_is_graded_from_a_copy_of_roots_alone_and_the_results_are_roots_alone(tmp_path,
                                                                                             monkeypatch):
    folder = export(tmp_path / "export")
    seen = {}

    def graded(path, target, flags, limit):
        assert not path.is_relative_to(folder)
        assert mode(path.parent) == mode(path.parent.parent) == 0o700, "a copy others can reach"
        original = collect.collect(folder / path.name)
        copied = collect.collect(path)
        assert copied.files == original.files and copied.where == original.where
        seen[path.name] = path
        target.write_text(json.dumps({"score": 1, "tests": []}))
        return {"score": 1, "tests": []}, ""

    monkeypatch.setattr(batch_module, "_graded", graded)
    rows = batch(folder, tmp_path / "summary.csv", jobs=2, log=lambda *a: None)
    assert sorted(name for name, _, _ in rows) == ["alice", "bob"] and set(seen) == {"alice", "bob.zip"}
    assert not any(p.parent.parent.exists() for p in seen.values()), "the copies outlive the batch"
    assert mode(tmp_path / "summary") == 0o700
    assert (folder / "alice" / "fifo").exists()  # the submission itself is left as it was


def test_only_a_folder_every_user_can_search_down_to_counts_as_reachable(tmp_path):
    assert not reachable_by_others(tmp_path)  # pytest's own folders are their owner's alone
    shared = Path(tempfile.mkdtemp())
    try:
        shared.chmod(0o755)
        assert reachable_by_others(shared) and reachable_by_others("/")
        shared.chmod(0o700)
        assert not reachable_by_others(shared)
    finally:
        shared.rmdir()


def test_as_root_a_folder_other_users_can_reach_is_refused(monkeypatch):
    shared = Path(tempfile.mkdtemp())
    try:
        export(shared, depth=1)
        shared.chmod(0o755)
        monkeypatch.setattr(batch_module.os, "geteuid", lambda: 0)
        monkeypatch.setattr(batch_module, "_graded", lambda *a: pytest.fail("graded from a folder others can reach"))
        with pytest.raises(SystemExit, match="other users can reach .*chmod 700"):
            batch(shared, shared / "summary.csv", jobs=1, log=lambda *a: None)
    finally:
        subprocess.run(["rm", "-rf", "--", str(shared)], check=True)


# A submission that reads what the command lines of the machine's processes name: the submissions folder
# (batch's own), and another grading's submission and results (its grader's). It looks for the victim's
# file alone: other copies of the answer that this machine may let all users read are not batch's doing.
THIEF = '''
import os as _os, sys as _sys, time as _time
_named, _taken, _until = set(), None, _time.monotonic() + 20
for _pid in _os.listdir("/proc"):
    try:
        _args = open(f"/proc/{_pid}/cmdline", "rb").read().decode(errors="replace").split("\\0")
    except OSError:
        continue
    _named |= {_a for _a in _args if _a.startswith("/") and not _a.startswith(("/proc", "/usr", "/bin"))}
for _top in sorted(_named | {_os.path.dirname(_a) for _a in _named} - {"/", "/tmp"}):
    for _dir, _, _names in _os.walk(_top):
        if "utils.py" in _names and _time.monotonic() < _until:
            try:
                _text = open(_os.path.join(_dir, "utils.py")).read()
            except OSError:
                continue
            if "# the victim" + "'s own" in _text:  # split: this file itself must not match
                _taken, _where = _text, _dir
print(f"thief: {len(_named)} paths named, another's utils.py taken: {_taken is not None}", file=_sys.stderr)
if _taken:
    print(f"thief: took {_where}", file=_sys.stderr)
if _taken:
    exec(_taken)
'''


@pytest.mark.slow
@pytest.mark.root
def test_a_student_cannot_read_another_submission_through_the_command_lines(grading_source, grader_python,
                                                                             tmp_path):
    """The attack as reproduced: a stub utils.py that finds the other submissions through /proc/*/cmdline
    scored 30 / 30 on log_normal_mixture in batch --jobs 1. From a folder others can reach, batch now refuses;
    from one of root's alone, the thief finds nothing it can read."""
    source = grading_source("batch_source")
    starter = handout.starter_files(set(handout.VARIANTS["default"]), stored=False)
    students = {"victim/utils.py": (ROOT / "codebase/utils.py").read_bytes() + b"# the victim's own\n",
                "thief/utils.py": starter["codebase/utils.py"] + THIEF.encode()}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    argv = [grader_python, "-m", "course.autograder", "batch"]
    shared = Path(tempfile.mkdtemp())
    try:
        write(shared, students)
        shared.chmod(0o755)
        done = subprocess.run(argv + [str(shared), "--out", str(tmp_path / "refused.csv"), "--jobs", "1", "--only",
                                      "log_normal_mixture"], cwd=source, env=env, capture_output=True, text=True)
        assert done.returncode != 0 and "other users can reach" in done.stderr, done.stderr[-2000:]
    finally:
        subprocess.run(["rm", "-rf", "--", str(shared)], check=True)
    private = write(tmp_path / "export", students)
    done = subprocess.run(argv + [str(private), "--out", str(tmp_path / "summary.csv"), "--jobs", "1", "--only",
                                  "log_normal_mixture"], cwd=source, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    scores = {p.stem: json.loads(p.read_text())["score"] for p in (tmp_path / "summary").glob("*.json")}
    assert scores == {"victim": 30, "thief": 0}, scores
    thief = json.loads((tmp_path / "summary" / "thief.json").read_text())
    assert "another's utils.py taken: False" in json.dumps(thief), "the thief did not run, or took it"
