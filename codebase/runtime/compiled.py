"""The training step with its bound compiled by torch.compile (--compile {auto,on,off}).

On a CPU the compiler fuses the student's own clear code (the broadcast mixture, the encoder and the
decoder, forward and backward) into a few C++ loops: a step takes about half the time of an eager
one, and nothing that a student writes changes. Three things must not reach a student:

- an error in their code shown as a compiler traceback: the first step runs eagerly, as a trial
  whose effects are undone, so their error raises there with their own lines;
- a machine that cannot compile (no C++ compiler, a C++ error, an unsupported platform): with
  `auto` the run says so in one line and trains eagerly from the same state;
- a graph break at every step: the bound draws from the run's torch.Generator, which torch.compile
  cannot trace, so the compiled bound draws from torch's default generator instead, loaded with the
  run's stream before each step and read back after it. The checkpoints carry the run's generator
  as before, and a resumed compiled run repeats an unbroken one bit for bit.

The compiled and the eager step draw different numbers from the same stream (inductor makes its
own random numbers from seeds it draws), so a compiled and an eager run of one seed agree only as
two seeds do; each is exact within its own path.
"""
import contextlib
import copy
import logging
import time

import torch

from codebase.runtime.errors import UserError, first_line

MODES = ("auto", "on", "off")

# auto compiles a run with at least this many steps to go. Compiling took 20 to 29 s cold and about
# 6 s from inductor's cache on 2-core CPUs, and saves 5 to 6 ms of a step's 13 to 15 ms (the speed
# issue's measurements; on 2026-12-04, one thread on a 2-core VM shared with other jobs: 15 to 32 s
# cold, 3 s warm, 13.1 against 9.2 ms a step): about 5,000 steps repay a cold compile.
COMPILE_FROM = 5000


class CompileFailed(UserError):
    """--compile on, and the step cannot be compiled here; the message says why."""


def choose(mode, device, steps, cuda_graph=False, log=print):
    """Whether to compile the step, and why, before any training.

    Args:
        mode: str: "auto", "on" or "off" (--compile)
        device: torch.device: where training runs
        steps: int: the steps this session will train
        cuda_graph: bool: --cuda-graph, which replays the step on CUDA by other means
        log: callable: where auto says, in one line, that this machine cannot compile

    Returns:
        compile: bool
        why: str: the reason, for results.json

    Raises:
        CompileFailed: mode "on" where the step cannot be compiled
    """
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
    """The C++ compiler that inductor will use on the CPU (a name or a path); raises if none works."""
    from torch._inductor import cpp_builder

    return cpp_builder.get_cpp_compiler()


def compiled_bound(bound):
    """bound(gray, generator) compiled: the same figures, its random draws made by the compiled code.

    Args:
        bound: callable: bound(gray, generator) -> (nelbo, kl, rec), gray: tensor: (batch, 784)

    Returns:
        callable: the same signature; the draws come from `generator`'s stream, which it advances
    """
    compiled = None

    def run(gray, generator):
        nonlocal compiled
        if compiled is None:
            # Made at the first call, inside CompiledStep's fallback: torch.compile itself raises where
            # dynamo is unsupported (a Python too new for it). The run's generator is no argument of the
            # compiled function: torch.compile breaks the graph at every call that takes one. torch's
            # default generator, which it can trace, stands in for it.
            compiled = torch.compile(lambda gray: bound(gray, None), dynamic=False)
        default = _default_generator(gray.device)
        before = default.get_state()
        default.set_state(generator.get_state())
        try:
            figures = compiled(gray)
            generator.set_state(default.get_state())
        finally:
            default.set_state(before)  # torch's own stream is left as the run found it
        return figures

    return run


def _default_generator(device):
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else
                                             torch.cuda.current_device()]
    return torch.default_generator


@contextlib.contextmanager
def _quiet_compiler():
    """Inductor logs a warning about a CUDA runtime it does not need on a CPU-only machine: not the
    student's concern."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class CompiledStep:
    """A training step that compiles itself on its first call, after an eager trial.

    The first call runs the eager step as a trial (a student's error raises there, with their own
    lines), then the compiled step once, to compile it; both trials are undone (weights, Adam's state,
    the random stream), and the call then makes the real step compiled. So every step of a compiled run
    is compiled, whether it started at iteration 0 or resumed, and resuming is exact.
    """

    def __init__(self, eager, compiled, model, optimizer, generator, strict, log, why=""):
        """
        Args:
            eager: callable: step(gray) -> stats, the eager step
            compiled: callable: the same step with its bound from compiled_bound
            model, optimizer, generator: what a step changes, restored after the trials
            strict: bool: --compile on: a failure to compile stops the run (CompileFailed); else it
                trains eagerly, saying so in one line
            log: callable: where that line goes
            why: str: why it compiles, for report
        """
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
        saved = self._state()
        self.eager(gray)  # a student's error raises here, as in an eager run
        self._restore(saved)
        began = time.perf_counter()
        try:
            with _quiet_compiler():
                self.compiled(gray)
        except Exception as e:  # any failure of the compiler, at its build or its first call
            self._restore(saved)
            self.report.update(path="eager", why=f"compiling failed: {first_line(e)}")
            if self.strict:
                raise CompileFailed(f"--compile on: the training step cannot be compiled ({first_line(e)}). "
                                    "Use --compile auto or --compile off.") from None
            self.log(f"Compiling the training step failed ({first_line(e)}); training eagerly from the same "
                     "state (--compile off skips compiling).")
            return self.eager
        self.report["compile_seconds"] = round(time.perf_counter() - began, 2)
        self._restore(saved)
        return self.compiled

    def _state(self):
        return ({name: value.clone() for name, value in self.model.state_dict().items()},
                copy.deepcopy(self.optimizer.state_dict()), self.generator.get_state())

    def _restore(self, saved):
        weights, adam, stream = saved
        self.model.load_state_dict(weights)
        # load_state_dict keeps the tensors it is given, and Adam updates them in place: a copy each time.
        self.optimizer.load_state_dict(copy.deepcopy(adam))
        self.optimizer.zero_grad(set_to_none=True)
        self.generator.set_state(stream)
