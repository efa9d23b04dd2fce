"""--compile: the training step compiled by torch.compile, its eager trial, its fallback, its graph."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import codebase.run as run_module
import codebase.train as train_module
from codebase.config import Config
from codebase.models import make_model
from codebase.runtime import compiled
from codebase.train import binarised_bound, make_optimizer, make_step, training_generator
from course import handout

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture
def fresh_dynamo():
    # Each test compiles a new model through the same code object: dynamo's recompile limit (8) would
    # otherwise make later tests run eagerly without a word.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


SMALL = Config(z=2, k=5)


def parts(config=SMALL, seed=0):
    """A small model, its Adam and its generator, as a run makes them."""
    torch.manual_seed(seed)
    model = make_model(config)
    return model, make_optimizer(model, config, CPU), training_generator(config, CPU)


def batches(n=6, seed=1):
    return torch.rand(n, 100, 784, generator=torch.Generator().manual_seed(seed))


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def no_compiler(monkeypatch):
    def fail():
        raise RuntimeError("No working C++ compiler found in torch._inductor.config.cpp.cxx: (None, '/nonexistent')")
    monkeypatch.setattr(compiled, "_cpp_compiler", fail)


# choose(): whether a run compiles, decided before training.

def test_auto_compiles_a_long_run_where_a_compiler_works(monkeypatch):
    monkeypatch.setattr(compiled, "_cpp_compiler", lambda: "g++")
    lines = []
    assert compiled.choose("auto", CPU, 20000, log=lines.append) == (
        True, f"20000 steps repay compiling (auto compiles from {compiled.COMPILE_FROM}), with g++")
    assert compiled.choose("auto", CPU, compiled.COMPILE_FROM - 1, log=lines.append)[0] is False
    assert compiled.choose("off", CPU, 20000, log=lines.append) == (False, "--compile off")
    assert compiled.choose("on", CPU, 10, log=lines.append) == (True, "--compile on, with g++")
    assert lines == []


def test_auto_without_a_compiler_says_so_once_and_trains_eagerly(monkeypatch):
    no_compiler(monkeypatch)
    lines = []
    use, why = compiled.choose("auto", CPU, 20000, log=lines.append)
    assert not use and why.startswith("no working C++ compiler for torch.compile (RuntimeError: No working")
    assert len(lines) == 1 and "--compile off" in lines[0] and "training eagerly" in lines[0]
    # A short run would not compile anyway: nothing to say.
    assert compiled.choose("auto", CPU, 500, log=lines.append)[0] is False and len(lines) == 1


def test_on_without_a_compiler_stops_with_one_line(monkeypatch):
    no_compiler(monkeypatch)
    with pytest.raises(compiled.CompileFailed) as stop:
        compiled.choose("on", CPU, 20000)
    message = str(stop.value)
    assert "\n" not in message and message.startswith("--compile on: no working C++ compiler")
    assert message.endswith("Use --compile auto or --compile off.")
    with pytest.raises(compiled.CompileFailed, match="mps"):
        compiled.choose("on", torch.device("mps"), 20000)


def test_auto_leaves_gpus_and_cuda_graphs_eager():
    cuda = torch.device("cuda")
    assert compiled.choose("auto", cuda, 20000, cuda_graph=True)[0] is False
    assert compiled.choose("auto", cuda, 20000)[0] is False
    assert compiled.choose("on", cuda, 20000) == (True, "--compile on")


def test_the_flag_takes_auto_on_off(capsys):
    parser = run_module.build_parser("gmvae")
    assert parser.parse_args([]).compile == "auto" == Config().compile
    assert parser.parse_args(["--compile", "off"]).compile == "off"
    with pytest.raises(SystemExit):
        parser.parse_args(["--compile", "yes"])
    assert "invalid choice" in capsys.readouterr().err


# CompiledStep: its trials and its fallback, with stand-ins for the compiler (no compiling here).

def eager_run(steps):
    model, optimizer, generator = parts()
    step = make_step(model, optimizer, generator)
    stats = [step(gray) for gray in steps]
    return weights(model), torch.stack(stats), generator.get_state()


def wrapped_run(steps, compiled_step, strict=False):
    """The steps through CompiledStep, whose 'compiled' step is compiled_step(model, optimizer, generator)."""
    model, optimizer, generator = parts()
    lines = []
    step = compiled.CompiledStep(make_step(model, optimizer, generator), compiled_step(model, optimizer, generator),
                                 model, optimizer, generator, strict, lines.append)
    stats = [step(gray) for gray in steps]
    return weights(model), torch.stack(stats), generator.get_state(), step.report, lines


def test_the_trials_are_undone_so_every_step_is_the_compiled_ones():
    # With the eager step standing in for the compiled one, the two trials leave no trace: the run is an
    # eager run's, bit for bit, however many steps each trial made.
    steps = batches()
    w, s, g = eager_run(steps)
    w2, s2, g2, report, lines = wrapped_run(steps, make_step)
    assert torch.equal(w, w2) and torch.equal(s, s2) and torch.equal(g, g2)
    assert report["path"] == "compiled" and report["compile_seconds"] is not None and lines == []


class CppCompileError(RuntimeError):
    """Stands in for inductor's, raised where its C++ compiler fails."""


def failing(model, optimizer, generator):
    eager = make_step(model, optimizer, generator)

    def step(gray):
        eager(gray)  # half a step made, as a failure at the first backward would leave it
        raise CppCompileError("C++ compile error\nCommand: g++ ...")
    return step


def test_a_compile_error_at_the_first_call_trains_eagerly_from_the_same_state():
    steps = batches()
    w, s, g = eager_run(steps)
    w2, s2, g2, report, lines = wrapped_run(steps, failing)
    assert torch.equal(w, w2) and torch.equal(s, s2) and torch.equal(g, g2)
    assert report == {"path": "eager", "why": "compiling failed: CppCompileError: C++ compile error",
                      "compile_seconds": None}
    assert lines == ["Compiling the training step failed (CppCompileError: C++ compile error); training eagerly "
                     "from the same state (--compile off skips compiling)."]


def test_where_torch_compile_itself_refuses_a_run_trains_eagerly(monkeypatch):
    # As on a Python that dynamo does not support yet: torch.compile raises as it is called.
    def refuse(*args, **kwargs):
        raise RuntimeError("torch.compile is not supported on Python 3.14+")

    monkeypatch.setattr(torch, "compile", refuse)
    monkeypatch.setattr(compiled, "_cpp_compiler", lambda: "g++")
    monkeypatch.setattr(compiled, "COMPILE_FROM", 1)
    config = Config(z=2, k=5, iter_max=6, iter_save=10**6, checkpoint_root="unused", log_root="unused")
    model, optimizer, generator = parts()
    lines, report = [], {}
    data = batches(6).reshape(600, 784)
    monkeypatch.setattr(train_module.checkpoint, "save", lambda *a: None)  # nothing written: no folder
    monkeypatch.setattr(train_module, "MetricsLog", QuietMetrics)
    train_module.train(model, optimizer, data, config, CPU, generator, log=lines.append, report=report)
    assert report["compile"]["path"] == "eager" and "Python 3.14+" in report["compile"]["why"]
    assert len(lines) == 1 and lines[0].startswith("Compiling the training step failed (RuntimeError: torch.compile")


class QuietMetrics:
    """MetricsLog without metrics.csv: the loop's figures, kept in memory."""

    def __init__(self, *args, **kwargs):
        self.rows = []

    def add(self, it, stats, last=False):
        self.rows.append(stats)

    def close(self):
        pass


def test_a_compile_error_with_on_stops_with_one_line():
    with pytest.raises(compiled.CompileFailed) as stop:
        wrapped_run(batches(2), failing, strict=True)
    assert str(stop.value) == ("--compile on: the training step cannot be compiled (CppCompileError: C++ compile "
                               "error). Use --compile auto or --compile off.")


def test_a_students_error_raises_from_the_eager_trial_and_nothing_is_compiled(monkeypatch):
    def students_bound(self, x, generator=None):
        raise RuntimeError("The size of tensor a (10) must match the size of tensor b (5) at non-singleton dimension 1")

    model, optimizer, generator = parts()
    monkeypatch.setattr(type(model), "negative_elbo_bound", students_bound)
    called = []
    step = compiled.CompiledStep(make_step(model, optimizer, generator), lambda gray: called.append(gray),
                                 model, optimizer, generator, True, print)
    with pytest.raises(RuntimeError, match="must match the size") as raised:
        step(batches(1)[0])
    assert raised.traceback[-1].name == "students_bound" and not called


def test_compiled_bound_draws_from_the_runs_stream_and_leaves_torchs_own_alone(monkeypatch):
    model, _, generator = parts()
    bound = binarised_bound(model)
    torch.manual_seed(123)
    before = torch.default_generator.get_state()
    # An identity 'compiler': the bound with torch's default generator standing in for the run's.
    monkeypatch.setattr(torch, "compile", lambda f, **kw: f)
    stand_in = compiled.compiled_bound(bound)
    gray = batches(1)[0]
    reference = training_generator(SMALL, CPU)
    assert torch.equal(torch.stack(stand_in(gray, generator)), torch.stack(bound(gray, reference)))
    assert torch.equal(generator.get_state(), reference.get_state())
    assert torch.equal(torch.default_generator.get_state(), before)


# The real compiler.

@pytest.mark.slow
@pytest.mark.parametrize("model", ["gmvae", "vae"])
def test_the_bound_compiles_to_one_graph_without_a_break(model, fresh_dynamo):
    # The model answer's bound, as compiled_bound traces it (torch's default generator): one graph, no
    # break. With the run's torch.Generator as an argument, every draw would break it.
    model, _, generator = parts(Config(model=model))
    bound = binarised_bound(model)
    gray = batches(1)[0]
    explained = torch._dynamo.explain(lambda g: bound(g, None))(gray)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    torch._dynamo.reset()
    with_generator = torch._dynamo.explain(lambda g: bound(g, generator))(gray)
    assert with_generator.graph_break_count > 0


@pytest.mark.slow
def test_a_compiled_run_has_no_graph_break_and_resumes_exactly(tmp_path, mnist_dir, fresh_dynamo):
    from torch._dynamo.utils import counters

    def config(iter_max, **flags):
        return Config(iter_max=iter_max, iter_save=20, compile="on", threads=1, data_dir=str(mnist_dir),
                      checkpoint_root=str(tmp_path / "checkpoints"), log_root=str(tmp_path / "logs"), **flags)

    counters.clear()
    straight = run_module.run(config(40, run=1), log=lambda *a: None)
    assert straight["compile"]["path"] == "compiled" and straight["compile"]["compile_seconds"] > 0
    # One graph, compiled once: no break and no recompiling, at any step.
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    run_module.run(config(20, run=2), log=lambda *a: None)
    torch._dynamo.reset()
    resumed = run_module.run(config(40, run=2, resume=True), log=lambda *a: None)
    for key in ("nelbo", "kl", "rec", "test_nelbo"):
        assert resumed[key] == straight[key], key
    a = torch.load(tmp_path / "checkpoints" / Config(run=1).run_name / "model-00040.pt", weights_only=True)
    b = torch.load(tmp_path / "checkpoints" / Config(run=2).run_name / "model-00040.pt", weights_only=True)
    assert all(torch.equal(a["model"][name], b["model"][name]) for name in a["model"])


def broken_compiler(kind, tmp_path):
    """The environment of a run whose inductor takes its C++ compiler from $CXX: none there ("missing"), or
    one that says its version but cannot compile ("failing": inductor fails at the first compiled call,
    with CppCompileError)."""
    cxx = tmp_path / "nonexistent"
    if kind == "failing":
        cxx = tmp_path / "g++"
        cxx.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "g++ (fake) 12"; exit 0; }\nexit 1\n')
        cxx.chmod(cxx.stat().st_mode | stat.S_IXUSR)
    return {**os.environ, "CXX": str(cxx), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
            "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}


@pytest.mark.slow
@pytest.mark.parametrize("compiler", ["missing", "failing"])
def test_on_without_a_working_compiler_is_one_line_and_exit_1(compiler, tmp_path, mnist_dir):
    out = subprocess.run([sys.executable, str(ROOT / "run_gmvae.py"), "--iter_max", "5", "--compile", "on",
                          "--data-dir", str(mnist_dir)], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env=broken_compiler(compiler, tmp_path))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    last = out.stderr.splitlines()[-1]  # after the progress bar's lines, where the compiler failed at its first call
    assert last.startswith("error: --compile on: ") and last.endswith("Use --compile auto or --compile off."), last


@pytest.mark.slow
@pytest.mark.parametrize("compiler", ["missing", "failing"])
def test_auto_without_a_working_compiler_says_one_line_and_finishes(compiler, tmp_path, mnist_dir):
    out = subprocess.run([sys.executable, "-c", LONG_ENOUGH, "--iter_max", "30", "--data-dir", str(mnist_dir)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env=broken_compiler(compiler, tmp_path))
    assert out.returncode == 0, out.stderr
    said = [line for line in (out.stdout + out.stderr).splitlines() if "compil" in line.lower()]
    assert len(said) == 1 and "--compile off" in said[0] and "training eagerly" in said[0], said
    results = json.loads((tmp_path / "logs" / Config().run_name / "results.json").read_text())
    assert results["iterations"] == 30 and results["compile"]["path"] == "eager"
    failed = {"missing": "no working C++ compiler for torch.compile (InvalidCxxCompiler",
              "failing": "compiling failed: "}[compiler]
    assert results["compile"]["why"].startswith(failed), results["compile"]


# run_gmvae.py as a script, with auto's threshold lowered so that a run of 30 steps chooses to compile.
LONG_ENOUGH = f"""
import runpy, sys
from codebase.runtime import compiled
compiled.COMPILE_FROM = 10
sys.argv = ["run_gmvae.py", *sys.argv[1:]]
runpy.run_path({str(ROOT / "run_gmvae.py")!r}, run_name="__main__")
"""


# The starter: what a student sees with compiling on is what they saw before it.



@pytest.mark.slow
@pytest.mark.parametrize("case", ["untouched", "shape error"])
def test_the_starter_says_exactly_what_it_said_before_with_compiling_on(case, starter, tmp_path):
    from test_handout import STARTER_MISTAKES, run_in, written_source  # how test_handout writes a mistake in

    folder = starter
    if case == "shape error":  # the mixture without unsqueeze(1): (batch, dim) against (1, k, dim)
        path, source, first = written_source("log_normal_mixture", STARTER_MISTAKES["mixture: unsqueeze"][2])
        folder = tmp_path / "mine"
        for name in handout.starter_files(handout.VARIANTS["default"], stored=False):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes((starter / name).read_bytes())
        (folder / path).write_text(source)
    before = run_in(folder, "run_gmvae.py", "--compile", "off")
    for mode in ("on", "auto"):
        now = run_in(folder, "run_gmvae.py", "--compile", mode)
        assert (now.returncode, now.stdout, now.stderr) == (before.returncode, before.stdout, before.stderr)
    assert before.returncode == 1 and before.stderr.count("\n") == 1 and "Traceback" not in before.stderr
    expected = (f"utils.py:{first}, in log_normal_mixture" if case == "shape error"
                else "log_normal_mixture (codebase/utils.py")
    assert expected in before.stderr, before.stderr


def test_advice_repeats_the_students_compile_flag():
    assert Config(compile="off").command("--resume") == "python run_gmvae.py --compile off --resume"
    assert Config().command("--resume") == "python run_gmvae.py --resume"
