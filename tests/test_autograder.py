"""The Gradescope autograder (python -m course.autograder): its settings, scoring, collecting and
reporting on hand-made inputs (the unit tier), then its zip and real gradings, honest and not (slow).

Every real grading runs the real command in a child process from the unpacked zip, as Gradescope runs
it, with the shipped limits unless a test is about a limit. The training is 20 iterations, graded
against narrow ranges around what the model answer reaches in 20 (--test-ranges, for tests only): an
untrained model scores 0 there. The submissions are graded at once, a few in parallel (batch), in one
module fixture; each test reads its results.
"""
import csv
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import fields, replace
from pathlib import Path

import pytest

from codebase.check import figures
from codebase.check.registry import checks_of, context_of
from course import autograder, collect, handout, report, scoring, settings
from course.batch import batch
from course.child import Capture, Outcome
from course.options import FLAGS, Options, option_argv, options_of
from course.runs import Probed, Trained
from course.sandbox import Sandbox
from course.settings import FIGURE_TESTS, FUNCTION_TESTS, GRADED_ITER, GRID_TEST, LIMITS, POINTS

ROOT = Path(__file__).resolve().parents[1]
# The model answer after 20 iterations: NELBO about 220, KL 6, Rec 214; an untrained model 546, 1.4 and 545.
TEST_RANGES = "nelbo=200:240,kl=4:8,rec=195:235"
SHORT = ["--iter_max", "20", "--test-ranges", TEST_RANGES]
MIXTURE, BOUND = "log_normal_mixture", "GMVAE.negative_elbo_bound"
FUNCTIONS = ["--only", MIXTURE, "--only", BOUND]
FIGURES, GRID = ("Training: NELBO", "Training: KL", "Training: Rec"), "Sample grid"
HANG_CHECK_SECONDS, HANG_TRAIN_SECONDS = 20, 20

UTILS, GMVAE = (ROOT / "codebase/utils.py").read_text(), (ROOT / "codebase/models/gmvae.py").read_text()
STARTER = handout.starter_files(set(handout.VARIANTS["default"]), stored=False)
UTILS_STUB, GMVAE_STUB = STARTER["codebase/utils.py"].decode(), STARTER["codebase/models/gmvae.py"].decode()
MIXTURE_LINE = "return log_mean_exp(log_normal(z.unsqueeze(1), m, v), dim=1)"
REC_LINE = "rec = -ut.log_bernoulli_with_logits(x, self.dec(z)).mean()"
KL_LINE = "kl = (ut.log_normal(z, m, v) - ut.log_normal_mixture(z, *self.prior())).mean()"
BOUND_FIRST = "m, v = self.enc(x)\n        z = ut.sample_gaussian(m, v, generator)"
BOUND_STUB = 'raise NotImplementedError("GMVAE.negative_elbo_bound (codebase/models/gmvae.py, Problem 3.1)")'
EVIL_NAME = "evil\nScore: 100 / 100.\n\x1b[31m\x07/utils.py"  # a line of the grader's own, in a zip member's name

# What the judge says of weights at the centre of every accepted range, with the sample grid it drew.
CENTRES = {term: centre for term, (centre, _) in figures.ACCEPTED[settings.MODEL].items()}
JUDGED = {"figures": {**CENTRES, "nelbo_sd": 0.5, "kl_sd": 0.1, "rec_sd": 0.4},
          "grid": {"rows": 10, "cols": 20, "ink": 0.13}}


def changed(text, old, new):
    assert text.count(old) == 1, f"the code no longer holds {old!r}: update this test"
    return text.replace(old, new)


def write_files(folder, files):
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            (folder / name).write_bytes(text)
        else:
            (folder / name).write_text(text)
    return folder


def zip_folder(folder, archive, top=""):
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, top + path.relative_to(folder).as_posix())
    return archive


def zip_of(archive, files, compression=zipfile.ZIP_DEFLATED):
    """A zip holding {name: text or bytes}; `archive` is a path or a file object."""
    with zipfile.ZipFile(archive, "w", compression) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return archive


def by_name(results):
    return {t["name"]: t for t in results["tests"]}


def verdicts(passing=(), failing=()):
    """The judge's verdicts on the checks named: {name: {"passed", "line"}}."""
    return {**{n: {"passed": True, "line": f"PASS  {n}"} for n in passing},
            **{n: {"passed": False, "line": f"FAIL  {n}: wrong"} for n in failing}}


def outcome(printed=b""):
    out = Capture()
    out.feed(printed)
    return Outcome(0, False, out, Capture())


# ---------------------------------------------------------------------------------------------
# The settings: points and limits declared once, and course/README.md's tables made from them
# ---------------------------------------------------------------------------------------------

def test_the_points_sum_to_100_and_each_test_is_of_one_kind():
    assert sum(POINTS.values()) == 100
    kinds = [set(FUNCTION_TESTS), set(FIGURE_TESTS), {GRID_TEST}]
    assert set().union(*kinds) == set(POINTS) and sum(map(len, kinds)) == len(POINTS)
    assert FUNCTION_TESTS == (MIXTURE, BOUND)  # the problem set's two functions, from the registry
    assert sorted(FIGURE_TESTS.values()) == sorted(figures.TERM_LABELS)


def test_the_ranges_are_the_courses_and_a_test_may_give_its_own():
    ranges = settings.accepted_ranges()
    assert ranges == {term: figures.accepted_range(settings.MODEL, term) for term in figures.TERM_LABELS}
    assert ranges["nelbo"] == (94.0, 100.0)  # codebase/check/figures.py's 97 +/- 3
    assert settings.accepted_ranges((("kl", 1.0, 2.0),)) == {**ranges, "kl": (1.0, 2.0)}


def test_every_limit_has_its_description_and_the_options_and_sandbox_take_theirs_from_there():
    for f in fields(settings.Limits):
        assert f.metadata["bounds"] and f.metadata["unit"] in ("s", "GB", "MB", "bytes", "runs", ""), f.name
        assert getattr(LIMITS, f.name) > 0
        if f.metadata["flag"]:  # the flag of the Options field of the same name
            assert FLAGS[f.name][0] == f.metadata["flag"] and getattr(Options(), f.name) == getattr(LIMITS, f.name)
    box = Sandbox()
    assert (box.memory_gb, box.disk_mb, box.processes) == (LIMITS.memory_gb, LIMITS.disk_mb, LIMITS.processes)
    assert settings.worst_case_seconds() < LIMITS.gradescope_seconds
    assert settings.worst_case_seconds(20) == settings.worst_case_seconds() - LIMITS.train_seconds + 20


def test_the_readmes_tables_are_the_ones_the_settings_make():
    text = settings.README.read_text()
    assert settings.with_tables(text) == text, "course/README.md is stale: run python -m course.settings --write"
    made = settings.tables()
    for t in settings.TESTS:
        assert re.search(rf"\| `?{re.escape(t.name)}`? \| {t.points} \|", made), t.name
    for low, high in settings.accepted_ranges().values():
        assert f"against {low:g} to {high:g}" in made
    for f in fields(settings.Limits):
        assert f"| `{f.name}`" in made
    assert f"= {settings.worst_case_seconds():,} s" in made


def test_the_settings_command_finds_stale_tables_and_rewrites_them(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nprose\n\n{settings.BEGIN}\n| old | table |\n{settings.END}\n\nmore prose\n")
    monkeypatch.setattr(settings, "README", readme)
    assert settings.main(["--check"]) == 1 and "--write" in capsys.readouterr().err
    assert settings.main(["--write"]) == 0 and settings.main(["--check"]) == 0
    text = readme.read_text()
    assert "| old | table |" not in text and settings.tables() in text
    assert text.startswith("# Title\n\nprose\n\n") and text.endswith("\n\nmore prose\n")
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="generated:settings-begin"):
        settings.main(["--write"])


def test_the_options_make_the_flags_and_come_back_from_them():
    options = Options(iter_max=20, only=(MIXTURE,), check_seed=7, test_ranges=(("kl", 0.0, 1.0),))
    args = autograder.build_parser().parse_args(["grade", "s", "--out", "r.json", *option_argv(options)])
    assert options_of(args) == options
    assert options_of(autograder.build_parser().parse_args(["grade", "s", "--out", "r"])) == Options()
    assert option_argv(Options()) == []


# ---------------------------------------------------------------------------------------------
# Scoring, from the judge's verdicts and figures
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, score", [(97.0, 15), (94.0, 15), (100.0, 15), (101.5, 7.5), (92.5, 7.5),
                                          (103.0, 0), (150.0, 0), (float("nan"), 0), (float("inf"), 0)])
def test_partial_credit_falls_linearly_to_zero_one_half_width_outside_the_range(value, score):
    low, high = settings.accepted_ranges()["nelbo"]
    assert scoring.figure_score(value, low, high, 15) == pytest.approx(score)


def test_the_credit_band_is_where_partial_credit_ends():
    low, high = settings.accepted_ranges()["kl"]
    lowest, highest = scoring.credit_band(low, high)
    assert lowest < low < high < highest
    for edge, inward in ((lowest, 1e-6), (highest, -1e-6)):
        assert scoring.figure_score(edge, low, high, 10) == 0 < scoring.figure_score(edge + inward, low, high, 10)


def test_an_entry_is_clamped_to_its_points_and_rounded():
    assert scoring.entry(MIXTURE, 31.0, "x")["score"] == 30
    assert scoring.entry(MIXTURE, -2.0, "x")["score"] == 0
    assert scoring.entry(BOUND, 12.3456, " text \n")["score"] == 12.35
    assert scoring.entry(BOUND, 1, " text \n") == {"name": BOUND, "score": 1, "max_score": 30, "output": "text",
                                                   "visibility": "visible"}


def test_a_function_test_scores_the_share_of_its_checks_and_names_the_callees_that_fail():
    own, callees = [c.name for c in checks_of(BOUND)], [c.name for c in context_of(BOUND)]
    assert len(own) == 2 and MIXTURE in callees
    probed = Probed(problems={own[1]: "Timed out after 60 s on this check"})
    half = scoring.function_test(BOUND, verdicts([own[0], *callees], [MIXTURE]), probed)
    assert half["score"] == POINTS[BOUND] / 2 and half["output"].startswith("1 of 2 checks passed.")
    assert f"FAIL  {own[1]}: Timed out after 60 s on this check" in half["output"]
    builds_on = half["output"].split("Functions it builds on that fail too (fix these first):\n")[1]
    assert builds_on == f"FAIL  {MIXTURE}: wrong"  # the callee that fails, and none that pass

    whole = scoring.function_test(BOUND, verdicts(own + callees), Probed(first=outcome(b"hi\x1b[31m\n")))
    assert whole["score"] == POINTS[BOUND] and whole["output"].startswith("All 2 checks passed.")
    assert "fail too" not in whole["output"]
    assert whole["output"].endswith("Your code printed 8 bytes of output:\n| hi[31m")  # shown, never obeyed


def test_a_function_test_without_results_says_why():
    test = scoring.function_test(MIXTURE, {}, Probed())
    assert test["score"] == 0 and f"FAIL  {MIXTURE}: no results" in test["output"]


def test_figures_inside_their_ranges_get_every_training_point_and_the_grid():
    tests = scoring.training_tests(Trained(), JUDGED, settings.accepted_ranges(), GRADED_ITER)
    assert [t["name"] for t in tests] == [*FIGURE_TESTS, GRID_TEST]
    assert all(t["score"] == t["max_score"] for t in tests), tests
    assert "NELBO 97.00 is inside the accepted 94 to 100: full marks." in tests[0]["output"]
    assert "Computed by the grader from your trained weights (20,000 iterations, seed 0" in tests[0]["output"]
    assert "200 samples x ~ p(x) in 10 rows of 20, 13% of their pixels on" in tests[-1]["output"]


def test_a_figure_near_its_range_gets_partial_credit_and_one_far_from_it_nothing_nor_the_grid():
    ranges = settings.accepted_ranges()
    near = {**JUDGED, "figures": {**JUDGED["figures"], "nelbo": 101.5}}
    tests = by_name({"tests": scoring.training_tests(Trained(), near, ranges, GRADED_ITER)})
    assert tests["Training: NELBO"]["score"] == 7.5 and "partial credit" in tests["Training: NELBO"]["output"]
    assert tests[GRID_TEST]["score"] == POINTS[GRID_TEST]
    far = {**JUDGED, "figures": {**JUDGED["figures"], "nelbo": 546.0, "kl": 1.4}}
    tests = by_name({"tests": scoring.training_tests(Trained(), far, ranges, GRADED_ITER)})
    assert tests["Training: NELBO"]["score"] == 0 and "546.00 is far outside" in tests["Training: NELBO"]["output"]
    assert tests["Training: KL"]["score"] == 0 and tests["Training: Rec"]["score"] == 10
    assert tests[GRID_TEST]["score"] == 0 and "They count once the weights model the data" in tests[GRID_TEST]["output"]


def test_what_the_run_printed_is_shown_and_a_gap_beyond_the_noise_is_named():
    ranges = settings.accepted_ranges()
    honest = Trained(claimed={t: v + 0.01 for t, v in CENTRES.items()})
    output = scoring.training_tests(honest, JUDGED, ranges, GRADED_ITER)[0]["output"]
    assert "Your run printed: NELBO 97.01, KL 17.51, Rec 80.01." in output and "Monte-Carlo" not in output
    forged = Trained(claimed={**CENTRES, "nelbo": CENTRES["nelbo"] - 5, "kl": float("nan")})
    tests = scoring.training_tests(forged, JUDGED, ranges, GRADED_ITER)
    assert "Its NELBO, KL differ from the grader's by more than the Monte-Carlo noise" in tests[0]["output"]
    assert all(t["score"] == t["max_score"] for t in tests)  # what it printed decides nothing


def test_a_run_without_usable_weights_scores_0_on_every_training_test_with_the_reason():
    ranges = settings.accepted_ranges()
    failed = Trained(outcome=outcome(b"Traceback\n"), failure="The training run (20 iterations) timed out after 20 s.")
    tests = scoring.training_tests(failed, None, ranges, 20)
    assert [t["score"] for t in tests] == [0] * 4
    assert tests[0]["output"].startswith("The training run (20 iterations) timed out after 20 s.")
    assert "The run printed 10 bytes of output:\n| Traceback" in tests[0]["output"]
    assert tests[-1]["output"] == "No sample grid: the training run left no weights to draw it from."
    judged = scoring.training_tests(Trained(), {"problem": "its weights are not the starter GMVAE's"}, ranges, 20)
    assert [t["score"] for t in judged] == [0] * 4
    assert ("finished, but its final checkpoint cannot be graded: its weights are not the starter GMVAE's."
            in judged[0]["output"])


def test_a_shortened_run_says_so():
    output = scoring.training_tests(Trained(), JUDGED, settings.accepted_ranges(), 20)[0]["output"]
    assert f"(A shortened run: the graded setting is {GRADED_ITER:,} iterations.)" in output
    assert "(20 iterations, seed 0, on the CPU)" in output


def test_the_score_step_fills_in_the_tests_and_extra_data_from_the_judge(tmp_path):
    grading = autograder.Grading(tmp_path / "results.json", Options(test_ranges=(("kl", 4.0, 8.0),)), tmp_path, 1,
                                 5, None, None)
    ran = autograder.Ran(Probed(), Trained(claimed={**CENTRES, "rec": float("inf")}), grid_png=b"\x89PNG",
                         judged={"checks": verdicts([c.name for f in FUNCTION_TESTS for c in checks_of(f)]),
                                 "training": JUDGED})
    autograder.score(ran, grading)
    assert [t["name"] for t in grading.tests] == list(POINTS)
    assert [t["score"] for t in grading.tests] == [30, 30, 15, 0, 10, 5]  # KL 17.5 is outside the test's 4 to 8
    assert grading.extra["ranges"]["kl"] == (4.0, 8.0) and grading.extra["figures"] == JUDGED["figures"]
    assert grading.extra["figures_printed_by_the_run"]["rec"] == "inf"  # results.json holds no inf
    assert grading.extra["sample_grid_png_base64"] == "iVBORw=="
    assert grading.notes == ["Figures graded against TEST ranges {'nelbo': (94.0, 100.0), 'kl': (4.0, 8.0), "
                             "'rec': (77.5, 82.5)}, not the course's."]


def test_where_the_judge_fails_each_wanted_test_says_the_grader_failed(tmp_path):
    grading = autograder.Grading(tmp_path / "r.json", Options(only=(BOUND, GRID)), tmp_path, 1, 5, None, None)
    autograder.score(autograder.Ran(Probed(), judge_error=subprocess.TimeoutExpired("judge", 300)), grading)
    assert [t["name"] for t in grading.tests] == [BOUND, GRID]
    for test in grading.tests:
        assert test["score"] == 0 and test["status"] == "failed"
        assert "The autograder failed on this test (subprocess.TimeoutExpired: Command 'judge' timed out" in test[
            "output"] and "not of your code" in test["output"]


# ---------------------------------------------------------------------------------------------
# Reporting: results.json and batch's CSV
# ---------------------------------------------------------------------------------------------

def test_results_json_has_what_gradescope_reads_with_the_tests_numbered():
    tests = [scoring.entry(MIXTURE, 30, "a"), scoring.entry(BOUND, 12.345, "b")]
    results = report.results(["Graded: utils.py."], tests, 77, (MIXTURE, BOUND), {"check_seed": 77}, 12.34)
    assert set(results) == {"score", "execution_time", "output", "tests", "extra_data"}
    assert results["score"] == 42.35 and results["execution_time"] == 12.3
    assert [t["number"] for t in results["tests"]] == ["1", "2"]
    assert all(set(t) == {"name", "score", "max_score", "output", "visibility", "number"} for t in results["tests"])
    lines = results["output"].splitlines()
    assert lines[:6] == ["Graded: utils.py.", f"Only these tests were run (--only): {MIXTURE}, {BOUND}.", "",
                         "Score: 42.35 / 60.", f"- {MIXTURE}: 30 / 30", f"- {BOUND}: 12.35 / 30"]
    assert "(seed 77)" in lines[-1]


def test_results_json_is_written_whole_and_never_through_a_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "results" / "results.json"
    out.parent.mkdir()
    out.symlink_to(victim)
    report.write_results(out, {"score": 1, "tests": []})
    assert victim.read_text() == "keep me" and not out.is_symlink()
    assert json.loads(out.read_text()) == {"score": 1, "tests": []} and oct(out.stat().st_mode)[-3:] == "644"
    assert os.listdir(out.parent) == ["results.json"]  # no temporary file left


def test_when_the_grader_itself_fails_results_json_says_so_for_the_student_and_staff():
    try:
        raise KeyError("boom")
    except KeyError as e:
        results = report.failed(e)
    assert results["score"] == 0 and results["tests"] == []
    assert results["output"] == ("The autograder itself failed (KeyError: 'boom'). This is not your fault: staff "
                                 "will regrade.")
    assert 'raise KeyError("boom")' in results["extra_data"]["grader_error"]


def test_the_batch_summary_has_a_row_per_submission_and_a_column_per_test(tmp_path):
    results = {"score": 42, "tests": [scoring.entry(MIXTURE, 30, ""), scoring.entry(GRID, 5, "")]}
    report.write_summary(tmp_path / "s.csv", [("bob", None, "killed"), ("alice", results, "")])
    rows = list(csv.reader(open(tmp_path / "s.csv")))
    assert rows[0] == ["submission", "score", *POINTS, "problem"]
    assert rows[1] == ["alice", "42", "30", "", "", "", "", "5", ""]
    assert rows[2] == ["bob", "", "", "", "", "", "", "", "killed"]


# ---------------------------------------------------------------------------------------------
# Collecting: what a submission may look like
# ---------------------------------------------------------------------------------------------

def test_loose_files_are_taken_and_others_counted_as_ignored(tmp_path):
    loose = write_files(tmp_path / "loose", {"utils.py": "a = 1\n", "gmvae.py": "b = 2\n", "notes.md": "x"})
    found = collect.collect(loose)
    assert found.files == {"codebase/utils.py": b"a = 1\n", "codebase/models/gmvae.py": b"b = 2\n"}
    assert found.ignored == 1 and not found.missing and not found.notes
    assert report.found_notes(found) == ["Graded: utils.py, gmvae.py; 1 other file(s) ignored (only utils.py and "
                                         "gmvae.py are graded)."]


def test_a_zipped_repository_gives_its_codebase_files_and_nothing_from_outside_it(tmp_path):
    repo = write_files(tmp_path / "repo", {"codebase/utils.py": "a = 1\n", "codebase/models/gmvae.py": "b = 2\n",
                                           "tests/utils.py": "wrong = 1\n", "run_gmvae.py": ""})
    archive = zip_folder(repo, tmp_path / "repo.zip", top="student-repo-main/")
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("../../evil/gmvae.py", "evil = 1\n")  # a path out of the folder: never taken
        z.writestr("__MACOSX/codebase/._utils.py", "\0\1")
    found = collect.collect(archive)
    assert found.where == {"codebase/utils.py": "student-repo-main/codebase/utils.py",
                           "codebase/models/gmvae.py": "student-repo-main/codebase/models/gmvae.py"}
    assert found.files["codebase/models/gmvae.py"] == b"b = 2\n" and found.ignored == 2


def test_a_zip_inside_a_folder_or_a_zip_is_looked_into_and_a_broken_one_named(tmp_path):
    inner = zip_of(io.BytesIO(), {"r/codebase/utils.py": "a = 1\n", "r/codebase/models/gmvae.py": "b = 2\n"})
    folder = write_files(tmp_path / "folder", {"my-repo.zip": inner.getvalue()})
    outer = zip_of(tmp_path / "outer.zip", {"my-repo.zip": inner.getvalue()})
    for submission in (folder, outer):
        found = collect.collect(submission)
        assert found.where["codebase/utils.py"] == "my-repo.zip/r/codebase/utils.py", submission
        assert found.files["codebase/models/gmvae.py"] == b"b = 2\n" and not found.missing
    write_files(folder, {"broken.zip": b"PK\3\4 not really a zip", "codebase/utils.py": "loose = 1\n"})
    found = collect.collect(folder)
    assert found.files["codebase/utils.py"] == b"loose = 1\n"  # nearer than the one in the zip
    assert "2 files could be codebase/utils.py; graded codebase/utils.py." in found.notes
    assert "broken.zip is not a readable zip (File is not a zip file): not opened." in found.notes


def test_of_several_candidates_the_shallowest_is_graded_and_the_student_told(tmp_path):
    folder = write_files(tmp_path / "s", {"b/c/utils.py": "2", "z/utils.py": "3", "a/utils.py": "1"})
    found = collect.collect(folder)
    assert found.files == {"codebase/utils.py": b"1"} and found.missing == ["codebase/models/gmvae.py"]
    assert found.notes == ["3 files could be codebase/utils.py; graded a/utils.py."]


def test_a_link_an_oversized_file_and_one_not_utf8_are_not_graded_and_named(tmp_path):
    folder = write_files(tmp_path / "s", {"gmvae.py": b"\xff\xfe = 1\n"})
    (folder / "utils.py").symlink_to(ROOT / "course" / "autograder.py")  # a link is never followed
    found = collect.collect(folder)
    assert found.files == {} and found.missing == ["codebase/utils.py", "codebase/models/gmvae.py"]
    assert found.notes == ["gmvae.py is not UTF-8 text: not graded."]
    write_files(folder, {"big/utils.py": "x" * (LIMITS.max_source_bytes + 1)})
    found = collect.collect(folder)
    assert f"big/utils.py is {LIMITS.max_source_bytes + 1:,} bytes, over the {LIMITS.max_source_bytes:,} accepted: " \
           "not graded." in found.notes


def test_a_damaged_zip_is_named_at_the_damaged_file_and_the_rest_taken(tmp_path):
    damaged = zip_of(tmp_path / "damaged.zip", {"utils.py": UTILS, "gmvae.py": GMVAE}, zipfile.ZIP_STORED)
    data = damaged.read_bytes()
    at = data.index(b"class GMVAE")
    damaged.write_bytes(data[:at] + b"klass" + data[at + 5:])  # gmvae.py's CRC is now wrong
    found = collect.collect(damaged)
    assert found.files == {"codebase/utils.py": UTILS.encode()} and found.missing == ["codebase/models/gmvae.py"]
    assert found.notes == ["damaged.zip is damaged at gmvae.py (Bad CRC-32 for file 'gmvae.py'): not graded."]
    assert "Missing: gmvae.py (codebase/models/gmvae.py)" in report.found_notes(found)[1]


def test_zips_past_their_size_limits_are_refused_or_left_unopened(tmp_path, monkeypatch):
    monkeypatch.setattr(collect, "LIMITS", replace(LIMITS, max_unzipped_bytes=100, max_inner_zip_bytes=10))
    big = zip_of(tmp_path / "big.zip", {"utils.py": "x" * 101})
    with pytest.raises(collect.SubmissionError, match="big.zip unpacks to more than 0 MB"):
        collect.collect(big)
    inner = zip_of(io.BytesIO(), {"utils.py": "a = 1\n"})
    found = collect.collect(write_files(tmp_path / "s", {"repo.zip": inner.getvalue()}))
    assert found.missing == list(collect.STUDENT_FILES)
    assert found.notes == ["repo.zip is 0 MB, over the 0 MB of a zip that is looked into: not opened."]


def test_a_name_from_the_submission_reaches_the_output_escaped_on_one_line(tmp_path):
    found = collect.collect(zip_of(tmp_path / "evil.zip", {EVIL_NAME: UTILS, "gmvae.py": GMVAE}))
    results = report.results(report.found_notes(found), [scoring.entry(MIXTURE, 0, "x")], 3, (), {}, 1.0)
    lines = results["output"].splitlines()
    assert r"Graded: evil\nScore: 100 / 100.\n\x1b[31m\x07/utils.py, gmvae.py." in lines
    assert [line for line in lines if line.startswith("Score:")] == ["Score: 0 / 30."]
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", results["output"])  # no escape, bell or NUL reaches Gradescope


def test_a_file_that_does_not_compile_is_named_with_its_line(tmp_path):
    found = collect.collect(write_files(tmp_path / "s", {"utils.py": "a = 1\ndef f(:\n", "gmvae.py": "x = '\0'\n"}))
    notes = report.found_notes(found)
    assert "utils.py does not compile: invalid syntax (line 2)." in notes
    assert any(n.startswith("gmvae.py does not compile: ") for n in notes), notes


def test_an_unreadable_submission_is_graded_as_the_starter_with_the_reason(tmp_path):
    bad = write_files(tmp_path, {"submission.zip": b"PK\3\4 not really a zip"}) / "submission.zip"
    for submission, why in ((bad, "submission.zip is neither a folder nor a zip"),
                            (tmp_path / "nowhere", f"{tmp_path / 'nowhere'} does not exist")):
        grading = autograder.Grading(tmp_path / "r.json", Options(), tmp_path, 1, 5, None, None)
        found = autograder.read_submission(submission, grading)
        assert found.files == {} and found.missing == list(collect.STUDENT_FILES)
        assert grading.notes[:2] == [f"Your submission could not be read: {why}.", "Graded: nothing."]
        assert [n.split(" (")[0] for n in grading.notes[2:]] == ["Missing: utils.py", "Missing: gmvae.py"]


def test_a_folder_and_a_zip_of_one_name_are_two_submissions(tmp_path):
    folder = tmp_path / "export"
    write_files(folder, {"alice/utils.py": "", "bob/gmvae.py": "", "notes.txt": "", ".hidden/utils.py": ""})
    zip_folder(folder / "alice", folder / "alice.zip")
    zip_folder(folder / "bob", folder / "carol.zip")
    assert collect.submissions_in(folder) == {
        "alice": folder / "alice", "alice.zip": folder / "alice.zip", "bob": folder / "bob",
        "carol": folder / "carol.zip"}


# ---------------------------------------------------------------------------------------------
# The grader's own guards
# ---------------------------------------------------------------------------------------------

def test_the_zip_ships_and_hashes_every_module_of_the_grader():
    modules = {f"course/{p.name}" for p in (ROOT / "course").glob("*.py")} - {"course/handout.py"}
    assert modules <= set(autograder.GRADER_FILES) and "course/handout.py" not in autograder.GRADER_FILES
    assert set(autograder.GRADER_FILES) <= set(autograder.HASHED_FILES)
    assert all((ROOT / name).is_file() for name in autograder.HASHED_FILES)


def test_the_grader_starts_without_torch_so_that_it_can_refuse_a_python_that_lacks_it():
    # As root, a Python the sandbox user cannot run is refused by Sandbox.open (test_sandbox.py): the
    # grader must get that far without torch.
    code = "import sys; sys.modules['torch'] = None; import course.autograder"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_change_to_the_grader_or_results_json_while_the_code_ran_is_reported(tmp_path, monkeypatch):
    out = tmp_path / "results.json"
    grading = autograder.Grading(out, Options(), tmp_path, 1, 5, None, (autograder.grader_digest(), None))
    autograder.check_untouched(grading)
    assert grading.notes == [] and grading.extra == {}
    out.write_text("{}")
    monkeypatch.setattr(autograder, "HASHED_FILES", autograder.HASHED_FILES[1:])
    autograder.check_untouched(grading)
    assert grading.extra == {"grader_changed": True, "results_written_by_submission": True}
    assert grading.notes[0].startswith("Warning: the grading code changed while your code ran")
    assert grading.notes[1].startswith("Warning: something other than the grader wrote results.json")


def test_without_mnist_the_grader_says_so_and_still_writes_results(tmp_path, capsys):
    out = tmp_path / "results.json"
    code = autograder.main(["grade", str(tmp_path), "--out", str(out), "--data-dir", str(tmp_path / "nowhere")])
    assert code == 1 and "no MNIST in" in capsys.readouterr().err
    results = json.loads(out.read_text())
    assert results["score"] == 0 and "not your fault" in results["output"]


def test_the_output_of_a_child_is_kept_to_a_few_kilobytes():
    capture = Capture()
    capture.feed(b"start\n")
    for _ in range(1600):  # 100 MB, in pipe-sized pieces
        capture.feed(b"x" * 65536)
    capture.feed(b"\nthe end\n")
    assert capture.total > 100 << 20 and len(capture.text()) < 3 * LIMITS.keep_bytes
    assert capture.text().startswith("start\n") and capture.text().endswith("the end\n")
    assert f"[... {capture.total - 2 * LIMITS.keep_bytes:,} bytes left out ...]" in capture.text()


def test_batch_does_not_report_an_earlier_batchs_results(tmp_path, monkeypatch):
    folder = write_files(tmp_path / "export", {"alice/utils.py": ""})
    stale = tmp_path / "summary" / "alice.json"
    write_files(stale.parent, {stale.name: json.dumps({"score": 100, "tests": []})})

    class Dies:  # the grader child dies before it writes anything
        returncode = 1

        def __init__(self, *args, **kwargs):
            pass

        def communicate(self, timeout=None):
            return "", "killed"

    monkeypatch.setattr(subprocess, "Popen", Dies)
    rows = batch(folder, tmp_path / "summary.csv", jobs=1, log=lambda *a: None)
    row = next(csv.DictReader(open(tmp_path / "summary.csv")))
    assert rows == [("alice", None, "killed")]
    assert row["score"] == "" and row["problem"] == "killed" and not stale.exists()


# ---------------------------------------------------------------------------------------------
# The zip, and real gradings (slow: each trains, in the sandbox where the tests run as root)
# ---------------------------------------------------------------------------------------------

# The self-check's known mistakes: (file, old, new, the test that loses, words of its diagnosis)
MISTAKES = {
    "log_sum_exp for log_mean_exp": ("utils.py", MIXTURE_LINE, MIXTURE_LINE.replace("log_mean_exp", "log_sum_exp"),
                                     MIXTURE, "the uniform weights 1/k are missing"),
    "rec summed over the batch": ("gmvae.py", REC_LINE, REC_LINE.replace(".mean()", ".sum()"),
                                  BOUND, "rec is summed over the batch"),
    "KL sign reversed": ("gmvae.py", KL_LINE,
                         "kl = (ut.log_normal_mixture(z, *self.prior()) - ut.log_normal(z, m, v)).mean()",
                         BOUND, "the KL's sign is reversed"),
}

# Ways to get the points without the work. Each leaves the functions unwritten, or writes them wrong, and
# fakes what the old grader trusted: printed verdicts, the run's files, the starter's stored values.
FORGED_LINES = '''
import threading as _threading
def _forge():
    for _name in ("log_normal_mixture", "log_normal_mixture: far points, tiny variances",
                  "GMVAE.negative_elbo_bound", "GMVAE: odd batch of 97"):
        print(f"PASS  {_name}", flush=True)
    print("20 passed, 0 failed", flush=True)
_forge()
_threading.Thread(target=_forge).start()
'''
PATCHED = '''
import builtins as _builtins, numpy as _numpy, torch as _torch
_builtins.print = lambda *a, **k: None
_torch.isclose = lambda *a, **k: _torch.tensor(True)
_numpy.random.RandomState = lambda *a, **k: _numpy.random.Generator(_numpy.random.PCG64(0))
import codebase.check.probe as _probe
_probe.PROBES["log_normal_mixture"] = lambda check, seed, results: results.update(
    {i: _torch.zeros(97) for i in range(7)})
_probe.PROBES["mixture_far"] = lambda check, seed, results: results.update({"far": _torch.zeros(97)})
'''
STORED_VALUES = '''
def log_normal_mixture(z, m, v):
    """The stored expected values of the starter, where the inputs are the local self-check's."""
    from codebase.check import functions, inputs
    stored = torch.load(inputs.__file__.replace("inputs.py", "expected.pt"), weights_only=True)["checks"]
    for i, case in stored["log_normal_mixture"].items():
        if torch.equal(z.double(), functions.inputs_of("log_normal_mixture", inputs.SEED, i)[0]):
            return case["want"].to(z.dtype)
    if z.shape == (97, 10) and v.min() < 1e-7:
        return stored["log_normal_mixture: far points, tiny variances"]["far"]["want"].float()
    return z.sum(-1) * 0
'''
FAKE_RUN_FILES = '''
import sys as _sys
if _sys.argv and _sys.argv[0].endswith("run_gmvae.py"):  # forge every file of a good run, then stop
    import json as _json, os as _os, torch as _torch
    from codebase.models import GMVAE as _GMVAE
    _run = "model=gmvae_z=10_k=500_run=0000"
    _os.makedirs(f"logs/{_run}", exist_ok=True)
    _os.makedirs(f"checkpoints/{_run}", exist_ok=True)
    with open(f"logs/{_run}/results.json", "w") as _f:
        _json.dump({"nelbo": 97.5, "kl": 17.5, "rec": 80.0, "iterations": 20, "test_nelbo": 97.0}, _f)
    with open(f"logs/{_run}/metrics.csv", "w") as _f:
        _f.write("iteration,nelbo,kl,rec\\n20,97.5000,17.5000,80.0000\\n")
    from codebase.runtime.files import write_png_grid as _grid
    _grid(f"logs/{_run}/samples_binary.png", _torch.zeros(200, 784), 10, 20)
    _torch.save({"model": _GMVAE().state_dict(), "iteration": 20}, f"checkpoints/{_run}/model-00020.pt")
    _os._exit(0)
'''
CONSTANT_BOUND = '''z = torch.zeros((), requires_grad=True)  # a bound that trains nothing
        return z + 97.5, z + 17.5, z + 80.0'''


def run_grader(python, source, *args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([python, "-m", "course.autograder", *args], cwd=source, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=3600):
    out, err = proc.communicate(timeout=timeout)  # a guard against a hang of the test itself
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err, out + err
    return out


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
def graded(grading_source, grader_python, tmp_path_factory):
    """Grade every submission once; {name: results.json as a dict}, plus the batches' CSV rows."""
    tmp = tmp_path_factory.mktemp("graded")
    source = grading_source("source")
    answer = {"utils.py": UTILS, "gmvae.py": GMVAE}
    repo = lambda folder, files: write_files(folder, {**{n: d.decode(errors="replace") for n, d in STARTER.items()
                                                         if n.endswith((".py", ".md", ".txt"))}, **files})

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
    write_files(full / "fake_run_files", {"utils.py": UTILS_STUB + FAKE_RUN_FILES, "gmvae.py": GMVAE_STUB})
    write_files(full / "constant_bound", {"utils.py": UTILS, "gmvae.py": changed(GMVAE, BOUND_FIRST, CONSTANT_BOUND)})
    # Gradings of the functions alone (--only): the training would add nothing here.
    for name, (file, old, new, _, _) in MISTAKES.items():
        files = dict(answer)
        files[file] = changed(files[file], old, new)
        write_files(checks / name.replace(" ", "_"), {f"codebase/{'models/' if f == 'gmvae.py' else ''}{f}": t
                                                      for f, t in files.items()})
    write_files(checks / "missing_file", {"utils.py": UTILS, "notes.txt": "my notes", "scratch.ipynb": "{}"})
    # What a student hands in as the starter's README says: python -m codebase.submit in the starter folder.
    student = tmp / "student"
    assert handout.main([str(student)]) == 0
    write_files(student, {"codebase/utils.py": UTILS, "codebase/models/gmvae.py": GMVAE})
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}
    submitted = subprocess.run([sys.executable, "-m", "codebase.submit", "--out", str(checks / "submitted.zip")],
                               cwd=student, capture_output=True, text=True, timeout=600, env=env)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    write_files(checks / "memory", {"utils.py": changed(UTILS, MIXTURE_LINE, "torch.empty(1 << 32)  # 16 GiB\n    "
                                                        + MIXTURE_LINE), "gmvae.py": GMVAE})
    write_files(checks / "forged_lines", {"utils.py": UTILS_STUB + FORGED_LINES, "gmvae.py": GMVAE_STUB})
    write_files(checks / "patched_probe", {"utils.py": UTILS_STUB + PATCHED, "gmvae.py": GMVAE_STUB})
    write_files(checks / "stored_values", {"utils.py": UTILS_STUB + STORED_VALUES, "gmvae.py": GMVAE_STUB})
    write_files(checks / "copied_code", {"utils.py": UTILS, "gmvae.py": changed(
        GMVAE_STUB, BOUND_STUB, "return self.negative_iwae_bound(x, 1, generator)")})
    hang = write_files(tmp / "hang", {"utils.py": UTILS, "gmvae.py": changed(
        GMVAE, BOUND_FIRST, "import time\n        time.sleep(3600)\n        " + BOUND_FIRST)})
    # Its own copy of the grader: where the sandbox cannot stop it, it changes that copy.
    hostile_source = grading_source("hostile_source")
    hostile_out = tmp / "hostile_results" / "results.json"
    hostile_out.parent.mkdir()
    hostile_utils = UTILS + hostile_code(hostile_out, hostile_source / "course/autograder.py")
    hostile = write_files(tmp / "hostile", {"utils.py": hostile_utils, "gmvae.py": GMVAE})

    procs = {
        "full": run_grader(grader_python, source, "batch", str(full), "--out", str(tmp / "full.csv"), *SHORT),
        "checks": run_grader(grader_python, source, "batch", str(checks), "--out", str(tmp / "checks.csv"),
                             *FUNCTIONS),
        "hang": run_grader(grader_python, source, "grade", str(hang), "--out", str(tmp / "hang.json"), *SHORT,
                           "--check-timeout", str(HANG_CHECK_SECONDS), "--train-timeout", str(HANG_TRAIN_SECONDS)),
        "hostile": run_grader(grader_python, hostile_source, "grade", str(hostile), "--out", str(hostile_out),
                              *FUNCTIONS),
    }
    outputs = {name: finish(proc) for name, proc in procs.items()}
    results = {p.stem: json.loads(p.read_text()) for folder in ("full", "checks")
               for p in (tmp / folder).glob("*.json")}
    results["hang"] = json.loads((tmp / "hang.json").read_text())
    results["hostile"] = json.loads(hostile_out.read_text())
    return {"results": results, "outputs": outputs, "tmp": tmp, "source": source, "hostile_source": hostile_source,
            "csv": {name: (tmp / f"{name}.csv").read_text() for name in ("full", "checks")}}


def normalised(line):
    return " ".join(line.split())


@pytest.mark.slow
def test_the_zip_holds_the_scripts_the_starter_the_references_and_no_line_of_a_stripped_solution(autograder_zip,
                                                                                                tmp_path):
    built = autograder_zip
    with zipfile.ZipFile(built) as z:
        names = z.namelist()
        texts = {n: z.read(n).decode(errors="replace") for n in names}
        modes = {i.filename: i.external_attr >> 16 for i in z.infolist()}
    assert "setup.sh" in names and "run_autograder" in names  # at the root, as Gradescope wants
    assert texts["run_autograder"].startswith("#!") and modes["run_autograder"] & 0o111 and modes["setup.sh"] & 0o111
    assert set(texts["course/gradescope/starter_files.txt"].split()) == set(STARTER) | {handout.STORED}
    assert all(texts[n].encode() == d for n, d in STARTER.items() if n.endswith(".py"))
    assert autograder.REFERENCES in names and autograder.REFERENCES not in STARTER  # the grader's, never a student's
    assert set(autograder.GRADER_FILES) <= set(names)
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


@pytest.mark.slow
def test_the_model_answer_gets_full_marks(graded):
    results = graded["results"]["answer"]
    assert results["score"] == 100
    for test in results["tests"]:
        assert test["score"] == test["max_score"], test
        assert test["visibility"] == "visible" and test["output"]
    assert [t["name"] for t in results["tests"]] == list(POINTS)
    assert "All 2 checks passed." in by_name(results)[MIXTURE]["output"]
    nelbo = by_name(results)["Training: NELBO"]["output"]
    assert re.search(r"Computed by the grader from your trained weights .*NELBO [\d.]+, KL [\d.]+, Rec [\d.]+", nelbo)
    assert re.search(r"Your run printed: NELBO [\d.]+", nelbo) and "Monte-Carlo noise" not in nelbo
    assert "200 samples" in by_name(results)[GRID]["output"]
    assert isinstance(results["execution_time"], float) and results["output"].startswith("Graded: utils.py, gmvae.py.")
    extra = results["extra_data"]
    assert extra["check_seed"] > 0 and extra["sample_grid_png_base64"] and set(extra["figures"]) >= {"nelbo", "kl"}


@pytest.mark.slow
def test_the_zip_that_codebase_submit_writes_gets_every_point_of_the_function_tests(graded):
    results = graded["results"]["submitted"]
    assert [t["score"] for t in results["tests"]] == [t["max_score"] for t in results["tests"]] and results["tests"]
    graded_line = results["output"].splitlines()[0]
    assert graded_line.startswith("Graded: ") and "utils.py" in graded_line and "gmvae.py" in graded_line, graded_line


@pytest.mark.slow
def test_each_grading_draws_new_inputs_and_a_regrade_can_give_the_old_ones(graded, tmp_path, mnist_dir, grader_python):
    seeds = {r["extra_data"]["check_seed"] for r in graded["results"].values()}
    assert len(seeds) == len(graded["results"])
    answer = graded["results"]["answer"]
    out = tmp_path / "again.json"
    folder = write_files(tmp_path / "answer", {"utils.py": UTILS, "gmvae.py": GMVAE})
    finish(run_grader(grader_python, graded["source"], "grade", str(folder), "--out", str(out), "--data-dir",
                      str(mnist_dir), "--only", BOUND, "--check-seed", str(answer["extra_data"]["check_seed"])))
    again = json.loads(out.read_text())
    assert again["extra_data"]["check_seed"] == answer["extra_data"]["check_seed"]
    assert by_name(again)[BOUND]["output"] == by_name(answer)[BOUND]["output"]


@pytest.mark.slow
def test_the_untouched_starter_scores_0_with_a_clear_message_per_test(graded):
    results = graded["results"]["starter"]
    tests = by_name(results)
    assert results["score"] == 0 and list(tests) == list(POINTS)
    assert "Graded: gmvae-main/codebase/utils.py, gmvae-main/codebase/models/gmvae.py;" in results["output"]
    assert "FAIL  log_normal_mixture: not implemented yet" in tests[MIXTURE]["output"]
    assert "FAIL  GMVAE.negative_elbo_bound: not implemented yet" in tests[BOUND]["output"]
    for name in FIGURES:
        assert "not implemented yet: log_normal_mixture (codebase/utils.py" in tests[name]["output"], tests[name]
    assert "no weights" in tests[GRID]["output"]
    assert not [t for t in results["tests"] if "autograder failed" in t["output"]]


@pytest.mark.slow
@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_known_mistake_loses_points_on_its_test_with_the_self_checks_diagnosis(graded, mistake):
    _, _, _, loser, words = MISTAKES[mistake]
    tests = by_name(graded["results"][mistake.replace(" ", "_")])
    assert list(tests) == [MIXTURE, BOUND]  # --only
    assert tests[loser]["score"] < tests[loser]["max_score"]
    assert "likely cause: " + words in tests[loser]["output"], tests[loser]["output"]
    if loser == BOUND:  # a mistake in the bound leaves the mixture's test whole
        assert tests[MIXTURE]["score"] == tests[MIXTURE]["max_score"]
    else:  # the bound calls the mixture: its test loses too, and says which function to fix first
        assert "Functions it builds on that fail too" in tests[BOUND]["output"]
        assert "FAIL  log_normal_mixture" in tests[BOUND]["output"].split("Functions it builds on that fail too")[1]


@pytest.mark.slow
def test_a_missing_file_is_named_and_other_files_are_ignored(graded):
    results = graded["results"]["missing_file"]
    tests = by_name(results)
    assert "Missing: gmvae.py (codebase/models/gmvae.py)" in results["output"]
    assert "2 other file(s) ignored" in results["output"]
    assert tests[MIXTURE]["score"] == 30 and tests[BOUND]["score"] == 0
    assert "not implemented yet" in tests[BOUND]["output"]


@pytest.mark.slow
def test_a_syntax_error_is_named_with_its_line_and_every_test_says_why_it_got_0(graded):
    results = graded["results"]["syntax_error"]
    line = UTILS.count("\n") + 2
    assert "utils.py does not compile: " in results["output"] and f"(line {line})" in results["output"]
    assert results["score"] == 0
    tests = by_name(results)
    assert "cannot import codebase.utils: SyntaxError" in tests[MIXTURE]["output"]
    assert "SyntaxError" in tests["Training: NELBO"]["output"]


@pytest.mark.slow
def test_a_missing_name_costs_only_the_file_that_has_it(graded):
    tests = by_name(graded["results"]["missing_name"])
    assert tests[MIXTURE]["score"] == 30
    assert tests[BOUND]["score"] == 0
    assert "NameError: name 'undefined_helper' is not defined" in tests[BOUND]["output"]
    assert "NameError: name 'undefined_helper' is not defined" in tests["Training: NELBO"]["output"]


@pytest.mark.slow
def test_an_exception_and_a_wrong_shape_are_each_diagnosed(graded):
    tests = by_name(graded["results"]["raises_and_wrong_shape"])
    assert tests[MIXTURE]["score"] == 0 and "shape" in tests[MIXTURE]["output"]
    assert tests[BOUND]["score"] == 0 and "ValueError: my bug" in tests[BOUND]["output"]
    assert "ValueError: my bug" in tests["Training: NELBO"]["output"]
    assert "Traceback" not in json.dumps(graded["results"]["raises_and_wrong_shape"])


@pytest.mark.slow
def test_nan_is_diagnosed_and_a_nan_run_scores_0(graded):
    tests = by_name(graded["results"]["nan"])
    assert tests[MIXTURE]["score"] == 0 and "got nan" in tests[MIXTURE]["output"]
    for name in FIGURES:
        assert tests[name]["score"] == 0 and "nan" in tests[name]["output"].lower(), tests[name]["output"]


@pytest.mark.slow
def test_a_memory_hog_hits_the_cap_and_is_told_so(graded):
    tests = by_name(graded["results"]["memory"])
    assert tests[MIXTURE]["score"] == 0
    assert "allocate" in tests[MIXTURE]["output"], tests[MIXTURE]["output"]
    assert tests[BOUND]["score"] < 30  # it calls the mixture


@pytest.mark.slow
def test_a_hang_times_out_on_its_own_check_and_the_rest_is_graded(graded):
    results = graded["results"]["hang"]
    tests = by_name(results)
    assert tests[MIXTURE]["score"] == 30  # its checks ran before the hang, in the same run
    assert tests[BOUND]["score"] == 0
    assert f"No progress for {HANG_CHECK_SECONDS} s at this check" in tests[BOUND]["output"]
    for name in FIGURES:
        assert f"timed out after {HANG_TRAIN_SECONDS} s" in tests[name]["output"]
    assert tests[GRID]["score"] == 0


@pytest.mark.slow
def test_a_submission_cannot_replace_results_or_change_the_grader(graded):
    """It prints 100 MB, then tries to overwrite results.json and to append to the grader."""
    results = graded["results"]["hostile"]
    tests = by_name(results)
    assert results["score"] == 60 and all(t["score"] == t["max_score"] for t in results["tests"])
    assert len(json.dumps(results)) < 64 << 10
    assert re.search(r"Your code printed 104,857,6\d\d bytes of output \(kept: the first and last 2,048\)",
                     tests[MIXTURE]["output"])
    grader = graded["hostile_source"] / "course/autograder.py"
    if results["extra_data"]["sandbox"].startswith("as uid"):
        # As on Gradescope: both writes were refused, and the student sees why.
        assert "hostile: PermissionError" in tests[MIXTURE]["output"]
        assert grader.read_bytes() == (ROOT / "course/autograder.py").read_bytes()
        assert "Warning" not in results["output"]
    else:
        # Not root: the writes happen, are caught and are reported, and results.json is the grader's own.
        assert "changed by a submission" in grader.read_text()
        assert "Warning: the grading code changed while your code ran" in results["output"]
        assert "Warning: something other than the grader wrote results.json" in results["output"]
        assert results["extra_data"]["grader_changed"] and results["extra_data"]["results_written_by_submission"]


# ---------------------------------------------------------------------------------------------
# Ways to get the points without the work: each scores 0 on the tests it aims at
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("cheat", ["forged_lines", "patched_probe", "stored_values", "copied_code"])
def test_a_cheat_on_the_functions_scores_0_on_them(graded, cheat):
    tests = by_name(graded["results"][cheat])
    aimed_at = [BOUND] if cheat == "copied_code" else [MIXTURE, BOUND]
    for name in aimed_at:
        assert tests[name]["score"] == 0, (cheat, tests[name]["output"])
    if cheat == "copied_code":  # the importance-weighted bound is not in the starter to be called
        assert "not implemented yet (negative_iwae_bound raises NotImplementedError)" in tests[BOUND]["output"]
        assert tests[MIXTURE]["score"] == 30
    if cheat == "forged_lines":  # its lines are shown as its output, never read as verdicts
        assert "| PASS  log_normal_mixture" in tests[MIXTURE]["output"]


@pytest.mark.slow
@pytest.mark.parametrize("cheat", ["fake_run_files", "constant_bound"])
def test_a_run_that_learns_nothing_scores_0_whatever_files_it_leaves(graded, cheat):
    results = graded["results"][cheat]
    tests = by_name(results)
    for name in (*FIGURES, GRID):
        assert tests[name]["score"] == 0, (cheat, tests[name]["output"])
    nelbo = tests["Training: NELBO"]["output"]
    assert re.search(r"NELBO 5\d\d\.\d\d is far outside", nelbo), nelbo  # an untrained model's, computed by the grader
    assert tests[BOUND]["score"] == 0
    if cheat == "fake_run_files":  # what it printed is shown beside the grader's figures, and named
        assert "Your run printed: NELBO 97.50, KL 17.50, Rec 80.00" in nelbo
        assert "more than the Monte-Carlo noise" in nelbo


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_batch_writes_a_row_per_submission_and_a_column_per_test(graded):
    rows = list(csv.DictReader(io.StringIO(graded["csv"]["full"])))
    assert [r["submission"] for r in rows] == ["answer", "constant_bound", "fake_run_files", "missing_name", "nan",
                                               "raises_and_wrong_shape", "starter", "syntax_error"]
    assert list(rows[0]) == ["submission", "score", *POINTS, "problem"]
    answer = rows[0]
    assert float(answer["score"]) == 100 and float(answer["Training: NELBO"]) == 15
    assert float(rows[6]["score"]) == 0 and all(not r["problem"] for r in rows)
    assert "[8/8]" in graded["outputs"]["full"]


@pytest.mark.slow
def test_the_zip_installs_with_its_own_setup_and_grades_the_model_answer_in_full():
    """course/ci_full_grade.sh: setup.sh into a fresh venv, then 20,000 iterations of the model answer,
    as root where it can be, with the limits that are shipped."""
    out = subprocess.run(["bash", str(ROOT / "course" / "ci_full_grade.sh")], capture_output=True, text=True,
                         timeout=3600, env={**os.environ, "BUILD_PYTHON": sys.executable})
    print(out.stdout[-3000:])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "score: 100 / 100" in out.stdout
    assert "training step (as the run says): compiled" in out.stdout  # --compile auto, in the sandbox
    if os.geteuid() == 0:
        assert "the student's code ran as uid" in out.stdout
