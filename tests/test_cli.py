"""The run scripts as a student uses them: flags, a short real run, and its files."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

import codebase.run as run_module
import codebase.runtime.device as device_module
import run_vae
from codebase.config import Config
from codebase.runtime.cpus import usable_cpus

ROOT = Path(__file__).resolve().parents[1]


def run_script(script, *args, cwd, env=None, timeout=900):
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("model", ["gmvae", "vae"])
def test_the_flags_defaults_are_the_configs(model):
    # No flag given: the run is exactly Config's defaults, so the graded setting needs no flag.
    flags = vars(run_module.build_parser(model).parse_args([]))
    assert Config(model=model, **flags) == Config(model=model)
    assert ("k" in flags) == (model == "gmvae")
    # --threads has no number as its default (0 would be refused by its own parser): it is left out.
    assert "threads" not in flags


@pytest.mark.parametrize("args", [["--iter_max", "0"], ["--iter_max", "-5"], ["--iter_max", "ten"],
                                  ["--iter_save", "0"], ["--z", "0"], ["--k", "-1"], ["--k", "2.5"],
                                  ["--threads", "0"], ["--device", "tpu"], ["--train", "2"], ["--bogus"]])
def test_bad_flags_get_a_usage_error(args, capsys):
    with pytest.raises(SystemExit) as stop:
        run_module.build_parser("gmvae").parse_args(args)
    assert stop.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_clear_message(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_module.exit_code(lambda **f: run_module.run(Config(**f)), device="cuda") == 1
    err = capsys.readouterr().err
    assert "torch sees no CUDA GPU" in err and "Traceback" not in err


def test_auto_device_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device_module.select_device("auto") == torch.device("cpu")
    with pytest.raises(device_module.DeviceError):
        device_module.select_device("mps")


@pytest.mark.slow
def test_a_short_real_run_learns_and_writes_its_files(tmp_path, mnist_dir, monkeypatch):
    out = run_script("run_gmvae.py", "--iter_max", "400", "--iter_save", "200", "--run", "7",
                     "--iwae", "--data-dir", str(mnist_dir), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    name = "model=gmvae_z=10_k=500_run=0007"
    line = re.search(r"^NELBO: ([\d.]+)\. KL: ([\d.]+)\. Rec: ([\d.]+)$", out.stdout, re.M)
    assert line, out.stdout
    for k in (1, 10, 100, 1000):
        assert re.search(rf"^Negative IWAE-{k}: [\d.]+$", out.stdout, re.M)

    with open(tmp_path / "logs" / name / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(50, 401, 50))
    assert float(rows[-1]["nelbo"]) < float(rows[0]["nelbo"]) - 60  # about 260 -> 150

    results = json.loads((tmp_path / "logs" / name / "results.json").read_text())
    assert results["nelbo"] == pytest.approx(float(line.group(1)), abs=1e-4)
    assert results["iterations"] == 400 and results["seed"] == 0 and results["device"] == "cpu"
    assert results["torch"] == torch.__version__ and results["train_seconds"] > 0
    assert results["nelbo"] == pytest.approx(results["kl"] + results["rec"])
    iwae = [results["iwae"][str(k)] for k in (1, 10, 100, 1000)]
    assert iwae == sorted(iwae, reverse=True)
    assert 100 < results["test_nelbo"] < 200

    for grid in ("samples_binary.png", "samples_means.png"):
        assert matplotlib.image.imread(tmp_path / "logs" / name / grid).shape[:2] == (10 * 28, 20 * 28)
    assert matplotlib.image.imread(tmp_path / "logs" / name / "training_curve.png").shape[:2] == (360, 1200)
    assert f"Files in logs/{name}/: results.json, metrics.csv, training_curve.png" in out.stdout
    assert f"Running from {tmp_path}, not from the project's folder" in out.stdout  # where logs/ went
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints" / name).iterdir())
    assert ckpts == ["model-00200.pt", "model-00400.pt"]
    state = torch.load(tmp_path / "checkpoints" / name / "model-00400.pt", weights_only=True)
    assert state["iteration"] == 400

    # --train 0 loads that checkpoint; evaluation has its own generator, so the figures repeat.
    monkeypatch.chdir(tmp_path)
    printed = []
    threads = torch.get_num_threads()
    try:
        run_module.run(Config(iter_max=400, run=7, train=False, data_dir=str(mnist_dir), threads=1), log=printed.append)
    finally:
        torch.set_num_threads(threads)
    assert line.group(0) in printed


@pytest.mark.slow
def test_vae_main_returns_its_results(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        results = run_vae.main(iter_max=400, data_dir=str(mnist_dir), threads=1)
    finally:
        torch.set_num_threads(threads)
    assert results["run"] == "model=vae_z=10_run=0000"
    assert {"nelbo", "kl", "rec", "test_nelbo", "train_seconds"} <= results.keys()
    assert "iwae" not in results
    assert results["threads"] == 1


@pytest.mark.slow
def test_progress_into_a_log_file_is_a_few_lines(tmp_path, mnist_dir, capfd):
    # stderr is a pipe here, as in a cluster job's log: the bar may print at start and end
    # (and every 30 s), not at each of the 4 metrics rows of these 200 iterations.
    out = run_script("run_vae.py", "--iter_max", "200", "--threads", "1", "--data-dir", str(mnist_dir),
                     cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    updates = re.split(r"[\r\n]+", out.stderr.strip())
    assert 1 <= len([u for u in updates if "model=vae_z=10_run=0000" in u]) <= 3, out.stderr


def test_progress_into_a_log_file_is_one_line_every_30_seconds():
    import io

    from codebase.runtime.metrics import progress_bar

    log = io.StringIO()  # not a terminal, as a cluster job's log
    bar = progress_bar(Config(), 0, log)
    clock = {"now": bar.start_t}
    bar._time = lambda: clock["now"]
    for _ in range(20000):  # 20,000 iterations at 180 per second: 111 s
        clock["now"] += 1 / 180
        bar.update(1)
        # tqdm's monitor thread (real time, so not seen here) forces an extra line into a bar with
        # miniters above 1 that has not printed for a while.
        assert bar.miniters == 1
    bar.close()
    lines = [line for line in re.split(r"[\r\n]+", log.getvalue()) if line.strip()]
    counts = [int(re.search(r"\| *(\d+)/20000", line).group(1)) for line in lines]
    # The start, one line every 30 s (at 5,400, 10,800 and 16,200 iterations) and the end.
    assert counts == [0, 5400, 10800, 16200, 20000], lines


@pytest.mark.parametrize("env,requested,expected", [({"OMP_NUM_THREADS": "1"}, 0, 1), ({"OMP_NUM_THREADS": "3"}, 0, 3),
                                                    ({"OMP_NUM_THREADS": "1"}, 2, 2), ({}, 5, 5)])
def test_threads_follow_the_flag_then_omp_num_threads(monkeypatch, env, requested, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert device_module.cpu_threads(requested) == expected


def test_threads_default_to_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert device_module.cpu_threads(0) == len(os.sched_getaffinity(0))


def test_config_defaults_are_the_graded_setting():
    from codebase.check.figures import GRADED_SETTING

    for model, setting in GRADED_SETTING.items():
        defaults = Config(model=model)
        assert {key: getattr(defaults, key) for key in setting} == setting
    assert Config().model == "gmvae"


def test_run_names_are_formatted_as_the_course_formats_them():
    assert Config(z=2, k=5, run=3).run_name == "model=gmvae_z=02_k=005_run=0003"
    assert Config(model="vae", z=2, run=12).run_name == "model=vae_z=02_run=0012"
    assert Config(z=100, k=1000).run_name == "model=gmvae_z=100_k=1000_run=0000"


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2: 1.5 CPUs of quota, rounded up
    ({"cpu.max": "20000 100000\n"}, 1),  # a fraction of a CPU is still one thread
    ({"cpu.max": "max 100000\n"}, None),  # no quota: the affinity
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu.max": "garbage\n"}, None),  # unreadable: the affinity
    ({}, None),
])
def test_the_usable_cpus_are_the_affinity_within_a_containers_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (affinity if expected is None else min(affinity, expected))
