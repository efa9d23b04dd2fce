"""Runs that survive interruption, bad input and damaged files, and lose nothing."""
import csv
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from codebase import data
from codebase.config import Config
from codebase.models import make_model
from codebase.run import exit_code, run
from codebase.runtime import checkpoint, files
from codebase.runtime.metrics import NonFiniteLoss, read_metrics
from codebase.train import make_optimizer, train, training_generator

# Training runs, resumes, signals and damaged files: the slow tier (pytest --full).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

GMVAE_RUN = "model=gmvae_z=10_k=500_run=0000"


def script(*args, cwd, mnist_dir):
    return [sys.executable, str(ROOT / "run_gmvae.py"), *args, "--data-dir", str(mnist_dir), "--threads", "1"]


def call(*args, cwd, mnist_dir, timeout=900):
    return subprocess.run(script(*args, cwd=cwd, mnist_dir=mnist_dir), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def nelbo_line(stdout):
    return next(line for line in stdout.splitlines() if line.startswith("NELBO: "))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, mnist_dir):
    """An uninterrupted 300-iteration run: the reference every resumed run must equal."""
    cwd = tmp_path_factory.mktemp("straight")
    out = call("--iter_max", "300", "--iter_save", "100", cwd=cwd, mnist_dir=mnist_dir)
    assert out.returncode == 0, out.stderr
    return cwd, out.stdout


# SIGINT's run is resumed and compared, bit for bit, with the straight run (which also shows that
# the same seed gives the same run); SIGTERM shares the path up to the save.
@pytest.mark.parametrize("signum,status,resume", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)])
def test_a_signal_saves_a_checkpoint_and_resuming_matches(signum, status, resume, straight_run, tmp_path, mnist_dir):
    proc = subprocess.Popen(script("--iter_max", "300", "--iter_save", "100", cwd=tmp_path, mnist_dir=mnist_dir),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "logs" / GMVAE_RUN / "metrics.csv"
    deadline = time.time() + 900
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):  # training has begun
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    saved = checkpoint.existing(tmp_path / "checkpoints" / GMVAE_RUN)
    stopped_at = max(saved)
    assert 50 <= stopped_at < 300 and f"after iteration {stopped_at}" in stderr
    if not resume:
        return

    resumed = call("--iter_max", "300", "--iter_save", "100", "--resume", cwd=tmp_path, mnist_dir=mnist_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from" in resumed.stdout
    ref_cwd, ref_stdout = straight_run
    final = f"checkpoints/{GMVAE_RUN}/model-00300.pt"
    assert_same_weights(weights(tmp_path / final), weights(ref_cwd / final))
    assert nelbo_line(resumed.stdout) == nelbo_line(ref_stdout)
    # The metrics file describes the one continued run: a row closes the window at the stop, and
    # no row is repeated.
    with open(tmp_path / "logs" / GMVAE_RUN / "metrics.csv") as f:
        rows = [int(r["iteration"]) for r in csv.DictReader(f)]
    assert rows == sorted(set(rows)) and stopped_at in rows and rows[-1] == 300
    assert [r for r in rows if r > stopped_at] == list(range(stopped_at + 50, 300, 50)) + [300]


def test_a_run_that_starts_again_takes_the_old_figures_away_and_the_check_says_it_is_unfinished(
        straight_run, tmp_path, mnist_dir):
    import shutil

    ref_cwd, _ = straight_run
    for kind in ("checkpoints", "logs"):
        shutil.copytree(ref_cwd / kind, tmp_path / kind)
    run_folder = tmp_path / "logs" / GMVAE_RUN
    assert (run_folder / "results.json").is_file() and (run_folder / "training_curve.png").is_file()
    (run_folder / "metrics.csv").unlink()  # so that a row in it is the new run's
    proc = subprocess.Popen(script("--iter_max", "100000", "--overwrite", cwd=tmp_path, mnist_dir=mnist_dir),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_training(proc, run_folder / "metrics.csv")
        left = sorted(p.name for p in run_folder.iterdir())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=900)
    assert left == ["metrics.csv"]  # the results and pictures of the old run are gone
    out = subprocess.run([sys.executable, "-m", "codebase.check", "--results", "--logs", str(tmp_path / "logs")],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 1 and "the run has not finished" in out.stdout
    assert "python run_gmvae.py --resume, with the flags it was started with, continues it" in out.stdout


def test_existing_checkpoints_are_never_deleted_unasked(straight_run, tmp_path, mnist_dir):
    ref_cwd, _ = straight_run
    import shutil
    shutil.copytree(ref_cwd / "checkpoints", tmp_path / "checkpoints")
    before = sorted(p.name for p in (tmp_path / "checkpoints" / GMVAE_RUN).iterdir())
    again = call("--iter_max", "300", cwd=tmp_path, mnist_dir=mnist_dir)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "--resume" in again.stderr and "--overwrite" in again.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints" / GMVAE_RUN).iterdir()) == before
    fresh = call("--iter_max", "50", "--overwrite", cwd=tmp_path, mnist_dir=mnist_dir)
    assert fresh.returncode == 0, fresh.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints" / GMVAE_RUN).iterdir()) == ["model-00050.pt"]


# ---- loading: refused, damaged, mismatched and missing files ---------------------------------

def test_a_pickled_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "model-00100.pt"
    torch.save({"format": 1, "architecture": {}, "evil": Payload()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="refused"):
        checkpoint.load(path, {"model": "gmvae"}, "cpu")
    assert not marker.exists() and path.exists()


def test_damaged_mismatched_and_missing_checkpoints_get_one_line_errors(straight_run, tmp_path, mnist_dir):
    ref_cwd, _ = straight_run
    good = ref_cwd / "checkpoints" / GMVAE_RUN / "model-00300.pt"
    folder = tmp_path / "checkpoints" / GMVAE_RUN
    folder.mkdir(parents=True)
    damaged = folder / "model-00300.pt"
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = call("--iter_max", "300", "--train", "0", cwd=tmp_path, mnist_dir=mnist_dir)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert str(damaged.relative_to(tmp_path)) in out.stderr and "damaged" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and damaged.exists()

    mismatch_folder = tmp_path / "checkpoints" / Config(k=50).run_name
    mismatch_folder.mkdir(parents=True)
    (mismatch_folder / "model-00300.pt").write_bytes(good.read_bytes())
    out = call("--iter_max", "300", "--train", "0", "--k", "50", cwd=tmp_path, mnist_dir=mnist_dir)
    assert out.returncode == 1 and "'k': 500" in out.stderr and "'k': 50}" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1

    out = call("--iter_max", "123", "--train", "0", cwd=tmp_path, mnist_dir=mnist_dir)
    assert out.returncode == 1 and "no checkpoint at" in out.stderr and "model-00123.pt" in out.stderr


def test_a_checkpoint_loads_onto_the_cpu_with_weights_only(straight_run):
    ref_cwd, _ = straight_run
    state = checkpoint.load(ref_cwd / "checkpoints" / GMVAE_RUN / "model-00300.pt",
                            Config().architecture, torch.device("cpu"))
    assert state["iteration"] == 300 and state["format"] == checkpoint.FORMAT
    assert isinstance(state["rng"], torch.Tensor) and state["config"]["seed"] == 0
    model = make_model(Config())
    model.load_state_dict(state["model"])


# ---- atomic saves ------------------------------------------------------------------------------

def test_kill_9_during_saves_leaves_a_whole_file(tmp_path):
    target = tmp_path / "model-00100.pt"
    writer = textwrap.dedent(f"""
        from codebase.runtime.files import write_atomic
        blobs = [bytes([i]) * 30_000_000 for i in (1, 2)]
        write_atomic({str(target)!r}, blobs[0])
        print("ready", flush=True)
        i = 0
        while True:
            i += 1
            write_atomic({str(target)!r}, blobs[i % 2])
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.7)
    proc.kill()
    proc.wait()
    content = target.read_bytes()
    assert len(content) == 30_000_000 and content in (b"\x01" * 30_000_000, b"\x02" * 30_000_000)
    # A killed save may leave its hidden temporary file, never a second visible one.
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [target.name]


def test_a_full_disk_is_one_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old and good")
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self):
            return self.f.fileno()

    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(files.SaveError) as err:
        files.write_json(target, {"nelbo": 97.5})
    assert "no space left" in str(err.value) and str(target) in str(err.value)
    assert target.read_text() == "old and good"
    assert not list(tmp_path.glob(".*.tmp"))


def test_nan_loss_stops_training_names_the_iteration_and_keeps_the_good_checkpoint(tmp_path, mnist_dir):
    config = Config(iter_max=300, iter_save=100, checkpoint_root=str(tmp_path / "c"),
                    log_root=str(tmp_path / "l"), data_dir=str(mnist_dir))
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = make_model(config)
    calls = {"n": 0}
    real_bound = model.negative_elbo_bound

    def poisoned(x, generator=None):
        calls["n"] += 1
        nelbo, kl, rec = real_bound(x, generator)
        return (nelbo * float("nan"), kl, rec) if calls["n"] >= 137 else (nelbo, kl, rec)

    model.negative_elbo_bound = poisoned
    gray = torch.rand(1000, 784)
    with pytest.raises(NonFiniteLoss, match="iteration 137") as error:
        train(model, make_optimizer(model, config, device), gray, config, device,
              training_generator(config, device), log=lambda *a: None)
    assert "model-00100.pt (iteration 100), is the last good state" in str(error.value)
    assert list(checkpoint.existing(config.checkpoint_dir)) == [100]
    assert checkpoint.load(checkpoint.path_for(config.checkpoint_dir, 100), config.architecture, device)


def test_nan_loss_exits_non_zero_without_a_traceback(tmp_path, mnist_dir, monkeypatch, capsys):
    from codebase.models import GMVAE

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(GMVAE, "negative_elbo_bound",
                        lambda self, x, generator=None: (torch.tensor(float("inf"), requires_grad=True),) * 3)
    # check=False: the self-check before training would stop this bound before its first step.
    status = exit_code(lambda **f: run(Config(**f), log=lambda *a: None), iter_max=60, data_dir=str(mnist_dir),
                       check=False)
    assert status == 1
    err = capsys.readouterr().err
    assert "nan or inf at iteration 1;" in err and "No checkpoint was written before it" in err
    # Stopped at the step itself: the bar never got past it.
    assert not list((tmp_path / "checkpoints").rglob("*.pt"))


# ---- the shared data folder --------------------------------------------------------------------

def test_two_runs_fetching_mnist_at_once_do_not_corrupt_it(tmp_path):
    errors = []

    def fetch():
        try:
            data.ensure_mnist(tmp_path, log=lambda *a: None)
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and data.bad_files(tmp_path) == []
    assert not list(data.raw_dir(tmp_path).glob(".*.tmp"))


# ---- issue 10: runs that stay apart ----------------------------------------------------------

def wait_for_training(proc, metrics):
    deadline = time.time() + 900
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, mnist_dir):
    """A 40-iteration run with checkpoints at 20 and 40, trained in process."""
    root = tmp_path_factory.mktemp("small")
    config = Config(iter_max=40, iter_save=20, threads=1, data_dir=str(mnist_dir),
                    checkpoint_root=str(root / "checkpoints"), log_root=str(root / "logs"))
    run(config, log=quiet)
    return config


def copy_of(config, tmp_path):
    """The same run, its checkpoints copied under tmp_path."""
    import shutil

    copy = replace(config, checkpoint_root=str(tmp_path / "checkpoints"), log_root=str(tmp_path / "logs"))
    shutil.copytree(config.checkpoint_dir, copy.checkpoint_dir)
    return copy


@pytest.mark.parametrize("change", [{"seed": 7}, {"lr": 3e-4}, {"batch": 50}])
def test_resume_refuses_a_setting_that_changes_training(change, small_run, tmp_path, capsys):
    config = replace(copy_of(small_run, tmp_path), iter_max=60, resume=True, **change)
    status = exit_code(lambda: run(config, log=quiet))
    err = capsys.readouterr().err
    assert status == 1 and len(err.strip().splitlines()) == 1
    (key, value), = change.items()
    assert f"{key} {getattr(small_run, key)} -> {value}" in err and "model-00040.pt" in err
    assert list(checkpoint.existing(config.checkpoint_dir)) == [20, 40]


def test_settings_fixed_on_resume_are_model_z_k_seed_lr_batch():
    saved = Config().as_dict()
    for key, value in [("model", "vae"), ("z", 2), ("k", 5), ("seed", 1), ("lr", 0.1), ("batch", 10)]:
        assert checkpoint.changed_settings(saved, {**saved, key: value}) == [f"{key} {saved[key]} -> {value}"]
    free = {**saved, "iter_max": 5, "iter_save": 1, "device": "cuda", "threads": 3, "iwae": True}
    assert checkpoint.changed_settings(saved, free) == []


def test_resume_keeps_the_metrics_rows_that_parse_and_may_change_iter_max_iter_save_and_device(small_run, tmp_path):
    config = replace(copy_of(small_run, tmp_path), iter_max=60, iter_save=10, device="cpu", resume=True)
    metrics = config.log_dir / "metrics.csv"
    metrics.parent.mkdir(parents=True)
    # Lines that are no rows: a note, a bare number, a row cut off by a crash.
    metrics.write_text("iteration,nelbo,kl,rec\n# rerun by the TA\n100.0\n20,250.5,8.0,242.5\n"
                       "30,181.3755,,\n40,230.0,6.0,224.0\n50,200.0,5.0,195.0\n")
    messages = []
    results = run(config, log=messages.append)
    assert results["iterations"] == 60
    note = next(m for m in messages if m.startswith(str(metrics)))
    assert "kept 2 rows up to iteration 40" in note and "dropped line(s) 2, 3, 5" in note
    rows, dropped = read_metrics(metrics)
    assert dropped == [] and [r["iteration"] for r in rows] == [20, 40, 60]
    assert list(checkpoint.existing(config.checkpoint_dir)) == [20, 40, 50, 60]


def test_overwrite_deletes_only_the_runs_checkpoints(small_run, tmp_path):
    config = copy_of(small_run, tmp_path)
    notes = config.checkpoint_dir / "notes.txt"
    notes.write_text("lr sweep, keep")
    (config.checkpoint_dir / "best.pt").write_bytes(b"a file of the user's")
    checkpoint.prepare_folder(config.checkpoint_dir, resume=False, overwrite=True)
    assert sorted(p.name for p in config.checkpoint_dir.iterdir()) == ["best.pt", "notes.txt"]


def test_resume_and_overwrite_together_are_refused(capsys):
    from codebase.run import FlagError, build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser("gmvae").parse_args(["--resume", "--overwrite"])
    assert stop.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(FlagError, match="contradict"):
        run(Config(resume=True, overwrite=True))


@pytest.mark.parametrize("seed", ["100000000000000", "-1", "2147483648", "1e3"])
def test_an_out_of_range_seed_is_a_usage_error_with_the_range(seed, capsys):
    from codebase.run import build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser("vae").parse_args(["--seed", seed])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "from 0 to 2147483647" in err and "Traceback" not in err
    assert build_parser("vae").parse_args(["--seed", "2147483647"]).seed == 2**31 - 1


def test_the_largest_seed_works_everywhere_it_is_used():
    from codebase.runtime.checkpoint import restore_stream
    from codebase.train import MAX_SEED, epoch_order

    assert len(epoch_order(MAX_SEED, 10**6, 10, "cpu")) == 10
    generator = training_generator(Config(seed=MAX_SEED), torch.device("cpu"))
    assert not restore_stream(generator, torch.zeros(16, dtype=torch.uint8), "cuda", torch.device("cpu"),
                              MAX_SEED, 10**6)


# ---- issue 10: checkpoints a user can break --------------------------------------------------

def test_an_empty_or_random_file_is_not_a_checkpoint(tmp_path, capsys):
    config = Config(iter_max=20, checkpoint_root=str(tmp_path / "c"), log_root=str(tmp_path / "l"))
    config.checkpoint_dir.mkdir(parents=True)
    path = checkpoint.path_for(config.checkpoint_dir, 20)
    for content in (b"", os.urandom(4096)):
        path.write_bytes(content)
        status = exit_code(lambda: run(replace(config, train=False), log=quiet))
        err = capsys.readouterr().err
        assert status == 1 and "is not a checkpoint" in err and str(path) in err and "pickled" not in err
        assert len(err.strip().splitlines()) == 1 and path.exists()


def test_a_folder_or_a_symlink_loop_named_like_a_checkpoint_is_no_checkpoint(tmp_path):
    folder = tmp_path / "model-00100.pt"
    folder.mkdir()
    loop = tmp_path / "model-00200.pt"
    loop.symlink_to(loop)
    for path in (folder, loop):
        with pytest.raises(checkpoint.CheckpointError, match=f"no checkpoint at {path}"):
            checkpoint.load(path, {}, "cpu")


def test_train_0_without_a_checkpoint_at_iter_max_lists_those_that_exist(small_run, tmp_path):
    config = copy_of(small_run, tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="checkpoints at iterations 20, 40: pass one"):
        run(replace(config, train=False, iter_max=30), log=quiet)


def test_a_renamed_checkpoint_is_refused_not_trusted(small_run, tmp_path):
    config = copy_of(small_run, tmp_path)
    checkpoint.path_for(config.checkpoint_dir, 20).rename(checkpoint.path_for(config.checkpoint_dir, 99999))
    with pytest.raises(checkpoint.CheckpointError, match="holds iteration 20, not 99999.*model-00020.pt"):
        run(replace(config, iter_max=60, resume=True), log=quiet)


def test_a_data_dir_that_is_a_file_is_one_clear_error(tmp_path):
    not_a_folder = tmp_path / "mnist.zip"
    not_a_folder.write_bytes(b"PK")
    with pytest.raises(data.DataError, match="is a file, not a folder"):
        data.ensure_mnist(not_a_folder, log=quiet)


def as_a_cuda_run_writes_it(state, path, monkeypatch):
    """Save `state` as a CUDA run would have: tensors on cuda:0, Philox rng, capturable Adam."""
    optimizer = state["optimizer"]
    for group in optimizer["param_groups"]:
        group.update(foreach=True, fused=None, capturable=True)
    for per_param in optimizer["state"].values():
        per_param["step"] = per_param["step"].to(torch.float32)  # capturable keeps it a float on the GPU
    seed, offset = 0, 4 * 20 * 100 * 794
    rng = torch.tensor(list(seed.to_bytes(8, "little") + offset.to_bytes(8, "little")), dtype=torch.uint8)
    crafted = {**state, "optimizer": optimizer, "rng": rng, "device_type": "cuda"}
    crafted.pop("format")
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        checkpoint.save(path, crafted)


def test_a_checkpoint_written_on_a_gpu_resumes_on_the_cpu(small_run, tmp_path, mnist_dir, monkeypatch):
    state = torch.load(checkpoint.path_for(small_run.checkpoint_dir, 20), weights_only=True)
    path = tmp_path / "checkpoints" / GMVAE_RUN / "model-00020.pt"
    path.parent.mkdir(parents=True)
    as_a_cuda_run_writes_it(state, path, monkeypatch)
    if not torch.cuda.is_available():  # the file really is a GPU one
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    out = call("--iter_max", "60", "--iter_save", "20", "--resume", "--device", "cpu", cwd=tmp_path,
               mnist_dir=mnist_dir)
    assert out.returncode == 0, out.stderr
    assert "was made on cuda, this run is on cpu: the random stream restarts from (seed 0, iteration 20)" \
        in out.stdout
    final = torch.load(path.parent / "model-00060.pt", weights_only=True)
    assert final["device_type"] == "cpu" and final["iteration"] == 60
    assert all(torch.isfinite(t).all() for t in final["model"].values())
    assert final["optimizer"]["param_groups"][0]["fused"] is True
    assert final["optimizer"]["param_groups"][0]["capturable"] is False


def test_a_cpu_checkpoint_is_mapped_for_a_gpu_optimizer_and_generator(small_run):
    from codebase.runtime.checkpoint import restore_stream

    state = checkpoint.load(checkpoint.path_for(small_run.checkpoint_dir, 40), small_run.architecture, "cpu")
    model = make_model(small_run)
    model.load_state_dict(state["model"])
    optimizer = make_optimizer(model, replace(small_run, cuda_graph=True), torch.device("cuda"))  # a graphed GPU run's
    checkpoint.load_optimizer(optimizer, state["optimizer"])
    group = optimizer.state_dict()["param_groups"][0]
    assert (group["capturable"], group["foreach"], group["fused"]) == (True, True, None)
    for name, param in model.named_parameters():
        per_param = optimizer.state[param]
        assert per_param["step"].dtype == torch.float32 and per_param["step"].device == param.device, name
        assert torch.equal(per_param["step"], torch.tensor(40.0))
    # A CPU generator state cannot go on on a GPU: the stream restarts from (seed, iteration).
    generator = torch.Generator()
    assert not restore_stream(generator, state["rng"], "cpu", torch.device("cuda"), 0, 40)
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(40).get_state())
    assert restore_stream(generator, state["rng"], "cpu", torch.device("cpu"), 0, 40)
    assert torch.equal(generator.get_state(), state["rng"])


@pytest.mark.cuda
def test_a_gpu_run_resumes_on_the_cpu_and_back(tmp_path, mnist_dir):
    base = Config(iter_max=20, iter_save=20, threads=1, device="cuda", data_dir=str(mnist_dir),
                  checkpoint_root=str(tmp_path / "c"), log_root=str(tmp_path / "l"))
    run(base, log=quiet)
    messages = []
    run(replace(base, iter_max=40, device="cpu", resume=True), log=messages.append)
    assert any("was made on cuda, this run is on cpu" in m for m in messages)
    run(replace(base, iter_max=60, resume=True), log=messages.append)
    assert any("was made on cpu, this run is on cuda" in m for m in messages)
    final = torch.load(checkpoint.path_for(base.checkpoint_dir, 60), weights_only=True)
    assert final["device_type"] == "cuda" and all(torch.isfinite(t).all() for t in final["model"].values())


# ---- issue 10: signals, folders and disks --------------------------------------------------------

def test_sighup_saves_a_checkpoint_and_exits_129(tmp_path, monkeypatch, capsys):
    config = Config(iter_max=200, iter_save=1000, threads=1, checkpoint_root=str(tmp_path / "c"),
                    log_root=str(tmp_path / "l"))
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = make_model(config)
    real_bound = model.negative_elbo_bound
    calls = {"n": 0}

    def closes_the_terminal_at_30(x, generator=None):
        calls["n"] += 1
        if calls["n"] == 30:
            os.kill(os.getpid(), signal.SIGHUP)
        return real_bound(x, generator)

    model.negative_elbo_bound = closes_the_terminal_at_30
    gray = torch.rand(1000, 784)
    status = exit_code(lambda: train(model, make_optimizer(model, config, device), gray, config, device,
                                     training_generator(config, device), log=quiet))
    assert status == 129 and "SIGHUP: stopped after iteration 30" in capsys.readouterr().err
    assert list(checkpoint.existing(config.checkpoint_dir)) == [30]


def refuse_writes_in(folder, monkeypatch):
    """Make `folder` behave as read-only for this codebase's writes (the tests run as root)."""
    real = files.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(folder)):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)


def test_a_read_only_checkpoint_folder_is_refused_before_training(tmp_path, mnist_dir, monkeypatch, capsys):
    import codebase.run as run_module

    config = Config(iter_max=20, threads=1, data_dir=str(mnist_dir), checkpoint_root=str(tmp_path / "c"),
                    log_root=str(tmp_path / "l"))
    refuse_writes_in(config.checkpoint_dir, monkeypatch)
    monkeypatch.setattr(run_module, "load_mnist", lambda *a: pytest.fail("went on to load the data"))
    assert exit_code(lambda: run(config, log=quiet)) == 1
    err = capsys.readouterr().err
    assert f"cannot write in {config.checkpoint_dir} (Permission denied)" in err and "Nothing was trained" in err


def test_train_0_prints_the_figures_before_a_read_only_log_folder_fails(small_run, tmp_path, monkeypatch):
    config = replace(copy_of(small_run, tmp_path), train=False)
    refuse_writes_in(config.log_dir, monkeypatch)
    messages = []
    with pytest.raises(files.SaveError, match=f"could not write {config.log_dir}"):
        run(config, log=messages.append)
    assert messages and messages[0].startswith("NELBO: ")


def test_a_seed_out_of_range_is_refused_by_run_itself():
    from codebase.run import FlagError

    with pytest.raises(FlagError, match="from 0 to 2147483647"):
        run(Config(seed=10**14))
