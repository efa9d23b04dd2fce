"""A student's week through the starter's own commands: the run script on mistaken code, short and stopped
runs judged by `python -m codebase.check --results`, and handing in with `python -m codebase.submit`."""
import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest
from test_handout import GMVAE_KL, GMVAE_REC, GMVAE_START, STARTER_MISTAKES, run_in, written_source

from codebase.check.mistakes import CAUSES
from codebase.check.results import SKIPPED
from codebase.submit import MAX_SOURCE_BYTES, STUDENT_FILES
from course import handout

ROOT = Path(__file__).resolve().parents[1]
RUN = "model=gmvae_z=10_k=500_run=0005"
BOUND = "gmvae_negative_elbo_bound"


@pytest.fixture(scope="module")
def starter(tmp_path_factory):
    dest = tmp_path_factory.mktemp("week") / "starter"
    assert handout.main([str(dest)]) == 0
    return dest


def project(starter, folder, bound_lines=None, mixture_lines=None):
    """A copy of the starter with both functions written: the model answer's, or the lines given."""
    shutil.copytree(starter, folder, ignore=shutil.ignore_patterns("__pycache__"))
    for path, tag, lines in (("codebase/utils.py", "log_normal_mixture", mixture_lines),
                             ("codebase/models/gmvae.py", BOUND, bound_lines)):
        text = written_source(tag, lines)[1] if lines else (ROOT / path).read_text()
        (folder / path).write_text(text)
    return folder


def results_check(folder):
    out = run_in(folder, "-m", "codebase.check", "--results")
    line = next(line for line in out.stdout.splitlines() if "results: GMVAE" in line)
    return out.returncode, line


# The five mistakes that trained to the end without a word before the run script checked first.
SILENT = {
    "mixture: no log k": (None, STARTER_MISTAKES["mixture: no log k"][2]),
    "bound: summed over batch": ([*GMVAE_START, "rec = -ut.log_bernoulli_with_logits(x, self.dec(z)).sum()",
                                  "kl = (ut.log_normal(z, m, v) - ut.log_normal_mixture(z, *self.prior())).sum()",
                                  "return kl + rec, kl, rec"], None),
    "GMVAE: kl sign": (STARTER_MISTAKES["GMVAE: kl sign"][2], None),
    "bound: z with v as sd": (STARTER_MISTAKES["bound: z with v as sd"][2], None),
    "GMVAE: prior cut": (STARTER_MISTAKES["GMVAE: prior cut"][2], None),
}


@pytest.mark.slow
@pytest.mark.parametrize("mistake", SILENT)
def test_the_run_script_names_a_silent_mistake_and_does_not_train(mistake, starter, tmp_path, mnist_dir):
    bound, mixture = SILENT[mistake]
    folder = project(starter, tmp_path / "mine", bound, mixture)
    out = run_in(folder, "run_gmvae.py", "--run", "5", "--data-dir", str(mnist_dir))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("error: the self-check finds a mistake in the functions this run needs")
    cause = CAUSES[mistake].split("{what}")[-1]
    assert cause in out.stderr, out.stderr
    assert out.stderr.rstrip().endswith(f"python run_gmvae.py --run 5 --data-dir {mnist_dir} --no-check")
    assert not (folder / "logs" / RUN).exists()  # nothing trained, nothing written


@pytest.mark.slow
def test_a_summed_bound_trained_briefly_is_named_far_above_not_short(starter, tmp_path, mnist_dir):
    folder = project(starter, tmp_path / "mine", SILENT["bound: summed over batch"][0])
    out = run_in(folder, "run_gmvae.py", "--iter_max", "200", "--run", "5", "--no-check", "--data-dir",
                 str(mnist_dir))
    assert out.returncode == 0, out.stderr
    status, line = results_check(folder)
    assert status == 1 and line.startswith("FAIL  results: GMVAE: NELBO "), line
    assert "far above what a correct bound gives after 200 iterations" in line and "not a short run" in line
    assert "python -m codebase.check --only GMVAE.negative_elbo_bound" in line


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["reversed KL", "nan"])
def test_a_run_stopped_by_impossible_figures_or_nan_is_named_by_the_results_check(kind, starter, tmp_path,
                                                                                     mnist_dir):
    lines = STARTER_MISTAKES["GMVAE: kl sign"][2] if kind == "reversed KL" else [
        *GMVAE_START, GMVAE_REC, GMVAE_KL, "return (kl + rec) * float('nan'), kl, rec"]
    folder = project(starter, tmp_path / "mine", lines)
    out = run_in(folder, "run_gmvae.py", "--iter_max", "400", "--run", "5", "--no-check", "--data-dir",
                 str(mnist_dir))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    said = "no negative ELBO gives that" if kind == "reversed KL" else "the loss became nan or inf at iteration 1;"
    assert said in out.stderr and "python -m codebase.check to find the" in out.stderr, out.stderr
    status, line = results_check(folder)
    when = "at iteration 50" if kind == "reversed KL" else "at iteration 1"
    assert status == 1 and line.startswith(f"FAIL  results: GMVAE: the run's last attempt stopped {when}: "), line
    assert line.endswith(f"python run_gmvae.py --iter_max 400 --run 5 --no-check --data-dir {mnist_dir} "
                         "--overwrite") and "--resume" not in line, line


@pytest.mark.slow
def test_a_correct_short_run_is_too_short_to_judge_then_submitted(starter, tmp_path, mnist_dir):
    folder = project(starter, tmp_path / "mine")
    (folder / "data").symlink_to(mnist_dir, target_is_directory=True)
    out = run_in(folder, "run_gmvae.py", "--iter_max", "500", "--run", "5")
    assert out.returncode == 0, out.stderr
    status, line = results_check(folder)
    assert status == SKIPPED and line.startswith("SKIP  results: GMVAE: too short to judge: NELBO "), line
    assert "at 500 iterations a correct bound gives about 132" in line
    assert line.endswith("The whole run: python run_gmvae.py --run 5 --overwrite"), line

    # A stub written back, run again with --overwrite: it stops before training, and the old figures
    # are not taken for this attempt's.
    gmvae = folder / "codebase/models/gmvae.py"
    gmvae.write_bytes((starter / "codebase/models/gmvae.py").read_bytes())
    assert run_in(folder, "run_gmvae.py", "--run", "5", "--overwrite").returncode == 1
    status, line = results_check(folder)
    assert status == 1 and "the run's last attempt stopped before training: not implemented yet" in line, line
    assert "are an earlier run's" in line
    gmvae.write_text((ROOT / "codebase/models/gmvae.py").read_text())

    out = run_in(folder, "-m", "codebase.submit", "--run", "5")
    assert out.returncode == 0, out.stdout + out.stderr
    with zipfile.ZipFile(folder / "submission.zip") as z:
        assert sorted(z.namelist()) == sorted([*STUDENT_FILES, "writeup/README.md",
                                               "writeup/figures/samples_binary.png",
                                               "writeup/figures/training_curve.png"])
    assert (folder / "writeup/figures/samples_binary.png").read_bytes() == \
        (folder / "logs" / RUN / "samples_binary.png").read_bytes()
    assert re.search(r"^The self-check on the zip's files: \d+ passed, 0 failed", out.stdout, re.M), out.stdout

    # What the grader reads: a broken file is named, with what to do.
    gmvae.write_bytes(gmvae.read_bytes().replace(b"Single-sample", b"Single\xe9sample"))
    out = run_in(folder, "-m", "codebase.submit", "--run", "5")
    assert out.returncode == 1, out.stdout
    assert out.stderr.startswith("error: codebase/models/gmvae.py is not UTF-8 text"), out.stderr


@pytest.mark.slow
def test_an_error_mid_run_keeps_the_steps_made_and_says_how_to_go_on(starter, tmp_path, mnist_dir):
    # The bound raises from its 150th call on: the run's checks and first look call it too, hence --no-check.
    lines = ["calls = getattr(self, 'calls', 0) + 1", "self.calls = calls",
             "if calls > 150:", "    raise ValueError('my mistake')", *GMVAE_START, GMVAE_REC, GMVAE_KL,
             "return kl + rec, kl, rec"]
    folder = project(starter, tmp_path / "mine", lines)
    out = run_in(folder, "run_gmvae.py", "--iter_max", "400", "--run", "5", "--no-check", "--data-dir",
                 str(mnist_dir))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    match = re.search(r"training stopped at iteration (\d+): your code raised ValueError: my mistake, "
                      r"at gmvae\.py:\d+, in negative_elbo_bound", out.stderr)
    assert match, out.stderr
    saved = folder / "checkpoints" / RUN / f"model-{int(match.group(1)) - 1:05d}.pt"
    assert saved.is_file() and f"saved in checkpoints/{RUN}/{saved.name}" in out.stderr, out.stderr
    assert f"python run_gmvae.py --iter_max 400 --run 5 --no-check --data-dir {mnist_dir} --resume" in out.stderr
    status, line = results_check(folder)
    assert status == 1 and "stopped at iteration" in line and "my mistake" in line, line


def test_submit_agrees_with_what_the_grader_collects():
    from course.collect import STUDENT_FILES as COLLECTED
    from course.settings import LIMITS

    assert set(STUDENT_FILES) == set(COLLECTED) and MAX_SOURCE_BYTES == LIMITS.max_source_bytes


def test_the_results_of_a_stopped_run_record_the_students_flags(tmp_path, monkeypatch):
    # The record that check --results reads back, written where an earlier attempt's folder exists.
    from codebase import run as run_module
    from codebase.config import STOPPED, Config
    from codebase.runtime.metrics import NonFiniteLoss

    config = Config(run=5, data_dir="elsewhere", log_root=str(tmp_path / "logs"))
    config.log_dir.mkdir(parents=True)
    error = run_module.stopped(config, NonFiniteLoss("the loss became nan", 8))
    assert isinstance(error, NonFiniteLoss)
    record = json.loads((config.log_dir / STOPPED).read_text())
    assert record["kind"] == "nan" and record["iteration"] == 8 and Config.from_dict(record["config"]) == config
