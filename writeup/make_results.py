"""Regenerate the write-up's tables and images, and the project README's summary, in two steps.

    python writeup/make_results.py                  # render from the committed data (no runs needed)
    python writeup/make_results.py --collect        # refresh the data from the runs in logs/ and checkpoints/
    python writeup/make_results.py --run-missing    # the same, first training the runs that are missing

collect (only with --collect or --run-missing) reads the runs `python run_{gmvae,vae}.py --run N --seed N
--iwae`, N = 0 .. --seeds - 1, and writes what the write-up is made from into DATA (writeup/runs/,
committed, under 0.5 MB): per run its results.json (less the unused config and eval_seconds) and its
metrics.csv; settings.json (the runs and how they were evaluated); and grids/, the gray levels (uint8,
as plotted) of the seed-0 figures: the runs' own sample grids, and the reconstructions and decoded prior
components drawn from the seed-0 checkpoints. It needs torch, MNIST and the runs.

render (always) reads DATA alone, without torch, runs or checkpoints: it writes the images (IMAGES) next
to the write-up and fills the lines between `<!-- generated:NAME:begin -->` and `<!-- generated:NAME:end -->`
for NAME in REGIONS, in writeup/README.md, writeup/details.md and the project README. Nothing else
changes, and the same data give the same bytes. The course's figures are quoted from codebase/check/figures.py.
"""
import argparse
import gzip
import io
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # `python writeup/make_results.py` puts writeup/, not the root, on the path

# Only modules that need no torch: render must work from the committed data alone. collect imports
# the rest (torch, the models, MNIST) where it needs them.
from codebase.config import Config  # noqa: E402
from codebase.runtime.files import SaveError, write_atomic  # noqa: E402
from codebase.runtime.metrics import read_metrics  # noqa: E402
from codebase.check.figures import (ACCEPTED, COURSE_SOLUTION, HANDOUT_GMVAE_NELBO, MODEL_LABELS,  # noqa: E402
                                RUN_SCRIPTS, TERM_LABELS)

MODELS = tuple(MODEL_LABELS)
DATA = HERE / "runs"  # the committed data that render reads
# Each region and the file it is in: None is the project README (--project-readme).
REGIONS = {"results": "README.md", "beyond": "README.md", "details": "details.md", "readme-results": None}
NOTE = "<!-- Written by writeup/make_results.py from the runs; edit the script, not this text. -->"
PARALLEL = 2  # runs trained at once by --run-missing, one CPU thread each
SAMPLE_ROWS, SAMPLE_COLS = 10, 20  # the runs' sample grids (codebase.config.GRID_ROWS, GRID_COLS)
PER_DIGIT = 2  # reconstructed test images per digit: one row of 20
PRIOR_ROWS, PRIOR_COLS = 5, 20  # decoded prior components shown, of the k = 500
IMAGES = {**{f"{m}_samples_{kind}": f"{m}_samples_{kind}.png" for m in MODELS for kind in ("binary", "means")},
          "reconstructions": "reconstructions.png", "prior": "prior_components.png", "curves": "training_curves.png"}
GRIDS = tuple(key for key in IMAGES if key != "curves")  # the images drawn from DATA/grids/
# codebase.evaluate.evaluate averages -IWAE-S over this many evaluations (tests/test_writeup.py checks it).
IWAE_BASE = 100
KL_MARKS = (2000, 5000)  # iterations where the KL's course is summarised, besides the last
KL_HALF_WINDOW = 500  # ... each as the mean of the logged points within this many iterations of the mark
DROPPED = ("config", "eval_seconds")  # results.json fields that nothing here reads


class ResultsError(RuntimeError):
    """The runs, the data or the write-up are not as needed; the message says what to do."""


# ----------------------------------------------------------------------------------------------- collect

def run_config(model, seed, args):
    """The Config of run `seed` (run number = seed), as the runs were trained."""
    return Config(model=model, run=seed, seed=seed, iter_max=args.iter_max, iwae=True,
                  data_dir=args.data_dir, log_root=args.logs, checkpoint_root=args.checkpoints)


def problem_with(config):
    """Why run `config` cannot be used as it is, or None if it can.

    A run counts only if it finished at exactly config.iter_max with config.seed and was evaluated with
    --iwae: runs of other lengths are never mixed in, and a run still training is not read half-written.
    """
    from codebase.runtime import checkpoint
    from codebase.evaluate import IWAE_KS
    from codebase.config import SAMPLES

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


# One run in a process of its own: its run script's main with the Config's fields (the script has no
# --logs or --checkpoints flag). Argument 1 is the repository, argument 2 the flags as JSON.
CHILD = ("import json, sys; sys.path.insert(0, sys.argv[1]); from codebase.runtime.cli import exit_code; "
         "flags = json.loads(sys.argv[2]); script = __import__(flags.pop('script')); "
         "sys.exit(exit_code(script.main, **flags))")


def run_missing(problems, log=print):
    """Train each unusable run afresh (--overwrite), PARALLEL at a time with --threads 1 each (runs
    at once must share the cores: see codebase.runtime.cli.cpu_threads).

    Returns:
        status: int: 0 if every run succeeded, else the first failing run's exit status
    """
    def one(item):
        config, problem = item
        log(f"{config.run_name}: {problem}; training it afresh.")
        flags = dict(script=Path(RUN_SCRIPTS[config.model]).stem, run=config.run, seed=config.seed,
                     iter_max=config.iter_max, iwae=True, threads=1, overwrite=True, data_dir=config.data_dir,
                     log_root=config.log_root, checkpoint_root=config.checkpoint_root)
        command = [sys.executable, "-c", CHILD, str(ROOT), json.dumps(flags)]
        return subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode

    with ThreadPoolExecutor(PARALLEL) as pool:
        return next((status for status in pool.map(one, problems) if status), 0)


def gray_levels(images, rows, cols):
    """The gray levels that codebase.files.write_png_grid plots for `images`.

    Args:
        images: tensor: (rows * cols, 784): pixel values in [0, 1]

    Returns:
        grid: numpy uint8 array: (rows * 28, cols * 28)
    """
    from matplotlib import cm, colors

    from codebase.runtime.files import tile

    grid = tile(images.detach().cpu().float(), rows, cols).numpy()
    # The colour lookup of matplotlib.image.imsave(..., cmap="gray", vmin=0, vmax=1): gray, so one channel.
    return cm.ScalarMappable(colors.Normalize(0.0, 1.0), "gray").to_rgba(grid, bytes=True)[..., 0]


def png_gray_levels(path):
    """The gray levels of a grid PNG that write_png_grid wrote: numpy uint8 array: (height, width)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        rgba = np.asarray(image.convert("RGBA"))
    if not ((rgba[..., 0] == rgba[..., 1]) & (rgba[..., 0] == rgba[..., 2]) & (rgba[..., 3] == 255)).all():
        raise ResultsError(f"{path} is not an opaque gray grid, as the run scripts write; train the run again")
    return rgba[..., 0]


def grids_from_runs(args):
    """The seed-0 figures' gray levels, from the runs' own grids and from their checkpoints.

    Returns:
        grids: dict: {GRIDS key: numpy uint8 array: (height, width)}
        test_images: int: images in the test split
    """
    import torch

    from codebase.runtime import checkpoint
    from codebase.data import load_mnist
    from codebase.evaluate import eval_subset
    from codebase.models import make_model
    from codebase.config import SAMPLES

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
    """A uint8 array as gzip-compressed .npy bytes, the same bytes for the same array.

    gzip's header would otherwise hold the time of writing, and a collect that changes no figure would
    still change the committed files.
    """
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, grid, allow_pickle=False)
    return gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0)


def collect(args, data):
    """Write DATA from the runs: results.json and metrics.csv of each, settings.json and grids/.

    Raises ResultsError (naming --run-missing) if a run is missing or unusable.
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


# ------------------------------------------------------------------------------------------------ render

def load_data(data):
    """The committed data: settings, {model: [results, seed 0 first]}, {model: [metrics rows]}, grids."""
    settings_path = data / "settings.json"
    if not settings_path.is_file():
        raise ResultsError(f"no {settings_path}: make the data from runs with --collect (runs in logs/ and "
                           "checkpoints/), or --run-missing to train them first")
    try:
        settings = json.loads(settings_path.read_text())
        runs = {m: [flatten(json.loads((data / name / "results.json").read_text()))
                    for name in settings["runs"][m]] for m in MODELS}
        metrics = {m: [read_metrics(data / name / "metrics.csv")[0] for name in settings["runs"][m]]
                   for m in MODELS}
        grids = {key: unpack_grid((data / "grids" / f"{key}.npy.gz").read_bytes()) for key in GRIDS}
    except (OSError, ValueError, KeyError) as e:
        raise ResultsError(f"the data in {data} are incomplete ({type(e).__name__}: {e}); make them again with "
                           "--collect, or --run-missing") from None
    return settings, runs, metrics, grids


def unpack_grid(blob):
    """The array that pack_grid packed: numpy uint8 array: (height, width): gray levels."""
    import numpy as np

    return np.load(io.BytesIO(gzip.decompress(blob)), allow_pickle=False)


def flatten(results):
    """One results.json with its IWAE bounds also under the keys "iwae<S>"."""
    return {**results, **{f"iwae{k}": value for k, value in results["iwae"].items()}}


def iwae_keys(settings):
    """The numbers S of importance samples evaluated, as strings, smallest first."""
    return sorted(settings["iwae_repeats"], key=int)


def header(key):
    """A table column's title: NELBO, KL, Rec, their full-split versions, or −IWAE-S."""
    if key.startswith("test_"):
        return f"{TERM_LABELS[key[5:]]}, full test split"
    return TERM_LABELS.get(key) or f"−IWAE-{key[4:]}"


def pm(values):
    """'mean ± sample standard deviation', or the mean alone for one value."""
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def span(values, digits=2, signed=False):
    """'low to high' of the values, or the one value if they agree at this precision."""
    form = f"{'+' if signed else ''}.{digits}f"
    low, high = (format(v, form).replace("-", "−") for v in (min(values), max(values)))
    return low if low == high else f"{low} to {high}"


def and_list(items):
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def table(header_row, rows, align=None):
    """A Markdown table; by default the first column is left-aligned, the others (numbers) right."""
    align = align or [":---"] + ["---:"] * (len(header_row) - 1)
    lines = ["| " + " | ".join(header_row) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def machine(runs):
    """The machine(s) the runs were trained on, as recorded in results.json."""
    seen = []
    for r in runs:
        name = f" ({r['device_name']})" if r.get("device_name") else ""
        text = f"{r['device']}{name}, {r['threads']} thread{'s' * (r['threads'] != 1)}, torch {r['torch']}"
        seen += [text] if text not in seen else []
    return "; ".join(seen)


def standard_errors(settings, run):
    """(subset, full split): the Monte-Carlo standard error of the run's two NELBO figures.

    The subset's figure is the mean of subset_repeats evaluations, whose spread is nelbo_sd. One
    evaluation averages subset_images independent single-sample terms, so one image's term has a
    spread of about nelbo_sd * sqrt(subset_images); the full split's one evaluation averages
    test_images of them. That assumes the subset's images are typical in this spread.
    """
    subset = run["nelbo_sd"] / math.sqrt(settings["subset_repeats"])
    full = run["nelbo_sd"] * math.sqrt(settings["subset_images"] / settings["test_images"])
    return subset, full


def iwae_caption(settings):
    """How many evaluations each -IWAE-S averages, in words."""
    keys = iwae_keys(settings)
    counts = [str(settings["iwae_repeats"][k]) for k in keys]
    single = [f"−IWAE-{k}" for k in keys if settings["iwae_repeats"][k] == 1]
    tail = f", so {and_list(single)} {'is a single evaluation' if len(single) == 1 else 'are single evaluations'}"
    return (f"−IWAE-S is averaged over max({IWAE_BASE} // S, 1) evaluations: {and_list(counts)} for "
            f"S = {and_list(keys)}{tail if single else ''}")


def results_region(settings, runs):
    """Problem 3.2: the default GMVAE run's three figures, and a line on the seeds and the full split."""
    g0, seeds = runs["gmvae"][0], runs["gmvae"]
    off = g0["nelbo"] - HANDOUT_GMVAE_NELBO
    _, full_se = standard_errors(settings, g0)
    spread = (f"Over seeds 0 to {len(seeds) - 1} (mean ± standard deviation over the {len(seeds)} runs): NELBO "
              f"{pm([r['nelbo'] for r in seeds])}, KL {pm([r['kl'] for r in seeds])}, Rec "
              f"{pm([r['rec'] for r in seeds])}. " if len(seeds) > 1 else "")
    return "\n".join([
        table(["`python run_gmvae.py` (seed 0)", *TERM_LABELS.values()],
              [["GMVAE, test subset", *(f"{g0[k]:.2f}" for k in TERM_LABELS)]]),
        "",
        f"Each figure is the mean of {settings['subset_repeats']} evaluations on the fixed "
        f"{settings['subset_images']}-image test subset, with a fresh $z$ each time, after "
        f"{settings['iter_max']:,} training iterations. The handout expects a NELBO around "
        f"{HANDOUT_GMVAE_NELBO:g}; this one is {abs(off):.2f} {'below' if off < 0 else 'above'} it. {spread}"
        f"On the full test split ({settings['test_images']:,} images, one evaluation, Monte-Carlo noise about "
        f"{full_se:.2f}) the same run's NELBO is {g0['test_nelbo']:.2f}.",
    ])


def kl_course(settings, metrics):
    """Sentences on the logged KL of every run: its early minimum, then how it moves between marks."""
    last = settings["iter_max"]
    marks = [mark for mark in KL_MARKS if mark < last] + [last]
    first = [rows[0] for m in MODELS for rows in metrics[m]]
    lowest = [min(rows, key=lambda row: row["kl"]) for m in MODELS for rows in metrics[m]]
    at = {row["iteration"] for row in lowest}
    where = f"iteration {at.pop():,}" if len(at) == 1 else f"iterations {span([r['iteration'] for r in lowest], 0)}"
    text = [f"In all {len(first)} runs the logged KL is lowest at {where} ({span([r['kl'] for r in lowest])} nats), "
            f"after {span([r['kl'] for r in first])} at the first logged point (steps 1 to {first[0]['iteration']})."]

    def window(rows, mark):
        # A single logged point is noisy; the mean of those near the mark is not.
        inside = [row["kl"] for row in rows if abs(row["iteration"] - mark) <= KL_HALF_WINDOW]
        return statistics.fmean(inside) if inside else None

    parts = []
    for m in MODELS:
        means = [[window(rows, mark) for mark in marks] for rows in metrics[m]]
        if any(None in w for w in means):
            continue
        steps = []
        for i in range(1, len(marks)):
            changes = [w[i] - w[i - 1] for w in means]
            trend = "falls" if max(changes) < 0 else "rises" if min(changes) > 0 else "changes"
            size = span([abs(c) for c in changes]) if trend != "changes" else span(changes, signed=True)
            steps.append(f"{trend} by {size} to iteration {marks[i]:,}")
        parts.append(f"the {MODEL_LABELS[m]}'s KL is {span([w[0] for w in means])} at iteration {marks[0]:,}, then "
                     + ", then ".join(steps))
    if parts:
        text.append(f"Averaged over the logged points within {KL_HALF_WINDOW} iterations of an iteration, with "
                    f"the range over each model's runs, {'; '.join(parts)}.")
    return " ".join(text)


def noise_verdict(differences, noise, settings):
    """Whether the subset-minus-full-split differences are more than Monte-Carlo noise, in words."""
    real = sum(abs(d) > 3 * noise for d in differences)
    if not real:
        return "None of them exceeds three times that noise."
    return (f"In {'all' if real == len(differences) else f'{real} of the'} {len(differences)} runs the difference "
            f"exceeds three times that noise, so it is {'' if real == len(differences) else 'mostly '}not "
            "evaluation noise but a "
            f"property of the {settings['subset_images']} chosen images and their one binarisation, different "
            "for each trained model.")


def beyond_region(settings, runs, metrics):
    """Beyond the handout: both models over the seeds with the IWAE bounds, and what the runs show."""
    n, keys = len(runs["gmvae"]), iwae_keys(settings)
    columns = ["nelbo", "test_nelbo", *(f"iwae{k}" for k in keys)]
    mean = {m: {c: statistics.fmean(r[c] for r in runs[m]) for c in columns} for m in MODELS}
    every = [r for m in MODELS for r in runs[m]]
    gap = {c: mean["vae"][c] - mean["gmvae"][c] for c in columns}
    sd = {m: statistics.stdev(r["nelbo"] for r in runs[m]) if n > 1 else 0.0 for m in MODELS}
    separated = max(r["nelbo"] for r in runs["gmvae"]) < min(r["nelbo"] for r in runs["vae"])
    falls = sum(all(r[f"iwae{a}"] > r[f"iwae{b}"] for a, b in zip(keys, keys[1:])) for r in every)
    drop = {m: mean[m][f"iwae{keys[0]}"] - mean[m][f"iwae{keys[-1]}"] for m in MODELS}
    above = {m: [r["nelbo"] - r["test_nelbo"] for r in runs[m]] for m in MODELS}
    differences = [d for m in MODELS for d in above[m]]
    errors = [standard_errors(settings, r) for r in every]
    noise = max(math.hypot(*pair) for pair in errors)
    return "\n".join([
        f"**Table 1.** Both models, seeds 0 to {n - 1} (`--run N --seed N --iwae` for seed N: the run number "
        "is the seed): mean ± sample standard deviation over the seeds. All figures are on the test subset, "
        f"except the full split's NELBO. The NELBO is averaged over {settings['subset_repeats']} evaluations; "
        f"{iwae_caption(settings)}. The last row is the difference of the means.",
        "",
        table(["Model", *(header(c) for c in columns)],
              [[MODEL_LABELS[m], *(pm([r[c] for r in runs[m]]) for c in columns)] for m in MODELS]
              + [["VAE − GMVAE", *(f"{gap[c]:+.2f}" for c in columns)]]),
        "",
        f"- **GMVAE against VAE.** The GMVAE's NELBO is {abs(gap['nelbo']):.2f} nats "
        f"{'lower' if gap['nelbo'] > 0 else 'higher'} than the VAE's on the subset and "
        f"{abs(gap['test_nelbo']):.2f} {'lower' if gap['test_nelbo'] > 0 else 'higher'} on the full split, against "
        f"a seed-to-seed standard deviation of {sd['gmvae']:.2f} (GMVAE) and {sd['vae']:.2f} (VAE)"
        + (", and every GMVAE run is below every VAE run." if separated else "; the runs of the two overlap."),
        f"- **The IWAE bounds.** −IWAE-S falls at every step of S in "
        f"{'all' if falls == len(every) else f'{falls} of the'} {len(every)} runs. From "
        f"S = {keys[0]} to S = {keys[-1]} it falls by {drop['gmvae']:.2f} nats (GMVAE) and {drop['vae']:.2f} (VAE) "
        "on average: estimates of a lower bound on the gap between the NELBO and $-\\log p_\\theta(x)$. The "
        f"difference VAE − GMVAE goes from {gap[f'iwae{keys[0]}']:+.2f} nats at S = {keys[0]} to "
        f"{gap[f'iwae{keys[-1]}']:+.2f} at S = {keys[-1]}"
        + (", which suggests that part of the VAE's worse NELBO is a looser bound rather than a worse model."
           if 0 < gap[f"iwae{keys[-1]}"] < gap[f"iwae{keys[0]}"] else "."),
        f"- **The subset against the full split.** The subset's NELBO minus the full split's is "
        f"{span([statistics.fmean(above['gmvae'])], signed=True)} nats (GMVAE) and "
        f"{span([statistics.fmean(above['vae'])], signed=True)} (VAE) on average over the seeds, and "
        f"{span([d for d in differences], signed=True)} in single runs. The Monte-Carlo noise of one such "
        f"difference is at most {noise:.2f} (standard errors: subset {span([e[0] for e in errors], 3)}, full split "
        f"{span([e[1] for e in errors], 3)}). " + noise_verdict(differences, noise, settings),
        "",
        "![Training curves](training_curves.png)",
        "",
        f"**Figure 3. Training curves** of the seed-0 runs: each point is the mean, over "
        f"{metrics['gmvae'][0][0]['iteration']} training steps, of the single-sample NELBO, KL and Rec on the "
        f"training batch, in nats per image (`metrics.csv`). The iteration axis is logarithmic. "
        + kl_course(settings, metrics),
    ])


def course_sums(settings):
    """Where the course's own rows disagree with themselves, in words: [one sentence per mismatch]."""
    found = []
    for m, c in COURSE_SOLUTION.items():
        # IWAE-1 is the ELBO, and the course averages both over as many evaluations as we do: their
        # difference should be within a few standard errors of it (each nelbo_sd / sqrt(repeats)).
        noise = 3 * math.sqrt(2) * c["nelbo_sd"] / math.sqrt(settings["subset_repeats"])
        if abs(c["kl"] + c["rec"] - c["nelbo"]) > 0.01:
            found.append(f"the {MODEL_LABELS[m]}'s KL + Rec is {c['kl']:g} + {c['rec']:g} = {c['kl'] + c['rec']:.2f}, "
                         f"not its NELBO {c['nelbo']:g}")
        if abs(c["iwae"][1] - c["nelbo"]) > noise:
            found.append(f"the {MODEL_LABELS[m]}'s −IWAE-1 is {c['iwae'][1]:g}, although IWAE-1 is the ELBO and its "
                         f"NELBO is {c['nelbo']:g}")
    return found


def details_region(settings, runs, metrics):
    """details.md: every run, the full split, the course's figures and the figures beyond the write-up."""
    keys = iwae_keys(settings)
    first = {m: runs[m][0] for m in MODELS}
    iwae_cols = [f"iwae{k}" for k in keys]
    seeds = ("nelbo", "kl", "rec", "test_nelbo", "test_kl", "test_rec", *iwae_cols)
    mean = {m: {c: statistics.fmean(r[c] for r in runs[m]) for c in seeds} for m in MODELS}
    every = [r for m in MODELS for r in runs[m]]
    seconds = [r["train_seconds"] for r in every]
    sums = course_sums(settings)
    inside = {m: {t: ACCEPTED[m][t][0] - ACCEPTED[m][t][1] <= first[m][t] <= ACCEPTED[m][t][0] + ACCEPTED[m][t][1]
                  for t in TERM_LABELS} for m in MODELS}
    ranges = "; ".join(f"{MODEL_LABELS[m]} " + ", ".join(f"{TERM_LABELS[t]} {c:g} ± {h:g}" for t, (c, h) in a.items())
                       for m, a in ACCEPTED.items())
    ours = [[f"{MODEL_LABELS[m]}, seed 0", f"{first[m]['nelbo']:.2f} ± {first[m]['nelbo_sd']:.2f}",
             *(f"{first[m][k]:.2f}" for k in ("kl", "rec", *iwae_cols))] for m in MODELS]
    course = [[f"{MODEL_LABELS[m]}, the course's solution", f"{c['nelbo']:g} ± {c['nelbo_sd']:g}", f"{c['kl']:g}",
               f"{c['rec']:g}", *(f"{c['iwae'][int(k)]:g}" for k in keys)] for m, c in COURSE_SOLUTION.items()]
    return "\n".join([
        f"**Table A. Each run** (seeds 0 to {len(runs['gmvae']) - 1}). On the {settings['subset_images']}-image "
        f"subset: the NELBO, KL and Rec are means of {settings['subset_repeats']} evaluations, and s.e. is the "
        f"NELBO's Monte-Carlo standard error (the standard deviation of those evaluations over "
        f"√{settings['subset_repeats']}); {iwae_caption(settings)}. On the full split "
        f"({settings['test_images']:,} images, one evaluation) the NELBO's standard error, estimated from the "
        f"subset's per-image spread as the standard deviation of the subset's evaluations times "
        f"√({settings['subset_images']} / {settings['test_images']:,}), is "
        f"{span([standard_errors(settings, r)[1] for r in every], 3)}. Training is the wall-clock time recorded in "
        "results.json "
        f"({min(seconds):.0f} to {max(seconds):.0f} s; {machine(every)}); it depends on what else ran on the "
        "machine meanwhile, so these are no speed figures.",
        "",
        table(["Model", "Seed", "NELBO", "s.e.", "KL", "Rec", header("test_nelbo"), *(header(c) for c in iwae_cols),
               "Training (s)"],
              [[MODEL_LABELS[m], str(r["seed"]), f"{r['nelbo']:.2f}", f"{standard_errors(settings, r)[0]:.3f}",
                *(f"{r[c]:.2f}" for c in ("kl", "rec", "test_nelbo", *iwae_cols)), f"{r['train_seconds']:.1f}"]
               for m in MODELS for r in runs[m]]),
        "",
        "**Table B. Mean ± sample standard deviation over the seeds**, and the difference of the means.",
        "",
        table(["Model", *(header(c) for c in seeds)],
              [[MODEL_LABELS[m], *(pm([r[c] for r in runs[m]]) for c in seeds)] for m in MODELS]
              + [["VAE − GMVAE", *(f"{mean['vae'][c] - mean['gmvae'][c]:+.2f}" for c in seeds)]]),
        "",
        "**Table C. The seed-0 runs beside the course's published solution** on the same subset. The course's "
        "rows are quoted from `codebase/check/figures.py`, with the course's own ± spread; the seed-0 runs' ± is the "
        f"standard deviation of the {settings['subset_repeats']} evaluations"
        + (f". The course's rows are quoted as given, although {'; '.join(sums)}." if sums else "."),
        "",
        table(["", *(header(k) for k in ("nelbo", "kl", "rec", *iwae_cols))],
              [row for pair in zip(ours, course) for row in pair]),
        "",
        f"The course's autograder accepts {ranges} (`codebase/check/figures.py`). The seed-0 runs are "
        + ("inside every one of these ranges." if all(all(v.values()) for v in inside.values())
           else "outside " + ", ".join(f"{MODEL_LABELS[m]} {TERM_LABELS[t]}" for m in MODELS for t, ok in
                                       inside[m].items() if not ok) + "."),
        "",
        "| GMVAE, binary draws | VAE, binary draws |",
        "|:---:|:---:|",
        "| ![GMVAE, binary draws](gmvae_samples_binary.png) | ![VAE, binary draws](vae_samples_binary.png) |",
        "| ![GMVAE, Bernoulli means](gmvae_samples_means.png) | ![VAE, Bernoulli means](vae_samples_means.png) |",
        "",
        f"**Figure A. Samples of both seed-0 models**, {SAMPLE_ROWS} × {SAMPLE_COLS}: binary draws (top) and the "
        "Bernoulli means of the same draws of $z$ (bottom), as the run scripts write them.",
        "",
        "![Reconstructions](reconstructions.png)",
        "",
        f"**Figure B. Reconstructions**: the first {PER_DIGIT} images of each digit in the test subset, binarised "
        "as in evaluation (top row), and the Bernoulli means of $p_\\theta(x \\mid z)$ at $z = \\mu_\\lambda(x)$ "
        "for the seed-0 GMVAE (middle row) and VAE (bottom row).",
        "",
        "![Prior components](prior_components.png)",
        "",
        f"**Figure C. The GMVAE's prior components**: the Bernoulli means at the component means $\\mu_i$ of "
        f"the first {PRIOR_ROWS * PRIOR_COLS} of the seed-0 GMVAE's k components, row by row.",
    ])


def summary_region(runs):
    """The project README's region: each model's default run (seed 0)."""
    return table(["Command", "NELBO", "KL", "Rec", "NELBO, full test split", "Machine"], [
        [f"`python {RUN_SCRIPTS[m]}`", *(f"{runs[m][0][k]:.2f}" for k in ("nelbo", "kl", "rec", "test_nelbo")),
         machine([runs[m][0]])] for m in MODELS], align=[":---"] + ["---:"] * 4 + [":---"])


def curves_png(metrics):
    """One PNG: NELBO, KL and Rec against the iteration, both models in each panel; metrics: {model: rows}."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and the same pixels everywhere
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100)
    for ax, key, title in zip(axes, ("nelbo", "kl", "rec"), ("NELBO", "KL", "Rec")):
        for m in MODELS:
            ax.plot([r["iteration"] for r in metrics[m]], [r[key] for r in metrics[m]], label=MODEL_LABELS[m],
                    linewidth=1)
        ax.set(xscale="log", title=title, xlabel="training iteration (log scale)", ylabel=f"{title} (nats per image)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def grid_png(gray):
    """A gray-level grid as the PNG that codebase.files.write_png_grid writes for it (opaque RGBA)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image
    import numpy as np

    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, np.dstack([gray, gray, gray, np.full_like(gray, 255)]), format="png")
    return buffer.getvalue()


def fill(text, bodies):
    """`text` with what lies between each region's begin and end lines replaced; bodies: {region: Markdown}."""
    for name, body in bodies.items():
        begin, end = f"<!-- generated:{name}:begin -->", f"<!-- generated:{name}:end -->"
        if name not in REGIONS:
            raise ValueError(f"{name} is not in REGIONS")
        if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
            raise ResultsError(f"the README needs exactly one '{begin}' line followed by one '{end}' line")
        start, stop = text.index(begin) + len(begin), text.index(end)
        text = text[:start] + f"\n{NOTE}\n{body.strip()}\n" + text[stop:]
    return text


def render(data, out, project_readme):
    """Write the images into `out` and fill the regions of out/README.md, out/details.md and project_readme."""
    documents = [out / name for name in sorted({n for n in REGIONS.values() if n})]
    for path in documents:
        if not path.is_file():
            names = ", ".join(p.name for p in documents)
            raise ResultsError(f"no {path}; the write-up's folder (--out) must hold {names}")
    settings, runs, metrics, grids = load_data(data)
    for key in GRIDS:
        write_atomic(out / IMAGES[key], grid_png(grids[key]))
    write_atomic(out / IMAGES["curves"], curves_png({m: metrics[m][0] for m in MODELS}))
    bodies = {"results": results_region(settings, runs), "beyond": beyond_region(settings, runs, metrics),
              "details": details_region(settings, runs, metrics), "readme-results": summary_region(runs)}
    for path in documents:
        text = path.read_bytes().decode("utf-8")
        write_atomic(path, fill(text, {r: bodies[r] for r, n in REGIONS.items() if n == path.name}).encode("utf-8"))
    if project_readme:
        text = Path(project_readme).read_bytes().decode("utf-8")
        write_atomic(project_readme, fill(text, {"readme-results": bodies["readme-results"]}).encode("utf-8"))


# -------------------------------------------------------------------------------------------------- main

def build_parser():
    d = Config()
    p = argparse.ArgumentParser(
        description="Render the write-up's tables and images from the committed data (writeup/runs/); with "
                    "--collect or --run-missing, first refresh that data from the runs.",
        epilog="To refresh the data from runs: train them (`python run_gmvae.py --run N --seed N --iwae` and the "
               "same for run_vae.py, N = 0 .. 4), then `python writeup/make_results.py --collect`; or let "
               "--run-missing train what is missing. Then commit writeup/runs/ with the write-up.",
    )
    p.add_argument("--data", default=str(DATA), help="the data that render reads and collect writes "
                                                     "(default: writeup/runs/)")
    p.add_argument("--out", default=None, help="the write-up's folder: README.md and details.md are filled and "
                                               "the images written there (default: writeup/)")
    p.add_argument("--project-readme", dest="project_readme", default=None,
                   help="the project's README, whose readme-results region is filled too "
                        "(default: the repository's README.md, unless --out is given)")
    collect_flags = p.add_argument_group("collect", "read only with --collect or --run-missing")
    collect_flags.add_argument("--collect", action="store_true",
                               help="first write --data from the runs in --logs and --checkpoints, then render")
    collect_flags.add_argument("--run-missing", dest="run_missing", action="store_true",
                               help=f"as --collect, but first train the runs that are missing or unusable, "
                                    f"{PARALLEL} at a time with one thread each; this replaces those runs' files")
    collect_flags.add_argument("--seeds", type=int, default=None,
                               help="runs per model: seeds (and run numbers) 0 .. SEEDS-1 (default: 5)")
    collect_flags.add_argument("--iter_max", type=int, default=None,
                               help="training iterations of the runs to use; runs of any other length are not "
                                    f"used (default: {d.iter_max})")
    collect_flags.add_argument("--logs", default=None, help=f"the runs' logs folder (default: {d.log_root})")
    collect_flags.add_argument("--checkpoints", default=None,
                               help=f"the runs' checkpoints folder (default: {d.checkpoint_root})")
    collect_flags.add_argument("--data-dir", dest="data_dir", default=None,
                               help=f"where MNIST is cached (default: {d.data_dir})")
    return p


def main(argv=None):
    """Collect if asked, then render; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    d = Config()
    given = [f"--{name.replace('_', '-') if name != 'iter_max' else name}" for name in
             ("seeds", "iter_max", "logs", "checkpoints", "data_dir") if getattr(args, name) is not None]
    if given and not (args.collect or args.run_missing):
        parser.error(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} read only with --collect or "
                     "--run-missing; a plain run renders from --data")
    args.seeds = 5 if args.seeds is None else args.seeds
    args.iter_max = d.iter_max if args.iter_max is None else args.iter_max
    args.logs, args.checkpoints = args.logs or d.log_root, args.checkpoints or d.checkpoint_root
    args.data_dir = args.data_dir or d.data_dir
    if args.seeds < 1 or args.iter_max < 1:
        parser.error("--seeds and --iter_max must be positive")
    data, out = Path(args.data), Path(args.out) if args.out else HERE
    project_readme = args.project_readme or (None if args.out else ROOT / "README.md")
    try:
        if args.collect or args.run_missing:
            from codebase.runtime import checkpoint
            from codebase.data import DataError

            try:
                if status := collect(args, data):
                    return status
            except (DataError, checkpoint.CheckpointError) as e:
                raise ResultsError(str(e)) from None
        render(data, out, project_readme)
    except (ResultsError, SaveError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    also = f" and {project_readme} (readme-results)" if project_readme else ""
    print(f"Filled {out / 'README.md'}, {out / 'details.md'}{also} from {data}; images: "
          + ", ".join(IMAGES.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
