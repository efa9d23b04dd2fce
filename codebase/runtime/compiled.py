"""The training step with its bound compiled by torch.compile (--compile {auto,on,off}).

On a CPU the compiler fuses the student's clear code, forward and backward, into a few C++ loops: a step
takes about three quarters of an eager one's time. A student never sees the compiler: the first step runs
eagerly as a trial, undone, so that an error in their code raises with their own lines; where compiling
fails, `auto` says so in one line and trains eagerly from the same state. A compiled and an eager run of
one seed draw different random numbers (inductor makes its own), so they agree only as two seeds do.
"""
import copy
import logging
import time

import torch

from codebase.runtime.errors import UserError, first_line

MODES = ("auto", "on", "off")
# auto compiles a run with at least this many steps to go: on 2-core CPUs a cold compile took 15 to 30 s
# and saved 2.5 to 6 ms of a 10 to 15 ms step (benchmarks/README.md).
COMPILE_FROM = 5000


class CompileFailed(UserError):
    """--compile on, and the step cannot be compiled here; the message says why."""


def choose(mode, device, steps, cuda_graph=False, log=print):
    """(compile: bool, why: str, for results.json), before any training: whether `mode` (--compile) compiles a
    session of `steps` steps here. auto says in one line to `log` that this machine cannot compile; on raises
    CompileFailed. cuda_graph: --cuda-graph, which replays the step on CUDA by other means."""
    if mode == "off":
        return False, "--compile off"
    if cuda_graph and device.type == "cuda":
        return _refuse(mode, "--cuda-graph replays the step as one CUDA graph instead")
    if device.type == "mps":
        return _refuse(mode, "torch.compile is not used on mps")
    if mode == "auto" and device.type != "cpu":
        return False, "auto compiles on the CPU only: on a GPU it is unmeasured (--compile on tries it)"
    if mode == "auto" and steps < COMPILE_FROM:
        return False, f"{steps} steps are too few to repay compiling (auto compiles from {COMPILE_FROM})"
    if device.type != "cpu":
        return True, "--compile on"
    try:
        compiler = _cpp_compiler()
    except Exception as e:  # whatever inductor's search raises: InvalidCxxCompiler, a platform it lacks
        why = f"no working C++ compiler for torch.compile ({first_line(e)})"
        if mode == "auto":
            log(f"Not compiling the training step: {why}; training eagerly (--compile off skips this).")
        return _refuse(mode, why)
    if mode == "on":
        return True, f"--compile on, with {compiler}"
    return True, f"{steps} steps repay compiling (auto compiles from {COMPILE_FROM}), with {compiler}"


def _refuse(mode, why):
    if mode == "on":
        raise CompileFailed(f"--compile on: {why}. Use --compile auto or --compile off.")
    return False, why


def _cpp_compiler():
    """The C++ compiler that inductor will use on the CPU; raises if none works."""
    from torch._inductor import cpp_builder

    return cpp_builder.get_cpp_compiler()


def compiled_bound(bound):
    """bound(gray, generator) -> (nelbo, kl, rec), compiled at its first call; it draws from `generator`'s
    stream and advances it, as the eager bound does."""
    compiled = None

    def run(gray, generator):
        nonlocal compiled
        if compiled is None:  # here, not before: torch.compile itself raises where dynamo is unsupported
            # Inductor warns of a CUDA runtime it does not need on a CPU: not the student's concern.
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            # A torch.Generator argument would break the graph at every call: torch's default generator,
            # which dynamo traces, stands in for the run's, loaded with its stream and read back.
            compiled = torch.compile(lambda gray: bound(gray, None), dynamic=False)
        default = torch.cuda.default_generators[gray.device.index] if gray.is_cuda else torch.default_generator
        before = default.get_state()
        default.set_state(generator.get_state())
        try:
            figures = compiled(gray)
            generator.set_state(default.get_state())
        finally:
            default.set_state(before)  # torch's own stream is left as the run found it
        return figures

    return run


class CompiledStep:
    """A training step that compiles itself at its first call.

    That call runs the eager step (a student's error raises there, with their own lines), then the compiled
    one, to compile it; both trials are undone (weights, Adam, the random stream) before the real step. So
    every step of a compiled run is compiled, and a resumed run repeats an unbroken one exactly.

    Args:
        eager, compiled: callable: step(gray) -> stats, with the bound as is and from compiled_bound
        model, optimizer, generator: what a step changes
        strict: bool: --compile on: a failure to compile raises CompileFailed; else the run says so in one
            line to `log` and trains eagerly
        why: str: why it compiles, for report (results.json's "compile")
    """

    def __init__(self, eager, compiled, model, optimizer, generator, strict, log, why=""):
        self.eager, self.compiled = eager, compiled
        self.model, self.optimizer, self.generator = model, optimizer, generator
        self.strict, self.log = strict, log
        self.step = None
        self.report = {"path": "compiled", "why": why, "compile_seconds": None}

    def __call__(self, gray):
        if self.step is None:
            self.step = self._first(gray)
        return self.step(gray)

    def _first(self, gray):
        """The step to use from now on: the compiled one, or the eager one if compiling failed."""
        weights = {name: value.clone() for name, value in self.model.state_dict().items()}
        adam, stream = copy.deepcopy(self.optimizer.state_dict()), self.generator.get_state()

        def undo():
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(copy.deepcopy(adam))  # Adam updates in place the tensors it is given
            self.optimizer.zero_grad(set_to_none=True)
            self.generator.set_state(stream)

        self.eager(gray)
        undo()
        began = time.perf_counter()
        try:
            self.compiled(gray)
        except Exception as e:  # any failure of the compiler, at its build or its first call
            undo()
            self.report.update(path="eager", why=f"compiling failed: {first_line(e)}")
            if self.strict:
                raise CompileFailed(f"--compile on: the training step cannot be compiled ({first_line(e)}). "
                                    "Use --compile auto or --compile off.") from None
            self.log(f"Compiling the training step failed ({first_line(e)}); training eagerly from the same "
                     "state (--compile off skips compiling).")
            return self.eager
        self.report["compile_seconds"] = round(time.perf_counter() - began, 2)
        undo()
        return self.compiled
