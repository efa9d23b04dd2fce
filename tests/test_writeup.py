"""writeup/make_results.py: collect on small real runs, render from the committed data, byte for byte."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import make_results
import matplotlib.image
import numpy as np
import pytest
import torch

from codebase import evaluate
from codebase.check.figures import ACCEPTED, COURSE_SOLUTION, MODEL_LABELS
from codebase.evaluate import IWAE_KS, SUBSET_REPEATS

ROOT = Path(__file__).resolve().parents[1]

SEEDS, ITERATIONS = 2, 60
REGION = re.compile(r"(<!-- generated:([\w-]+):begin -->\n)(.*?)(<!-- generated:\2:end -->)", re.S)
WRITEUP = ROOT / "writeup"
DOCUMENTS = ("README.md", "details.md")
GMVAE_0, VAE_0 = "model=gmvae_z=10_k=500_run=0000", "model=vae_z=10_run=0000"


def outside(text):
    """The text with every generated region emptied: what the script must not touch."""
    return REGION.sub(r"\1\4", text)


def regions(text):
    return {m.group(2): m.group(3) for m in REGION.finditer(text)}


def files(folder):
    """{path relative to folder: bytes} of every file below it."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fresh_writeup(base):
    """A copy of the write-up's two documents, without images, and of the project README, under base."""
    out = base / "out"
    out.mkdir()
    for name in DOCUMENTS:
        shutil.copy(WRITEUP / name, out / name)
    shutil.copy(ROOT / "README.md", base / "PROJECT_README.md")
    return out


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


def test_regions_hold_the_runs_numbers(small):
    base, out, _ = small
    readme, details = (regions((out / name).read_text()) for name in DOCUMENTS)
    project = regions((base / "PROJECT_README.md").read_text())
    assert set(readme) | set(details) | set(project) == set(make_results.REGIONS)  # every region is written
    g0 = json.loads((base / "logs" / GMVAE_0 / "results.json").read_text())
    # Problem 3.2: the default GMVAE run's own three figures, not typed ones.
    assert f"| GMVAE, test subset | {g0['nelbo']:.2f} | {g0['kl']:.2f} | {g0['rec']:.2f} |" in readme["results"]
    assert f"NELBO is {g0['test_nelbo']:.2f}" in readme["results"] and f"{ITERATIONS} training" in readme["results"]
    assert re.search(r"^\| GMVAE \| [\d.]+ ± [\d.]+ \|", readme["beyond"], re.M)  # mean ± sd over the seeds
    assert "−IWAE-1000" in readme["beyond"] and "nan" not in readme["beyond"] + details["details"]
    for model, name in [("GMVAE", GMVAE_0), ("VAE", VAE_0)]:
        run = json.loads((base / "logs" / name / "results.json").read_text())
        se = run["nelbo_sd"] / SUBSET_REPEATS ** 0.5
        assert (f"| {model} | 0 | {run['nelbo']:.2f} | {se:.3f} | {run['kl']:.2f} | {run['rec']:.2f} | "
                f"{run['test_nelbo']:.2f} | {run['iwae']['1']:.2f} |") in details["details"]
    assert f"seeds 0 to {SEEDS - 1}" in readme["beyond"]


def test_the_iwae_captions_say_how_many_evaluations_each_bound_averages(small):
    _, out, _ = small
    text = (out / "README.md").read_text()
    assert "max(100 // S, 1) evaluations: 100, 10, 1 and 1 for S = 1, 10, 100 and 1000" in text
    assert "−IWAE-1000 are single evaluations" in text


def test_the_counts_in_the_captions_are_those_evaluate_uses(monkeypatch):
    calls = []
    monkeypatch.setattr(evaluate, "elbo_terms", lambda model, x, generator: torch.zeros(3, dtype=torch.float64))
    monkeypatch.setattr(evaluate, "negative_iwae", lambda model, x, iw, generator: calls.append(iw) or 0.0)
    evaluate.evaluate(None, torch.zeros(10_000, 784, dtype=torch.uint8), torch.device("cpu"), iwae=True)
    assert {k: calls.count(k) for k in IWAE_KS} == {k: max(make_results.IWAE_BASE // k, 1) for k in IWAE_KS}


def test_only_details_quotes_the_course_and_its_grader(small):
    _, out, _ = small
    details = regions((out / "details.md").read_text())["details"]
    for model, c in COURSE_SOLUTION.items():
        row = (f"| {MODEL_LABELS[model]}, the course's solution | {c['nelbo']:g} ± {c['nelbo_sd']:g} | {c['kl']:g} | "
               f"{c['rec']:g} | " + " | ".join(f"{c['iwae'][k]:g}" for k in IWAE_KS) + " |")
        assert row in details
    assert "19.29 + 82.57 = 101.86, not its NELBO 101.5" in details
    assert "−IWAE-1 is 99.83, although IWAE-1 is the ELBO" in details
    assert "GMVAE NELBO 97 ± 3" in details
    # Students read the README: none of the course's figures, its grader's ranges or staff talk.
    for readme in ((out / "README.md").read_text(), (WRITEUP / "README.md").read_text()):
        quoted = [f"{c['nelbo']:g} ± {c['nelbo_sd']:g}" for c in COURSE_SOLUTION.values()]
        quoted += [f"{centre:g} ± {half:g}" for terms in ACCEPTED.values() for centre, half in terms.values()]
        assert not [q for q in quoted if q in readme]
        assert not re.search(r"course solution|course's solution|autograder|this project|a student writes",
                             readme, re.I)


def test_the_project_readme_gets_each_default_runs_figures(small):
    base, _, _ = small
    text = (base / "PROJECT_README.md").read_text()
    summary = regions(text)["readme-results"]
    for script, name in [("run_gmvae.py", GMVAE_0), ("run_vae.py", VAE_0)]:
        run = json.loads((base / "logs" / name / "results.json").read_text())
        assert f"| `python {script}` | {run['nelbo']:.2f} | {run['kl']:.2f} | {run['rec']:.2f} |" in summary
    assert outside(text) == outside((ROOT / "README.md").read_text())


def test_images_exist_with_the_right_sizes(small):
    _, out, _ = small
    text = (out / "README.md").read_text() + (out / "details.md").read_text()
    for name in make_results.IMAGES.values():
        assert f"]({name})" in text
    sizes = {name: matplotlib.image.imread(out / name).shape[:2] for name in make_results.IMAGES.values()}
    assert sizes["reconstructions.png"] == (3 * 28, 20 * 28)
    assert sizes["prior_components.png"] == (5 * 28, 20 * 28)
    height, width = sizes["training_curves.png"]
    assert width > 2 * height  # three panels side by side


@pytest.mark.parametrize("where", ["small runs", "committed"])
def test_both_sample_grids_are_10_by_20_and_the_draws_are_binary(small, where):
    base, out, _ = small
    folder = out if where == "small runs" else WRITEUP
    for model, name in [("gmvae", GMVAE_0), ("vae", VAE_0)]:
        for kind in ("binary", "means"):
            grid = folder / f"{model}_samples_{kind}.png"
            pixels = matplotlib.image.imread(grid)[..., :3]
            assert pixels.shape[:2] == (10 * 28, 20 * 28)
            if kind == "binary":
                assert set(np.unique(pixels)) == {0.0, 1.0}
            else:
                assert len(np.unique(pixels)) > 2  # gray levels: the means, not draws
            if where == "small runs":  # the write-up shows the run's own grid, byte for byte
                assert grid.read_bytes() == (base / "logs" / name / f"samples_{kind}.png").read_bytes()


def test_the_code_shown_in_problem_3_1_is_the_code():
    text = (WRITEUP / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    source = {line.strip() for f in ("codebase/utils.py", "codebase/models/gmvae.py")
              for line in (ROOT / f).read_text().splitlines()}
    assert len(blocks) == 2
    for block in blocks:
        assert all(line.strip() in source for line in block.splitlines()), block


def test_text_outside_the_markers_is_unchanged(small):
    _, out, _ = small
    for name in DOCUMENTS:
        assert outside((out / name).read_bytes().decode()) == outside((WRITEUP / name).read_bytes().decode())


def test_a_second_collect_and_render_from_the_repository_root_gives_the_same_bytes(small):
    base, out, args = small
    before = files(base / "data"), files(out)
    done = subprocess.run([sys.executable, "writeup/make_results.py", *args, "--collect"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert (files(base / "data"), files(out)) == before


def test_the_committed_data_renders_the_committed_write_up_byte_for_byte(tmp_path):
    # A fresh clone: the committed data and documents, no runs, no images; run from elsewhere, and
    # with torch unimportable, since rendering must not need it.
    shutil.copytree(WRITEUP / "runs", tmp_path / "data")
    out = fresh_writeup(tmp_path)
    command = [sys.executable, "-c", "import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')", str(WRITEUP / "make_results.py"),
               "--data", str(tmp_path / "data"), "--out", str(out),
               "--project-readme", str(tmp_path / "PROJECT_README.md")]
    for _ in range(2):  # and a second render changes nothing
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        for name in (*DOCUMENTS, *make_results.IMAGES.values()):
            assert (out / name).read_bytes() == (WRITEUP / name).read_bytes(), name
        assert (tmp_path / "PROJECT_README.md").read_bytes() == (ROOT / "README.md").read_bytes()
    assert files(tmp_path / "data") == files(WRITEUP / "runs")  # render only reads the data


def test_the_committed_data_is_small_and_holds_every_run():
    settings = json.loads((WRITEUP / "runs" / "settings.json").read_text())
    assert [len(settings["runs"][m]) for m in make_results.MODELS] == [5, 5]
    assert sum(len(b) for b in files(WRITEUP / "runs").values()) < 500_000
    for m in make_results.MODELS:
        for name in settings["runs"][m]:
            results = json.loads((WRITEUP / "runs" / name / "results.json").read_text())
            assert results["iterations"] == settings["iter_max"] and "config" not in results


def test_the_write_up_stays_short():
    assert len((WRITEUP / "README.md").read_text().splitlines()) <= 250


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


def test_rendering_without_data_is_a_one_line_error_naming_collect(tmp_path, capsys):
    out = fresh_writeup(tmp_path)
    assert make_results.main(["--data", str(tmp_path / "none"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--collect" in err and "--run-missing" in err


def test_collect_flags_without_collect_are_refused(capsys):
    with pytest.raises(SystemExit):
        make_results.main(["--seeds", "2"])
    assert "--seeds is read only with --collect or --run-missing" in capsys.readouterr().err


def test_a_readme_without_its_markers_is_refused():
    with pytest.raises(make_results.ResultsError, match="generated:results:begin"):
        make_results.fill("# no markers\n", {"results": "x"})
    text = "a\n<!-- generated:results:begin -->\nold\n<!-- generated:results:end -->\nb\n"
    assert make_results.fill(text, {"results": "new"}).startswith("a\n<!-- generated:results:begin -->\n")
    assert make_results.fill(text, {"results": "new"}).endswith("\nnew\n<!-- generated:results:end -->\nb\n")
