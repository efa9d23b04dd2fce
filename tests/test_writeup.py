"""writeup/: the committed data render the committed write-up, and collect works on small real runs (slow)."""
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codebase import evaluate
from codebase.check.figures import ACCEPTED, COURSE_SOLUTION, HANDOUT_GMVAE_NELBO, MODEL_LABELS
from codebase.evaluate import IWAE_KS, SUBSET_REPEATS
from writeup import collect, make_results

ROOT = Path(__file__).resolve().parents[1]
WRITEUP = ROOT / "writeup"
DOCUMENTS = ("README.md", "details.md")
REGION = re.compile(r"(<!-- generated:([\w-]+):begin -->\n)(.*?)(<!-- generated:\2:end -->)", re.S)
SEEDS, ITERATIONS = 2, 60  # the small runs that the slow tests train
GMVAE_0, VAE_0 = "model=gmvae_z=10_k=500_run=0000", "model=vae_z=10_run=0000"


def outside(text):
    """The text with every generated region emptied: what the script must not touch."""
    return REGION.sub(r"\1\4", text)


def regions(text):
    return {m.group(2): m.group(3) for m in REGION.finditer(text)}


def files(folder):
    """{path relative to folder: bytes} of every file below it."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def pixels(path):
    """The decoded pixels of a PNG: numpy uint8 array: (height, width, 4): RGBA.

    Decoded, so that what the encoder chooses (compression, chunks, the library's version) does not count.
    """
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"))


def fresh_writeup(base):
    """A copy of the write-up's two documents, without images, and of the project README, under base."""
    out = base / "out"
    out.mkdir()
    for name in DOCUMENTS:
        shutil.copy(WRITEUP / name, out / name)
    shutil.copy(ROOT / "README.md", base / "PROJECT_README.md")
    return out


def render(base, data):
    """make_results' exit status, rendering `data` into fresh_writeup(base)."""
    out = fresh_writeup(base)
    return make_results.main(["--data", str(data), "--out", str(out), "--project-readme",
                              str(base / "PROJECT_README.md")])


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """(base, out): the committed data, rendered as a fresh clone would, into copies of the documents."""
    base = tmp_path_factory.mktemp("rendered")
    shutil.copytree(WRITEUP / "runs", base / "data")
    assert render(base, base / "data") == 0
    return base, base / "out"


# ------------------------------------------------------------------------------- the committed write-up

def test_the_committed_data_render_the_committed_write_up(rendered):
    base, out = rendered
    for name in DOCUMENTS:
        assert (out / name).read_bytes() == (WRITEUP / name).read_bytes(), name
    assert (base / "PROJECT_README.md").read_bytes() == (ROOT / "README.md").read_bytes()
    # Pixel for pixel: the exact test is the only one that a stale image cannot pass (a dropped point of
    # one training curve changes the figure less than a change of the drawing library's text hinting).
    for name in make_results.IMAGES.values():
        fresh, committed = pixels(out / name), pixels(WRITEUP / name)
        assert fresh.shape == committed.shape, name
        assert not (differ := int((fresh != committed).any(-1).sum())), f"{name}: {differ} pixels differ"
    assert files(base / "data") == files(WRITEUP / "runs")  # render only reads the data


def test_a_second_render_changes_nothing(rendered):
    base, out = rendered
    before = files(out), (base / "PROJECT_README.md").read_bytes()
    assert make_results.main(["--data", str(base / "data"), "--out", str(out), "--project-readme",
                              str(base / "PROJECT_README.md")]) == 0
    assert (files(out), (base / "PROJECT_README.md").read_bytes()) == before


def test_the_grids_show_the_datas_gray_levels(rendered):
    base, out = rendered
    _, _, _, grids = make_results.load_data(base / "data")
    for key in collect.GRIDS:
        assert np.array_equal(collect.png_gray_levels(out / make_results.IMAGES[key]), grids[key]), key
    sizes = {key: grid.shape for key, grid in grids.items()}
    samples = {sizes[f"{m}_samples_{kind}"] for m in collect.MODELS for kind in ("binary", "means")}
    assert samples == {(10 * 28, 20 * 28)}
    assert sizes["reconstructions"] == (3 * 28, 20 * 28) and sizes["prior"] == (5 * 28, 20 * 28)
    for m in collect.MODELS:
        assert set(np.unique(grids[f"{m}_samples_binary"])) == {0, 255}  # draws
        assert len(np.unique(grids[f"{m}_samples_means"])) > 2  # gray levels: the means, not draws
    height, width = pixels(out / make_results.IMAGES["curves"]).shape[:2]
    assert width > 2 * height  # three panels side by side


def test_changed_data_change_only_the_tables(tmp_path):
    shutil.copytree(WRITEUP / "runs", tmp_path / "data")
    results = tmp_path / "data" / GMVAE_0 / "results.json"
    results.write_text(json.dumps({**json.loads(results.read_text()), "nelbo": 123.456}))
    assert render(tmp_path, tmp_path / "data") == 0
    for name in DOCUMENTS:
        assert outside((tmp_path / "out" / name).read_text()) == outside((WRITEUP / name).read_text())
    tables = {**regions((tmp_path / "out" / "README.md").read_text()),
              **regions((tmp_path / "out" / "details.md").read_text()),
              **regions((tmp_path / "PROJECT_README.md").read_text())}
    assert {name for name, table in tables.items() if "123.46" in table} == {"results", "runs", "course",
                                                                              "readme-results"}


def test_a_document_without_its_markers_is_refused_and_nothing_is_written(tmp_path, capsys):
    with pytest.raises(make_results.ResultsError, match="generated:results:begin"):
        make_results.fill("# no markers\n", {"results": "x"})
    twice = "<!-- generated:results:begin -->\n<!-- generated:results:end -->\n"
    with pytest.raises(make_results.ResultsError):
        make_results.fill(twice * 2, {"results": "x"})
    text = "a\n<!-- generated:results:begin -->\nold\n<!-- generated:results:end -->\nb\n"
    assert make_results.fill(text, {"results": "new"}) == ("a\n<!-- generated:results:begin -->\n"
                                                           f"{make_results.NOTE}\nnew\n"
                                                           "<!-- generated:results:end -->\nb\n")
    out = fresh_writeup(tmp_path)
    details = (out / "details.md").read_text()
    (out / "details.md").write_text(details.replace("<!-- generated:course:end -->", ""))
    before = files(tmp_path)
    assert make_results.main(["--out", str(out), "--project-readme", str(tmp_path / "PROJECT_README.md")]) == 1
    assert "generated:course:end" in capsys.readouterr().err
    assert files(tmp_path) == before  # neither the other documents nor any image


def test_rendering_without_data_is_a_one_line_error_naming_collect(tmp_path, capsys):
    out = fresh_writeup(tmp_path)
    assert make_results.main(["--data", str(tmp_path / "none"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--collect" in err and "--run-missing" in err


def test_collect_flags_without_collect_are_refused(capsys):
    with pytest.raises(SystemExit):
        make_results.main(["--seeds", "2"])
    assert "--seeds is read only with --collect or --run-missing" in capsys.readouterr().err


def test_the_committed_data_is_small_and_holds_every_run():
    settings = json.loads((WRITEUP / "runs" / "settings.json").read_text())
    assert [len(settings["runs"][m]) for m in collect.MODELS] == [5, 5]
    assert sum(len(b) for b in files(WRITEUP / "runs").values()) < 500_000
    for m in collect.MODELS:
        for name in settings["runs"][m]:
            results = json.loads((WRITEUP / "runs" / name / "results.json").read_text())
            assert results["iterations"] == settings["iter_max"] and "config" not in results


def test_the_evaluation_counts_in_the_data_are_those_evaluate_uses(monkeypatch):
    calls = []
    monkeypatch.setattr(evaluate, "elbo_terms", lambda model, x, generator: torch.zeros(3, dtype=torch.float64))
    monkeypatch.setattr(evaluate, "negative_iwae", lambda model, x, iw, generator: calls.append(iw) or 0.0)
    evaluate.evaluate(None, torch.zeros(10_000, 784, dtype=torch.uint8), torch.device("cpu"), iwae=True)
    counts = {k: calls.count(k) for k in IWAE_KS}
    assert counts == {k: max(collect.IWAE_BASE // k, 1) for k in IWAE_KS}  # what collect writes
    settings = json.loads((WRITEUP / "runs" / "settings.json").read_text())
    assert counts == {int(k): n for k, n in settings["iwae_repeats"].items()}  # what Table 2 shows


def test_every_image_is_shown_and_every_image_shown_exists():
    shown = {name for doc in DOCUMENTS for name in re.findall(r"\]\(([\w.]+\.png)\)", (WRITEUP / doc).read_text())}
    assert shown == set(make_results.IMAGES.values())


def test_the_code_shown_in_problem_3_1_is_the_code():
    text = (WRITEUP / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    source = {line.strip() for f in ("codebase/utils.py", "codebase/models/gmvae.py")
              for line in (ROOT / f).read_text().splitlines()}
    assert len(blocks) == 2
    for block in blocks:
        assert all(line.strip() in source for line in block.splitlines()), block


def test_only_details_quotes_the_course_and_its_grader():
    details = regions((WRITEUP / "details.md").read_text())["course"]
    for model, c in COURSE_SOLUTION.items():
        row = (f"| {MODEL_LABELS[model]}, the course's solution | {c['nelbo']:g} ± {c['nelbo_sd']:g} | {c['kl']:g} | "
               f"{c['rec']:g} | " + " | ".join(f"{c['iwae'][k]:g}" for k in IWAE_KS) + " |")
        assert row in details
        assert " | ".join(f"{centre:g} ± {half:g}" for centre, half in ACCEPTED[model].values()) in details
    # Students read the README: none of the course's figures, its grader's ranges or staff talk.
    readme = (WRITEUP / "README.md").read_text()
    quoted = [f"{c['nelbo']:g} ± {c['nelbo_sd']:g}" for c in COURSE_SOLUTION.values()]
    quoted += [f"{centre:g} ± {half:g}" for terms in ACCEPTED.values() for centre, half in terms.values()]
    assert not [q for q in quoted if q in readme]
    assert not re.search(r"course solution|course's solution|autograder|this project|a student writes", readme, re.I)


def test_the_hand_written_sentences_hold_for_the_committed_data():
    """The text around the tables states no figures, but it states facts: if new data break one, this
    names the sentence to rewrite."""
    settings, runs, metrics, _ = make_results.load_data(make_results.DATA)
    g, v, iwae = runs["gmvae"], runs["vae"], make_results.iwae_columns(settings)

    def mean(rows, key):
        return statistics.fmean(r[key] for r in rows)

    # README, Table 1: "the handout's expected NELBO, which both the seed-0 run and the mean come close to".
    assert abs(g[0]["nelbo"] - HANDOUT_GMVAE_NELBO) < 1 and abs(mean(g, "nelbo") - HANDOUT_GMVAE_NELBO) < 1
    # "GMVAE against VAE": lower by several standard deviations, and every run below every VAE run, on both.
    for key in ("nelbo", "test_nelbo"):
        assert mean(v, key) - mean(g, key) > 3 * max(statistics.stdev(r[key] for r in rows) for rows in (g, v))
        assert max(r[key] for r in g) < min(r[key] for r in v)
    # "The IWAE bounds": falls at each S in every run, further for the VAE; VAE − GMVAE shrinks as S grows.
    assert all(r[a] > r[b] for r in g + v for a, b in zip(iwae, iwae[1:]))
    assert mean(v, iwae[0]) - mean(v, iwae[-1]) > mean(g, iwae[0]) - mean(g, iwae[-1])
    differences = [mean(v, c) - mean(g, c) for c in iwae]
    assert all(a > b for a, b in zip(differences, differences[1:]))
    # "The subset against the full split": higher on average, and in most runs by over three times the noise.
    assert all(mean(rows, "nelbo") > mean(rows, "test_nelbo") for rows in (g, v))
    noisy = [abs(r["nelbo"] - r["test_nelbo"]) <= 3 * math.hypot(*make_results.standard_errors(settings, r))
             for r in g + v]
    assert sum(noisy) < len(noisy) / 2
    # Table 5: the KL's minimum comes early and the KL climbs back; then the VAE's keeps rising, by more than
    # the GMVAE's, which moves by under a quarter of a nat from 2,000 to 5,000 first.
    first, second, end = *make_results.KL_MARKS, settings["iter_max"]
    for rows in metrics["gmvae"] + metrics["vae"]:
        lowest = min(rows, key=lambda row: row["kl"])
        assert lowest["iteration"] < first and make_results.kl_near(rows, first) > lowest["kl"]
    near = {m: [[make_results.kl_near(rows, mark) for mark in (first, second, end)] for rows in metrics[m]]
            for m in collect.MODELS}
    assert all(a < b < c for a, b, c in near["vae"])
    assert all(abs(b - a) < 0.25 and max(a, b) < c for a, b, c in near["gmvae"])
    assert min(c - a for a, _, c in near["vae"]) > max(c - a for a, _, c in near["gmvae"])
    # details.md, Table A: "with the settings in README.md's Table 2 it comes out equal to s.e."
    assert all(len({f"{e:.3f}" for e in make_results.standard_errors(settings, r)}) == 1 for r in g + v)
    # details.md, Table C: inside every accepted range; the course's VAE rows disagree with themselves.
    for m in collect.MODELS:
        assert all(abs(runs[m][0][t] - centre) <= half for t, (centre, half) in ACCEPTED[m].items())
    for m, c in COURSE_SOLUTION.items():
        # IWAE-1 is the ELBO, averaged over as many evaluations: within a few standard errors of the NELBO.
        noise = 3 * math.sqrt(2) * c["nelbo_sd"] / math.sqrt(settings["subset_repeats"])
        off = (abs(c["kl"] + c["rec"] - c["nelbo"]) > 0.01, abs(c["iwae"][1] - c["nelbo"]) > noise)
        assert off == ((True, True) if m == "vae" else (False, False)), m


# ----------------------------------------------------------------------------------- small runs (slow)

@pytest.fixture(scope="module")
def small(tmp_path_factory, mnist_dir):
    """Two seeds of each model, 60 iterations, trained by the script itself, collected and rendered."""
    base = tmp_path_factory.mktemp("writeup")
    out = fresh_writeup(base)
    args = ["--seeds", str(SEEDS), "--iter_max", str(ITERATIONS), "--logs", str(base / "logs"),
            "--checkpoints", str(base / "checkpoints"), "--data", str(base / "data"), "--out", str(out),
            "--project-readme", str(base / "PROJECT_README.md"), "--data-dir", str(mnist_dir)]
    assert make_results.main([*args, "--run-missing"]) == 0
    return base, out, args


@pytest.mark.slow
def test_small_runs_fill_every_table_with_their_own_numbers(small):
    base, out, _ = small
    readme, details = (regions((out / name).read_text()) for name in DOCUMENTS)
    project = regions((base / "PROJECT_README.md").read_text())
    assert set(readme) | set(details) | set(project) == set(make_results.REGIONS)
    for name in DOCUMENTS:
        assert outside((out / name).read_text()) == outside((WRITEUP / name).read_text())
    assert outside((base / "PROJECT_README.md").read_text()) == outside((ROOT / "README.md").read_text())
    g0 = json.loads((base / "logs" / GMVAE_0 / "results.json").read_text())
    assert f"| Seed 0, test subset | {g0['nelbo']:.2f} | {g0['kl']:.2f} | {g0['rec']:.2f} |" in readme["results"]
    assert f"| Training iterations of each run | {ITERATIONS} |" in readme["settings"]
    assert re.search(r"^\| GMVAE \| [\d.]+ ± [\d.]+ \|", readme["seeds"], re.M)  # mean ± sd over the seeds
    assert "nan" not in "".join(readme.values()) + "".join(details.values())
    for model, script, name in [("GMVAE", "run_gmvae.py", GMVAE_0), ("VAE", "run_vae.py", VAE_0)]:
        run = json.loads((base / "logs" / name / "results.json").read_text())
        se = run["nelbo_sd"] / SUBSET_REPEATS ** 0.5
        assert (f"| {model} | 0 | {run['nelbo']:.2f} | {se:.3f} | {run['kl']:.2f} | {run['rec']:.2f} | "
                f"{run['test_nelbo']:.2f} |") in details["runs"]
        summary = f"| `python {script}` | {run['nelbo']:.2f} | {run['kl']:.2f} | {run['rec']:.2f} |"
        assert summary in project["readme-results"]


@pytest.mark.slow
def test_the_write_up_shows_the_small_runs_own_sample_grids(small):
    base, out, _ = small
    for model, name in [("gmvae", GMVAE_0), ("vae", VAE_0)]:
        for kind in ("binary", "means"):
            shown = collect.png_gray_levels(out / f"{model}_samples_{kind}.png")
            assert np.array_equal(shown, collect.png_gray_levels(base / "logs" / name / f"samples_{kind}.png"))


@pytest.mark.slow
def test_a_second_collect_by_the_documented_command_gives_the_same_files(small):
    base, out, args = small
    before = files(base / "data"), files(out)
    done = subprocess.run([sys.executable, "-m", "writeup.make_results", *args, "--collect"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert (files(base / "data"), files(out)) == before


@pytest.mark.slow
@pytest.mark.parametrize("change, problem", [(["--seeds", "3"], "no results.json"),
                                             (["--iter_max", "40"], "trained 60 iterations, not --iter_max 40")])
def test_missing_runs_are_a_one_line_error_naming_the_flag(small, capsys, change, problem):
    base, out, args = small
    before = files(out), files(base / "data")
    capsys.readouterr()
    assert make_results.main([*args, *change, "--collect"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert problem in err and "--run-missing" in err
    assert (files(out), files(base / "data")) == before
