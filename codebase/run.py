"""What run_gmvae.py and run_vae.py do: the flags, then check -> train (or load) -> evaluate -> write.

Every error a user can fix ends as one line and an exit status (exit_code).
"""
import argparse
import functools
import sys
import time
from pathlib import Path

import torch

from codebase.check.calls import error_record, where
from codebase.check.figures import MODEL_LABELS, TERM_LABELS, accepted_range
from codebase.check.preflight import UnfinishedCode, preflight
from codebase.check.runner import failures
from codebase.config import GRID_COLS, GRID_ROWS, SAMPLES, STOPPED, TRAINING_CURVE, Config
from codebase.data import load_mnist
from codebase.evaluate import IWAE_KS, evaluate, sample_binary, sample_means
from codebase.models import make_model
from codebase.runtime import checkpoint
from codebase.runtime.compiled import MODES as COMPILE_MODES
from codebase.runtime.device import DEVICES, cpu_threads, describe, select_device
from codebase.runtime.errors import UserError, first_line
from codebase.runtime.files import check_writable, write_json, write_png_grid
from codebase.runtime.metrics import ImpossibleFigures, NonFiniteLoss, read_metrics, write_training_curve
from codebase.train import MAX_SEED, StepFailed, make_optimizer, train, training_generator

say = functools.partial(print, flush=True)  # flushed: in a log file, among the progress bar's lines
PROJECT = Path(__file__).resolve().parents[1]  # the folder of run_gmvae.py


class FlagError(UserError):
    """Flags that contradict each other or the run's checkpoint."""


class CodeError(UserError):
    """The model's code failed the self-check before training, or raised an error during it."""


def int_in(low, high=None):
    """An argparse type: an integer from `low` to `high` (no upper bound if None)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"of {low} or more"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, not {text}")
        return value
    return parse


def build_parser(model):
    """The course's flags; every default is the graded setting."""
    d = Config(model=model)
    p = argparse.ArgumentParser(description=f"Train the {model.upper()} on binarised MNIST and evaluate it.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--z", type=int_in(1), default=d.z, help="latent dimension")
    if model == "gmvae":
        p.add_argument("--k", type=int_in(1), default=d.k, help="mixture components of the prior")
    p.add_argument("--iter_max", type=int_in(1), default=d.iter_max, help="training iterations")
    p.add_argument("--iter_save", type=int_in(1), default=d.iter_save, help="checkpoint every this many iterations")
    p.add_argument("--run", type=int_in(0), default=d.run, help="run number, part of the run's name")
    p.add_argument("--train", type=int, choices=(0, 1), default=int(d.train),
                   help="1: train; 0: load the checkpoint at --iter_max and evaluate it")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=d.seed, help="training seed")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="train even if the self-check's checks of the model's functions fail")
    p.add_argument("--iwae", action="store_true", help="also report the IWAE-1/10/100/1000 bounds")
    p.add_argument("--device", choices=DEVICES, default=d.device, help="auto: cuda, then mps, then cpu")
    p.add_argument("--threads", type=int_in(1), default=argparse.SUPPRESS,
                   help="CPU threads (default: $OMP_NUM_THREADS, else every CPU this process may use); "
                        "give each of several runs at once an equal share of the cores")
    p.add_argument("--cuda-graph", dest="cuda_graph", action="store_true",
                   help="on a CUDA GPU, replay the training step as one CUDA graph")
    p.add_argument("--compile", choices=COMPILE_MODES, default=d.compile,
                   help="torch.compile the training step: auto where it works and repays its time; on: compile "
                        "or stop saying why; off: never")
    p.add_argument("--data-dir", dest="data_dir", default=d.data_dir, help="where MNIST is cached")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue this run from its newest checkpoint")
    start.add_argument("--overwrite", action="store_true",
                       help="start this run afresh: its checkpoints are deleted, its files in logs/ replaced")
    return p


def run(config, log=say):
    """Train (or load) a model as `config` says, evaluate it, and write its files.

    Returns:
        results: dict: every figure, as written to logs/<run>/results.json
    """
    if config.resume and config.overwrite:
        raise FlagError("--resume and --overwrite contradict each other: give one of them.")
    if not 0 <= config.seed <= MAX_SEED:  # the flag checks this too; run_gmvae.main(seed=...) does not
        raise FlagError(f"the seed must be an integer from 0 to {MAX_SEED}, not {config.seed}.")
    device = select_device(config.device)
    torch.set_num_threads(cpu_threads(config.threads))
    if Path.cwd().resolve() != PROJECT and not Path(config.log_root).is_absolute():
        log(f"Running from {Path.cwd()}, not from the project's folder {PROJECT}: logs/ and checkpoints/ are "
            "written here, and python -m codebase.check works only from the project's folder.")
    try:
        check_code(config, device)
        model, test_x, trained = train_or_load(config, device, log)
    except (UserError, StepFailed) as e:
        raise stopped(config, e) from None
    results = evaluate_and_print(model, test_x, config, device, trained, log)
    write_files(model, results, config, device, log)
    return results


def check_code(config, device):
    """Stop in seconds, before any file is touched, if the model's functions are stubs or (before training)
    fail the self-check's checks of the bound and of what it builds on."""
    preflight(make_model(config).to(device), device, config.iwae)
    lines = failures(f"{MODEL_LABELS[config.model]}.negative_elbo_bound") if config.train and config.check else []
    if lines:
        raise CodeError("the self-check finds a mistake in the functions this run needs, so it does not train:\n"
                        + "\n".join(lines) + "\nFix it (python -m codebase.check runs every check), or train "
                        f"anyway: {config.command('--no-check')}")


def train_or_load(config, device, log):
    """The model trained (or with --train 0, loaded), the test images, and results.json's facts of training."""
    torch.manual_seed(config.seed)  # the initial weights
    model = make_model(config).to(device)
    if not config.train:
        path = checkpoint.path_for(config.checkpoint_dir, config.iter_max)
        state = checkpoint.load_model(model, path, config.architecture, device)
        return model, load_mnist(config.data_dir, log)[2], {
            "iterations": state["iteration"], "train_seconds": round(state["train_seconds"], 2), "compile": None}
    for folder in (config.log_dir, config.checkpoint_dir):  # else a read-only one fails at the first save
        check_writable(folder)
    checkpoint.prepare_folder(config.checkpoint_dir, config.resume, config.overwrite)
    for name in ("results.json", STOPPED, TRAINING_CURVE, *SAMPLES.values()):  # an earlier attempt's
        (config.log_dir / name).unlink(missing_ok=True)
    optimizer = make_optimizer(model, config, device)
    generator = training_generator(config, device)
    start, seconds = resume_point(config, model, optimizer, generator, device, log)
    train_x, _, test_x, _ = load_mnist(config.data_dir, log)
    report = {"compile": None}  # train() says there how the step ran (--compile)
    if start >= config.iter_max:
        log(f"Nothing to train: the newest checkpoint is at iteration {start} >= --iter_max.")
    else:
        data = (train_x.float() / 255).to(device)
        seconds = train(model, optimizer, data, config, device, generator, start, seconds, log, report)
    return model, test_x, {"iterations": max(start, config.iter_max), "train_seconds": round(seconds, 2),
                           "compile": report["compile"]}


def resume_point(config, model, optimizer, generator, device, log):
    """(iteration, train_seconds) to go on from: with --resume, the newest checkpoint's, loaded into model,
    optimizer and generator; else (0, 0.0)."""
    found = checkpoint.existing(config.checkpoint_dir)
    if config.resume and not found:
        log(f"--resume: no checkpoint in {config.checkpoint_dir}; starting from iteration 0.")
    if not config.resume or not found:
        return 0, 0.0
    path = found[max(found)]
    state = checkpoint.load_model(model, path, config.architecture, device)
    changed = checkpoint.changed_settings(state["config"], config.as_dict())
    if changed:
        raise FlagError(f"--resume would change {', '.join(changed)} against {path}; a resumed run keeps its "
                        "settings (only --iter_max, --iter_save, --device and --threads may change). Use the "
                        "same flags, or --overwrite, or another --run.")
    checkpoint.load_optimizer(optimizer, state["optimizer"])
    made_on = state.get("device_type")
    if not checkpoint.restore_stream(generator, state["rng"], made_on, device, config.seed, state["iteration"]):
        log(f"{path} was made on {made_on or 'another device'}, this run is on {device.type}: the random "
            f"stream restarts from (seed {config.seed}, iteration {state['iteration']}), so the result "
            "is not bit for bit that of an uninterrupted run.")
    log(f"Resuming from {path} (iteration {state['iteration']}).")
    return state["iteration"], state["train_seconds"]


def stopped(config, error):
    """`error` as the line to show; an error of the model's code is also recorded in logs/<run>/stopped.json
    for python -m codebase.check --results (where that folder exists: a stub's first try writes nothing)."""
    iteration = getattr(error, "iteration", 0)
    if isinstance(error, StepFailed):
        located = where(error_record(error.__cause__))
        kept = (f"the state before it is saved in {error.saved}: once the code is fixed, "
                f"{config.command('--resume')} continues from there, or --overwrite starts afresh"
                if error.saved else f"then run {config.command('--overwrite')}")
        error = CodeError(f"training stopped at iteration {error.iteration}: your code raised "
                          f"{first_line(error.__cause__)}{', ' + located if located else ''}. Run python -m "
                          f"codebase.check to find the mistake; {kept}.")
    kind = {NonFiniteLoss: "nan", ImpossibleFigures: "impossible", CodeError: "code",
            UnfinishedCode: "unfinished"}.get(type(error))
    if kind and config.train and config.log_dir.is_dir():
        write_json(config.log_dir / STOPPED, {"kind": kind, "message": str(error), "iteration": iteration,
                                              "config": config.as_dict()})
    return error


def evaluate_and_print(model, test_x, config, device, trained, log):
    """results.json's dict, its figures printed before any file is written (a folder that cannot be
    written must not cost them)."""
    began = time.perf_counter()
    results = evaluate(model, test_x, device, iwae=config.iwae)
    results.update(run=config.run_name, **trained, eval_seconds=round(time.perf_counter() - began, 2),
                   seed=config.seed, device=str(device), device_name=describe(device),
                   threads=torch.get_num_threads(), torch=torch.__version__, config=config.as_dict())
    log(f"NELBO: {results['nelbo']:.4f}. KL: {results['kl']:.4f}. Rec: {results['rec']:.4f}")
    log(f"Full test split (10,000 images): NELBO: {results['test_nelbo']:.4f}. "
        f"KL: {results['test_kl']:.4f}. Rec: {results['test_rec']:.4f}")
    for k in IWAE_KS if config.iwae else ():
        log(f"Negative IWAE-{k}: {results['iwae'][k]:.4f}")
    log(f"Trained {results['iterations']} iterations in {results['train_seconds']:.1f} s on {device}; "
        f"evaluated in {results['eval_seconds']:.1f} s.")
    return results


def write_files(model, results, config, device, log):
    """The sample grids, the training curve and results.json, in logs/<run>/."""
    # Problem 3.3 asks for draws from p(x): binary images. Their Bernoulli means (the same z) show what
    # the model has learned without the pixel noise.
    for name, sample in ((SAMPLES["binary"], sample_binary), (SAMPLES["means"], sample_means)):
        write_png_grid(config.log_dir / name, sample(model, GRID_ROWS * GRID_COLS, device), GRID_ROWS, GRID_COLS)
    metrics = config.log_dir / "metrics.csv"
    ranges = {label: (term, accepted_range(config.model, term)) for term, label in TERM_LABELS.items()}
    write_training_curve(config.log_dir / TRAINING_CURVE, read_metrics(metrics)[0] if metrics.is_file() else [],
                         results, ranges)
    write_json(config.log_dir / "results.json", results)
    newest = max(checkpoint.existing(config.checkpoint_dir).items(), default=(None, "none"))[1]
    log(f"Files in {config.log_dir}/: results.json, metrics.csv, {TRAINING_CURVE}, {SAMPLES['binary']} "
        f"(draws x ~ p(x|z), z ~ p(z)), {SAMPLES['means']} (their means). Newest checkpoint: {newest}")


def exit_code(main, **flags):
    """main(**flags) as a shell wants it: 0 when done, else one line on stderr and a UserError's exit_status
    (1, or 130, 143, 129 for Ctrl-C, SIGTERM, SIGHUP)."""
    try:
        main(**flags)
    except UserError as e:
        print(f"{e.prefix}{e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("Interrupted (Ctrl-C) outside training; the checkpoints written are kept.", file=sys.stderr)
        return 130
    except OSError as e:  # any other failure of the file system
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 1
    return 0
