"""writeup/make_results.py on small real runs: tables, images, untouched prose, repeatability."""
import json
import re
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from codebase.evaluate import SUBSET_REPEATS
from codebase.reference import COURSE_SOLUTION, MODEL_LABELS
from conftest import ROOT

sys.path.insert(0, str(ROOT / "writeup"))
import make_results  # noqa: E402

SEEDS, ITERATIONS = 2, 60
REGION = re.compile(r"(<!-- generated:([\w-]+):begin -->\n)(.*?)(<!-- generated:\2:end -->)", re.S)


def outside(text):
    """The README with every generated region emptied: what the script must not touch."""
    return REGION.sub(r"\1\4", text)


def regions(text):
    return {m.group(2): m.group(3) for m in REGION.finditer(text)}


@pytest.fixture(scope="module")
def small(tmp_path_factory, mnist_dir):
    """Two seeds of each model, 60 iterations, trained by the script itself into a temporary folder."""
    base = tmp_path_factory.mktemp("writeup")
    out = base / "out"
    out.mkdir()
    shutil.copy(ROOT / "writeup" / "README.md", out / "README.md")
    shutil.copy(ROOT / "README.md", base / "PROJECT_README.md")
    args = ["--seeds", str(SEEDS), "--iter_max", str(ITERATIONS), "--logs", str(base / "logs"),
            "--checkpoints", str(base / "checkpoints"), "--out", str(out), "--readme", str(out / "README.md"),
            "--project-readme", str(base / "PROJECT_README.md"), "--data-dir", str(mnist_dir)]
    assert make_results.main([*args, "--run-missing"]) == 0
    return base, out, args


def test_regions_hold_both_models_tables_with_the_runs_numbers(small):
    base, out, _ = small
    filled = regions((out / "README.md").read_text())
    project = regions((base / "PROJECT_README.md").read_text())
    assert set(filled) | set(project) == set(make_results.REGIONS)  # REGIONS names every region written
    results = filled["results"]
    assert "−IWAE-1000" in results and "nan" not in results
    for model, name in [("GMVAE", "model=gmvae_z=10_k=500_run=0000"), ("VAE", "model=vae_z=10_run=0000")]:
        run = json.loads((base / "logs" / name / "results.json").read_text())
        # The tables carry the run's own figures, not typed ones.
        assert f"| {model}, this project's seed 0 | {run['nelbo']:.2f} ± {run['nelbo_sd']:.2f} | {run['kl']:.2f} |" in results
        se = run["nelbo_sd"] / SUBSET_REPEATS ** 0.5
        assert f"| {model} | 0 | {run['nelbo']:.2f} | {se:.3f} | {run['kl']:.2f} | {run['rec']:.2f} | {run['test_nelbo']:.2f} |" in results
        assert re.search(rf"^\| {model} \| [\d.]+ ± [\d.]+ \|", results, re.M)  # mean ± sd over the seeds
    assert f"{SEEDS} seeds" in results and f"{ITERATIONS} iterations" in results


def test_the_course_rows_are_quoted_from_reference_on_the_subset(small):
    _, out, _ = small
    results = regions((out / "README.md").read_text())["results"]
    for model, c in COURSE_SOLUTION.items():
        row = (f"| {MODEL_LABELS[model]}, course solution | {c['nelbo']:g} ± {c['nelbo_sd']:g} | {c['kl']:g} | "
               f"{c['rec']:g} | " + " | ".join(f"{c['iwae'][k]:g}" for k in (1, 10, 100, 1000)) + " |")
        assert row in results
    table_1 = results.split("**Table 1.")[1].split("**Table 2.")[0]
    assert "100-image subset" in table_1 and "course solution" in table_1
    assert "course solution" not in results.split("**Table 2.")[1]  # no course row among full-split figures
    assert "19.29 + 82.57 = 101.86, not 101.5" in results


def test_the_project_readme_gets_each_default_runs_figures(small):
    base, _, _ = small
    text = (base / "PROJECT_README.md").read_text()
    summary = regions(text)["readme-results"]
    for script, name in [("run_gmvae.py", "model=gmvae_z=10_k=500_run=0000"), ("run_vae.py", "model=vae_z=10_run=0000")]:
        run = json.loads((base / "logs" / name / "results.json").read_text())
        assert f"| `python {script}` | {run['nelbo']:.2f} | {run['kl']:.2f} | {run['rec']:.2f} |" in summary
    assert outside(text) == outside((ROOT / "README.md").read_text())


def test_images_exist_with_the_right_sizes(small):
    _, out, _ = small
    text = (out / "README.md").read_text()
    for name in make_results.IMAGES.values():
        assert f"]({name})" in text
    sizes = {name: matplotlib.image.imread(out / name).shape[:2] for name in make_results.IMAGES.values()}
    assert sizes["reconstructions.png"] == (3 * 28, 20 * 28)
    assert sizes["prior_components.png"] == (5 * 28, 20 * 28)
    height, width = sizes["training_curves.png"]
    assert width > 2 * height  # three panels side by side


def test_both_sample_grids_are_10_by_20_and_the_draws_are_binary(small):
    base, out, _ = small
    for model, name in [("gmvae", "model=gmvae_z=10_k=500_run=0000"), ("vae", "model=vae_z=10_run=0000")]:
        for grid in (base / "logs" / name / "samples_binary.png", out / f"{model}_samples_binary.png"):
            pixels = matplotlib.image.imread(grid)[..., :3]
            assert pixels.shape[:2] == (10 * 28, 20 * 28)
            assert set(np.unique(pixels)) == {0.0, 1.0}
        for grid in (base / "logs" / name / "samples_means.png", out / f"{model}_samples_means.png"):
            pixels = matplotlib.image.imread(grid)[..., :3]
            assert pixels.shape[:2] == (10 * 28, 20 * 28)
            assert len(np.unique(pixels)) > 2  # gray levels: the means, not draws


def test_the_code_shown_in_problem_3_1_is_the_code():
    text = (ROOT / "writeup" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    source = {line.strip() for f in ("codebase/utils.py", "codebase/models/gmvae.py")
              for line in (ROOT / f).read_text().splitlines()}
    assert len(blocks) == 2
    for block in blocks:
        assert all(line.strip() in source for line in block.splitlines()), block


def test_text_outside_the_markers_is_unchanged(small):
    _, out, _ = small
    original = (ROOT / "writeup" / "README.md").read_bytes().decode()
    assert outside((out / "README.md").read_bytes().decode()) == outside(original)


def test_a_second_run_from_the_repository_root_gives_the_same_bytes(small):
    _, out, args = small
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    done = subprocess.run([sys.executable, "writeup/make_results.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("change, problem", [(["--seeds", "3"], "no results.json"),
                                             (["--iter_max", "40"], "trained 60 iterations, not --iter_max 40")])
def test_missing_runs_are_a_one_line_error_naming_the_flag(small, capsys, change, problem):
    _, out, args = small
    before = (out / "README.md").read_bytes()
    capsys.readouterr()
    assert make_results.main([*args, *change]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert problem in err and "--run-missing" in err
    assert (out / "README.md").read_bytes() == before


def test_a_readme_without_its_markers_is_refused():
    with pytest.raises(make_results.ResultsError, match="generated:results:begin"):
        make_results.fill("# no markers\n", {"results": "x"})
    text = "a\n<!-- generated:results:begin -->\nold\n<!-- generated:results:end -->\nb\n"
    assert make_results.fill(text, {"results": "new"}).startswith("a\n<!-- generated:results:begin -->\n")
    assert make_results.fill(text, {"results": "new"}).endswith("\nnew\n<!-- generated:results:end -->\nb\n")
