"""What run_gmvae.py and run_vae.py do: the flags, and train -> evaluate -> report."""
import argparse
import os
import platform
import sys
import time

import torch

from codebase import checkpoint
from codebase.config import Config
from codebase.data import DataError, load_mnist
from codebase.evaluate import IWAE_KS, evaluate, sample_binary, sample_means
from codebase.files import SaveError, remove_stale_temporaries, write_json, write_png_grid
from codebase.models import make_model
from codebase.train import Interrupted, NonFiniteLoss, make_optimizer, train, training_generator

DEVICES = ("auto", "cpu", "cuda", "mps")
GRID_ROWS, GRID_COLS = 10, 20
SAMPLES = {"binary": "samples_binary.png", "means": "samples_means.png"}  # the two grids in logs/<run>/


class DeviceError(RuntimeError):
    """The requested device is not available; the message says what to use instead."""


def select_device(name):
    """The torch.device for --device: auto picks cuda, then mps, then the cpu."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda, but torch sees no CUDA GPU here "
                          "(torch.cuda.is_available() is False). Use --device cpu or --device auto.")
    if name == "mps" and not has_mps:
        raise DeviceError("--device mps, but this machine or torch build has no MPS. "
                          "Use --device cpu or --device auto.")
    return torch.device(name)


def cpu_threads(requested=0):
    """The thread count for torch: `requested` if given, else $OMP_NUM_THREADS, else the usable CPUs.

    Several runs at once on few cores must each use fewer threads: two runs with 2 threads
    each on 2 cores were measured 5 to 7 times slower each, as their OpenMP threads spin
    against each other; with one thread each they ran about as fast as one run alone.
    """
    if requested:
        return requested
    try:
        return max(int(os.environ.get("OMP_NUM_THREADS", "")), 1)
    except ValueError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe(device):
    """The device's model name, for results.json (which machine produced the figures)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def build_parser(model):
    """The course's flags; every default is the graded setting."""
    d = Config(model=model)
    p = argparse.ArgumentParser(
        description=f"Train the {model.upper()} on binarised MNIST and evaluate it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--z", type=_positive_int, default=d.z, help="latent dimension")
    if model == "gmvae":
        p.add_argument("--k", type=_positive_int, default=d.k, help="mixture components of the prior")
    p.add_argument("--iter_max", type=_positive_int, default=d.iter_max, help="training iterations")
    p.add_argument("--iter_save", type=_positive_int, default=d.iter_save,
                   help="save a checkpoint every this many iterations (and at the end)")
    p.add_argument("--run", type=_non_negative_int, default=d.run, help="run number, part of the run's name")
    p.add_argument("--train", type=int, choices=(0, 1), default=int(d.train),
                   help="1: train; 0: load the checkpoint at --iter_max and evaluate it")
    p.add_argument("--seed", type=int, default=d.seed, help="training seed")
    p.add_argument("--iwae", action="store_true", help="also report the IWAE-1/10/100/1000 bounds")
    p.add_argument("--device", choices=DEVICES, default=d.device, help="auto: cuda, then mps, then cpu")
    p.add_argument("--threads", type=_positive_int, default=d.threads,
                   help="CPU threads; 0: $OMP_NUM_THREADS if set, else every CPU this process may use. "
                        "Give each of several runs at once an equal share of the cores")
    p.add_argument("--data-dir", dest="data_dir", default=d.data_dir, help="where MNIST is cached")
    p.add_argument("--resume", action="store_true", help="continue this run from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start this run afresh, deleting its existing checkpoints")
    return p


def _resume_point(config, model, optimizer, generator, device, log):
    """Load the run's newest checkpoint into model, optimizer and generator, if asked to."""
    found = checkpoint.existing(config.checkpoint_dir)
    if not config.resume or not found:
        if config.resume:
            log(f"--resume: no checkpoint in {config.checkpoint_dir}; starting from iteration 0.")
        return 0, 0.0
    path = found[max(found)]
    state = checkpoint.load(path, config.architecture, device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["rng"].cpu())
    log(f"Resuming from {path} (iteration {state['iteration']}).")
    return state["iteration"], state["train_seconds"]


def run(config, log=print):
    """Train (or load) a model as `config` says, evaluate it, and write its files.

    Returns:
        results: dict: every figure, as also written to logs/<run>/results.json
    """
    device = select_device(config.device)
    torch.set_num_threads(cpu_threads(config.threads))
    torch.manual_seed(config.seed)  # the initial weights
    model = make_model(config).to(device)
    train_x, _, test_x, _ = load_mnist(config.data_dir, log)
    config.log_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(config.log_dir)

    if config.train:
        checkpoint.prepare_folder(config.checkpoint_dir, config.resume, config.overwrite)
        optimizer = make_optimizer(model, config, device)
        generator = training_generator(device, config.seed)
        start, seconds = _resume_point(config, model, optimizer, generator, device, log)
        if start >= config.iter_max:
            log(f"Nothing to train: the newest checkpoint is at iteration {start} >= --iter_max.")
        else:
            data = (train_x.float() / 255).to(device)
            seconds = train(model, optimizer, data, config, device, generator, start, seconds, log)
        iterations = max(start, config.iter_max)
    else:
        path = checkpoint.path_for(config.checkpoint_dir, config.iter_max)
        state = checkpoint.load(path, config.architecture, device)
        model.load_state_dict(state["model"])
        iterations, seconds = state["iteration"], state["train_seconds"]

    began = time.perf_counter()
    results = evaluate(model, test_x, device, iwae=config.iwae)
    results.update(
        run=config.run_name, iterations=iterations, train_seconds=round(seconds, 2),
        eval_seconds=round(time.perf_counter() - began, 2), seed=config.seed, device=str(device),
        device_name=describe(device),
        threads=torch.get_num_threads(), torch=torch.__version__, config=config.as_dict())

    # Problem 3.3 asks for draws from p(x): binary images. The Bernoulli means of the same z
    # show what the model has learned without the pixel noise, so both grids are written.
    binary, means = config.log_dir / SAMPLES["binary"], config.log_dir / SAMPLES["means"]
    write_png_grid(binary, sample_binary(model, GRID_ROWS * GRID_COLS, device), GRID_ROWS, GRID_COLS)
    write_png_grid(means, sample_means(model, GRID_ROWS * GRID_COLS, device), GRID_ROWS, GRID_COLS)
    write_json(config.log_dir / "results.json", results)

    log(f"NELBO: {results['nelbo']:.4f}. KL: {results['kl']:.4f}. Rec: {results['rec']:.4f}")
    log(f"Full test split (10,000 images): NELBO: {results['test_nelbo']:.4f}. "
        f"KL: {results['test_kl']:.4f}. Rec: {results['test_rec']:.4f}")
    for k in IWAE_KS if config.iwae else ():
        log(f"Negative IWAE-{k}: {results['iwae'][k]:.4f}")
    log(f"Trained {iterations} iterations in {seconds:.1f} s on {device}; evaluated in "
        f"{results['eval_seconds']:.1f} s.")
    newest = max(checkpoint.existing(config.checkpoint_dir).items(), default=(None, "none"))[1]
    log(f"Files: checkpoint {newest}\n       metrics {config.log_dir / 'metrics.csv'}\n"
        f"       samples {binary} (10 x 20 binary draws x ~ p(x|z), z ~ p(z))\n"
        f"       samples {means} (their Bernoulli means, the same z)\n"
        f"       results {config.log_dir / 'results.json'}")
    return results


def exit_code(main, **flags):
    """Call main(**flags) the way a shell wants it: one-line errors and an exit status.

    Returns:
        status: int: 0 done, 1 error, 130 Ctrl-C, 143 SIGTERM
    """
    try:
        main(**flags)
    except Interrupted as e:
        print(e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("Interrupted (Ctrl-C) outside training; checkpoints already written are kept "
              "(--resume continues, --train 0 evaluates).", file=sys.stderr)
        return 130
    except (DataError, checkpoint.CheckpointError, DeviceError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # SaveError (a full disk, say) and any other file-system failure
        print(f"error: {e.strerror if isinstance(e, SaveError) else e}", file=sys.stderr)
        return 1
    return 0
