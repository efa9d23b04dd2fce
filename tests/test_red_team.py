"""The red team's attacks on the grader that got through, each with the test that failed before its fix
(issue 31). Every one is what a student can do: the probe and the training run are the student's own
processes, so anything they write (a results file, a checkpoint, an error's message) is the student's
to forge, and the grader must neither show it raw, nor spend its own time or memory on it unbounded.
"""
import io
import time
import zipfile
from dataclasses import replace

import pytest
import torch

from course import collect, judge
from course.sandbox import Sandbox
from course.settings import LIMITS
from course.untrusted import remove

FAR = "log_normal_mixture: far points, tiny variances"
SEED = 5


def saved(value):
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def with_pickle(data, pickle):
    """torch.save's bytes `data` with its pickled structure replaced by `pickle`, every member stored."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as inside, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in inside.infolist():
            z.writestr(info.filename, pickle if info.filename.endswith("data.pkl") else inside.read(info))
    return out.getvalue()


def judged(folder, value):
    (folder / f"{FAR}.pt").write_bytes(value if isinstance(value, bytes) else saved(value))
    return judge.judge_checks(SEED, [FAR], folder)[FAR]


def test_a_slow_pickle_is_refused_before_it_is_unpickled(tmp_path):
    """torch's weights-only unpickler is Python: 32 MB of no-op pairs (MARK, APPENDS onto one list) took it
    25 s, and a probe's 11 files and a checkpoint of them held the judge past its 300 s, which read as the
    autograder's failure. Before the fix this loaded (as []) in about 1.5 s."""
    data = with_pickle(saved({}), b"\x80\x02]" + b"(e" * (1 << 20) + b".")
    v = judged(tmp_path, data)
    assert not v["passed"] and "pickled structure is over 1 MB" in v["line"], v


def test_a_forged_error_message_is_shown_on_one_line_escaped_and_bounded(tmp_path):
    """The error record is the probe's, so its message and file names are the student's to write: before
    the fix a forged one put "PASS" lines and terminal escapes into the test's output, and a 20 MB one made
    a results.json of 188 MB."""
    forged = "my bug\nPASS  log_normal_mixture\n\x1b[2J\x1b[32mScore: 60 / 60\x07"
    for message in (forged, "A" * (20 << 20)):
        v = judged(tmp_path, {"name": FAR, "results": {}, "error": {
            "type": "ValueError", "message": message, "origin": "f", "not_implemented": False,
            "frames": [{"file": "utils.py\n\x1b[31mPASS", "line": 1, "function": "f"}]}})
        line = v["line"]
        assert not v["passed"] and line.startswith(f"FAIL  {FAR}: ")
        assert "\n" not in line and "\x1b" not in line and "\x07" not in line, line
        assert len(line) <= judge.LINE_CHARS
    assert "my bug\\nPASS  log_normal_mixture\\n\\x1b[2J" in judged(tmp_path, {"name": FAR, "error": {
        "message": forged}})["line"]


# ---------------------------------------------------------------------------------------------
# Many files: a submission's folders and zips are looked into within a budget of files
# ---------------------------------------------------------------------------------------------

def empty_members(count):
    """A zip of `count` empty members: 53 bytes of directory each, and nothing to unpack."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        for i in range(count):
            z.writestr(f"{i:07d}", b"")
    return buffer.getvalue()


def zip_of(files, path):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def test_a_zip_whose_directory_could_hold_more_files_than_the_budget_is_not_opened(tmp_path, monkeypatch):
    monkeypatch.setattr(collect, "LIMITS", replace(LIMITS, max_entries=1000))
    inner = empty_members(800)  # its directory could hold 921 members: the first opens, the second cannot
    found = collect.collect(zip_of({"utils.py": "x = 1\n", "a.zip": inner, "b.zip": inner}, tmp_path / "up.zip"))
    assert list(found.files) == ["codebase/utils.py"]
    assert any(n.startswith("b.zip could hold more files than the 1,000") and n.endswith("not opened.")
               for n in found.notes), found.notes
    assert not any(n.startswith("a.zip") for n in found.notes), found.notes


def test_a_folder_of_many_files_is_looked_into_shallowest_first_within_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(collect, "LIMITS", replace(LIMITS, max_entries=60))
    for i in range(100):
        (tmp_path / "a_venv" / "lib" / "python" / "site" / f"{i}").mkdir(parents=True)  # deeper than the two
    (tmp_path / "repo" / "codebase" / "models").mkdir(parents=True)
    (tmp_path / "repo" / "codebase" / "utils.py").write_text("x = 1\n")
    (tmp_path / "repo" / "codebase" / "models" / "gmvae.py").write_text("y = 2\n")
    found = collect.collect(tmp_path)
    assert sorted(found.files) == ["codebase/models/gmvae.py", "codebase/utils.py"]
    assert any("more than 60 files and folders" in n for n in found.notes), found.notes


@pytest.mark.slow
def test_a_million_zip_members_in_a_few_megabytes_cost_the_grader_seconds_not_minutes(tmp_path):
    """Five zips of 200,000 empty members, deflated into a 6 MB upload: before the fix the grader read
    every member's entry, 35 s and 1.1 GB of its own (and the unzipped budget allowed 28 such zips)."""
    inner = empty_members(200_000)
    upload = zip_of({"utils.py": "x = 1\n", **{f"r{i}.zip": inner for i in range(5)}}, tmp_path / "up.zip")
    start = time.monotonic()
    found = collect.collect(upload)
    assert time.monotonic() - start < 5
    assert list(found.files) == ["codebase/utils.py"] and found.ignored == 5


# ---------------------------------------------------------------------------------------------
# Memory: RLIMIT_AS bounds each process, not all of the sandbox user's together
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_out_of_memory_killer_takes_the_students_processes_first(grader_python, mnist_dir, tmp_path):
    """Four children forked by the probe held 4.8 GB under --memory-gb 4.5, and the processes limit allows
    dozens: where they fill the machine, the kernel must kill them, not the grader or the judge (score 0)."""
    box, folder = Sandbox.open(grader_python, mnist_dir), None
    try:
        folder = box.make_workdir({}, ("home",))
        read = "print(open('/proc/self/oom_score_adj').read().strip())"
        outcome = box.run([grader_python, "-c", read], folder, {"PATH": "/usr/bin:/bin"}, 60)
        assert outcome.out.text().strip() == "1000", outcome.err.text()
        assert open("/proc/self/oom_score_adj").read().strip() == "0"
    finally:
        box.close()
        if folder is not None:
            remove(folder)


def test_a_checkpoints_own_names_are_shown_on_one_line_escaped_and_bounded(tmp_path, mnist_dir):
    """The judge names a checkpoint's unexpected keys: before the fix a key of 900 kB went whole into each of
    the three figure tests' outputs, and one with a newline put a line of its own there."""
    from codebase.models import GMVAE

    state = GMVAE(z_dim=10, k=500).state_dict()
    forged = "x\nPASS  Training: NELBO 15 / 15\n\x1b[2J"
    torch.save({"model": {**state, forged: torch.zeros(1), "A" * (900 << 10): torch.zeros(1)}}, tmp_path / "c.pt")
    problem = judge.judge_training(tmp_path / "c.pt", mnist_dir, tmp_path / "grid.png")["problem"]
    assert problem.startswith("its weights are not the starter GMVAE's"), problem[:300]
    assert "\n" not in problem and "\x1b" not in problem and len(problem) <= judge.LINE_CHARS
