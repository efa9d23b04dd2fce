"""Regenerate the results sections of writeup/README.md from training runs.

    python writeup/make_results.py                  # from the repository root
    python writeup/make_results.py --run-missing    # first train the runs that are not there

It reads logs/<run>/results.json and metrics.csv of the runs that
`python run_gmvae.py --run S --seed S --iwae` and `python run_vae.py --run S --seed S --iwae`
write for S = 0 .. --seeds - 1, loads the seed-0 checkpoints for the figures, writes the
images next to the README, and replaces what lies between each pair of
`<!-- generated:NAME:begin -->` / `<!-- generated:NAME:end -->` lines in the README.
Nothing outside those lines changes, and the same runs always give the same bytes.
"""
import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # `python writeup/make_results.py` puts writeup/, not the root, on the path

import torch  # noqa: E402

from codebase import checkpoint  # noqa: E402
from codebase.config import Config  # noqa: E402
from codebase.data import DataError, load_mnist  # noqa: E402
from codebase.evaluate import IWAE_KS, eval_subset  # noqa: E402
from codebase.files import SaveError, write_atomic, write_png_grid  # noqa: E402
from codebase.run import GRID_COLS, GRID_ROWS, exit_code  # noqa: E402
from codebase.models import make_model  # noqa: E402

MODELS = ("gmvae", "vae")
LABEL = {"gmvae": "GMVAE", "vae": "VAE"}
REGIONS = ("results", "samples", "figures")

# The course's reference figures (NELBO, KL, Rec), as the course gives them, and the
# handout's "around 97.5" for the GMVAE's NELBO. They are quoted, never computed.
COURSE_REFERENCE = {"gmvae": (97.22, 17.65, 79.58), "vae": (101.5, 19.29, 82.57)}
HANDOUT_GMVAE_NELBO = 97.5

PER_DIGIT = 2  # reconstructed test images per digit: one row of 20
PRIOR_ROWS, PRIOR_COLS = 5, 20  # decoded prior components shown, of the k = 500
IMAGES = {
    "gmvae_samples": "gmvae_samples.png",
    "vae_samples": "vae_samples.png",
    "curves": "training_curves.png",
    "reconstructions": "reconstructions.png",
    "prior": "prior_components.png",
}

# (key, header) of the numeric columns; the keys are those of `flatten`.
COLUMNS = (("nelbo", "NELBO"), ("kl", "KL"), ("rec", "Rec"),
           ("test_nelbo", "NELBO, full test split"),
           *((f"iwae{k}", f"−IWAE-{k}") for k in IWAE_KS))


class ResultsError(RuntimeError):
    """The runs or the README are not as needed; the message says what to do."""


def run_config(model, seed, args):
    """The Config of run `seed` (run number = seed), as the runs were trained."""
    return Config(model=model, run=seed, seed=seed, iter_max=args.iter_max, iwae=True,
                  data_dir=args.data_dir, log_root=args.logs, checkpoint_root=args.checkpoints)


def last_logged_iteration(path):
    """The iteration of metrics.csv's last row, or None if there is no row."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return int(rows[-1]["iteration"]) if rows else None


def problem_with(config):
    """Why run `config` cannot be used as it is, or None if it can.

    A run counts only if it finished at exactly config.iter_max with config.seed and
    was evaluated with --iwae, so runs of other lengths are never mixed in, and a run
    still training (its metrics.csv not yet at iter_max) is not read half-written.
    """
    path = config.log_dir / "results.json"
    if not path.is_file():
        return "no results.json"
    try:
        results = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return "results.json is not valid JSON"
    if results.get("iterations") != config.iter_max:
        return f"trained {results.get('iterations')} iterations, not --iter_max {config.iter_max}"
    if results.get("seed") != config.seed:
        return f"trained with seed {results.get('seed')}, not {config.seed}"
    if sorted(results.get("iwae", {})) != sorted(str(k) for k in IWAE_KS):
        return "evaluated without --iwae"
    metrics = config.log_dir / "metrics.csv"
    if not metrics.is_file():
        return "no metrics.csv"
    logged = last_logged_iteration(metrics)
    if logged != config.iter_max:
        return f"metrics.csv ends at iteration {logged}, not {config.iter_max} (still training?)"
    if config.seed == 0:  # seed 0 also gives the figures
        if not (config.log_dir / "samples.png").is_file():
            return "no samples.png"
        if not checkpoint.path_for(config.checkpoint_dir, config.iter_max).is_file():
            return f"no checkpoint {checkpoint.path_for(config.checkpoint_dir, config.iter_max)}"
    return None


def find_problems(args):
    """[(config, problem)] of the runs that are missing or unusable."""
    configs = [run_config(model, seed, args) for model in MODELS for seed in range(args.seeds)]
    return [(c, p) for c in configs if (p := problem_with(c))]


def can_just_evaluate(config):
    """Whether the run's final checkpoint and metrics.csv are sound, so evaluating it is enough."""
    metrics = config.log_dir / "metrics.csv"
    if not metrics.is_file() or last_logged_iteration(metrics) != config.iter_max:
        return False
    try:
        state = checkpoint.load(checkpoint.path_for(config.checkpoint_dir, config.iter_max),
                                config.architecture, torch.device("cpu"))
    except checkpoint.CheckpointError:
        return False
    return state["iteration"] == config.iter_max and state["config"]["seed"] == config.seed


def run_missing(problems, log=print):
    """Train (or only evaluate) each unusable run through its run script's main.

    Returns:
        status: int: 0 if every run succeeded, else the failing run's exit status
    """
    import run_gmvae
    import run_vae

    scripts = {"gmvae": run_gmvae, "vae": run_vae}
    for config, problem in problems:
        flags = dict(run=config.run, seed=config.seed, iter_max=config.iter_max, iwae=True,
                     data_dir=config.data_dir, log_root=config.log_root,
                     checkpoint_root=config.checkpoint_root)
        if can_just_evaluate(config):
            flags["train"] = False
            what = "evaluating"
        else:
            flags["overwrite"] = True  # a run of another length or seed is replaced, not resumed
            what = "training"
        log(f"{config.run_name}: {problem}; {what} it.")
        status = exit_code(scripts[config.model].main, **flags)
        if status:
            return status
    return 0


def read_runs(args):
    """{model: [results.json of seed 0, 1, ...]}."""
    return {model: [json.loads((run_config(model, s, args).log_dir / "results.json").read_text())
                    for s in range(args.seeds)] for model in MODELS}


def read_metrics(path):
    """{column: [values]} of a metrics.csv, iteration included."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {c: [float(r[c]) for r in rows] for c in ("iteration", "nelbo", "kl", "rec")}


def flatten(results):
    """The figures of one results.json under the keys of COLUMNS, plus the training time."""
    row = {key: results[key] for key in ("nelbo", "kl", "rec", "test_nelbo", "nelbo_sd", "train_seconds")}
    row.update({f"iwae{k}": results["iwae"][str(k)] for k in IWAE_KS})
    return row


def mean_sd(values):
    """(mean, sample standard deviation); the sd is nan for a single value."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def pm(values):
    mean, sd = mean_sd(values)
    return f"{mean:.2f}" if math.isnan(sd) else f"{mean:.2f} ± {sd:.2f}"


def machine(runs):
    """The machine(s) the runs were trained on, as recorded in results.json."""
    seen = []
    for r in runs:
        name = f" ({r['device_name']})" if r.get("device_name") else ""
        text = f"{r['device']}{name}, {r['threads']} threads, torch {r['torch']}"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def table(header, rows, align=None):
    """A Markdown table.

    Args:
        header: [str]: column titles
        rows: [[str]]: cells
        align: [str] or None: Markdown alignment rows per column; default: the first
            column left, the others (numbers) right
    """
    align = align or [":---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def than(diff, less="lower", more="higher"):
    """The word for the sign of `diff` = this - that: `less` if it is negative, else `more`."""
    return less if diff < 0 else more


def discussion(rows, n):
    """The paragraph under the table, its every number and comparison taken from the runs.

    Args:
        rows: dict: {model: [flatten(results) per seed]}
        n: int: seeds
    """
    mean = {m: {key: statistics.fmean(r[key] for r in rows[m]) for key in rows[m][0]} for m in MODELS}
    g, v = mean["gmvae"], mean["vae"]
    over = f"over the {n} seeds" if n > 1 else "for the one seed"
    d = g["nelbo"] - v["nelbo"]
    text = [f"Averaged {over}, the GMVAE's NELBO is {abs(d):.2f} nats {than(d)} than the VAE's "
            f"({g['nelbo']:.2f} against {v['nelbo']:.2f})"]
    if n > 1:
        spread = max(mean_sd([r["nelbo"] for r in rows[m]])[1] for m in MODELS)
        if abs(d) < spread:
            text[-1] += (f"; the larger of the two standard deviations over seeds is {spread:.2f}, "
                         "so the gap is smaller than the seed-to-seed spread")
        else:
            text[-1] += (f"; the larger of the two standard deviations over seeds is {spread:.2f}, "
                         f"so the gap is {abs(d) / spread:.1f} times the seed-to-seed spread" if spread > 0
                         else "; the seeds give identical values")
    dkl, drec = g["kl"] - v["kl"], g["rec"] - v["rec"]
    text[-1] += (f". Its KL term is {abs(dkl):.2f} nats {than(dkl)} ({g['kl']:.2f} against {v['kl']:.2f}) "
                 f"and its Rec term {abs(drec):.2f} nats {than(drec)} ({g['rec']:.2f} against {v['rec']:.2f}).")
    # The KL term averaged over the data is I(x; z) + KL(q(z) || p(z)) (Hoffman and Johnson,
    # "ELBO surgery", 2016); only the second part depends on the prior, so that is the claim made.
    text.append(
        "The KL term, averaged over the data, splits into the information the code carries about "
        "the image, I(x; z), plus KL(q(z) ‖ p(z)), the mismatch between the aggregate posterior "
        "q(z) = E_x q(z|x) and the prior. With ten digit classes q(z) tends to be multimodal: "
        "N(0, I) cannot follow it, while a uniform mixture of 500 learned Gaussians can.")
    if dkl < 0:
        if drec <= 0:
            tail = ", and here it reconstructs better as well"
        else:
            tail = (f", at the price of a Rec term worse by {drec:.2f} nats, "
                    f"{'less' if drec < -dkl else 'more'} than the {-dkl:.2f} it saves in KL")
        text[-1] += f" That is what the measurements show: the GMVAE pays less KL{tail}."
    else:
        text[-1] += (" Here, though, the GMVAE does not pay less KL than the VAE, so the measured "
                     "difference does not show that advantage.")

    drops = {m: mean[m]["iwae1"] - mean[m][f"iwae{IWAE_KS[-1]}"] for m in MODELS}
    monotone = all(mean[m][f"iwae{a}"] >= mean[m][f"iwae{b}"] for m in MODELS
                   for a, b in zip(IWAE_KS, IWAE_KS[1:]))
    k_last = IWAE_KS[-1]
    verb = {m: "falls" if drops[m] > 0 else "rises" for m in MODELS}
    tightens = "tightens with k" if min(drops.values()) > 0 else "does not tighten with k for both models"
    text.append(
        f"The importance-weighted bound {tightens}: "
        f"from k = 1 to k = {k_last} the negative bound "
        f"{verb['gmvae']} by {abs(drops['gmvae']):.2f} nats for the GMVAE and "
        f"{'' if verb['vae'] == verb['gmvae'] else verb['vae'] + ' '}by {abs(drops['vae']):.2f} for the VAE, "
        + ("falling at every step of k for both. " if monotone else
           "though not at every step for both: each value is an estimate, and the bound only "
           "decreases in expectation. ")
        + f"Since −IWAE-{k_last} is still at least −log p(x), these drops are lower bounds on the "
        "average gap between the NELBO and −log p(x), which is E KL(q(z|x) ‖ p(z|x)). At "
        f"k = {k_last} the VAE-minus-GMVAE difference is {v[f'iwae{k_last}'] - g[f'iwae{k_last}']:+.2f} "
        f"nats, against {-d:+.2f} for the NELBO.")

    gaps = {m: [r["nelbo"] - r["test_nelbo"] for r in rows[m]] for m in MODELS}
    gap = {m: statistics.fmean(gaps[m]) for m in MODELS}
    all_gaps = gaps["gmvae"] + gaps["vae"]
    noise = max(statistics.fmean(r["nelbo_sd"] for r in rows[m]) for m in MODELS) / 10  # sd of a mean of 100
    d_full = g["test_nelbo"] - v["test_nelbo"]
    text.append(
        f"On the course's 100-image subset (10 images of each digit) the NELBO is "
        f"{abs(gap['gmvae']):.2f} nats {than(gap['gmvae'])} than on the full 10,000-image test split "
        f"for the GMVAE and {abs(gap['vae']):.2f} nats {than(gap['vae'])} for the VAE (means {over}; "
        f"single runs range from {min(all_gaps):+.2f} to {max(all_gaps):+.2f}). The subset's NELBO "
        f"is a mean of 100 evaluations, with a Monte-Carlo error of at most about {noise:.2f}, so "
        + ("the difference comes mostly from which 100 images were chosen, not from sampling. "
           if min(abs(gap[m]) for m in MODELS) > 3 * noise else
           "sampling noise accounts for a visible part of the difference. ")
        + f"The VAE-minus-GMVAE difference is {-d:+.2f} nats on the subset and {-d_full:+.2f} on the "
        f"full split: the models rank {'the same way' if (d < 0) == (d_full < 0) else 'differently'} "
        "on both.")
    return " ".join(text)


def timing_note(rows):
    """A sentence on the spread of the training times, warning when it is too wide to compare models."""
    seconds = {m: [r["train_seconds"] for r in rows[m]] for m in MODELS}
    low = min(min(s) for s in seconds.values())
    high = max(max(s) for s in seconds.values())
    note = f" Single runs took {low:.0f} to {high:.0f} s."
    # Runs of one model do the same arithmetic whatever the seed, so a wide spread within
    # a model can only come from the machine (other work on it), not from the model.
    if max(max(s) / min(s) for s in seconds.values()) > 1.5:
        note += (" Runs of one model do the same computation whatever the seed, so a spread "
                 "this wide within a model comes from other load on the machine: these times "
                 "are no speed comparison between the models.")
    return note


def results_section(runs, iter_max):
    """The Markdown of the results region (Problem 3.2)."""
    rows = {m: [flatten(r) for r in runs[m]] for m in MODELS}
    n = len(runs["gmvae"])
    first = {m: runs[m][0] for m in MODELS}
    g0 = first["gmvae"]
    off = g0["nelbo"] - HANDOUT_GMVAE_NELBO
    out = [
        f"The default GMVAE run (`python run_gmvae.py`: run 0, seed 0, {iter_max} iterations), "
        f"evaluated on the course's fixed 100-image test subset: **NELBO {g0['nelbo']:.2f}, "
        f"KL {g0['kl']:.2f}, Rec {g0['rec']:.2f}**. The handout expects a NELBO around "
        f"{HANDOUT_GMVAE_NELBO:g}; this is {abs(off):.2f} nats {than(off, 'below', 'above')} it.",
        "",
        table(["", "NELBO", "KL", "Rec"], [
            row for m in MODELS for row in (
                [f"{LABEL[m]} run 0, 100-image subset"] + [f"{first[m][k]:.2f}" for k in ("nelbo", "kl", "rec")],
                [f"{LABEL[m]} run 0, full test split"]
                + [f"{first[m][k]:.2f}" for k in ("test_nelbo", "test_kl", "test_rec")],
                [f"{LABEL[m]}, the course's reference"] + [f"{x:g}" for x in COURSE_REFERENCE[m]])]),
        "",
        f"Both models, {n} seeds each (`--run S --seed S --iwae`, S = 0 … {n - 1}): mean ± sample "
        "standard deviation over the seeds. NELBO, KL, Rec and the −IWAE-k bounds are on the "
        "100-image subset; the full-split NELBO is on all 10,000 test images. Training time is "
        "the mean wall time in seconds." + timing_note(rows),
        "",
        table(["Model", *(h for _, h in COLUMNS), "Training (s)", "Machine"], [
            [LABEL[m], *(pm([r[key] for r in rows[m]]) for key, _ in COLUMNS),
             f"{statistics.fmean(r['train_seconds'] for r in rows[m]):.1f}", machine(runs[m])]
            for m in MODELS], align=[":---"] + ["---:"] * (len(COLUMNS) + 1) + [":---"]),
        "",
        "Each run:",
        "",
        table(["Model", "Seed", *(h for _, h in COLUMNS), "Training (s)"], [
            [LABEL[m], str(r["seed"]), *(f"{flat[key]:.2f}" for key, _ in COLUMNS), f"{flat['train_seconds']:.1f}"]
            for m in MODELS for r, flat in zip(runs[m], rows[m])]),
        "",
        discussion(rows, n),
    ]
    return "\n".join(out)


def summary_section(runs):
    """The Markdown of the top-level README's region: each model's default run (seed 0)."""
    rows = []
    for m in MODELS:
        r = runs[m][0]
        rows.append([f"`python run_{m}.py`", *(f"{r[k]:.2f}" for k in ("nelbo", "kl", "rec", "test_nelbo")),
                     f"{r['train_seconds']:.1f}", machine([r])])
    return table(["Command", "NELBO", "KL", "Rec", "NELBO, full test split", "Training (s)", "Machine"], rows)


def link(path, readme):
    """`path` relative to the README's folder, as Markdown wants it."""
    return Path(os.path.relpath(path, readme.parent)).as_posix()


def samples_section(paths, readme):
    return "\n".join([
        f"{GRID_ROWS * GRID_COLS} samples of each model (seed-0 runs), in a {GRID_ROWS} × {GRID_COLS} grid. "
        "Each image is the vector of Bernoulli means sigmoid(f(z)) of p(x|z) for one draw z ~ p(z), "
        "shown as gray levels; they are not binary samples x ~ p(x|z). For the GMVAE, z comes from "
        "a uniformly chosen component of the learned mixture; for the VAE, from N(0, I). Both use "
        "sampling seed 0.",
        "",
        # No "|" in the alt texts: inside a table cell it would end the cell.
        table(["GMVAE", "VAE"], [[f"![GMVAE samples]({link(paths['gmvae_samples'], readme)})",
                                  f"![VAE samples]({link(paths['vae_samples'], readme)})"]],
              align=[":---:", ":---:"]),
    ])


def figures_section(paths, readme, log_every, n_components, k):
    return "\n".join([
        f"![Training curves]({link(paths['curves'], readme)})",
        "",
        "**Training curves** of the seed-0 runs. Each point is the mean, over "
        f"{log_every} training steps, of the single-sample NELBO, KL and Rec on the training batch "
        "(binarised afresh at every step), as logged in `metrics.csv`. The iteration axis is "
        "logarithmic so that the first steps and the end both show.",
        "",
        f"![Reconstructions]({link(paths['reconstructions'], readme)})",
        "",
        f"**Reconstructions** of test images: the first {PER_DIGIT} images of each digit in the "
        "course's fixed subset, binarised with seed 0 as in evaluation (top row), and the Bernoulli "
        "means of p(x|z) at z = the mean of q(z|x), for the seed-0 GMVAE (middle row) and VAE "
        "(bottom row) at their final iteration.",
        "",
        f"![Prior components]({link(paths['prior'], readme)})",
        "",
        f"**The GMVAE's prior components**: sigmoid(f(μ_i)), the decoded means μ_i of the first "
        f"{n_components} of the {k} mixture components of the seed-0 GMVAE's learned prior, row by row.",
    ])


def curves_png(metrics):
    """One PNG with NELBO, KL and Rec against the iteration, both models in each panel.

    Args:
        metrics: dict: {model: read_metrics(...)}
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and the same pixels everywhere
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100)
    for ax, key, title in zip(axes, ("nelbo", "kl", "rec"), ("NELBO", "KL", "Rec")):
        for m in MODELS:
            ax.plot(metrics[m]["iteration"], metrics[m][key], label=LABEL[m], linewidth=1)
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("nats per image")
    axes[0].legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def load_model(config, device):
    """The run's model at config.iter_max, in evaluation mode."""
    state = checkpoint.load(checkpoint.path_for(config.checkpoint_dir, config.iter_max),
                            config.architecture, device)
    model = make_model(config).to(device)
    model.load_state_dict(state["model"])
    return model.eval()


@torch.inference_mode()
def reconstruction_grid(models, test_x, device):
    """Originals, then each model's reconstructions, one row each.

    Args:
        models: list: the models, in row order
        test_x: tensor: (10000, 784): uint8 gray levels of the test split

    Returns:
        images: tensor: ((1 + len(models)) * 10 * PER_DIGIT, 784): pixel values in [0, 1]
    """
    # Binarise the whole subset as evaluation does, so these are the very images it scores.
    subset = eval_subset(test_x, device)
    picks = [10 * digit + j for digit in range(10) for j in range(PER_DIGIT)]  # 10 per digit, 0 first
    x = subset[picks]
    rows = [x] + [model.compute_sigmoid_given(model.enc(x)[0]) for model in models]
    return torch.cat(rows).cpu()


@torch.inference_mode()
def prior_means(model, n):
    """Bernoulli means of p(x|z) at the first n component means of a GMVAE's prior: (n, 784)."""
    m, _ = model.prior()  # (1, k, z_dim)
    return model.compute_sigmoid_given(m[0, :n]).cpu()


def fill(text, bodies):
    """Replace what lies between each region's begin and end marker lines.

    Args:
        text: str: the README
        bodies: dict: {region: Markdown}

    Returns:
        text: str: the README with every region filled, everything else as it was
    """
    for name, body in bodies.items():
        begin, end = f"<!-- generated:{name}:begin -->", f"<!-- generated:{name}:end -->"
        if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
            raise ResultsError(f"the README needs exactly one '{begin}' line followed by one '{end}' line")
        start, stop = text.index(begin) + len(begin), text.index(end)
        note = "<!-- Written by writeup/make_results.py from the runs; edit the script, not this text. -->"
        text = text[:start] + f"\n{note}\n{body.strip()}\n" + text[stop:]
    return text


def build_parser():
    d = Config()
    p = argparse.ArgumentParser(
        description="Regenerate the results sections of the write-up from the training runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="runs per model: seeds (and run numbers) 0 .. SEEDS-1")
    p.add_argument("--iter_max", type=int, default=d.iter_max,
                   help="training iterations of the runs to use; runs of any other length are not used")
    p.add_argument("--run-missing", dest="run_missing", action="store_true",
                   help="train (or only evaluate) the runs that are missing or unusable first; "
                        "this replaces those runs' files")
    p.add_argument("--logs", default=d.log_root, help="the runs' logs folder")
    p.add_argument("--checkpoints", default=d.checkpoint_root, help="the runs' checkpoints folder")
    p.add_argument("--data-dir", dest="data_dir", default=d.data_dir, help="where MNIST is cached")
    p.add_argument("--out", default=None, help="where the images go (default: the writeup/ folder)")
    p.add_argument("--readme", default=None, help="the README to fill (default: OUT/README.md)")
    p.add_argument("--project-readme", dest="project_readme", default=None,
                   help="the project's README, whose summary region is filled too "
                        "(default: the repository's README.md, unless --out is given)")
    return p


def main(argv=None):
    """Regenerate the README's results regions and images; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.iter_max < 1:
        parser.error("--seeds and --iter_max must be positive")
    out = Path(args.out) if args.out else HERE
    readme = Path(args.readme) if args.readme else out / "README.md"
    try:
        if not readme.is_file():
            raise ResultsError(f"no README at {readme}; give its path with --readme")
        problems = find_problems(args)
        if problems and args.run_missing:
            status = run_missing(problems)
            if status:
                return status
            problems = find_problems(args)
        if problems:
            config, problem = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ResultsError(
                f"{len(problems)} of {2 * args.seeds} runs are missing or unusable: "
                f"{config.log_dir}: {problem}{more}. Add --run-missing to train them, "
                "or wait for trainings in progress to finish.")

        runs = read_runs(args)
        configs = {m: run_config(m, 0, args) for m in MODELS}
        device = torch.device("cpu")  # figures are small, and a CPU gives the same pixels every time
        models = {m: load_model(configs[m], device) for m in MODELS}
        _, _, test_x, _ = load_mnist(args.data_dir, log=lambda message: print(message, file=sys.stderr))
        paths = {key: out / name for key, name in IMAGES.items()}

        for m in MODELS:  # the run's own grid: the one its results.json belongs to
            write_atomic(paths[f"{m}_samples"], (configs[m].log_dir / "samples.png").read_bytes())
        write_atomic(paths["curves"], curves_png({m: read_metrics(configs[m].log_dir / "metrics.csv")
                                                  for m in MODELS}))
        write_png_grid(paths["reconstructions"],
                       reconstruction_grid([models[m] for m in MODELS], test_x, device),
                       1 + len(MODELS), 10 * PER_DIGIT)
        write_png_grid(paths["prior"], prior_means(models["gmvae"], PRIOR_ROWS * PRIOR_COLS),
                       PRIOR_ROWS, PRIOR_COLS)

        text = readme.read_bytes().decode("utf-8")
        text = fill(text, {
            "results": results_section(runs, args.iter_max),
            "samples": samples_section(paths, readme),
            "figures": figures_section(paths, readme, runs["gmvae"][0]["config"]["log_every"],
                                       PRIOR_ROWS * PRIOR_COLS, models["gmvae"].k),
        })
        write_atomic(readme, text.encode("utf-8"))
        project_readme = args.project_readme or (None if args.out else ROOT / "README.md")
        if project_readme:
            summary = fill(Path(project_readme).read_text(encoding="utf-8"),
                           {"readme-results": summary_section(runs)})
            write_atomic(project_readme, summary.encode("utf-8"))
    except (ResultsError, DataError, checkpoint.CheckpointError, SaveError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Filled {readme} ({', '.join(REGIONS)}) from {2 * args.seeds} runs; images: "
          + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
