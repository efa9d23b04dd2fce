"""How the probe calls your code: modules imported as they are now, randomness seeded, and what comes back
(a value, its gradients or an error) kept as plain data that the judge can read in another process.
"""
import importlib
import traceback
from pathlib import Path

import torch

from codebase.check.registry import GIVEN_FUNCTIONS
from codebase.runtime.errors import first_line

STUDENT_FILES = ("codebase/utils.py", "codebase/models/gmvae.py")  # the files that a student edits


class Raised(Exception):
    """The code under test raised where a result was needed, or cannot be probed at all (its module does not
    import, its model is not the graded one). record: the error as plain data; one not a dict was forged."""

    def __init__(self, record):
        if not isinstance(record, dict):
            record = {"type": "unreadable", "message": "its error cannot be read"}
        super().__init__(record.get("message"))
        self.record = {"frames": [], "origin": "", "not_implemented": False, **record}


def error_record(error):
    """An exception as plain data: its type, first line, whether it is NotImplementedError, the function that
    raised it, and the frames of its traceback in the student's files, innermost last."""
    frames = traceback.extract_tb(error.__traceback__)
    mine = [{"file": Path(f.filename).name, "line": f.lineno, "function": f.name} for f in frames
            if Path(f.filename).as_posix().endswith(STUDENT_FILES)]
    return {"type": type(error).__name__, "message": first_line(error), "frames": mine,
            "origin": frames[-1].name if frames else "", "not_implemented": isinstance(error, NotImplementedError)}


def where(record):
    """Where in the student's files an error arose: the student's own lines that led to it, outermost first,
    and the given function it was raised in, if any; "" when no frame is in those files."""
    frames = record.get("frames") if isinstance(record.get("frames"), list) else []
    frames = [f for f in frames if isinstance(f, dict) and {"file", "line", "function"} <= set(f)]
    if not frames:
        return ""
    own = [f for f in frames if f.get("function") not in GIVEN_FUNCTIONS] or frames
    text = "at " + " -> ".join(f"{f['file']}:{f['line']}, in {f['function']}" for f in own)
    last = frames[-1]
    if last is not own[-1]:
        text += f"; raised inside {last['function']}, {last['file']}:{last['line']}"
    return text


def plain(value):
    """A returned value as plain data: a tensor (detached, of class Tensor), or {"type": ..., "items": ...}."""
    if isinstance(value, torch.Tensor):
        return value.detach().as_subclass(torch.Tensor).clone()
    if isinstance(value, (tuple, list)):
        return {"type": type(value).__name__, "items": [plain(v) for v in value]}
    return {"type": type(value).__name__}


def student(module):
    """codebase.<module> as it is now: the code under test, never a stand-in."""
    try:
        return importlib.import_module(f"codebase.{module}")
    except Exception as e:
        raise Raised({"type": "import", "message": f"cannot import codebase.{module}: {first_line(e)}"}) from None


def gen(seed):
    return torch.Generator().manual_seed(seed)


def seeded(fn, seed):
    """fn(generator=...) with torch's global random state seeded alike (a function that ignores generator=
    draws the same noise); the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(generator=gen(seed))


def input_grads(out, inputs):
    """{requires_grad, grads}: whether `out` carries a gradient, and d out.sum() / d input (None where none)."""
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return {"requires_grad": False, "grads": []}
    grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
    return {"requires_grad": True, "grads": [None if g is None else g.detach().clone() for g in grads]}
