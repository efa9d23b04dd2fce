"""Regenerate the results regions of writeup/README.md, and the README's summary, from training runs.

    python writeup/make_results.py                  # from the repository root
    python writeup/make_results.py --run-missing    # first train the runs that are not there

It reads logs/<run>/ of the runs `python run_{gmvae,vae}.py --run S --seed S --iwae`, S = 0 .. --seeds - 1,
loads the seed-0 checkpoints for the figures, writes the images (IMAGES) next to the write-up and fills the
lines between `<!-- generated:NAME:begin -->` and `<!-- generated:NAME:end -->` for NAME in REGIONS; nothing
else changes, and the same runs give the same bytes. The course's figures are quoted from codebase/reference.py.
"""
import argparse
import io
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # `python writeup/make_results.py` puts writeup/, not the root, on the path

import torch  # noqa: E402

from codebase import checkpoint  # noqa: E402
from codebase.config import Config  # noqa: E402
from codebase.data import DataError, load_mnist  # noqa: E402
from codebase.evaluate import IWAE_KS, SUBSET_REPEATS, eval_subset  # noqa: E402
from codebase.files import SaveError, read_metrics, write_atomic, write_png_grid  # noqa: E402
from codebase.models import make_model  # noqa: E402
from codebase.reference import (COURSE_SOLUTION, HANDOUT_GMVAE_NELBO, MODEL_LABELS, RUN_SCRIPTS,  # noqa: E402
                                TERM_LABELS)
from codebase.run import SAMPLES  # noqa: E402

MODELS = tuple(MODEL_LABELS)
# The regions filled: the tables in the write-up, the summary in the project's README. The images have
# fixed names, and the write-up's captions and links to them are written by hand.
REGIONS = ("results", "readme-results")
PARALLEL = 2  # runs trained at once by --run-missing, one CPU thread each
PER_DIGIT = 2  # reconstructed test images per digit: one row of 20
PRIOR_ROWS, PRIOR_COLS = 5, 20  # decoded prior components shown, of the k = 500
IMAGES = {**{f"{m}_{kind}": f"{m}_samples_{kind}.png" for m in MODELS for kind in SAMPLES},
          "curves": "training_curves.png", "reconstructions": "reconstructions.png", "prior": "prior_components.png"}
IWAE = tuple(f"iwae{k}" for k in IWAE_KS)  # keys of `flatten`
HEADERS = {**TERM_LABELS, "test_nelbo": "NELBO, full test split",
           **{key: f"−IWAE-{k}" for key, k in zip(IWAE, IWAE_KS)}}


class ResultsError(RuntimeError):
    """The runs or the README are not as needed; the message says what to do."""


def run_config(model, seed, args):
    """The Config of run `seed` (run number = seed), as the runs were trained."""
    return Config(model=model, run=seed, seed=seed, iter_max=args.iter_max, iwae=True,
                  data_dir=args.data_dir, log_root=args.logs, checkpoint_root=args.checkpoints)


def problem_with(config):
    """Why run `config` cannot be used as it is, or None if it can.

    A run counts only if it finished at exactly config.iter_max with config.seed and was evaluated with
    --iwae: runs of other lengths are never mixed in, and a run still training is not read half-written.
    """
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
CHILD = ("import json, sys; sys.path.insert(0, sys.argv[1]); from codebase.run import exit_code; "
         "flags = json.loads(sys.argv[2]); script = __import__(flags.pop('script')); "
         "sys.exit(exit_code(script.main, **flags))")


def run_missing(problems, log=print):
    """Train each unusable run afresh (--overwrite), PARALLEL at a time with --threads 1 each (runs
    at once must share the cores: see codebase.run.cpu_threads).

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


def flatten(results):
    """One results.json with its IWAE bounds under the keys of IWAE."""
    return {**results, **{key: results["iwae"][str(k)] for key, k in zip(IWAE, IWAE_KS)}}


def pm(values):
    """'mean ± sample standard deviation', or the mean alone for one value."""
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def machine(runs):
    """The machine(s) the runs were trained on, as recorded in results.json."""
    seen = []
    for r in runs:
        name = f" ({r['device_name']})" if r.get("device_name") else ""
        text = f"{r['device']}{name}, {r['threads']} thread{'s' * (r['threads'] != 1)}, torch {r['torch']}"
        seen += [text] if text not in seen else []
    return "; ".join(seen)


def table(header, rows, align=None):
    """A Markdown table; by default the first column is left-aligned, the others (numbers) right."""
    align = align or [":---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def course_rows():
    """Table 1's rows of the course solution, and the course's sums KL + Rec that miss its NELBO."""
    rows, sums = [], []
    for m, c in COURSE_SOLUTION.items():
        rows.append([f"{MODEL_LABELS[m]}, course solution", f"{c['nelbo']:g} ± {c['nelbo_sd']:g}", f"{c['kl']:g}",
                     f"{c['rec']:g}", *(f"{c['iwae'][k]:g}" for k in IWAE_KS)])
        if abs(c["kl"] + c["rec"] - c["nelbo"]) > 0.01:
            sums.append(f"the {MODEL_LABELS[m]}'s KL + Rec is {c['kl']:g} + {c['rec']:g} = "
                        f"{c['kl'] + c['rec']:.2f}, not {c['nelbo']:g}")
    return rows, sums


def results_section(runs, iter_max):
    """The Markdown of the results region (Problem 3.2): the headline and four numbered tables."""
    rows = {m: [flatten(r) for r in runs[m]] for m in MODELS}
    first, n, every = {m: rows[m][0] for m in MODELS}, len(rows["gmvae"]), [r for m in MODELS for r in rows[m]]
    g0, off = first["gmvae"], first["gmvae"]["nelbo"] - HANDOUT_GMVAE_NELBO
    course, sums = course_rows()
    ours = [[f"{MODEL_LABELS[m]}, this project's seed 0", f"{first[m]['nelbo']:.2f} ± {first[m]['nelbo_sd']:.2f}",
             *(f"{first[m][k]:.2f}" for k in ("kl", "rec", *IWAE))] for m in MODELS]
    seeds = ("nelbo", "kl", "rec", "test_nelbo", *IWAE)
    mean = {m: {k: statistics.fmean(r[k] for r in rows[m]) for k in seeds} for m in MODELS}
    seconds = [r["train_seconds"] for r in every]
    return "\n".join([
        f"The default GMVAE run (`python run_gmvae.py`: run 0, seed 0, {iter_max} iterations) on the course's "
        f"fixed 100-image test subset: **NELBO {g0['nelbo']:.2f}, KL {g0['kl']:.2f}, Rec {g0['rec']:.2f}**. The "
        f"handout expects a NELBO around {HANDOUT_GMVAE_NELBO:g}; this is {abs(off):.2f} nats "
        f"{'below' if off < 0 else 'above'} it.",
        "",
        f"**Table 1. The 100-image subset: the seed-0 runs and the course solution.** Each NELBO is the mean of "
        f"{SUBSET_REPEATS} evaluations (fresh draws of z), and this project's ± is the standard deviation of those "
        "evaluations, not the error of the mean (that is Table 4's s.e.). The course solution's rows are quoted from "
        "`codebase/reference.py`, which takes them from the course's published solution: the same subset, with "
        "the course's own ± spread" + (f". They are quoted as given, although {' and '.join(sums)}." if sums else "."),
        "",
        table(["", *(HEADERS[k] for k in ("nelbo", "kl", "rec", *IWAE))], [row for pair in zip(ours, course)
                                                                         for row in pair]),
        "",
        "**Table 2. The full test split, seed-0 runs**: all 10,000 test images, binarised once with seed 0, one "
        "evaluation each. The course gives no figures on the full split.",
        "",
        table(["", "NELBO", "KL", "Rec"], [[f"{MODEL_LABELS[m]}, this project's seed 0",
                                            *(f"{first[m][k]:.2f}" for k in ("test_nelbo", "test_kl", "test_rec"))]
                                           for m in MODELS]),
        "",
        f"**Table 3. Both models, {n} seeds each** (`--run S --seed S --iwae`, S = 0 … {n - 1}): mean ± sample "
        "standard deviation over the seeds, on the subset except for the full-split column. The last row is the "
        "difference of the means.",
        "",
        table(["Model", *(HEADERS[k] for k in seeds)],
              [[MODEL_LABELS[m], *(pm([r[k] for r in rows[m]]) for k in seeds)] for m in MODELS]
              + [["VAE − GMVAE", *(f"{mean['vae'][k] - mean['gmvae'][k]:+.2f}" for k in seeds)]]),
        "",
        f"**Table 4. Each run.** s.e. is one standard error of the subset NELBO: the standard deviation of its "
        f"{SUBSET_REPEATS} evaluations divided by √{SUBSET_REPEATS}. It measures the figure's Monte-Carlo noise; it "
        "is not a bound. Training is the wall-clock time recorded in results.json "
        f"({min(seconds):.0f} to {max(seconds):.0f} s; {machine(every)}). It depends on what else ran on the "
        "machine meanwhile, so these are no speed figures (the project README's Speed section has those).",
        "",
        table(["Model", "Seed", "NELBO", "s.e.", "KL", "Rec", *(HEADERS[k] for k in ("test_nelbo", *IWAE)),
               "Training (s)"],
              [[MODEL_LABELS[m], str(r["seed"]), f"{r['nelbo']:.2f}", f"{r['nelbo_sd'] / SUBSET_REPEATS ** 0.5:.3f}",
                *(f"{r[k]:.2f}" for k in ("kl", "rec", "test_nelbo", *IWAE)), f"{r['train_seconds']:.1f}"]
               for m in MODELS for r in rows[m]]),
    ])


def summary_section(runs):
    """The Markdown of the project README's region: each model's default run (seed 0)."""
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


def load_model(config, device):
    """The run's model at config.iter_max, in evaluation mode."""
    model = make_model(config).to(device)
    checkpoint.load_model(model, checkpoint.path_for(config.checkpoint_dir, config.iter_max), config.architecture,
                          device)
    return model.eval()


@torch.inference_mode()
def reconstruction_grid(models, test_x, device):
    """Originals, then each model's reconstructions: tensor: ((1 + len(models)) * 10 * PER_DIGIT, 784)."""
    # The subset binarised as evaluation does, so these are the very images it scores.
    x = eval_subset(test_x, device)[[10 * digit + j for digit in range(10) for j in range(PER_DIGIT)]]
    return torch.cat([x] + [model.compute_sigmoid_given(model.enc(x)[0]) for model in models]).cpu()


@torch.inference_mode()
def prior_means(model, n):
    """Bernoulli means of p(x|z) at the first n component means of a GMVAE's prior: tensor: (n, 784)."""
    return model.compute_sigmoid_given(model.prior()[0][0, :n]).cpu()


def fill(text, bodies):
    """`text` with what lies between each region's begin and end lines replaced; bodies: {region: Markdown}."""
    for name, body in bodies.items():
        begin, end = f"<!-- generated:{name}:begin -->", f"<!-- generated:{name}:end -->"
        if name not in REGIONS:
            raise ValueError(f"{name} is not in REGIONS")
        if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
            raise ResultsError(f"the README needs exactly one '{begin}' line followed by one '{end}' line")
        start, stop = text.index(begin) + len(begin), text.index(end)
        note = "<!-- Written by writeup/make_results.py from the runs; edit the script, not this text. -->"
        text = text[:start] + f"\n{note}\n{body.strip()}\n" + text[stop:]
    return text


def build_parser():
    d = Config()
    p = argparse.ArgumentParser(description="Regenerate the results regions of the write-up from the runs.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="runs per model: seeds (and run numbers) 0 .. SEEDS-1")
    p.add_argument("--iter_max", type=int, default=d.iter_max,
                   help="training iterations of the runs to use; runs of any other length are not used")
    p.add_argument("--run-missing", dest="run_missing", action="store_true",
                   help=f"first train the runs that are missing or unusable, {PARALLEL} at a time with one thread "
                        "each; this replaces those runs' files")
    p.add_argument("--logs", default=d.log_root, help="the runs' logs folder")
    p.add_argument("--checkpoints", default=d.checkpoint_root, help="the runs' checkpoints folder")
    p.add_argument("--data-dir", dest="data_dir", default=d.data_dir, help="where MNIST is cached")
    p.add_argument("--out", default=None, help="where the images go, beside the README (default: writeup/)")
    p.add_argument("--readme", default=None, help="the README to fill (default: OUT/README.md)")
    p.add_argument("--project-readme", dest="project_readme", default=None,
                   help="the project's README, whose readme-results region is filled too "
                        "(default: the repository's README.md, unless --out is given)")
    return p


def main(argv=None):
    """Regenerate the README regions and images; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.iter_max < 1:
        parser.error("--seeds and --iter_max must be positive")
    out = Path(args.out) if args.out else HERE
    readme = Path(args.readme) if args.readme else out / "README.md"
    project_readme = args.project_readme or (None if args.out else ROOT / "README.md")
    try:
        if not readme.is_file():
            raise ResultsError(f"no README at {readme}; give its path with --readme")
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

        runs = {m: [json.loads((run_config(m, s, args).log_dir / "results.json").read_text())
                    for s in range(args.seeds)] for m in MODELS}
        configs = {m: run_config(m, 0, args) for m in MODELS}
        device = torch.device("cpu")  # figures are small, and a CPU gives the same pixels every time
        models = {m: load_model(configs[m], device) for m in MODELS}
        _, _, test_x, _ = load_mnist(args.data_dir, log=lambda message: print(message, file=sys.stderr))
        paths = {key: out / name for key, name in IMAGES.items()}
        for m in MODELS:  # the run's own grids: the ones its results.json belongs to
            for kind, name in SAMPLES.items():
                write_atomic(paths[f"{m}_{kind}"], (configs[m].log_dir / name).read_bytes())
        metrics = {m: read_metrics(configs[m].log_dir / "metrics.csv")[0] for m in MODELS}
        write_atomic(paths["curves"], curves_png(metrics))
        write_png_grid(paths["reconstructions"], reconstruction_grid([models[m] for m in MODELS], test_x, device),
                       1 + len(MODELS), 10 * PER_DIGIT)
        write_png_grid(paths["prior"], prior_means(models["gmvae"], PRIOR_ROWS * PRIOR_COLS), PRIOR_ROWS, PRIOR_COLS)

        text = readme.read_bytes().decode("utf-8")
        write_atomic(readme, fill(text, {"results": results_section(runs, args.iter_max)}).encode("utf-8"))
        if project_readme:
            text = Path(project_readme).read_bytes().decode("utf-8")
            write_atomic(project_readme, fill(text, {"readme-results": summary_section(runs)}).encode("utf-8"))
    except (ResultsError, DataError, checkpoint.CheckpointError, SaveError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    also = f" and {project_readme} (readme-results)" if project_readme else ""
    print(f"Filled {readme} (results){also} from {2 * args.seeds} runs; images: "
          + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
