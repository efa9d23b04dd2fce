"""The Gradescope autograder (python -m course.autograder): its zip, and real gradings.

Every grading runs the real command in a child process from the unpacked zip, as Gradescope
runs it. The training is 20 iterations, graded against wide ranges that only tests give
(--test-ranges), so that the model answer's short run scores full marks. The submissions are
graded at once, a few in parallel (batch), in one module fixture; each test reads its results.
"""
import csv
import io
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

from course import autograder, handout

TEST_RANGES = "nelbo=100:400,kl=0:50,rec=100:400"  # a 20-iteration run of the model answer: about 220, 6, 214
SHORT = ["--iter_max", "20", "--test-ranges", TEST_RANGES]
CHECK_TESTS = ["--only", "log_normal_mixture", "--only", "GMVAE.negative_elbo_bound",
               "--only", "IWAE bound on your functions"]
MIXTURE, BOUND, IWAE = "log_normal_mixture", "GMVAE.negative_elbo_bound", "IWAE bound on your functions"
FIGURES, GRID = ("Training: NELBO", "Training: KL", "Training: Rec"), "Sample grid"
HANG_CHECK_SECONDS, HANG_TRAIN_SECONDS = 10, 4

UTILS, GMVAE = (ROOT / "codebase/utils.py").read_text(), (ROOT / "codebase/models/gmvae.py").read_text()
MIXTURE_LINE = "return log_mean_exp(log_normal(z.unsqueeze(1), m, v), dim=1)"
REC_LINE = "rec = -ut.log_bernoulli_with_logits(x, self.dec(z)).mean()"
KL_LINE = "kl = (ut.log_normal(z, m, v) - ut.log_normal_mixture(z, *self.prior())).mean()"
BOUND_FIRST = "m, v = self.enc(x)\n        z = ut.sample_gaussian(m, v, generator)"


def changed(text, old, new):
    assert text.count(old) == 1, f"the model answer no longer holds {old!r}: update this test"
    return text.replace(old, new)


# The self-check's known mistakes: (file, old, new, the test that loses, words of its diagnosis)
MISTAKES = {
    "log_sum_exp for log_mean_exp": ("utils.py", MIXTURE_LINE, MIXTURE_LINE.replace("log_mean_exp", "log_sum_exp"),
                                     MIXTURE, "the uniform weights 1/k are missing"),
    "rec summed over the batch": ("gmvae.py", REC_LINE, REC_LINE.replace(".mean()", ".sum()"),
                                  BOUND, "rec is summed over the batch"),
    "KL sign reversed": ("gmvae.py", KL_LINE, "kl = (ut.log_normal_mixture(z, *self.prior()) - ut.log_normal(z, m, v)).mean()",
                         BOUND, "the KL's sign is reversed"),
}


def write_files(folder, files):
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def zip_folder(folder, archive, top=""):
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, top + path.relative_to(folder).as_posix())
    return archive


def run_grader(python, source, *args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([python, "-m", "course.autograder", *args], cwd=source, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err, out + err
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("zip") / "autograder.zip"
    assert autograder.main(["build", str(path)]) == 0
    return path


def unpack(archive, dest, mnist_dir):
    """The zip as Gradescope lays it out in /autograder/source, with MNIST where setup.sh puts it."""
    with zipfile.ZipFile(archive) as z:
        z.extractall(dest)
    (dest / "data").symlink_to(mnist_dir, target_is_directory=True)
    return dest


@pytest.fixture(scope="module")
def grader_python():
    """A Python that the sandbox user can run, where this one lives in root's home (as on this
    project's machines); else this one. With it, the gradings here run the student's code as
    `nobody`, as on Gradescope; without it they run it as this user, and the tests check the
    fallback instead (see test_a_submission_cannot_replace_results_or_change_the_grader)."""
    python = Path(sys.executable)
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if os.geteuid() != 0 or autograder.Sandbox.make().uid is not None or not system.is_file():
        yield str(python)
        return
    folder = Path(tempfile.mkdtemp(prefix="autograder-python-"))
    os.chmod(folder, 0o755)
    try:
        subprocess.run([str(system), "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
        purelib = subprocess.run([str(folder / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        Path(purelib, "grader.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
        yield str(folder / "bin/python")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def hostile_code(results, grader):
    """Module-level code that prints 100 MB, then tries to forge results.json and change the grader."""
    return f'''
import sys as _sys
_sys.stdout.write("spam " * (20 << 20))
for _path, _mode in (({str(results)!r}, "w"), ({str(grader)!r}, "a")):
    try:
        with open(_path, _mode) as _f:
            _f.write('{{"score": 1000, "tests": []}}' if _mode == "w" else "\\n# changed by a submission\\n")
    except OSError as _e:
        print("hostile:", type(_e).__name__, _e, file=_sys.stderr)
'''


@pytest.fixture(scope="module")
def graded(built, grader_python, tmp_path_factory, mnist_dir):
    """Grade every submission once; {name: results.json as a dict}, plus the batches' CSV rows."""
    tmp = tmp_path_factory.mktemp("graded")
    source = unpack(built, tmp / "source", mnist_dir)
    answer = {"utils.py": UTILS, "gmvae.py": GMVAE}
    starter = handout.starter_files(set(handout.VARIANTS["default"]))
    repo = lambda folder, files: write_files(folder, {**{n: d.decode() for n, d in starter.items()}, **files})

    full, checks = tmp / "full", tmp / "checks"
    # Gradings with the 20-iteration training.
    write_files(full / "answer", answer)  # the two files, loose
    zip_folder(repo(tmp / "starter", {}), full / "starter.zip", top="gmvae-main/")  # the whole repo, zipped
    write_files(full / "syntax_error", {"utils.py": UTILS + "\ndef broken(:\n    pass\n", "gmvae.py": GMVAE})
    write_files(full / "missing_name", {"utils.py": UTILS, "gmvae.py": changed(
        GMVAE, "\n\nclass GMVAE", "\n\nHELPER = undefined_helper()\n\n\nclass GMVAE")})
    repo(full / "raises_and_wrong_shape", {  # the whole repo as a folder, as from GitHub
        "codebase/utils.py": changed(UTILS, MIXTURE_LINE, "return log_normal(z.unsqueeze(1), m, v)"),
        "codebase/models/gmvae.py": changed(GMVAE, BOUND_FIRST, 'raise ValueError("my bug")\n        ' + BOUND_FIRST)})
    write_files(full / "nan", {"utils.py": changed(UTILS, MIXTURE_LINE, MIXTURE_LINE + ' * float("nan")'),
                               "gmvae.py": GMVAE})
    # Gradings of the functions alone (--only): the training would add nothing here.
    for name, (file, old, new, _, _) in MISTAKES.items():
        files = dict(answer)
        files[file] = changed(files[file], old, new)
        write_files(checks / name.replace(" ", "_"), {f"codebase/{'models/' if f == 'gmvae.py' else ''}{f}": t
                                                      for f, t in files.items()})
    write_files(checks / "missing_file", {"utils.py": UTILS, "notes.txt": "my notes", "scratch.ipynb": "{}"})
    write_files(checks / "memory", {"utils.py": changed(UTILS, MIXTURE_LINE, "torch.empty(1 << 32)  # 16 GiB\n    "
                                                        + MIXTURE_LINE), "gmvae.py": GMVAE})
    hang = write_files(tmp / "hang", {"utils.py": UTILS, "gmvae.py": changed(
        GMVAE, BOUND_FIRST, "import time\n        time.sleep(3600)\n        " + BOUND_FIRST)})
    # Its own copy of the grader: where the sandbox cannot stop it, it changes that copy.
    hostile_source = unpack(built, tmp / "hostile_source", mnist_dir)
    hostile_out = tmp / "hostile_results" / "results.json"
    hostile_out.parent.mkdir()
    hostile = write_files(tmp / "hostile", {"utils.py": UTILS + hostile_code(hostile_out, hostile_source / "course/autograder.py"),
                                            "gmvae.py": GMVAE})

    procs = {
        "full": run_grader(grader_python, source, "batch", str(full), "--out", str(tmp / "full.csv"), *SHORT),
        "checks": run_grader(grader_python, source, "batch", str(checks), "--out", str(tmp / "checks.csv"),
                             *CHECK_TESTS),
        "hang": run_grader(grader_python, source, "grade", str(hang), "--out", str(tmp / "hang.json"), *SHORT,
                           "--check-timeout", str(HANG_CHECK_SECONDS), "--train-timeout", str(HANG_TRAIN_SECONDS),
                           *[a for name in autograder.POINTS if name != IWAE for a in ("--only", name)]),
        "hostile": run_grader(grader_python, hostile_source, "grade", str(hostile), "--out", str(hostile_out),
                              *CHECK_TESTS),
    }
    outputs = {name: finish(proc) for name, proc in procs.items()}
    results = {p.stem: json.loads(p.read_text()) for folder in ("full", "checks") for p in (tmp / folder).glob("*.json")}
    results["hang"] = json.loads((tmp / "hang.json").read_text())
    results["hostile"] = json.loads(hostile_out.read_text())
    return {"results": results, "outputs": outputs, "tmp": tmp, "hostile_source": hostile_source,
            "csv": {name: (tmp / f"{name}.csv").read_text() for name in ("full", "checks")}}


def by_name(results):
    return {t["name"]: t for t in results["tests"]}


# ---------------------------------------------------------------------------------------------
# The zip and the points table
# ---------------------------------------------------------------------------------------------

def normalised(line):
    return " ".join(line.split())


def test_the_zip_holds_the_scripts_the_starter_and_no_line_of_a_stripped_solution(built, tmp_path):
    with zipfile.ZipFile(built) as z:
        names = z.namelist()
        texts = {n: z.read(n).decode(errors="replace") for n in names}
        modes = {i.filename: i.external_attr >> 16 for i in z.infolist()}
    assert "setup.sh" in names and "run_autograder" in names  # at the root, as Gradescope wants
    assert texts["run_autograder"].startswith("#!") and modes["run_autograder"] & 0o111 and modes["setup.sh"] & 0o111
    starter = handout.starter_files(set(handout.VARIANTS["default"]))
    assert set(texts["course/gradescope/starter_files.txt"].split()) == set(starter)
    assert all(texts[n].encode() == d for n, d in starter.items() if n.endswith(".py"))
    assert not [n for n in names if n.startswith(("writeup/", "benchmarks/", ".ci/")) and n != "writeup/README.md"]
    assert "course/handout.py" not in names and "tests/test_autograder.py" not in names

    # Every line of every stripped region, but for lines the starter gives anyway (as in test_handout).
    given = {normalised(line) for name, path in handout.answer_files().items()
             for line in (handout.strip(path.read_text(), name, handout.VARIANTS["default"]) if path.suffix == ".py"
                          else path.read_text(errors="replace")).splitlines()}
    secret = {normalised(line) for name, path in handout.answer_files().items() if path.suffix == ".py"
              for region in handout.parse(path.read_text(), name) if region.tag in handout.VARIANTS["default"]
              for line in region.body if line.strip()} - given
    assert normalised(MIXTURE_LINE) in secret and normalised(KL_LINE) in secret
    for name, text in texts.items():
        assert not secret & {normalised(line) for line in text.splitlines()}, name

    again = tmp_path / "again.zip"
    autograder.build(again)
    assert again.read_bytes() == built.read_bytes()  # the same commit gives the same zip


def test_the_points_table_sums_to_100_and_every_test_has_a_grader():
    assert sum(autograder.POINTS.values()) == 100
    graded = set(autograder.CHECK_TESTS) | set(autograder.FIGURE_TESTS) | {autograder.GRID_TEST}
    assert graded == set(autograder.POINTS)


@pytest.mark.parametrize("value, score", [(97.0, 15), (94.0, 15), (100.0, 15), (101.5, 7.5), (92.5, 7.5),
                                          (103.0, 0), (150.0, 0), (float("nan"), 0), (float("inf"), 0)])
def test_partial_credit_falls_linearly_to_zero_one_half_width_outside_the_range(value, score):
    low, high = autograder.accepted_ranges()["nelbo"]
    assert (low, high) == (94.0, 100.0)  # codebase/reference.py's 97 +/- 3
    assert autograder.figure_score(value, low, high, 15) == pytest.approx(score)


# ---------------------------------------------------------------------------------------------
# What a submission may look like
# ---------------------------------------------------------------------------------------------

def test_the_two_files_are_found_loose_in_a_codebase_tree_or_in_a_zipped_repository(tmp_path):
    loose = write_files(tmp_path / "loose", {"utils.py": "a = 1\n", "gmvae.py": "b = 2\n", "notes.md": "x"})
    found = autograder.collect(loose)
    assert found.files == {"codebase/utils.py": b"a = 1\n", "codebase/models/gmvae.py": b"b = 2\n"}
    assert found.ignored == 1 and not found.missing

    repo = write_files(tmp_path / "repo", {"codebase/utils.py": "a = 1\n", "codebase/models/gmvae.py": "b = 2\n",
                                           "tests/utils.py": "wrong = 1\n", "run_gmvae.py": ""})
    archive = zip_folder(repo, tmp_path / "repo.zip", top="student-repo-main/")
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("../../evil/gmvae.py", "evil = 1\n")  # a path out of the folder: never taken
        z.writestr("__MACOSX/codebase/._utils.py", "\0\1")
    found = autograder.collect(archive)
    assert found.where == {"codebase/utils.py": "student-repo-main/codebase/utils.py",
                           "codebase/models/gmvae.py": "student-repo-main/codebase/models/gmvae.py"}
    assert found.files["codebase/utils.py"] == b"a = 1\n"

    # The zipped repository inside the uploaded folder, and inside another zip: looked into.
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(archive, folder / "my-repo.zip")
    outer = zip_folder(folder, tmp_path / "outer.zip")
    for submission in (folder, outer):
        found = autograder.collect(submission)
        assert found.where["codebase/utils.py"] == "my-repo.zip/student-repo-main/codebase/utils.py", submission
        assert found.files["codebase/models/gmvae.py"] == b"b = 2\n" and not found.missing
    (folder / "broken.zip").write_bytes(b"PK\3\4 not really a zip")  # an inner zip that fails is a mere file
    write_files(folder, {"codebase/utils.py": "loose = 1\n"})  # nearer than the one in the zip
    found = autograder.collect(folder)
    assert found.files["codebase/utils.py"] == b"loose = 1\n"
    assert found.where["codebase/models/gmvae.py"] == "my-repo.zip/student-repo-main/codebase/models/gmvae.py"

    only_one = write_files(tmp_path / "one", {"gmvae.py": "b = 2\n"})
    (only_one / "utils.py").symlink_to(ROOT / "course" / "autograder.py")  # a link is never followed
    found = autograder.collect(only_one)
    assert found.missing == ["codebase/utils.py"]


def test_an_unreadable_submission_still_gets_a_results_json(tmp_path, mnist_dir):
    bad = tmp_path / "submission.zip"
    bad.write_bytes(b"PK\3\4 not really a zip")
    out = tmp_path / "results.json"
    results = autograder.grade(bad, out, iter_max=20, data_dir=mnist_dir, only=[MIXTURE], check_seconds=60)
    assert json.loads(out.read_text()) == results
    assert "could not be read" in results["output"] and "Missing: utils.py" in results["output"]
    assert by_name(results)[MIXTURE]["score"] == 0
    assert "not implemented yet" in by_name(results)[MIXTURE]["output"]


def test_without_mnist_the_grader_says_so_and_still_writes_results(tmp_path, capsys):
    out = tmp_path / "results.json"
    code = autograder.main(["grade", str(tmp_path), "--out", str(out), "--data-dir", str(tmp_path / "nowhere")])
    assert code == 1 and "no MNIST in" in capsys.readouterr().err
    results = json.loads(out.read_text())
    assert results["score"] == 0 and "not your fault" in results["output"]


def test_the_output_of_a_child_is_kept_to_a_few_kilobytes_but_its_verdicts_whole():
    capture = autograder.Capture(verdicts=True)
    capture.feed(b"PASS  log_normal_mixture\nspam")
    for _ in range(1600):  # 100 MB without a newline, in pipe-sized pieces
        capture.feed(b"x" * 65536)
    capture.feed(b"FAIL  GMVAE.negative_elbo_bound: expected 1, got 2\n1 passed, 1 failed\n")  # ends the long line
    capture.close()
    assert capture.verdicts == ["PASS  log_normal_mixture", "FAIL  GMVAE.negative_elbo_bound: expected 1, got 2",
                                "1 passed, 1 failed"]
    assert capture.total > 100 << 20 and len(capture.text()) < 3 * autograder.KEEP_BYTES


# ---------------------------------------------------------------------------------------------
# Real gradings
# ---------------------------------------------------------------------------------------------

def test_the_model_answer_gets_full_marks(graded):
    results = graded["results"]["answer"]
    assert results["score"] == 100
    for test in results["tests"]:
        assert test["score"] == test["max_score"], test
        assert test["visibility"] == "visible" and test["output"]
    assert [t["name"] for t in results["tests"]] == list(autograder.POINTS)
    assert "All 2 checks passed." in by_name(results)[MIXTURE]["output"]
    assert re.search(r"NELBO [\d.]+, KL [\d.]+, Rec [\d.]+", by_name(results)["Training: NELBO"]["output"])
    assert "560 x 280" in by_name(results)[GRID]["output"]
    assert isinstance(results["execution_time"], float) and results["output"].startswith("Graded: utils.py, gmvae.py.")


def test_the_untouched_starter_scores_0_with_a_clear_message_per_test(graded):
    results = graded["results"]["starter"]
    tests = by_name(results)
    assert results["score"] == 0 and list(tests) == list(autograder.POINTS)
    assert "Graded: gmvae-main/codebase/utils.py, gmvae-main/codebase/models/gmvae.py;" in results["output"]
    assert "FAIL  log_normal_mixture: not implemented yet" in tests[MIXTURE]["output"]
    assert "FAIL  GMVAE.negative_elbo_bound: not implemented yet" in tests[BOUND]["output"]
    assert "not implemented yet" in tests[IWAE]["output"]
    for name in FIGURES:
        assert "not implemented yet: log_normal_mixture (codebase/utils.py" in tests[name]["output"], tests[name]
    assert "did not finish" in tests[GRID]["output"]
    assert not [t for t in results["tests"] if "autograder failed" in t["output"]]


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_known_mistake_loses_points_on_its_test_with_the_self_checks_diagnosis(graded, mistake):
    _, _, _, loser, words = MISTAKES[mistake]
    tests = by_name(graded["results"][mistake.replace(" ", "_")])
    assert list(tests) == [MIXTURE, BOUND, IWAE]  # --only
    assert tests[loser]["score"] < tests[loser]["max_score"]
    assert "likely cause: " + words in tests[loser]["output"], tests[loser]["output"]
    if loser == BOUND:  # a mistake in the bound leaves the mixture's test whole
        assert tests[MIXTURE]["score"] == tests[MIXTURE]["max_score"]
    else:  # the bound calls the mixture: its test loses too, and says which function to fix first
        assert "Functions it builds on that fail too" in tests[BOUND]["output"]
        assert "FAIL  log_normal_mixture" in tests[BOUND]["output"].split("Functions it builds on that fail too")[1]


def test_a_missing_file_is_named_and_other_files_are_ignored(graded):
    results = graded["results"]["missing_file"]
    tests = by_name(results)
    assert "Missing: gmvae.py (codebase/models/gmvae.py)" in results["output"]
    assert "2 other file(s) ignored" in results["output"]
    assert tests[MIXTURE]["score"] == 25 and tests[BOUND]["score"] == 0
    assert "not implemented yet" in tests[BOUND]["output"]


def test_a_syntax_error_is_named_with_its_line_and_every_test_says_why_it_got_0(graded):
    results = graded["results"]["syntax_error"]
    line = UTILS.count("\n") + 2
    assert f"utils.py does not compile: " in results["output"] and f"(line {line})" in results["output"]
    assert results["score"] == 0
    tests = by_name(results)
    assert "cannot import codebase.utils: SyntaxError" in tests[MIXTURE]["output"]
    assert "SyntaxError" in tests["Training: NELBO"]["output"]


def test_a_missing_name_costs_only_the_file_that_has_it(graded):
    tests = by_name(graded["results"]["missing_name"])
    assert tests[MIXTURE]["score"] == 25
    assert tests[BOUND]["score"] == 0
    assert "NameError: name 'undefined_helper' is not defined" in tests[BOUND]["output"]
    assert "NameError: name 'undefined_helper' is not defined" in tests["Training: NELBO"]["output"]


def test_an_exception_and_a_wrong_shape_are_each_diagnosed(graded):
    tests = by_name(graded["results"]["raises_and_wrong_shape"])
    assert tests[MIXTURE]["score"] == 0 and "shape" in tests[MIXTURE]["output"]
    assert tests[BOUND]["score"] == 0 and "ValueError: my bug" in tests[BOUND]["output"]
    assert "ValueError: my bug" in tests["Training: NELBO"]["output"]
    assert "Traceback" not in json.dumps(graded["results"]["raises_and_wrong_shape"])


def test_nan_is_diagnosed_and_a_nan_run_scores_0(graded):
    tests = by_name(graded["results"]["nan"])
    assert tests[MIXTURE]["score"] == 0 and "got nan" in tests[MIXTURE]["output"]
    for name in FIGURES:
        assert tests[name]["score"] == 0 and "nan" in tests[name]["output"].lower(), tests[name]["output"]


def test_a_memory_hog_hits_the_cap_and_is_told_so(graded):
    tests = by_name(graded["results"]["memory"])
    assert tests[MIXTURE]["score"] == 0
    assert "allocate" in tests[MIXTURE]["output"], tests[MIXTURE]["output"]
    assert tests[BOUND]["score"] < 25  # it calls the mixture


def test_a_hang_times_out_on_its_tests_and_the_rest_is_graded(graded):
    results = graded["results"]["hang"]
    tests = by_name(results)
    assert list(tests) == [name for name in autograder.POINTS if name != IWAE]  # --only: all but the IWAE test
    assert tests[MIXTURE]["score"] == 25  # graded in a run of its own after the first run hung
    assert tests[BOUND]["score"] == 0 and f"Timed out after {HANG_CHECK_SECONDS} s" in tests[BOUND]["output"]
    for name in FIGURES:
        assert f"timed out after {HANG_TRAIN_SECONDS} s" in tests[name]["output"]
    assert tests[GRID]["score"] == 0 and "did not finish" in tests[GRID]["output"]
    assert results["execution_time"] < 4 * HANG_CHECK_SECONDS + HANG_TRAIN_SECONDS + 60


def test_a_submission_cannot_replace_results_or_change_the_grader(graded):
    """It prints 100 MB, then tries to overwrite results.json and to append to the grader."""
    results = graded["results"]["hostile"]
    tests = by_name(results)
    assert results["score"] == 60 and all(t["score"] == t["max_score"] for t in results["tests"])
    assert len(json.dumps(results)) < 64 << 10
    assert re.search(r"Your code printed 104,857,6\d\d bytes \(kept: the first and last 2,048\)", tests[MIXTURE]["output"])
    grader = graded["hostile_source"] / "course/autograder.py"
    if results["extra_data"]["sandbox"].startswith("as nobody"):
        # As on Gradescope: both writes were refused, and the student sees why.
        assert "hostile: PermissionError" in tests[MIXTURE]["output"]
        assert grader.read_bytes() == (ROOT / "course/autograder.py").read_bytes()
        assert "Warning" not in results["output"]
    else:
        # Not root, or no Python the sandbox user can run: the writes happen, are caught and are reported,
        # and results.json is the grader's own, written last.
        assert "changed by a submission" in grader.read_text()
        assert "Warning: the grading code changed while your code ran" in results["output"]
        assert "Warning: something other than the grader wrote results.json" in results["output"]
        assert results["extra_data"]["grader_changed"] and results["extra_data"]["results_written_by_submission"]


def test_batch_writes_a_row_per_submission_and_a_column_per_test(graded):
    rows = list(csv.DictReader(io.StringIO(graded["csv"]["full"])))
    assert [r["submission"] for r in rows] == ["answer", "missing_name", "nan", "raises_and_wrong_shape", "starter",
                                               "syntax_error"]
    assert list(rows[0]) == ["submission", "score", *autograder.POINTS, "problem"]
    answer = rows[0]
    assert float(answer["score"]) == 100 and float(answer["Training: NELBO"]) == 15
    assert float(rows[4]["score"]) == 0 and all(not r["problem"] for r in rows)
    assert "[6/6]" in graded["outputs"]["full"]


def test_a_folder_and_a_zip_of_one_name_are_two_submissions(tmp_path):
    folder = tmp_path / "export"
    write_files(folder, {"alice/utils.py": "", "bob/gmvae.py": "", "notes.txt": ""})
    zip_folder(folder / "alice", folder / "alice.zip")
    zip_folder(folder / "bob", folder / "carol.zip")
    assert autograder.submissions_in(folder) == {
        "alice": folder / "alice", "alice.zip": folder / "alice.zip", "bob": folder / "bob",
        "carol": folder / "carol.zip"}


def test_batch_does_not_report_an_earlier_batchs_results(tmp_path, monkeypatch):
    folder = write_files(tmp_path / "export", {"alice/utils.py": ""})
    stale = tmp_path / "summary" / "alice.json"
    write_files(stale.parent, {stale.name: json.dumps({"score": 100, "tests": []})})
    # The grader child dies before it writes anything.
    monkeypatch.setattr(autograder.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "killed"))
    autograder.batch(folder, tmp_path / "summary.csv", jobs=1, log=lambda *a: None)
    row = next(csv.DictReader(open(tmp_path / "summary.csv")))
    assert row["score"] != "100" and row["problem"] == "killed" and not stale.exists()


@pytest.mark.full
def test_the_zip_installs_with_its_own_setup_and_grades_the_model_answer_in_full():
    """course/ci_full_grade.sh: setup.sh into a fresh venv, then 20,000 iterations of the model answer."""
    out = subprocess.run(["bash", str(ROOT / "course" / "ci_full_grade.sh")], capture_output=True, text=True,
                         timeout=1800)
    print(out.stdout[-3000:])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "score: 100 / 100" in out.stdout
