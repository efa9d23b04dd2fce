"""The data that the write-up is made from, collected from the runs: `python -m writeup.make_results --collect`.

It reads the runs `python run_{gmvae,vae}.py --run N --seed N --iwae`, N = 0 .. --seeds - 1, and writes into
writeup/runs/ (committed, under 0.5 MB): per run its results.json (less the unused config and eval_seconds)
and its metrics.csv; settings.json (the runs and how they were evaluated); and grids/, the gray levels of the
seed-0 figures: the runs' own sample grids, and the reconstructions and decoded prior components drawn from
the seed-0 checkpoints. It needs MNIST and the runs; --run-missing first trains those that are missing.
"""
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from codebase.check.figures import MODEL_LABELS, RUN_SCRIPTS
from codebase.config import Config
from codebase.runtime.errors import UserError
from codebase.runtime.files import write_atomic
from codebase.runtime.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
MODELS = tuple(MODEL_LABELS)
PARALLEL = 2  # runs trained at once by --run-missing, one CPU thread each
PER_DIGIT = 2  # reconstructed test images per digit: one row of 20
PRIOR_ROWS, PRIOR_COLS = 5, 20  # decoded prior components shown, of the k = 500
# The figures' gray levels, each in grids/<key>.npy.gz.
GRIDS = (*(f"{m}_samples_{kind}" for m in MODELS for kind in ("binary", "means")), "reconstructions", "prior")
# codebase.evaluate.evaluate averages -IWAE-S over max(IWAE_BASE // S, 1) evaluations (a test checks it).
IWAE_BASE = 100
DROPPED = ("config", "eval_seconds")  # results.json fields that nothing here reads


class ResultsError(UserError):
    """The runs, the data or the write-up are not as needed; the message says what to do."""


def run_config(model, seed, args):
    """The Config of run `seed` (run number = seed), as the runs were trained."""
    return Config(model=model, run=seed, seed=seed, iter_max=args.iter_max, iwae=True,
                  data_dir=args.data_dir, log_root=args.logs, checkpoint_root=args.checkpoints)


def problem_with(config):
    """Why run `config` cannot be used as it is, or None if it can.

    A run counts only if it finished at exactly config.iter_max with config.seed and was evaluated with
    --iwae: runs of other lengths are never mixed in, and a run still training is not read half-written.
    """
    from codebase.config import SAMPLES
    from codebase.evaluate import IWAE_KS
    from codebase.runtime import checkpoint

    try:
        results = json.loads((config.log_dir / "results.json").read_text())
    except FileNotFoundError:
        return "no results.json"
    except (ValueError, UnicodeDecodeError):
        return "results.json is not valid JSON"
    if results.get("iterations") != config.iter_max:
        return f"trained {results.get('iterations')} iterations, not --iter_max {config.iter_max}"
    if results.get("seed") != config.seed:
        return f"trained with seed {results.get('seed')}, not {config.seed}"
    if sorted(results.get("iwae", {})) != sorted(str(k) for k in IWAE_KS):
        return "evaluated without --iwae"
    if not (config.log_dir / "metrics.csv").is_file():
        return "no metrics.csv"
    rows, _ = read_metrics(config.log_dir / "metrics.csv")
    if (logged := rows[-1]["iteration"] if rows else None) != config.iter_max:
        return f"metrics.csv ends at iteration {logged}, not {config.iter_max} (still training?)"
    needed = [config.log_dir / name for name in SAMPLES.values()]  # seed 0 also gives the figures
    needed += [checkpoint.path_for(config.checkpoint_dir, config.iter_max)]
    return next((f"no {path}" for path in needed if config.seed == 0 and not path.is_file()), None)


def find_problems(args):
    """[(config, problem)] of the runs that are missing or unusable."""
    configs = [run_config(model, seed, args) for model in MODELS for seed in range(args.seeds)]
    return [(c, p) for c in configs if (p := problem_with(c))]


# One run in a process of its own: its run script's main with the Config's fields (the scripts have no
# --logs or --checkpoints flag). It starts in the root, where `python -c` finds codebase and the scripts.
CHILD = ("import json, sys; from codebase.run import exit_code; flags = json.loads(sys.argv[1]); "
         "script = __import__(flags.pop('script')); sys.exit(exit_code(script.main, **flags))")


def run_missing(problems, log=print):
    """Train each unusable run afresh (--overwrite), PARALLEL at a time with --threads 1 each (runs
    at once must share the cores: see codebase.runtime.device.cpu_threads).

    Returns:
        status: int: 0 if every run succeeded, else the first failing run's exit status
    """
    def one(item):
        config, problem = item
        log(f"{config.run_name}: {problem}; training it afresh.")
        # Absolute: the child starts in the root, and relative paths are relative to this process's folder.
        folders = {name: os.path.abspath(getattr(config, name)) for name in ("data_dir", "log_root", "checkpoint_root")}
        flags = dict(script=Path(RUN_SCRIPTS[config.model]).stem, run=config.run, seed=config.seed,
                     iter_max=config.iter_max, iwae=True, threads=1, overwrite=True, **folders)
        command = [sys.executable, "-c", CHILD, json.dumps(flags)]
        return subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode

    with ThreadPoolExecutor(PARALLEL) as pool:
        return next((status for status in pool.map(one, problems) if status), 0)


def png_gray_levels(path):
    """The gray levels of a grid PNG that write_png_grid wrote: numpy uint8 array: (height, width)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        rgba = np.asarray(image.convert("RGBA"))
    if not ((rgba[..., 0] == rgba[..., 1]) & (rgba[..., 0] == rgba[..., 2]) & (rgba[..., 3] == 255)).all():
        raise ResultsError(f"{path} is not an opaque gray grid, as the run scripts write; train the run again")
    return rgba[..., 0]


def gray_levels(images, rows, cols):
    """The gray levels of `images` as in the runs' own grids: written by write_png_grid, read back.

    Args:
        images: tensor: (rows * cols, 784): pixel values in [0, 1]

    Returns:
        grid: numpy uint8 array: (rows * 28, cols * 28)
    """
    from codebase.runtime.files import write_png_grid

    with tempfile.TemporaryDirectory() as folder:
        write_png_grid(Path(folder) / "grid.png", images, rows, cols)
        return png_gray_levels(Path(folder) / "grid.png")


def grids_from_runs(args):
    """The seed-0 figures' gray levels, from the runs' own grids and from their checkpoints.

    Returns:
        grids: dict: {GRIDS key: numpy uint8 array: (height, width)}
        test_images: int: images in the test split
    """
    import torch

    from codebase.config import SAMPLES
    from codebase.data import load_mnist
    from codebase.evaluate import eval_subset
    from codebase.models import make_model
    from codebase.runtime import checkpoint

    configs = {m: run_config(m, 0, args) for m in MODELS}
    device = torch.device("cpu")  # figures are small, and a CPU gives the same pixels every time
    models = {}
    for m, config in configs.items():
        models[m] = make_model(config).to(device)
        checkpoint.load_model(models[m], checkpoint.path_for(config.checkpoint_dir, config.iter_max),
                              config.architecture, device)
        models[m].eval()
    grids = {f"{m}_samples_{kind}": png_gray_levels(configs[m].log_dir / SAMPLES[kind])  # the run's own grids
             for m in MODELS for kind in ("binary", "means")}
    _, _, test_x, _ = load_mnist(args.data_dir, log=lambda message: print(message, file=sys.stderr))
    with torch.inference_mode():
        # The subset binarised as evaluation does, so these are the very images it scores.
        x = eval_subset(test_x, device)[[10 * digit + j for digit in range(10) for j in range(PER_DIGIT)]]
        rows = [x] + [models[m].compute_sigmoid_given(models[m].enc(x)[0]) for m in MODELS]
        grids["reconstructions"] = gray_levels(torch.cat(rows), len(rows), 10 * PER_DIGIT)
        means = models["gmvae"].prior()[0][0, :PRIOR_ROWS * PRIOR_COLS]
        grids["prior"] = gray_levels(models["gmvae"].compute_sigmoid_given(means), PRIOR_ROWS, PRIOR_COLS)
    return grids, len(test_x)


def pack_grid(grid):
    """A uint8 array as gzip-compressed .npy bytes, the same bytes for the same array (mtime=0: gzip's
    header would otherwise hold the time, and a collect that changes no figure would change the files)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, grid, allow_pickle=False)
    return gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0)


def collect(args, data):
    """Write `data` (a folder) from the runs; returns the exit status (not 0: a training for --run-missing failed).

    Raises ResultsError (naming --run-missing) if a run is missing or unusable, and codebase's UserErrors
    (DataError, CheckpointError) if MNIST or a checkpoint cannot be read; each message says what to do.
    """
    from codebase.data import EVAL_SUBSET
    from codebase.evaluate import IWAE_KS, SUBSET_REPEATS

    problems = find_problems(args)
    if problems and args.run_missing:
        if status := run_missing(problems):
            return status
        problems = find_problems(args)
    if problems:
        (config, problem), more = problems[0], f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ResultsError(f"{len(problems)} of {2 * args.seeds} runs are missing or unusable: {config.log_dir}: "
                           f"{problem}{more}. Add --run-missing to train them, or wait for trainings in "
                           "progress to finish.")
    names = {m: [run_config(m, s, args).run_name for s in range(args.seeds)] for m in MODELS}
    grids, test_images = grids_from_runs(args)
    for m in MODELS:
        for seed, name in enumerate(names[m]):
            log_dir = run_config(m, seed, args).log_dir
            results = json.loads((log_dir / "results.json").read_text())
            kept = {key: value for key, value in results.items() if key not in DROPPED}
            write_atomic(data / name / "results.json", (json.dumps(kept, indent=2) + "\n").encode())
            write_atomic(data / name / "metrics.csv", (log_dir / "metrics.csv").read_bytes())
    for key, grid in grids.items():
        write_atomic(data / "grids" / f"{key}.npy.gz", pack_grid(grid))
    settings = {"iter_max": args.iter_max, "runs": names, "subset_images": len(EVAL_SUBSET),
                "subset_repeats": SUBSET_REPEATS, "test_images": test_images,
                "iwae_repeats": {str(k): max(IWAE_BASE // k, 1) for k in IWAE_KS}}
    write_atomic(data / "settings.json", (json.dumps(settings, indent=2) + "\n").encode())
    # Runs of an earlier, larger collect would linger in the commit, unread: remove their two files.
    for folder in data.glob("model=*"):
        if folder.is_dir() and folder.name not in {n for m in MODELS for n in names[m]}:
            for name in ("results.json", "metrics.csv"):
                (folder / name).unlink(missing_ok=True)
            if not any(folder.iterdir()):
                folder.rmdir()
    return 0
