"""The self-check's tools: run the code under test, compare it with a float64 reference, name the mistake.

codebase/check.py runs the checks; the checks of codebase/utils.py live there too, and those of the
models' bounds in codebase/check_bounds.py. A check raises Failure with what was expected, what came
back and the likely cause, which compare() finds among the usual mistakes of codebase/mistakes.py.
"""
import importlib
import math
from typing import Callable, NamedTuple

import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from codebase.errors import first_line
from codebase.mistakes import CAUSES

F64 = torch.float64
Z_DIM, K = 10, 500  # the graded model
BATCH, ODD_BATCH = 100, 97  # training's batch, and one that a hard-coded 100 cannot survive
SEED = 1


class Failure(Exception):
    """A FAIL: the message (expected ..., got ...) and the likely cause. first: it comes before what the
    check tests (an import), so failing callees are no likelier a cause."""
    def __init__(self, message, cause=None, first=False):
        super().__init__(message)
        self.message, self.cause, self.first = message, cause, first


def fail(expected, got, cause):
    """cause: a key of CAUSES, or the text itself."""
    raise Failure(f"expected {expected}, got {got}", CAUSES.get(cause, cause))


def student(module):
    """codebase.<module> as it is now: the code under test, never a stand-in."""
    try:
        return importlib.import_module(f"codebase.{module}")
    except Exception as e:
        raise Failure(f"cannot import codebase.{module}: {first_line(e)}", first=True) from None


def gen(seed):
    return torch.Generator().manual_seed(seed)


def seeded(fn, seed, *args):
    """fn(*args, generator=...) with torch's global random state seeded alike, so that a function
    which ignores generator= draws the same noise; the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args, generator=gen(seed))


def fmt_num(x):
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.4e}" if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3) else f"{x:.4f}"


def fmt_shape(t):
    return f"({', '.join(map(str, t.shape))}{',' if t.dim() == 1 else ''})"


def which_mistake(mistakes, matches):
    """The key of the first usual mistake in {key of CAUSES: value} whose value `matches`, or None."""
    return next((key for key, value in mistakes.items() if matches(value)), None)


def _off(got, want):
    """What is known of a mistake outside CAUSES: how far off the values are, and which way."""
    d = (got - want).flatten()
    d = d[torch.isfinite(d)]
    if not len(d):
        return None
    size = fmt_num(d.abs().max())
    if d.max() - d.min() <= 1e-6 * (1 + d.abs().max()):
        how = f"{'every value' if got.numel() > 1 else 'it'} is {size} too {'high' if d[0] > 0 else 'low'}"
    else:
        how = f"the values are off by up to {size}, {float((d > 0).double().mean()):.0%} of them too high"
    return f"not one of the usual mistakes: {how}"


def compare(what, got, want, mistakes={}, where="", rtol=1e-7, atol=1e-7, nonfinite=None, otherwise=None,
            match=(1e-3, 1e-3)):
    """Raise a Failure unless `got` equals the float64 reference `want`.

    what, where: the value and its inputs as the message names them, e.g. "log_normal(x, m, v)", "for x ..."
    mistakes: {key of CAUSES: value}, most specific first, recognised to within match = (rtol, atol)
    nonfinite, otherwise: keys of CAUSES for nan or inf where `want` is finite, and for any other difference
    """
    where = f" {where}" if where else ""
    if not isinstance(got, torch.Tensor):
        fail(f"{what} as a tensor of shape {fmt_shape(want)}{where}", type(got).__name__, "not a tensor")
    got = got.detach().to(F64)
    cause = which_mistake(mistakes,
                          lambda value: value.shape == got.shape and torch.isclose(got, value, *match).all())
    if got.shape != want.shape:
        fail(f"{what} of shape {fmt_shape(want)}{where}", f"shape {fmt_shape(got)}",
             cause or f"the result must have shape {fmt_shape(want)}")
    at = lambda i: f"[{', '.join(map(str, i))}]" if i else ""
    bad = ~torch.isfinite(got) & torch.isfinite(want)
    if bad.any():
        i = tuple(bad.nonzero()[0].tolist())
        fail(f"a finite {what}{at(i)} = {fmt_num(want[i])}{where}", fmt_num(got[i]),
             cause or nonfinite or otherwise)
    if not torch.isclose(got, want, rtol, atol).all():
        i = torch.unravel_index((got - want).abs().nan_to_num(nan=math.inf).flatten().argmax(), got.shape)
        i = tuple(int(j) for j in i)
        where += f" (shape {fmt_shape(want)}; the largest error)" if i else ""
        fail(f"{what}{at(i)} = {fmt_num(want[i])}{where}", fmt_num(got[i]), cause or otherwise or _off(got, want))


def input_grads(out, inputs, names, nonfinite):
    """Gradients of out.sum() with respect to `inputs`; a Failure unless all exist and are finite."""
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        fail(f"a result that gradients can flow through to {', '.join(names)}", "a detached result", "detached")
    grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
    for name, g in zip(names, grads):
        if g is None:
            fail(f"a gradient with respect to {name}", "none",
                 f"{name} does not reach the result through torch operations")
        if not torch.isfinite(g).all():
            fail(f"finite gradients with respect to {name}", "nan or inf", nonfinite)
    return grads


def reference_mixture(z, m, v, sd=None):
    """log (1/k) sum_i N(z; m_i, v_i) through torch.distributions (sd: the scales to use instead)."""
    m, v = torch.broadcast_tensors(m, v)
    weights = Categorical(logits=torch.zeros(m.shape[:-1], dtype=m.dtype))
    return MixtureSameFamily(weights, Independent(Normal(m, v.sqrt() if sd is None else sd), 1)).log_prob(z)


class Check(NamedTuple):
    """A named test of one function.

    target: the function under test, to tell its own NotImplementedError from a callee's
    needs: checks of the functions it calls; when those fail too, the FAIL line says so
    """
    name: str
    run: Callable
    target: str
    needs: tuple = ()
