"""The red team's attacks on the grader that got through, each with the test that failed before its fix
(issue 31). Every one is what a student can do: the probe and the training run are the student's own
processes, so anything they write (a results file, a checkpoint, an error's message) is the student's
to forge, and the grader must neither show it raw, nor spend its own time or memory on it unbounded.
"""
import io
import json
import os
import stat
import struct
import subprocess
import time
import zipfile
from dataclasses import replace

import pytest
import torch

from course import collect, handout, judge
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


def test_a_file_of_many_members_is_refused_before_its_directory_is_read(tmp_path):
    """400,000 empty members in a 32 MB results file took zipfile 8 s to list: eleven of them and a
    checkpoint of the same, two minutes of the judge's 300 s. Before the fix this was read whole."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(saved({}))) as inside, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in inside.infolist():
            z.writestr(info.filename, inside.read(info))
        prefix = inside.infolist()[0].filename.split("/")[0]
        for i in range(25_000):
            z.writestr(f"{prefix}/{i:x}", b"")
    start = time.monotonic()
    v = judged(tmp_path, out.getvalue())
    assert not v["passed"] and "its directory is" in v["line"], v
    assert time.monotonic() - start < 0.5


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
    found = collect.collect(zip_of({"utils.py": "x = 1\n", "a.zip": inner, "b.zip": empty_members(801)},
                                   tmp_path / "up.zip"))
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


# ---------------------------------------------------------------------------------------------
# Real gradings of the attacks, as root from the zip's layout (slow)
# ---------------------------------------------------------------------------------------------

UTILS_STUB, GMVAE_STUB = (handout.starter_files(set(handout.VARIANTS["default"]), stored=False)[name].decode()
                          for name in ("codebase/utils.py", "codebase/models/gmvae.py"))
FUNCTIONS = ["--only", "log_normal_mixture", "--only", "GMVAE.negative_elbo_bound"]
# The probe's process is the student's: at import, write every check's results file, then stop.
WRITES_RESULTS = '''
import sys as _sys
if _sys.argv and _sys.argv[0].endswith("probe.py"):
    import os as _os
    _a = _sys.argv
    _out = _a[_a.index("--out") + 1]
    for _n, _name in enumerate(_a[i + 1] for i, x in enumerate(_a) if x == "--only"):
        _write(_n, _name, f"{_out}/{_n}.pt")
    _os._exit(0)
'''
FORGED_MESSAGES = '''
def _write(n, name, path):
    import torch as _torch
    message = ("my bug\\nPASS  log_normal_mixture\\nPASS  GMVAE.negative_elbo_bound\\n\\x1b[2J\\x1b[32mScore: 60 / 60"
               if n % 2 else "A" * (20 << 20))
    frames = [{"file": "utils.py\\n\\x1b[31mPASS", "line": 1, "function": "f"}]
    _torch.save({"name": name, "results": {}, "error": {"type": "ValueError", "message": message, "origin": "f",
                                                        "not_implemented": False, "frames": frames}}, path)
''' + WRITES_RESULTS
SLOW_PICKLES = '''
def _write(n, name, path):
    import io as _io, zipfile as _zipfile, torch as _torch
    buffer = _io.BytesIO()
    _torch.save({}, buffer)
    pickle = b"\\x80\\x02]" + b"(e" * (((32 << 20) - 4096) // 2) + b"."  # no-op pairs, just under 32 MB
    with _zipfile.ZipFile(_io.BytesIO(buffer.getvalue())) as inside, _zipfile.ZipFile(path, "w") as z:
        for info in inside.infolist():
            z.writestr(info.filename, pickle if info.filename.endswith("data.pkl") else inside.read(info))
''' + WRITES_RESULTS
# Everything in the probe's process is the student's to change: torch, builtins, tensors that lie.
PATCHES_AND_LIES = '''
import builtins as _b, json as _json, math as _math
_math.isfinite = lambda x: True
_json.dumps = lambda *a, **k: '{"score": 100}'
torch.isclose = lambda *a, **k: torch.tensor(True)
torch.allclose = torch.equal = lambda *a, **k: True
torch.Tensor.__eq__ = lambda self, other: torch.ones((), dtype=torch.bool)


class Liar(torch.Tensor):
    """Close to anything, and different each time it is looked at."""
    calls = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        Liar.calls += 1
        if func in (torch.isclose, torch.Tensor.__eq__, torch.equal, torch.allclose):
            return True
        out = super().__torch_function__(func, types, args, kwargs or {})
        if type(out) is Liar and out.is_floating_point():
            with torch._C.DisableTorchFunctionSubclass():
                out = out + Liar.calls
        return out


def log_normal_mixture(z, m, v):
    return (z.sum(-1) * 0).as_subclass(Liar)
'''
LYING_BOUND = '''t = self.enc(x)[0].sum() * 1e-6
        from codebase.utils import Liar
        return (t + 97.5).as_subclass(Liar), (t + 17.5).as_subclass(Liar), (t + 80.0).as_subclass(Liar)'''
BOUND_STUB = 'raise NotImplementedError("GMVAE.negative_elbo_bound (codebase/models/gmvae.py, Problem 3.1)")'


EVIL_NAME = "\x1b]0;pwned\x07\x1b[2J\rScore: 100\n/utils.py"  # one folder deep: it is the utils.py graded


def hostile_zip(path):
    """Members that are a link, a FIFO, a device, a path out of the zip, a name of escapes and a deflate stream
    whose declared size (100 bytes) hides 50 MB."""
    members = [("codebase/utils.py", stat.S_IFLNK | 0o777, b"/etc/shadow"),
               ("fifo/gmvae.py", stat.S_IFIFO | 0o644, GMVAE_STUB.encode()),
               ("dev/utils.py", stat.S_IFCHR | 0o644, b"x"), ("../../../../tmp/red-team-evil/utils.py", 0o100644, b"1"),
               (EVIL_NAME, 0o100644, b"x = 1\n"), ("codebase/models/gmvae.py", 0o100644, b"\0" * (50 << 20))]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, mode, data in members:
            info = zipfile.ZipInfo(name)
            info.external_attr, info.compress_type = mode << 16, zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    with zipfile.ZipFile(path) as z:
        local = z.getinfo("codebase/models/gmvae.py").header_offset
    data = bytearray(path.read_bytes())
    central = data.rfind(b"PK\x01\x02", 0, data.rfind(b"codebase/models/gmvae.py"))  # the last member's directory entry
    struct.pack_into("<I", data, local + 22, 100)  # its uncompressed size, in its local header
    struct.pack_into("<I", data, central + 24, 100)  # and in the directory
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def attacked(grading_source, grader_python, tmp_path_factory):
    """The attacks graded in one batch, one at a time; {name: results.json as a dict}."""
    tmp = tmp_path_factory.mktemp("red_team")
    os.chmod(tmp, 0o700)  # as root, batch refuses a folder that other users can reach
    folder = tmp / "submissions"
    answer = {"gmvae.py": GMVAE_STUB}
    for name, files in {"forged_messages": {"utils.py": UTILS_STUB + FORGED_MESSAGES, **answer},
                        "slow_pickles": {"utils.py": UTILS_STUB + SLOW_PICKLES, **answer},
                        "patches_and_lies": {"utils.py": UTILS_STUB + PATCHES_AND_LIES,
                                             "gmvae.py": GMVAE_STUB.replace(BOUND_STUB, LYING_BOUND)}}.items():
        (folder / name).mkdir(parents=True)
        for file, text in files.items():
            (folder / name / file).write_text(text)
    hostile_zip(folder / "hostile_zip.zip")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([grader_python, "-m", "course.autograder", "batch", str(folder), "--out",
                           str(tmp / "summary.csv"), "--jobs", "1", *FUNCTIONS], cwd=grading_source("red_team"),
                          env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    return {p.stem: json.loads(p.read_text()) for p in (tmp / "summary").glob("*.json")}


def outputs(results):
    return "\n".join([results["output"]] + [t["output"] for t in results["tests"]])


@pytest.mark.slow
@pytest.mark.root
def test_no_attack_scores_or_reads_as_the_graders_failure(attacked):
    assert sorted(attacked) == ["forged_messages", "hostile_zip", "patches_and_lies", "slow_pickles"]
    for name, results in attacked.items():
        assert results["score"] == 0, (name, outputs(results)[:3000])
        assert "autograder failed" not in outputs(results), (name, outputs(results)[:3000])
        assert len(json.dumps(results)) < 1 << 20, name


@pytest.mark.slow
@pytest.mark.root
def test_forged_messages_are_shown_escaped_on_the_lines_of_their_checks(attacked):
    text = outputs(attacked["forged_messages"])
    assert "\x1b" not in text and "\x07" not in text
    assert not [line for line in text.splitlines() if line.startswith("PASS")], text[:3000]
    assert "my bug\\nPASS  log_normal_mixture" in text


@pytest.mark.slow
@pytest.mark.root
def test_slow_pickles_are_refused_in_seconds(attacked):
    """Before the fix the judge spent 190 s on these eleven files (and with a checkpoint of the same, its
    300 s were up: "The autograder failed on this test")."""
    results = attacked["slow_pickles"]
    assert "pickled structure is over 1 MB" in outputs(results)
    assert results["extra_data"]["seconds"]["judge"] < 30, results["extra_data"]["seconds"]


@pytest.mark.slow
@pytest.mark.root
def test_a_hostile_zip_is_read_without_extracting_following_or_unpacking_past_its_word(attacked):
    text = outputs(attacked["hostile_zip"])
    assert "hostile_zip.zip is damaged at codebase/models/gmvae.py (Bad CRC-32" in text, text[:3000]
    assert "Graded: \\x1b]0;pwned\\x07\\x1b[2J\\rScore: 100\\n/utils.py" in text, text[:3000]
    assert "\x1b" not in text and not os.path.exists("/tmp/red-team-evil")


def test_printed_output_loses_its_bidirectional_controls():
    """A right-to-left override shows "| \\u202e001 / 001 :erocS" as "| Score: 100 / 100"."""
    from course.untrusted import clean

    assert clean("\u202e001 / 001 :erocS\n\u2066x\u2069 \u200fy") == "| 001 / 001 :erocS\n| x y"


def test_a_zip_that_holds_itself_is_looked_into_once(tmp_path, monkeypatch):
    """A zip quine (droste.zip: 440 bytes whose member r/r.zip unpacks to the zip itself) nests without end:
    each level's names are longer by one r/r.zip, so 100,000 levels (the files' budget; the unzipped one
    allowed a million) would hold 40 GB of names. Its member is played here by a zip that reads as itself."""
    quine = zip_of({"r/r.zip": b"a stand-in for the zip itself", "utils.py": "x = 1\n"}, tmp_path / "r.zip")
    own = quine.read_bytes()
    read = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read",
                        lambda self, name, pwd=None: own if getattr(name, "filename", name) == "r/r.zip"
                        else read(self, name, pwd))
    monkeypatch.setattr(collect, "LIMITS", replace(LIMITS, max_entries=3000))
    found = collect.collect(quine)
    assert found.ignored <= 3, found.ignored  # r/r.zip, and once inside it: its r/r.zip and utils.py
    assert any("a copy of a zip already looked into" in n for n in found.notes), found.notes


def test_batch_copies_of_a_submission_go_as_far_as_collect_looks(tmp_path, monkeypatch):
    """Batch copies each submission before grading it: before the fix, the whole of it (200,000 files took
    20 s here, and a file of gigabytes was copied whole), where collect looks at max_entries of them."""
    from course import batch

    monkeypatch.setattr(batch, "LIMITS", replace(LIMITS, max_entries=20))
    submission = tmp_path / "alice"
    for i in range(50):
        (submission / "deep" / "junk" / f"{i:02d}").mkdir(parents=True)
    (submission / "codebase").mkdir()
    (submission / "codebase" / "utils.py").write_text("x = 1\n")
    with open(submission / "big.zip", "wb") as f:
        f.truncate(10 << 30)  # 10 GB, sparse: only its size is read
    (tmp_path / "copies").mkdir()
    copy = batch.private_copy(submission, tmp_path / "copies")
    copied = list(copy.rglob("*"))
    assert len(copied) == 21, len(copied)
    assert (copy / "codebase" / "utils.py").read_text() == "x = 1\n"
    assert (copy / "big.zip").stat().st_size == 10 << 30 and (copy / "big.zip").stat().st_blocks == 0
