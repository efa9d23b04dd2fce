"""python -m codebase.check --results (codebase/check/results.py): a run's figures against the
accepted ranges of codebase/check/figures.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from codebase.check import runner as check
from codebase.check.figures import TRAINING_NELBO, accepted_range
from codebase.check.results import SKIPPED
from codebase.config import STOPPED, Config

ROOT = Path(__file__).resolve().parents[1]


def write_results(logs, run, nelbo, kl, iterations=20000, mtime=None, **config):
    folder = logs / run
    folder.mkdir(parents=True)
    model = run.split("_")[0].split("=")[1]
    config = {"model": model, "z": 10, "iter_max": iterations, **({"k": 500} if model == "gmvae" else {}), **config}
    path = folder / "results.json"
    path.write_text(json.dumps({"nelbo": nelbo, "kl": kl, "rec": nelbo - kl, "iterations": iterations,
                                "config": config}))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def verdicts(capsys):
    """{model label: (PASS or FAIL, the rest of the line)}, and the last line."""
    lines = capsys.readouterr().out.splitlines()
    found = {}
    for line in lines[:-1]:
        status, rest = line.split("  ", 1)
        name, rest = rest.split(": ", 2)[1], rest.split(": ", 2)[2] if rest.count(": ") > 1 else ""
        found[name] = (status, rest)
    return found, lines[-1]


def test_in_range_passes_and_out_of_range_fails_with_the_reference_range(tmp_path, capsys):
    logs = tmp_path / "logs"
    write_results(logs, "model=gmvae_z=10_k=500_run=0000", 97.9, 17.5)
    write_results(logs, "model=vae_z=10_run=0000", 105.2, 20.0)
    assert check.main(["--results", "--logs", str(logs)]) == 1
    found, last = verdicts(capsys)
    assert found["GMVAE"][0] == "PASS" and found["GMVAE"][1].startswith("NELBO 97.90 (accepted 94 to 100), KL 17.50")
    low, high = accepted_range("vae", "nelbo")
    status, rest = found["VAE"]
    assert status == "FAIL" and rest.startswith(f"expected NELBO {low:g} to {high:g}, got 105.20, "
                                                f"{105.2 - high:.2f} above the range")
    assert "python -m codebase.check" in rest.split("; likely cause: ")[1]
    assert last == "1 passed, 1 failed"


def test_a_split_outside_the_kl_range_fails_though_the_nelbo_is_in_range(tmp_path, capsys):
    logs = tmp_path / "logs"
    write_results(logs, "model=gmvae_z=10_k=500_run=0000", 97.0, 25.0)
    assert check.main(["--results", "--logs", str(logs), "--only", "GMVAE"]) == 1
    status, rest = verdicts(capsys)[0]["GMVAE"]
    assert status == "FAIL" and rest.startswith("expected KL ") and "split into KL and Rec" in rest


def test_missing_or_unreadable_results_say_what_to_run(tmp_path, capsys):
    logs = tmp_path / "logs"
    write_results(logs, "model=gmvae_z=10_k=500_run=0000", 97.5, 17.6)
    (logs / "model=gmvae_z=10_k=500_run=0000" / "results.json").write_text('{"nelbo": 97.')
    assert check.main(["--results", "--logs", str(logs)]) == 1
    found, _ = verdicts(capsys)
    assert "cannot be read (JSONDecodeError" in found["GMVAE"][1]
    assert "run python run_gmvae.py again" in found["GMVAE"][1]
    assert "VAE" not in found  # not trained: only the models that have a run are checked

    assert check.main(["--results", "--logs", str(tmp_path / "empty")]) == 1
    found, last = verdicts(capsys)
    assert "no results" in found["VAE"][1] and "run python run_vae.py" in found["VAE"][1]
    assert "run python run_gmvae.py" in found["GMVAE"][1] and last == "0 passed, 2 failed"


def test_python_m_codebase_check_results_gives_its_diagnosis(tmp_path):
    write_results(tmp_path / "logs", "model=gmvae_z=10_k=500_run=0000", 110.0, 17.0)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "codebase.check", "--results", "--logs", str(tmp_path / "logs")],
                         cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 1 and out.stderr == "", out.stderr
    line = out.stdout.splitlines()[0]
    assert line.startswith("FAIL  results: GMVAE: expected NELBO ") and "; likely cause: " in line, line


def test_the_newest_run_counts_and_a_short_or_changed_one_is_not_judged(tmp_path, capsys):
    logs = tmp_path / "logs"
    write_results(logs, "model=gmvae_z=10_k=500_run=0001", 97.5, 17.6, mtime=1_000_000)
    newest = write_results(logs, "model=gmvae_z=10_k=500_run=0000", 112.0, 15.0, iterations=5000, mtime=2_000_000)
    write_results(logs, "model=vae_z=10_run=0000", 90.0, 20.0, z=2)
    assert check.main(["--results", "--logs", str(logs)]) == SKIPPED
    found, last = verdicts(capsys)
    assert found["GMVAE"][0] == "SKIP" and str(newest) in found["GMVAE"][1]
    assert found["GMVAE"][1].startswith("too short to judge: NELBO 112.00 after 5000 iterations")
    assert f"about {TRAINING_NELBO['gmvae'][5000]}" in found["GMVAE"][1]
    assert found["GMVAE"][1].endswith("python run_gmvae.py --overwrite")
    assert found["VAE"][0] == "SKIP" and "the run used z=2" in found["VAE"][1]
    assert last == "0 passed, 0 failed, 2 not judged (not the graded setting)"

    os.utime(logs / "model=gmvae_z=10_k=500_run=0001" / "results.json", (3_000_000, 3_000_000))
    vae = logs / "model=vae_z=10_run=0000" / "results.json"
    vae.write_text(json.dumps({"nelbo": 101.0, "kl": 19.0, "rec": 82.0}))  # the bare minimum of keys
    assert check.main(["--results", "--logs", str(logs)]) == 0
    assert verdicts(capsys)[1] == "2 passed, 0 failed"


@pytest.mark.parametrize("nelbo, kl, iterations, said", [
    (11863.56, 40.0, 1000, "far above what a correct bound gives after 1000 iterations (about 120 at 1000"),
    (-1.7e16, -1.7e16 - 150, 1000, "no negative ELBO gives that"),
    (float("nan"), 17.0, 20000, "expected a finite NELBO"),
    (150.0, -20.0, 2000, "KL -20.00"),
])
def test_figures_no_correct_bound_gives_fail_before_any_talk_of_iterations(tmp_path, capsys, nelbo, kl, iterations,
                                                                           said):
    logs = tmp_path / "logs"
    write_results(logs, "model=gmvae_z=10_k=500_run=0003", nelbo, kl, iterations=iterations)
    assert check.main(["--results", "--logs", str(logs), "--only", "GMVAE"]) == 1
    status, rest = verdicts(capsys)[0]["GMVAE"]
    assert status == "FAIL" and said in rest, rest
    assert "python -m codebase.check --only GMVAE.negative_elbo_bound" in rest and "iterations;" not in rest


def test_a_stopped_attempt_is_named_even_over_an_earlier_runs_results(tmp_path, capsys):
    logs = tmp_path / "logs"
    folder = write_results(logs, "model=gmvae_z=10_k=500_run=0002", 97.5, 17.6, mtime=1_000_000).parent
    config = {**Config(run=2, data_dir="/my data").as_dict()}
    (folder / STOPPED).write_text(json.dumps({"kind": "nan", "iteration": 8, "config": config,
                                              "message": "the loss became nan or inf at iteration 8; ..."}))
    assert check.main(["--results", "--logs", str(logs)]) == 1
    status, rest = verdicts(capsys)[0]["GMVAE"]
    assert status == "FAIL" and rest.startswith("the run's last attempt stopped at iteration 8: the loss became nan")
    assert "are an earlier run's" in rest and "--resume" not in rest
    assert rest.endswith("python run_gmvae.py --run 2 --data-dir '/my data' --overwrite")


def test_a_nelbo_too_good_to_be_a_bound(tmp_path, capsys):
    logs = tmp_path / "logs"
    write_results(logs, "model=vae_z=10_run=0000", 80.0, 19.0)
    assert check.main(["--results", "--logs", str(logs), "--only", "VAE"]) == 1
    assert "too good to be a bound" in verdicts(capsys)[0]["VAE"][1]


def test_the_short_run_table_is_the_model_answers_measured_curve():
    # figures.TRAINING_NELBO: metrics.csv's rows of writeup/runs, the mean over seeds, rounded.
    for model, table in TRAINING_NELBO.items():
        runs = list((ROOT / "writeup" / "runs").glob(f"model={model}_*/metrics.csv"))
        assert len(runs) == 5
        for iteration, nelbo in table.items():
            rows = [line.split(",") for path in runs for line in path.read_text().splitlines()[1:]]
            values = [float(r[1]) for r in rows if int(r[0]) == iteration]
            assert len(values) == 5 and round(sum(values) / 5) == nelbo, (model, iteration)
