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

import pytest
import torch

from conftest import ROOT

from codebase import checkpoint, data, files
from codebase.config import Config
from codebase.run import exit_code, run
from codebase.models import make_model
from codebase.train import NonFiniteLoss, make_optimizer, train, training_generator

GMVAE_RUN = "model=gmvae_z=10_k=500_run=0000"


def script(*args, cwd, mnist_dir):
    return [sys.executable, str(ROOT / "run_gmvae.py"), *args, "--data-dir", str(mnist_dir)]


def call(*args, cwd, mnist_dir, timeout=300):
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
    """An uninterrupted 600-iteration run: the reference every resumed run must equal."""
    cwd = tmp_path_factory.mktemp("straight")
    out = call("--iter_max", "600", "--iter_save", "200", cwd=cwd, mnist_dir=mnist_dir)
    assert out.returncode == 0, out.stderr
    return cwd, out.stdout


def test_resume_from_a_checkpoint_matches_the_straight_run(straight_run, tmp_path, mnist_dir):
    first = call("--iter_max", "400", "--iter_save", "200", cwd=tmp_path, mnist_dir=mnist_dir)
    assert first.returncode == 0, first.stderr
    second = call("--iter_max", "600", "--iter_save", "200", "--resume", cwd=tmp_path, mnist_dir=mnist_dir)
    assert second.returncode == 0, second.stderr
    assert "Resuming from" in second.stdout
    ref_cwd, ref_stdout = straight_run
    final = f"checkpoints/{GMVAE_RUN}/model-00600.pt"
    assert_same_weights(weights(tmp_path / final), weights(ref_cwd / final))
    assert nelbo_line(second.stdout) == nelbo_line(ref_stdout)
    # The metrics file describes the one continued run, without duplicated rows.
    with open(tmp_path / "logs" / GMVAE_RUN / "metrics.csv") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == list(range(50, 601, 50))


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_resuming_matches(signum, status, straight_run, tmp_path, mnist_dir):
    proc = subprocess.Popen(script("--iter_max", "600", "--iter_save", "200", cwd=tmp_path, mnist_dir=mnist_dir),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "logs" / GMVAE_RUN / "metrics.csv"
    deadline = time.time() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):  # training has begun
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    saved = checkpoint.existing(tmp_path / "checkpoints" / GMVAE_RUN)
    stopped_at = max(saved)
    assert 50 <= stopped_at < 600 and f"after iteration {stopped_at}" in stderr

    resumed = call("--iter_max", "600", "--iter_save", "200", "--resume", cwd=tmp_path, mnist_dir=mnist_dir)
    assert resumed.returncode == 0, resumed.stderr
    ref_cwd, ref_stdout = straight_run
    final = f"checkpoints/{GMVAE_RUN}/model-00600.pt"
    assert_same_weights(weights(tmp_path / final), weights(ref_cwd / final))
    assert nelbo_line(resumed.stdout) == nelbo_line(ref_stdout)


def test_same_seed_on_the_cpu_is_bit_identical(straight_run, tmp_path, mnist_dir):
    out = call("--iter_max", "600", "--iter_save", "200", cwd=tmp_path, mnist_dir=mnist_dir)
    ref_cwd, ref_stdout = straight_run
    final = f"checkpoints/{GMVAE_RUN}/model-00600.pt"
    assert_same_weights(weights(tmp_path / final), weights(ref_cwd / final))
    assert nelbo_line(out.stdout) == nelbo_line(ref_stdout)


def test_existing_checkpoints_are_never_deleted_unasked(straight_run, tmp_path, mnist_dir):
    ref_cwd, _ = straight_run
    import shutil
    shutil.copytree(ref_cwd / "checkpoints", tmp_path / "checkpoints")
    before = sorted(p.name for p in (tmp_path / "checkpoints" / GMVAE_RUN).iterdir())
    again = call("--iter_max", "600", cwd=tmp_path, mnist_dir=mnist_dir)
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
    good = ref_cwd / "checkpoints" / GMVAE_RUN / "model-00600.pt"
    folder = tmp_path / "checkpoints" / GMVAE_RUN
    folder.mkdir(parents=True)
    damaged = folder / "model-00600.pt"
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = call("--iter_max", "600", "--train", "0", cwd=tmp_path, mnist_dir=mnist_dir)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert str(damaged.relative_to(tmp_path)) in out.stderr and "damaged" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and damaged.exists()

    mismatch_folder = tmp_path / "checkpoints" / "model=gmvae_z=10_k=50_run=0000"
    mismatch_folder.mkdir(parents=True)
    (mismatch_folder / "model-00600.pt").write_bytes(good.read_bytes())
    out = call("--iter_max", "600", "--train", "0", "--k", "50", cwd=tmp_path, mnist_dir=mnist_dir)
    assert out.returncode == 1 and "'k': 500" in out.stderr and "'k': 50}" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1

    out = call("--iter_max", "123", "--train", "0", cwd=tmp_path, mnist_dir=mnist_dir)
    assert out.returncode == 1 and "no checkpoint at" in out.stderr and "model-00123.pt" in out.stderr


def test_a_checkpoint_loads_onto_the_cpu_with_weights_only(straight_run):
    ref_cwd, _ = straight_run
    state = checkpoint.load(ref_cwd / "checkpoints" / GMVAE_RUN / "model-00600.pt",
                            Config().architecture, torch.device("cpu"))
    assert state["iteration"] == 600 and state["format"] == checkpoint.FORMAT
    assert isinstance(state["rng"], torch.Tensor) and state["config"]["seed"] == 0
    model = make_model(Config())
    model.load_state_dict(state["model"])


# ---- atomic saves ------------------------------------------------------------------------------

def test_kill_9_during_saves_leaves_a_whole_file(tmp_path):
    target = tmp_path / "model-00100.pt"
    writer = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        from codebase.files import write_atomic
        blobs = [bytes([i]) * 30_000_000 for i in (1, 2)]
        write_atomic({str(target)!r}, blobs[0])
        print("ready", flush=True)
        i = 0
        while True:
            i += 1
            write_atomic({str(target)!r}, blobs[i % 2])
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.7)
    proc.kill()
    proc.wait()
    content = target.read_bytes()
    assert len(content) == 30_000_000 and content in (b"\x01" * 30_000_000, b"\x02" * 30_000_000)
    leftovers = list(tmp_path.glob(".*.tmp"))
    files.remove_stale_temporaries(tmp_path)  # what the next start does
    assert not list(tmp_path.glob(".*.tmp")) and target.exists()
    print(f"{len(leftovers)} stale temporary file(s) cleaned")


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


def test_stale_temporaries_are_removed_when_a_run_starts(straight_run, tmp_path, mnist_dir):
    folder = tmp_path / "checkpoints" / GMVAE_RUN
    folder.mkdir(parents=True)
    stale = folder / ".model-00200.pt.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    out = call("--iter_max", "50", cwd=tmp_path, mnist_dir=mnist_dir)
    assert out.returncode == 0, out.stderr
    assert not stale.exists()


# ---- a loss that stops being finite ------------------------------------------------------------

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
    with pytest.raises(NonFiniteLoss, match="iteration 137"):
        train(model, make_optimizer(model, config, device), gray, config, device,
              training_generator(device, 0), log=lambda *a: None)
    assert list(checkpoint.existing(config.checkpoint_dir)) == [100]
    assert checkpoint.load(checkpoint.path_for(config.checkpoint_dir, 100), config.architecture, device)


def test_nan_loss_exits_non_zero_without_a_traceback(tmp_path, mnist_dir, monkeypatch, capsys):
    from codebase.models import GMVAE

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(GMVAE, "negative_elbo_bound",
                        lambda self, x, generator=None: (torch.tensor(float("inf"), requires_grad=True),) * 3)
    status = exit_code(lambda **f: run(Config(**f), log=lambda *a: None), iter_max=60, data_dir=str(mnist_dir))
    assert status == 1
    assert "nan or inf at iteration 1" in capsys.readouterr().err


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
