"""Regenerate the write-up's tables and images, and the project README's results table.

From the repository's root:

    python -m writeup.make_results                  # render from the committed data (no runs needed)
    python -m writeup.make_results --collect        # refresh the data from the runs in logs/ and checkpoints/
    python -m writeup.make_results --run-missing    # the same, first training the runs that are missing

collect (writeup/collect.py) writes DATA from the runs. render reads DATA alone, not the runs, checkpoints
or MNIST: it writes the images (IMAGES) next to the write-up and puts a table between the lines
`<!-- generated:NAME:begin -->` and `<!-- generated:NAME:end -->` for each NAME in REGIONS, in
writeup/README.md, writeup/details.md and the project README. The text around the tables is written by
hand. The same data give the same text and the same pixels.
"""
import argparse
import gzip
import io
import json
import math
import statistics
import sys
from pathlib import Path

from codebase.check.figures import (
    ACCEPTED,
    COURSE_SOLUTION,
    HANDOUT_GMVAE_NELBO,
    MODEL_LABELS,
    RUN_SCRIPTS,
    TERM_LABELS,
)
from codebase.config import Config
from codebase.runtime.errors import UserError
from codebase.runtime.files import write_atomic
from codebase.runtime.metrics import read_metrics
from writeup.collect import GRIDS, MODELS, PARALLEL, ResultsError, collect

HERE = Path(__file__).resolve().parent
TERMS = tuple(TERM_LABELS)
DATA = HERE / "runs"  # the committed data that render reads
# Each table and the document it is in: None is the project README (--project-readme).
REGIONS = {"results": "README.md", "settings": "README.md", "seeds": "README.md", "split": "README.md",
           "kl": "README.md", "runs": "details.md", "means": "details.md", "course": "details.md",
           "readme-results": None}
NOTE = "<!-- Written by `python -m writeup.make_results` from writeup/runs/; edit the script, not this table. -->"
SIDE = 28  # an MNIST image is SIDE x SIDE pixels
IMAGES = {**{key: f"{key}.png" for key in GRIDS if key != "prior"}, "prior": "prior_components.png",
          "curves": "training_curves.png"}
KL_MARKS = (2000, 5000)  # iterations where the KL's course is summarised, besides the last
KL_HALF_WINDOW = 500  # ... each as the mean of the logged points within this many iterations of the mark


def load_data(data):
    """The committed data: settings, {model: [results, seed 0 first]}, {model: [metrics rows]}, grids.

    A run's results also hold its IWAE bounds under the keys "iwae<S>".
    """
    import numpy as np

    if not (data / "settings.json").is_file():
        raise ResultsError(f"no {data / 'settings.json'}: make the data from runs with --collect (runs in logs/ "
                           "and checkpoints/), or --run-missing to train them first")
    try:
        settings = json.loads((data / "settings.json").read_text())
        runs = {m: [json.loads((data / name / "results.json").read_text()) for name in settings["runs"][m]]
                for m in MODELS}
        runs = {m: [{**r, **{f"iwae{k}": v for k, v in r["iwae"].items()}} for r in runs[m]] for m in MODELS}
        metrics = {m: [read_metrics(data / name / "metrics.csv")[0] for name in settings["runs"][m]]
                   for m in MODELS}
        grids = {key: np.load(io.BytesIO(gzip.decompress((data / "grids" / f"{key}.npy.gz").read_bytes())),
                              allow_pickle=False) for key in GRIDS}
    except (OSError, ValueError, KeyError) as e:
        raise ResultsError(f"the data in {data} are incomplete ({type(e).__name__}: {e}); make them again with "
                           "--collect, or --run-missing") from None
    return settings, runs, metrics, grids


def iwae_columns(settings):
    """The results keys of the IWAE bounds, "iwae<S>", smallest S first."""
    return [f"iwae{k}" for k in sorted(settings["iwae_repeats"], key=int)]


def header(key):
    """A column's title: NELBO, KL, Rec, their full-split versions, or −IWAE-S."""
    if key.startswith("test_"):
        return f"{TERM_LABELS[key[5:]]}, full test split"
    return TERM_LABELS.get(key) or f"−IWAE-{key[4:]}"


def pm(values):
    """'mean ± sample standard deviation', or the mean alone for one value."""
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def span(values, digits=2, signed=False):
    """'low to high' of the values, or the one value if they agree at this precision."""
    form = f"{'+' if signed else ''},.{digits}f"
    low, high = (format(v, form).replace("-", "−") for v in (min(values), max(values)))
    return low if low == high else f"{low} to {high}"


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


def results_table(runs):
    """Problem 3.2: the default GMVAE run on the subset and the full split, and the mean over the seeds."""
    g = runs["gmvae"]
    return table(["`python run_gmvae.py`", *TERM_LABELS.values()], [
        ["Seed 0, test subset", *(f"{g[0][t]:.2f}" for t in TERMS)],
        ["Seed 0, full test split", *(f"{g[0]['test_' + t]:.2f}" for t in TERMS)],
        [f"{seed_names(runs).capitalize()}, test subset: mean ± sd", *(pm([r[t] for r in g]) for t in TERMS)],
        ["The handout's expectation", f"about {HANDOUT_GMVAE_NELBO:g}", "", ""]])


def seed_names(runs):
    """'seeds 0 to N', or 'seed 0'."""
    return f"seeds 0 to {len(runs['gmvae']) - 1}" if len(runs["gmvae"]) > 1 else "seed 0"


def settings_table(settings, runs, metrics):
    """How the runs were trained and evaluated, from settings.json and the runs' own records."""
    ks = [c[4:] for c in iwae_columns(settings)]
    steps = [(r.get("compile") or {}).get("path", "eager") for m in MODELS for r in runs[m]]  # None: eager
    return table(["Setting", "Value"], [
        ["Training iterations of each run", f"{settings['iter_max']:,}"],
        ["Runs of each model", f"{len(runs['gmvae'])} ({seed_names(runs)})"],
        ["Training steps averaged in each logged point (`metrics.csv`)", str(metrics["gmvae"][0][0]["iteration"])],
        ["Images in the fixed test subset", str(settings["subset_images"])],
        ["Evaluations averaged for the subset's NELBO, KL and Rec", str(settings["subset_repeats"])],
        [f"Evaluations averaged for −IWAE-S, S = {', '.join(ks)}",
         ", ".join(str(settings["iwae_repeats"][k]) for k in ks)],
        ["Images in the full test split (one evaluation)", f"{settings['test_images']:,}"],
        ["Training step (as results.json records it)",
         "; ".join(f"{step}, {steps.count(step)} of {len(steps)} runs" for step in dict.fromkeys(steps))],
        ["Machine (as results.json records it)", machine([r for m in MODELS for r in runs[m]])]],
        align=[":---", ":---"])


def means_table(runs, columns):
    """Each model's mean ± sample standard deviation over the seeds, and the difference of the means."""
    mean = {m: {c: statistics.fmean(r[c] for r in runs[m]) for c in columns} for m in MODELS}
    return table(["Model", *(header(c) for c in columns)],
                 [[MODEL_LABELS[m], *(pm([r[c] for r in runs[m]]) for c in columns)] for m in MODELS]
                 + [["VAE − GMVAE", *(f"{mean['vae'][c] - mean['gmvae'][c]:+.2f}" for c in columns)]])


def split_table(settings, runs):
    """The subset's NELBO minus the full split's, against the Monte-Carlo noise of that difference."""
    rows = []
    for m in MODELS:
        differences = [r["nelbo"] - r["test_nelbo"] for r in runs[m]]
        noise = [math.hypot(*standard_errors(settings, r)) for r in runs[m]]
        beyond = sum(abs(d) > 3 * n for d, n in zip(differences, noise))
        rows.append([MODEL_LABELS[m], span([statistics.fmean(differences)], signed=True),
                     span(differences, signed=True), span(noise, 3), f"{beyond} of {len(differences)}"])
    return table(["Model", "Subset − full split: mean", "In single runs", "Noise of one difference (s.e.)",
                  "Runs where it exceeds 3 × noise"], rows)


def kl_near(rows, mark):
    """The mean logged KL within KL_HALF_WINDOW iterations of `mark`: one logged point alone is noisy."""
    inside = [row["kl"] for row in rows if abs(row["iteration"] - mark) <= KL_HALF_WINDOW]
    return statistics.fmean(inside) if inside else math.nan


def kl_table(settings, metrics):
    """The logged KL of every run: its first point, its lowest and where, and its level at KL_MARKS and the end."""
    marks = [mark for mark in KL_MARKS if mark < settings["iter_max"]] + [settings["iter_max"]]
    rows = []
    for m in MODELS:
        lowest = [min(each, key=lambda row: row["kl"]) for each in metrics[m]]
        rows.append([MODEL_LABELS[m], span([each[0]["kl"] for each in metrics[m]]), span([r["kl"] for r in lowest]),
                     span([r["iteration"] for r in lowest], 0),
                     *(span([kl_near(each, mark) for each in metrics[m]]) for mark in marks)])
    return table(["Model", f"First point (steps 1 to {metrics['gmvae'][0][0]['iteration']})", "Lowest",
                  "At iteration", *(f"Around {mark:,} (± {KL_HALF_WINDOW})" for mark in marks)], rows)


def runs_table(settings, runs):
    """details.md: every run's figures, with the Monte-Carlo standard errors of its two NELBOs."""
    iwae = iwae_columns(settings)
    return table(["Model", "Seed", "NELBO", "s.e.", "KL", "Rec", header("test_nelbo"), "s.e., full split",
                  *(header(c) for c in iwae), "Training (s)"],
                 [[MODEL_LABELS[m], str(r["seed"]), f"{r['nelbo']:.2f}", f"{standard_errors(settings, r)[0]:.3f}",
                   f"{r['kl']:.2f}", f"{r['rec']:.2f}", f"{r['test_nelbo']:.2f}",
                   f"{standard_errors(settings, r)[1]:.3f}", *(f"{r[c]:.2f}" for c in iwae),
                   f"{r['train_seconds']:.1f}"] for m in MODELS for r in runs[m]])


def course_table(settings, runs):
    """details.md: each seed-0 run, the course's solution (± its own spread) and its autograder's ranges."""
    iwae, rows = iwae_columns(settings), []
    for m in MODELS:
        c, r = COURSE_SOLUTION[m], runs[m][0]
        rows += [[f"{MODEL_LABELS[m]}, seed 0", f"{r['nelbo']:.2f} ± {r['nelbo_sd']:.2f}",
                  *(f"{r[k]:.2f}" for k in ("kl", "rec", *iwae))],
                 [f"{MODEL_LABELS[m]}, the course's solution", f"{c['nelbo']:g} ± {c['nelbo_sd']:g}",
                  f"{c['kl']:g}", f"{c['rec']:g}", *(f"{c['iwae'][int(k[4:])]:g}" for k in iwae)],
                 [f"{MODEL_LABELS[m]}, the course's autograder accepts",
                  *(f"{ACCEPTED[m][t][0]:g} ± {ACCEPTED[m][t][1]:g}" for t in TERMS), *([""] * len(iwae))]]
    return table(["", *(header(k) for k in (*TERMS, *iwae))], rows)


def summary_table(runs):
    """The project README's table: each model's default run (seed 0)."""
    return table(["Command", "NELBO", "KL", "Rec", "NELBO, full test split", "Machine"], [
        [f"`python {RUN_SCRIPTS[m]}`", *(f"{runs[m][0][k]:.2f}" for k in (*TERMS, "test_nelbo")),
         machine([runs[m][0]])] for m in MODELS], align=[":---"] + ["---:"] * 4 + [":---"])


def tables(settings, runs, metrics):
    """{region: Markdown table} for every region in REGIONS."""
    iwae = iwae_columns(settings)
    return {"results": results_table(runs), "settings": settings_table(settings, runs, metrics),
            "seeds": means_table(runs, ["nelbo", "test_nelbo", *iwae]), "split": split_table(settings, runs),
            "kl": kl_table(settings, metrics), "runs": runs_table(settings, runs),
            "means": means_table(runs, [*TERMS, *(f"test_{t}" for t in TERMS), *iwae]),
            "course": course_table(settings, runs), "readme-results": summary_table(runs)}


def curves_png(metrics):
    """One PNG: NELBO, KL and Rec against the iteration, both models in each panel; metrics: {model: rows}."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and the same pixels everywhere
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100)
    for ax, key in zip(axes, TERMS):
        for m in MODELS:
            ax.plot([r["iteration"] for r in metrics[m]], [r[key] for r in metrics[m]], label=MODEL_LABELS[m],
                    linewidth=1)
        ax.set(xscale="log", title=TERM_LABELS[key], xlabel="training iteration (log scale)",
               ylabel=f"{TERM_LABELS[key]} (nats per image)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def grid_png(gray):
    """The PNG of a grid of digits, drawn by torchvision.

    Args:
        gray: numpy uint8 array: (rows * 28, cols * 28): gray levels

    Returns:
        png: bytes: an RGB PNG whose three channels hold exactly these gray levels
    """
    import torch
    from torchvision.utils import save_image

    rows, cols = gray.shape[0] // SIDE, gray.shape[1] // SIDE
    images = torch.from_numpy(gray).float().div(255).reshape(rows, SIDE, cols, SIDE).permute(0, 2, 1, 3)
    buffer = io.BytesIO()
    # save_image scales by 255 and rounds, which gives back each gray level exactly.
    save_image(images.reshape(rows * cols, 1, SIDE, SIDE), buffer, format="png", nrow=cols, padding=0)
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
            raise ResultsError(f"no {path}; the write-up's folder (--out) must hold "
                               + ", ".join(p.name for p in documents))
    settings, runs, metrics, grids = load_data(data)
    bodies = tables(settings, runs, metrics)
    # Every document is filled in memory first, so that a missing marker leaves them all as they were.
    texts = {path: fill(path.read_bytes().decode("utf-8"), {r: bodies[r] for r, n in REGIONS.items()
                                                             if n == path.name}) for path in documents}
    if project_readme:
        text = Path(project_readme).read_bytes().decode("utf-8")
        texts[Path(project_readme)] = fill(text, {"readme-results": bodies["readme-results"]})
    for key in GRIDS:
        write_atomic(out / IMAGES[key], grid_png(grids[key]))
    write_atomic(out / IMAGES["curves"], curves_png({m: metrics[m][0] for m in MODELS}))
    for path, text in texts.items():
        write_atomic(path, text.encode("utf-8"))


# -------------------------------------------------------------------------------------------------- main

def build_parser():
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m writeup.make_results",
        description="Render the write-up's tables and images from the committed data (writeup/runs/); with "
                    "--collect or --run-missing, first refresh that data from the runs.",
        epilog="To refresh the data from runs: train them (`python run_gmvae.py --run N --seed N --iwae` and the "
               "same for run_vae.py, N = 0 .. 4), then `python -m writeup.make_results --collect`; or let "
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
    project_readme = args.project_readme or (None if args.out else HERE.parent / "README.md")
    try:
        if (args.collect or args.run_missing) and (status := collect(args, data)):
            return status
        render(data, out, project_readme)
    except UserError as e:  # ResultsError, and codebase's own: MNIST, a checkpoint, a file not written
        print(f"error: {e}", file=sys.stderr)
        return 1
    also = f" and {project_readme} (readme-results)" if project_readme else ""
    print(f"Filled {out / 'README.md'}, {out / 'details.md'}{also} from {data}; images: "
          + ", ".join(IMAGES.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
