"""Self-check: which of your functions is wrong, and why.

    python -m codebase.check              # every function, in a few seconds on a CPU
    python -m codebase.check --only kl    # only the checks whose name contains "kl"
    python -m codebase.check --results    # the trained models' figures (codebase/results_check.py)

Each check runs a function of codebase/ as it is now on fixed inputs, and compares its values (for
the bounds, also their gradients) with a float64 reference built on torch.distributions and
torch.logsumexp. A wrong value is matched against the usual mistakes (codebase/mistakes.py) to name
the likely cause; for any other mistake the FAIL line says what is off, by how much and which way.

The bounds are judged on their maths, not on how they draw z: torch's global random state is seeded
like the generator they are given, and a bound that draws z in another order (a loop, a second z
for the KL) is compared over FALLBACK_DRAWS draws paired by seed.
"""
import argparse
import copy
import importlib
import math
import sys
import traceback
import warnings
from functools import partial
from types import SimpleNamespace
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch.distributions import (Bernoulli, Categorical, Independent, MixtureSameFamily, Normal,
                                 kl_divergence)

from codebase.errors import first_line
from codebase.mistakes import CAUSES
from codebase.reference import MODEL_LABELS

F64 = torch.float64
Z_DIM, K = 10, 500  # the graded model
BATCH, ODD_BATCH = 100, 97  # training's batch, and one that a hard-coded 100 cannot survive
IW = 10  # importance samples in the same-draw comparisons of the IWAE bound
SEED = 1
ELBO_REPEATS = 30  # NELBO and IWAE-1 draws averaged for "IWAE-1 = NELBO"
# Draws averaged per k for "IWAE falls with k": the means of the fixed models fall by 1.4 to 1.6
# nats from k = 1 to 10 and 0.45 to 0.8 from 10 to 100, where one draw's sd is 0.2, 0.07 and 0.08.
IWAE_REPEATS = {1: 30, 10: 4, 100: 1}
FALLBACK_DRAWS = 16  # draws paired by seed when a bound samples z in another order
GRAD_RTOL = 1e-3  # float32 against float64 gradients differ by about 1e-5 of their size


class Failure(Exception):
    """A FAIL: the message (expected ..., got ...) and the likely cause. first: it comes before what the
    check tests (an import), so failing callees are no likelier a cause."""
    def __init__(self, message, cause=None, first=False):
        super().__init__(message)
        self.message, self.cause, self.first = message, cause, first


def _fail(expected, got, cause):
    """cause: a key of CAUSES, or the text itself."""
    raise Failure(f"expected {expected}, got {got}", CAUSES.get(cause, cause))


def _student(module):
    """codebase.<module> as it is now: the code under test, never a stand-in."""
    try:
        return importlib.import_module(f"codebase.{module}")
    except Exception as e:
        raise Failure(f"cannot import codebase.{module}: {first_line(e)}", first=True) from None


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _seeded(fn, seed, *args):
    """fn(*args, generator=...) with torch's global random state seeded alike, so that a function
    which ignores generator= draws the same noise; the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args, generator=_gen(seed))


def _num(x):
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.4e}" if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3) else f"{x:.4f}"


def _shape(t):
    return f"({', '.join(map(str, t.shape))}{',' if t.dim() == 1 else ''})"


# --- Comparing a result with its reference and naming the mistake ---

def _cause(mistakes, matches):
    """The key of the first usual mistake in {key of CAUSES: value} whose value `matches`, or None."""
    return next((key for key, value in mistakes.items() if matches(value)), None)


def _off(got, want):
    """What is known of a mistake outside CAUSES: how far off the values are, and which way."""
    d = (got - want).flatten()
    d = d[torch.isfinite(d)]
    if not len(d):
        return None
    size = _num(d.abs().max())
    if d.max() - d.min() <= 1e-6 * (1 + d.abs().max()):
        how = f"{'every value' if got.numel() > 1 else 'it'} is {size} too {'high' if d[0] > 0 else 'low'}"
    else:
        how = f"the values are off by up to {size}, {float((d > 0).double().mean()):.0%} of them too high"
    return f"not one of the usual mistakes: {how}"


def _compare(what, got, want, mistakes={}, where="", rtol=1e-7, atol=1e-7, nonfinite=None, otherwise=None,
             match=(1e-3, 1e-3)):
    """Raise a Failure unless `got` equals the float64 reference `want`.

    what, where: the value and its inputs as the message names them, e.g. "log_normal(x, m, v)", "for x ..."
    mistakes: {key of CAUSES: value}, most specific first, recognised to within match = (rtol, atol)
    nonfinite, otherwise: keys of CAUSES for nan or inf where `want` is finite, and for any other difference
    """
    where = f" {where}" if where else ""
    if not isinstance(got, torch.Tensor):
        _fail(f"{what} as a tensor of shape {_shape(want)}{where}", type(got).__name__, "not a tensor")
    got = got.detach().to(F64)
    cause = _cause(mistakes, lambda value: value.shape == got.shape and torch.isclose(got, value, *match).all())
    if got.shape != want.shape:
        _fail(f"{what} of shape {_shape(want)}{where}", f"shape {_shape(got)}",
              cause or f"the result must have shape {_shape(want)}")
    at = lambda i: f"[{', '.join(map(str, i))}]" if i else ""
    bad = ~torch.isfinite(got) & torch.isfinite(want)
    if bad.any():
        i = tuple(bad.nonzero()[0].tolist())
        _fail(f"a finite {what}{at(i)} = {_num(want[i])}{where}", _num(got[i]), cause or nonfinite or otherwise)
    if not torch.isclose(got, want, rtol, atol).all():
        i = torch.unravel_index((got - want).abs().nan_to_num(nan=math.inf).flatten().argmax(), got.shape)
        i = tuple(int(j) for j in i)
        where += f" (shape {_shape(want)}; the largest error)" if i else ""
        _fail(f"{what}{at(i)} = {_num(want[i])}{where}", _num(got[i]), cause or otherwise or _off(got, want))


def _grads(out, inputs, names, nonfinite):
    """Gradients of out.sum() with respect to `inputs`; a Failure unless all exist and are finite."""
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        _fail(f"a result that gradients can flow through to {', '.join(names)}", "a detached result", "detached")
    grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
    for name, g in zip(names, grads):
        if g is None:
            _fail(f"a gradient with respect to {name}", "none",
                  f"{name} does not reach the result through torch operations")
        if not torch.isfinite(g).all():
            _fail(f"finite gradients with respect to {name}", "nan or inf", nonfinite)
    return grads


# --- codebase/utils.py ---

def _randn(shape, g):
    return torch.randn(shape, generator=g, dtype=F64)


def _rand_var(shape, g):
    return torch.rand(shape, generator=g, dtype=F64) * 3 + 0.05


def _sum_mistakes(fn, each):
    """The four ways the sum over the last dimension of `each` goes wrong in `fn`."""
    return {f"{fn}: mean over dim": each.mean(-1), f"{fn}: summed over batch": each.sum(),
            f"{fn}: mean over batch": each.sum(-1).mean(), f"{fn}: not summed": each}


# x and m, v (or q and p): per row, batched in two dimensions, and shared by the batch as VAE's prior is
PAIRED_SHAPES = [((ODD_BATCH, 10), (ODD_BATCH, 10)), ((2, 7, 4), (2, 7, 4)), ((ODD_BATCH, 10), (10,))]


def _log_normal_mistakes(x, m, v):
    lp, log_2pi = Normal(m, v.sqrt()).log_prob(x), math.log(2 * math.pi)
    return {"log_normal: v as sd": Normal(m, v).log_prob(x).sum(-1),
            "log_normal: sqrt(v) as variance": Normal(m, v.pow(0.25)).log_prob(x).sum(-1),
            "log_normal: no log 2pi": lp.sum(-1) + 0.5 * x.size(-1) * log_2pi,
            "log_normal: log 2pi once": lp.sum(-1) + 0.5 * (x.size(-1) - 1) * log_2pi,
            "log_normal: no log v": (lp + 0.5 * torch.log(v)).sum(-1), "log_normal: no 1/2": 2 * lp.sum(-1),
            "log_normal: sign": -lp.sum(-1), "log_normal: summed over dim 0": lp.sum(0),
            **_sum_mistakes("log_normal", lp)}


def check_log_normal():
    ut, g = _student("utils"), _gen(SEED)
    for x_shape, p_shape in PAIRED_SHAPES:
        x, m, v = _randn(x_shape, g) * 1.5, _randn(p_shape, g), _rand_var(p_shape, g)
        _compare("log_normal(x, m, v)", ut.log_normal(x, m, v), Normal(m, v.sqrt()).log_prob(x).sum(-1),
                 _log_normal_mistakes(x, m, v), where=f"for x of shape {x_shape}, m and v of shape {p_shape}")


def check_log_normal_extremes():
    # 100 away with variance 1e-8: log-densities near -5e12, fine in float32 if kept in log space.
    x, m = torch.full((3, 10), 100.0, requires_grad=True), torch.zeros(3, 10)
    v = torch.full((3, 10), 1e-8, requires_grad=True)
    got = _student("utils").log_normal(x, m, v)
    x64, m64, v64 = (t.detach().double() for t in (x, m, v))
    _compare("log_normal(x, m, v)", got, Normal(m64, v64.sqrt()).log_prob(x64).sum(-1),
             _log_normal_mistakes(x64, m64, v64), rtol=1e-5, atol=0, where="at x - m = 100, v = 1e-8 (float32)",
             nonfinite="log_normal: density first")
    _grads(got, (x, v), ("x", "v"), "log_normal: gradient")


def check_reduction(name):
    """log_sum_exp or log_mean_exp, as `name` says, against torch.logsumexp."""
    fn, g = getattr(_student("utils"), name), _gen(SEED + 2)
    shift = (lambda n: math.log(n)) if name == "log_mean_exp" else (lambda n: 0.0)
    for shape, dim in [((ODD_BATCH, 5), 1), ((5, ODD_BATCH), 0), ((3, 4, 5), 1)]:
        x = _randn(shape, g) * 5
        n, lse = shape[dim], torch.logsumexp(x, dim)
        if name == "log_mean_exp":
            mistakes = {"log_mean_exp: no log n": lse, "log_mean_exp: log n twice": lse - 2 * math.log(n),
                        "log_mean_exp: log numel": lse - math.log(x.numel()),
                        "log_mean_exp: wrong size": lse - math.log(shape[dim - 1])}  # another dimension's
        else:
            mistakes = {"log_sum_exp: minus log n": lse - math.log(n)}
        mistakes |= {f"{name}: only the max": x.amax(dim), f"{name}: keepdim": (lse - shift(n)).unsqueeze(dim),
                     f"{name}: mean of x": x.mean(dim)}
        _compare(f"{name}(x, dim={dim})", fn(x, dim), lse - shift(n), mistakes, where=f"for x of shape {shape}")

    # float32 as in training: exp(1e4) overflows, and exp(-200) already underflows to 0.
    x = torch.tensor([[1e4, 1e4 - 1, -1e4], [-1e4, -1e4, -1e4 - 5], [-200.0, -199.0, -201.0]], requires_grad=True)
    got, x64 = fn(x, 1), x.detach().double()
    _compare(f"{name}(x, dim=1)", got, torch.logsumexp(x64, 1) - shift(3), where="for float32 rows near 1e4, "
             "-1e4 and -200", rtol=1e-6, atol=1e-4, nonfinite=f"{name}: naive")
    (grad,) = _grads(got, (x,), ("x",), f"{name}: gradient nan")
    _compare(f"the gradient of {name} (a softmax)", grad, torch.softmax(x64, 1), rtol=1e-4, atol=1e-5,
             otherwise=f"{name}: gradient cut")


def _reference_mixture(z, m, v, sd=None):
    """log (1/k) sum_i N(z; m_i, v_i) through torch.distributions (sd: the scales to use instead)."""
    m, v = torch.broadcast_tensors(m, v)
    weights = Categorical(logits=torch.zeros(m.shape[:-1], dtype=m.dtype))
    return MixtureSameFamily(weights, Independent(Normal(m, v.sqrt() if sd is None else sd), 1)).log_prob(z)


def check_log_normal_mixture():
    ut, g = _student("utils"), _gen(SEED + 3)
    # GMVAE.prior's shapes first, then every mix of per-row, shared and unbatched components.
    cases = [(ODD_BATCH, K, Z_DIM, (1,), (1,))] + [(13, 5, 3, a, b) for a, b in [
        ((13,), (13,)), ((), ()), ((13,), (1,)), ((1,), (13,)), ((), (1,)), ((13,), ())]]
    for batch, k, dim, m_lead, v_lead in cases:
        z = _randn((batch, dim), g) * 2
        m, v = _randn((*m_lead, k, dim), g), _rand_var((*v_lead, k, dim), g)
        where = f"for z of shape {(batch, dim)}, m of shape {tuple(m.shape)} and v of shape {tuple(v.shape)}"
        try:
            got = ut.log_normal_mixture(z, m, v)
        except NotImplementedError:
            raise
        except (RuntimeError, IndexError, ValueError) as e:
            if m_lead == v_lead == (1,):
                raise
            _fail(f"log_normal_mixture(z, m, v) {where}", first_line(e), "mixture: shapes")
        want = _reference_mixture(z, m, v)
        comps = Independent(Normal(m, v.sqrt()), 1).log_prob(z.unsqueeze(1))  # (batch, k)
        _compare("log_normal_mixture(z, m, v)", got, want, {
            "mixture: no log k": want + math.log(k), "mixture: log k twice": want - math.log(k),
            "mixture: v as sd": _reference_mixture(z, m, v, sd=v), "mixture: mean of logs": comps.mean(-1),
            "mixture: max": comps.amax(-1), "mixture: not reduced": comps,
            "mixture: over batch": torch.logsumexp(comps, 0) - math.log(batch),
            "mixture: summed over batch": want.sum(), "mixture: mean over batch": want.mean()},
            rtol=1e-7, atol=1e-6, where=where)


def check_log_normal_mixture_extremes():
    # |z - m| up to 100 with variance 1e-8: every component density is exp(-5e12) = 0 in floating point.
    g = _gen(SEED + 4)
    m, v = torch.randn(1, K, Z_DIM, generator=g) * 0.1, torch.full((1, K, Z_DIM), 1e-8)
    z = (torch.rand(ODD_BATCH, Z_DIM, generator=g) * 200 - 100).requires_grad_()
    got = _student("utils").log_normal_mixture(z, m, v)
    _compare("log_normal_mixture(z, m, v)", got, _reference_mixture(z.detach().double(), m.double(), v.double()),
             rtol=1e-5, atol=1e-3, where="up to 100 away from every component, with v = 1e-8 (float32)",
             nonfinite="mixture: underflow")
    (grad,) = _grads(got, (z,), ("z",), "mixture: gradient nan")
    if not (grad.abs() > 0).all():
        _fail("a non-zero gradient with respect to every z", "zeros", "mixture: flat gradient")


def check_sample_gaussian():
    ut, n = _student("utils"), 200_000
    m, v = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.25, 4.0, 9.0])
    z = ut.sample_gaussian(m.expand(n, 3), v.expand(n, 3), _gen(SEED + 5))
    if not isinstance(z, torch.Tensor) or z.shape != (n, 3):
        got = f"shape {_shape(z)}" if isinstance(z, torch.Tensor) else type(z).__name__
        _fail(f"samples of shape ({n}, 3)", got, "sample_gaussian: shape")
    if z.dtype != m.dtype:
        _fail("float32 samples for float32 m and v", str(z.dtype), "sample_gaussian: dtype")
    # The sample variance is within 2% (6 sd) and the mean within 0.05 (7 sd). The variance goes
    # first because a wrong scale also widens the spread of the mean.
    v64, ones = v.double(), torch.ones(3, dtype=F64)
    _compare(f"the variance of {n:,} draws", z.double().var(0), v64, {
        "sample_gaussian: v as sd": v64.pow(2), "sample_gaussian: v ** 0.25": v64.sqrt(),
        "sample_gaussian: not scaled": ones}, rtol=0.02, atol=0, match=(0.05, 0))
    _compare(f"the mean of {n:,} draws", z.double().mean(0), m.double(),
             {"sample_gaussian: no mean": 0 * ones}, rtol=0, atol=0.05, match=(0.05, 0.05))

    # The IWAE bound's case, m and v expanded to (iw, batch, dim), drawn twice from generators seeded alike.
    g, shape = _gen(SEED + 6), (3, ODD_BATCH, Z_DIM)
    m = torch.randn(ODD_BATCH, Z_DIM, generator=g, requires_grad=True)
    v = (torch.rand(ODD_BATCH, Z_DIM, generator=g) + 0.1).requires_grad_()
    a, b = (ut.sample_gaussian(m.expand(shape), v.expand(shape), _gen(7)) for _ in range(2))
    if a.shape != shape:
        _fail(f"samples of shape {shape} for m and v of that shape", f"shape {_shape(a)}",
              "sample_gaussian: samples shape")
    if not torch.equal(a, b):
        _fail("the same draw from two generators seeded alike", "different draws", "sample_gaussian: generator")
    gm, gv = _grads(a, (m, v), ("m", "v"), "sample_gaussian: gradient nan")
    if not (gm == shape[0]).all() or not (gv != 0).all():
        _fail("gradients that reach m and v (reparameterisation)", "zero or wrong gradients",
              "sample_gaussian: not reparameterised")


def check_kl_normal():
    ut, g = _student("utils"), _gen(SEED + 9)
    for q_shape, p_shape in PAIRED_SHAPES:
        qm, qv = _randn(q_shape, g) * 1.5, _rand_var(q_shape, g)
        pm, pv = _randn(p_shape, g), _rand_var(p_shape, g)
        each = kl_divergence(Normal(qm, qv.sqrt()), Normal(pm, pv.sqrt()))
        want = each.sum(-1)
        _compare("kl_normal(qm, qv, pm, pv)", ut.kl_normal(qm, qv, pm, pv), want, {
            "kl_normal: sign": -want,
            "kl_normal: swapped": kl_divergence(Normal(pm, pv.sqrt()), Normal(qm, qv.sqrt())).sum(-1),
            "kl_normal: v as sd": kl_divergence(Normal(qm, qv), Normal(pm, pv)).sum(-1),
            "kl_normal: no 1/2": 2 * want, "kl_normal: no -1": want + 0.5 * qm.size(-1),
            **_sum_mistakes("kl_normal", each)}, where=f"for q of shape {q_shape}, p of shape {p_shape}")
    # A far, narrow q against N(0, 1): large but finite, in float32.
    qm, qv = torch.full((3, 10), 100.0), torch.full((3, 10), 1e-8)
    want = kl_divergence(Normal(qm.double(), qv.double().sqrt()), Normal(0.0, 1.0)).sum(-1)
    _compare("kl_normal(qm, qv, 0, 1)", ut.kl_normal(qm, qv, torch.zeros(10), torch.ones(10)), want,
             rtol=1e-5, atol=1e-3, where="for qm = 100, qv = 1e-8 (float32)", nonfinite="kl_normal: overflow")


def check_gaussian_parameters():
    ut, g = _student("utils"), _gen(SEED + 10)
    # The encoder's case (dim=-1), GMVAE.prior's (dim=1), then float32 halves of +-1e4 and -200.
    cases = [(_randn((ODD_BATCH, 2 * Z_DIM), g) * 3, -1, 1e-7), (_randn((1, 14, 4), g) * 3, 1, 1e-7),
             (torch.tensor([[1e4, -1e4, 0.0, -200.0, 1e4, -1e4, 0.5, -200.0]]), -1, 0)]
    for h, dim, atol in cases:
        h64 = h.double()
        first, second = torch.split(h64, h.size(dim) // 2, dim=dim)
        where = f"for h of shape {_shape(h)}, dim={dim}" + (", float32" if h.dtype == torch.float32 else "")
        got = ut.gaussian_parameters(h, dim=dim)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            _fail(f"(m, v) {where}", type(got).__name__, "return the two halves m, v")
        _compare("m", got[0], first, {
            "gaussian_parameters: swapped": second,
            "gaussian_parameters: interleaved": h64.unflatten(dim, (-1, 2)).unbind(dim if dim < 0 else dim + 1)[0],
            "gaussian_parameters: ignores dim": torch.split(h64, h.size(-1) // 2, dim=-1)[0]},
            where=where, atol=atol)
        _compare("v", got[1], F.softplus(second) + 1e-8, {
            "gaussian_parameters: no floor": F.softplus(second), "gaussian_parameters: exp": second.exp(),
            "gaussian_parameters: no softplus": second}, where=where, rtol=1e-6, atol=atol, match=(1e-3, 1e-12),
            nonfinite="gaussian_parameters: overflow")


def check_log_bernoulli_with_logits():
    ut, g = _student("utils"), _gen(SEED + 11)
    bernoulli = lambda logits: Bernoulli(logits=logits, validate_args=False)
    # The ELBO's case, then the IWAE bound's: images (batch, 784) against logits (iw, batch, 784).
    for l_shape in [(ODD_BATCH, 784), (3, ODD_BATCH, 784)]:
        x = torch.bernoulli(torch.full((ODD_BATCH, 784), 0.3, dtype=F64), generator=g)
        logits = _randn(l_shape, g) * 4
        each = bernoulli(logits).log_prob(x)
        _compare("log_bernoulli_with_logits(x, logits)", ut.log_bernoulli_with_logits(x, logits), each.sum(-1), {
            "log_bernoulli_with_logits: sign": -each.sum(-1),
            "log_bernoulli_with_logits: 0 and 1 swapped": bernoulli(logits).log_prob(1 - x).sum(-1),
            **_sum_mistakes("log_bernoulli_with_logits", each)},
            where=f"for x of shape {(ODD_BATCH, 784)}, logits of shape {l_shape}",
            nonfinite="log_bernoulli_with_logits: logits as probabilities")
    # Logits of +-1e4 and +-100 in float32, each against x = 0 and x = 1: all finite in log space.
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]]).expand(2, 8)
    logits = torch.tensor([[1e4, 1e4, -1e4, -1e4, 100.0, 100.0, -100.0, -100.0]]).repeat(2, 1).requires_grad_()
    got, l64 = ut.log_bernoulli_with_logits(x, logits), logits.detach().double()
    where = "for logits of +-1e4 and +-100 (float32)"
    _compare("log_bernoulli_with_logits(x, logits)", got, bernoulli(l64).log_prob(x.double()).sum(-1), rtol=1e-6,
             atol=1e-4, where=where, nonfinite="log_bernoulli_with_logits: log of sigmoid")
    (grad,) = _grads(got, (logits,), ("logits",), "log_bernoulli_with_logits: gradient nan")
    _compare("the gradient x - sigmoid(logits)", grad, x.double() - torch.sigmoid(l64), rtol=1e-5, atol=1e-6,
             where=where)


# --- The models' bounds: a fixed untrained model against float64 references on the same z ---

_CACHE = None  # {(function, args): value} while main runs the checks


def _once_a_run(make):
    """make(*args) once per run of the checks, so that the models and draws are made once; every time
    outside a run, as the code under test may change between calls."""
    def cached(*args):
        if _CACHE is None:
            return make(*args)
        if (make, args) not in _CACHE:
            _CACHE[make, args] = make(*args)
        return _CACHE[make, args]
    return cached


def _images(n, seed):
    g = _gen(seed)
    return torch.bernoulli(torch.rand(n, 784, generator=g) * 0.5, generator=g)


@_once_a_run
def _model(kind):
    """The fixed untrained model of a kind and its float64 twin, which the references use."""
    models = _student("models")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = models.make_model(SimpleNamespace(model=kind, z=Z_DIM, k=K))
    if kind == "gmvae":
        if getattr(model, "z_pre", None) is None or tuple(model.z_pre.shape) != (1, 2 * K, Z_DIM):
            _fail(f"GMVAE.z_pre of shape (1, {2 * K}, {Z_DIM})",
                  str(getattr(getattr(model, "z_pre", None), "shape", "none")), "GMVAE: z_pre")
        # At initialisation all k components sit at 0 with one variance, so the mixture is a
        # single Gaussian and mistakes between components would go unseen: spread them out.
        g = _gen(SEED + 10)
        with torch.no_grad():
            model.z_pre.copy_(torch.cat([torch.randn(1, K, Z_DIM, generator=g),
                                         torch.randn(1, K, Z_DIM, generator=g) * 0.5], dim=1))
    return model, copy.deepcopy(model).double()


def _terms(kind, model64, x, eps, detach_z=False):
    """Float64 log-densities, each (batch,) or (iw, batch) with its graph, at z = m + sqrt(v) eps: the
    draw sample_gaussian makes from the noise eps, (batch, z_dim) or (iw, batch, z_dim). No student
    code runs: the encoder's output is split here and the networks are called directly."""
    x64 = x.to(F64)
    h = model64.enc.net(x64)
    m, v = h[..., :Z_DIM], F.softplus(h[..., Z_DIM:]) + 1e-8
    z = m + v.sqrt() * eps.to(F64)
    z = z.detach() if detach_z else z
    q, std = Normal(m, v.sqrt()), Normal(torch.zeros_like(m), torch.ones_like(m))
    log_p = log_p_std = Independent(std, 1).log_prob(z)
    if kind == "gmvae":
        pre = model64.z_pre[0]
        log_p = _reference_mixture(z, pre[:K], F.softplus(pre[K:]) + 1e-8)
    bern = lambda logits: Independent(Bernoulli(logits=logits, validate_args=False), 1).log_prob(x64)
    return {"log_px": bern(model64.dec.net(z)), "log_px_at_mean": bern(model64.dec.net(m)).expand(z.shape[:-1]),
            "log_q": Independent(q, 1).log_prob(z), "log_p": log_p,
            "log_p_std": log_p_std, "kl_closed": kl_divergence(q, std).sum(-1),
            "kl_swapped": kl_divergence(std, q).sum(-1)}


def _with_batch_mistakes(want, mistakes, batch):
    """want and mistakes, with the ways each batch average goes wrong added to the mistakes."""
    return want, {term: {**mistakes[term], "bound: summed over batch": value * batch,
                         "bound: divided twice": value / batch,
                         **({"bound: divided by 100": value * batch / 100} if batch != 100 else {})}
                  for term, value in want.items()}


def _elbo_reference(kind, model64, x, seed, detach_z=False):
    """want: {term: 0-dim tensor with its graph}: the float64 nelbo, kl and rec on the draw of z from
    `seed`; mistakes: {term: {key of CAUSES: value}}: the usual mistakes' values."""
    t = _terms(kind, model64, x, torch.randn(x.size(0), Z_DIM, generator=_gen(seed)), detach_z)
    kl_mc, rec = (t["log_q"] - t["log_p"]).mean(), -t["log_px"].mean()
    if kind == "vae":
        kl = t["kl_closed"].mean()
        kl_mistakes = {"VAE: kl sign": -kl, "VAE: kl swapped": t["kl_swapped"].mean(),
                       "VAE: kl by one sample": kl_mc}
    else:
        kl = kl_mc
        kl_mistakes = {"GMVAE: kl sign": -kl, "GMVAE: log k": kl - math.log(K),
                       "GMVAE: standard normal prior": (t["log_q"] - t["log_p_std"]).mean()}
    return _with_batch_mistakes({"nelbo": kl + rec, "kl": kl, "rec": rec}, {
        "nelbo": {"elbo: nelbo sign": -(kl + rec)}, "kl": kl_mistakes,
        "rec": {"elbo: rec sign": -rec, "elbo: rec per pixel": rec / 784,
                "elbo: decodes the mean": -t["log_px_at_mean"].mean()}}, x.size(0))


def _iwae_reference(kind, model64, x, seed, detach_z=False):
    """The float64 niwae, kl and rec of the IWAE bound with IW samples, and the usual mistakes, as
    _elbo_reference gives them."""
    t = _terms(kind, model64, x, torch.randn(IW, x.size(0), Z_DIM, generator=_gen(seed)), detach_z)
    niwae = lambda log_w, dim=0: -(torch.logsumexp(log_w, dim) - math.log(log_w.size(dim))).mean()
    log_w = t["log_px"] + t["log_p"] - t["log_q"]
    want = {"niwae": niwae(log_w), "kl": (t["log_q"] - t["log_p"]).mean(), "rec": -t["log_px"].mean()}
    b = want["niwae"]
    return _with_batch_mistakes(want, {
        "niwae": {"iwae: log_sum_exp": b - math.log(IW), "iwae: averaged": -log_w.mean(),
                  "iwae: over the batch": niwae(log_w, dim=1),
                  "iwae: adds the kl": niwae(t["log_px"] - t["log_p"] + t["log_q"]),
                  "iwae: leaves out the kl": niwae(t["log_px"]), "iwae: sign": -b,
                  **({"GMVAE: log k": b - math.log(K)} if kind == "gmvae" else {})},
        "kl": {"iwae: kl sign": -want["kl"]}, "rec": {"iwae: rec sign": -want["rec"]}}, x.size(0))


def _scalars(out, names, finite=True):
    """A bound's three results as {name: float64 0-dim tensor}; a Failure unless 0-dim (finite) tensors."""
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        _fail(f"the bound to return three tensors ({', '.join(names)})",
              f"{type(out).__name__}{f' of {len(out)}' if isinstance(out, (tuple, list)) else ''}",
              "bound: three values")
    for name, t in zip(names, out):
        if not isinstance(t, torch.Tensor):
            _fail(f"{name} as a 0-dim tensor", type(t).__name__, "bound: not a tensor")
        if t.shape != ():
            _fail(f"{name} as a scalar of shape ()", f"shape {_shape(t)}",
                  "bound: per-image" if t.dim() == 1 and t.numel() > 1 else "bound: not 0-dim")
        if finite and not torch.isfinite(t):
            _fail(f"a finite {name}", _num(t), "bound: not finite")
    return {name: t.detach().to(F64) for name, t in zip(names, out)}


def _stack(draws):
    """[{name: 0-dim tensor, or a dict of them}], one a draw, as {name: tensor: (draws,)}, nested alike."""
    return {n: _stack([d[n] for d in draws]) if isinstance(value, dict) else torch.stack([d[n] for d in draws])
            for n, value in draws[0].items()}


def _within(diffs, slack=2e-3):
    """Whether differences of draws paired by seed are zero on average, up to their own spread."""
    return bool(diffs.mean().abs() <= 5 * diffs.std() / math.sqrt(len(diffs)) + slack)


def _judge(models, bound, reference, out, got):
    """A bound's values on the reference's draw of z, then their gradients. Values off there are compared
    over other draws (_paired), in case the bound draws z in another order."""
    want, mistakes = reference(SEED)
    off = [n for n in got if not torch.isclose(got[n], want[n].detach(), rtol=1e-5, atol=1e-3)]
    for n in off:
        # float32 against float64 differs by about 1e-4 here; the usual mistakes by 0.1 or more.
        key = _cause(mistakes[n], lambda value: abs(got[n] - value) <= 3e-3)
        if key:
            _fail(f"{n} = {_num(want[n])}", _num(got[n]), CAUSES[key].format(what=n))
    if off:
        _paired(bound, reference, got)
    _gradients(models, out[0], None if off else lambda detach_z: reference(SEED, detach_z)[0][next(iter(got))])


def _paired(bound, reference, got):
    """Values off on the reference's draw of z, compared over draws paired by seed: a bound that draws z
    in another order passes, and a steady bias fails even when small, as the differences barely vary."""
    seeds = range(SEED + 1, SEED + 1 + FALLBACK_DRAWS)
    with torch.no_grad():
        mine = _stack([_scalars(_seeded(bound, s), tuple(got)) for s in seeds])
        want, mistakes = (_stack(part) for part in zip(*map(reference, seeds)))
    off = {}
    for n, values in mine.items():
        if _within(values - want[n]):
            continue
        expected = f"{n} about {_num(want[n].mean())} (the mean of {FALLBACK_DRAWS} draws of z, paired by seed)"
        key = _cause(mistakes[n], lambda value: _within(values - value))
        if key:
            _fail(expected, _num(values.mean()), CAUSES[key].format(what=n))
        off[n] = expected
    if off:
        # The total follows from its terms: name the terms that are off, or else the total.
        shown = [n for n in off if n != next(iter(mine))] or list(off)
        diffs = {n: mine[n] - want[n] for n in shown}
        said = [f"{n} is {abs(float(d.mean())):.3f} nats too {'high' if d.mean() > 0 else 'low'} "
                f"(+-{float(d.std()):.3f} across the draws)" for n, d in diffs.items()]
        fine = [n for n in mine if n not in off]
        _fail(off[shown[0]], _num(mine[shown[0]].mean()), f"not one of the usual mistakes: {', '.join(said)}"
              + (f"; {' and '.join(fine)} match{'es' if len(fine) == 1 else ''}" if fine else ""))


def _flat_grads(out, model):
    """{part of the model: the gradient of `out` with respect to its parameters, flattened (zero where none)}."""
    parts = {"the encoder": list(model.enc.parameters()), "the decoder": list(model.dec.parameters())}
    if hasattr(model, "z_pre"):
        parts["the prior (z_pre)"] = [model.z_pre]
    grads = iter(torch.autograd.grad(out, [p for ps in parts.values() for p in ps], allow_unused=True,
                                     retain_graph=True))
    return {part: torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().to(F64)
                             for p, g in zip(ps, grads)]) for part, ps in parts.items()}


def _gradients(models, out, same_draw=None):
    """The bound's gradients against the reference's on the same draw of z, which same_draw(detach_z)
    gives; or, with none (z drawn in another order), whether they reach every part of the model."""
    if not out.requires_grad:
        _fail("a bound that gradients can flow through", "a detached result", "detached")
    model, model64 = models
    got = _flat_grads(out, model)
    cut = {"the encoder": "bound: encoder cut", "the decoder": "bound: decoder cut",
           "the prior (z_pre)": "GMVAE: prior cut"}
    for part, g in got.items():
        if not (g != 0).any():
            _fail(f"a gradient with respect to {part}", "none (zero)", cut[part])
    if same_draw is None:
        return
    want = _flat_grads(same_draw(False), model64)
    error = lambda g, reference: float((g - reference).norm() / reference.norm())
    for part, g in got.items():
        err = error(g, want[part])
        if err <= GRAD_RTOL:
            continue
        if error(g, _flat_grads(same_draw(True), model64)[part]) <= GRAD_RTOL:
            cause = "bound: z detached"
        elif math.isfinite(err):
            cause = (f"not one of the usual mistakes: the values match, but the gradient with respect to {part} "
                     f"is off by {err:.0%} of its size")
        else:
            cause = f"the gradient with respect to {part} is not finite where the values are"
        _fail(f"the gradient with respect to {part} of the reference on the same draw of z",
              f"one {err:.2g} of its size away", cause)


def check_elbo(kind, batch=BATCH, image_seed=11):
    """negative_elbo_bound of the fixed model against its float64 reference, on the same draw of z."""
    model, model64 = models = _model(kind)
    x = _images(batch, image_seed)
    bound = lambda generator: model.negative_elbo_bound(x, generator=generator)
    out = _seeded(bound, SEED)
    got = _scalars(out, ("nelbo", "kl", "rec"))
    total = got["kl"] + got["rec"]
    _compare(f"nelbo = kl + rec = {_num(total)}", got["nelbo"], total, {
        "elbo: kl - rec": got["kl"] - got["rec"], "elbo: rec - kl": got["rec"] - got["kl"],
        "elbo: nelbo sign": -total},
        rtol=1e-5, atol=1e-4, otherwise="elbo: nelbo not the sum")
    _judge(models, bound, partial(_elbo_reference, kind, model64, x), out, got)


def check_iwae(kind, batch=BATCH, image_seed=12):
    """negative_iwae_bound with IW samples against its float64 reference, on the same draws of z."""
    model, model64 = models = _model(kind)
    x = _images(batch, image_seed)
    bound = lambda generator: model.negative_iwae_bound(x, IW, generator=generator)
    out = _seeded(bound, SEED)
    _judge(models, bound, partial(_iwae_reference, kind, model64, x), out, _scalars(out, ("niwae", "kl", "rec")))


def check_odd_batch(kind):
    """Both bounds with a batch of 97; an error that a batch of 100 does not raise means a hard-coded 100."""
    for check, bound in ((check_elbo, "elbo"), (check_iwae, "iwae")):
        try:
            check(kind, ODD_BATCH, image_seed=13)
        except (Failure, NotImplementedError):
            raise
        except Exception as e:
            try:
                check(kind, BATCH, image_seed=13)
            except Exception:
                raise e from None
            _fail(f"{MODEL_LABELS[kind]}.negative_{bound}_bound to run with a batch of {ODD_BATCH} (it does with "
                  f"{BATCH})", first_line(e), "bound: hard-coded 100")


@_once_a_run
def _draws(kind, k):
    """{bound, kl, rec: tensor: (draws,)}: the fixed model's NELBO (k = 0) or IWAE-k bound on one batch,
    over draws paired by seed, for the k-dependence checks."""
    model, x = _model(kind)[0], _images(BATCH, 14)
    bound = partial(model.negative_iwae_bound, x, k) if k else partial(model.negative_elbo_bound, x)
    with torch.no_grad():
        return _stack([_scalars(_seeded(bound, 1000 + i), ("bound", "kl", "rec"), finite=False)
                       for i in range(IWAE_REPEATS[k] if k else ELBO_REPEATS)])


def check_iwae_one(kind):
    elbo, iwae1 = _draws(kind, 0), _draws(kind, 1)["bound"][:ELBO_REPEATS]
    nelbo, kl = elbo["bound"], elbo["kl"]
    if not torch.isfinite(iwae1 - nelbo).all():
        _fail("finite NELBO and IWAE-1 draws", "nan or inf", "bound: not finite")
    # Draw by draw, IWAE-1 = rec + kl = NELBO. A log w that adds the KL and a NELBO whose KL is negated
    # both give nelbo - 2 kl; the sign of the NELBO's kl tells them apart.
    same = lambda value: _within(iwae1 - value, slack=0.02)
    if not same(nelbo):
        _fail(f"IWAE-1 = NELBO on average, {_num(nelbo.mean())} (the mean of {len(iwae1)} draws)",
              f"IWAE-1 {_num(iwae1.mean())}", _cause({
                  "iwae-1: nelbo's kl sign" if kl.mean() < 0 else "iwae: adds the kl": nelbo - 2 * kl,
                  "iwae: leaves out the kl": elbo["rec"], "iwae-1: iwae summed": nelbo * BATCH,
                  "iwae-1: nelbo summed": nelbo / BATCH}, same) or "iwae-1: differ")


def check_iwae_falls(kind):
    iwae = {k: _draws(kind, k)["bound"] for k in IWAE_REPEATS}
    means = {k: v.mean() for k, v in iwae.items()}
    finite = all(torch.isfinite(m) for m in means.values())
    if finite and means[1] > means[10] > means[100]:
        return
    noise = 4 * max(float(v.std()) / math.sqrt(len(v)) for v in iwae.values())
    flat = finite and abs(float(means[1] - means[100])) <= noise + 0.02
    _fail("IWAE-1 > IWAE-10 > IWAE-100 (means over repeated draws)",
          ", ".join(f"IWAE-{k} {_num(m)}" for k, m in means.items()),
          "iwae falls: " + ("underflow" if not finite else "flat" if flat else "not falling"))


# --- The list of checks and the runner ---

class Check(NamedTuple):
    """A named test of one function.

    target: the function under test, to tell its own NotImplementedError from a callee's
    needs: checks of the functions it calls; when those fail too, the FAIL line says so
    """
    name: str
    run: Callable
    target: str
    needs: tuple = ()


class Verdict(NamedTuple):
    name: str
    passed: bool
    line: str  # `PASS  <name>` or `FAIL  <name>: ...`


def _function_checks():
    """Every check of the functions a student writes, callees before callers."""
    far, mixture_far = "log_normal: far points, tiny variances", "log_normal_mixture: far points, tiny variances"
    # (name, check, needs): each tests the function its name begins with.
    checks = [Check(name, run, name.split(":")[0], needs) for name, run, needs in [
        ("log_normal", check_log_normal, ()),
        (far, check_log_normal_extremes, ()),
        ("log_sum_exp", partial(check_reduction, "log_sum_exp"), ()),
        ("log_mean_exp", partial(check_reduction, "log_mean_exp"), ("log_sum_exp",)),
        ("log_normal_mixture", check_log_normal_mixture, ("log_normal", "log_mean_exp")),
        (mixture_far, check_log_normal_mixture_extremes, ("log_mean_exp", far)),
        ("sample_gaussian", check_sample_gaussian, ()),
        ("kl_normal", check_kl_normal, ()),
        ("gaussian_parameters", check_gaussian_parameters, ()),
        ("log_bernoulli_with_logits", check_log_bernoulli_with_logits, ())]]
    encode = ("gaussian_parameters", "sample_gaussian", "log_bernoulli_with_logits")
    for kind, label in MODEL_LABELS.items():
        elbo, iwae = f"{label}.negative_elbo_bound", f"{label}.negative_iwae_bound"
        mixture = ("log_normal_mixture",) if kind == "gmvae" else ()
        elbo_needs = ("kl_normal",) if kind == "vae" else ("log_normal", "log_normal_mixture")
        checks += [Check(name, partial(run, kind), target, needs) for name, run, target, needs in [
            (elbo, check_elbo, "negative_elbo_bound", encode + elbo_needs),
            (iwae, check_iwae, "negative_iwae_bound", encode + ("log_normal", "log_mean_exp") + mixture),
            (f"{label}: odd batch of {ODD_BATCH}", check_odd_batch, "negative_elbo_bound", (elbo, iwae)),
            (f"{label}: IWAE-1 = NELBO on average", check_iwae_one, "negative_iwae_bound", (elbo, iwae)),
            (f"{label}: IWAE falls with k (1, 10, 100)", check_iwae_falls, "negative_iwae_bound", (iwae,))]]
    return checks


CHECKS = _function_checks()


def verdict(check, failed=()):
    """The verdict of one check, printed nowhere; never raises (but for KeyboardInterrupt). failed: the
    checks that failed before, which the FAIL line names as likelier causes."""
    dtype = torch.get_default_dtype()
    try:
        # Whatever the student's code does to torch's random state, grad mode or warnings stays here.
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            note = check.run()
    except NotImplementedError as e:
        frames = traceback.extract_tb(e.__traceback__)
        origin = frames[-1].name if frames else check.target
        where = "" if origin in (check.target, "<module>") else f" ({origin} raises NotImplementedError)"
        return Verdict(check.name, False, f"FAIL  {check.name}: not implemented yet{where}")
    except Failure as e:
        message, cause, first = e.message, e.cause, e.first
    except (Exception, SystemExit) as e:
        message, cause, first = first_line(e), None, False
    else:
        return Verdict(check.name, True, f"PASS  {check.name}" + (f": {note}" if note else ""))
    finally:
        torch.set_default_dtype(dtype)
    broken = [] if first else [n for n in check.needs if n in failed]
    if broken:
        # A wrong callee is the likelier cause, and it can mimic the signature of another mistake.
        callee = f"{', '.join(broken)} fail{'s' if len(broken) == 1 else ''} too (see above): fix that first"
        cause = f"{callee} (if that is not it: {cause})" if cause else callee
    cause = f"; likely cause: {cause}" if cause else ""
    return Verdict(check.name, False, f"FAIL  {check.name}: {message}{cause}")


def main(argv=None):
    """Run the checks that argv asks for and print their verdicts; returns 0 if all pass, else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m codebase.check", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Check the functions of codebase/ against independent references and name the likely "
                    "mistake; with --results, check the trained models' figures instead.")
    parser.add_argument("--results", action="store_true",
                        help="check the newest logs/<run>/results.json of each model against the accepted ranges")
    parser.add_argument("--logs", default="logs", help="where the runs' folders are (for --results)")
    parser.add_argument("--only", action="append", metavar="TEXT",
                        help="run only the checks whose name contains TEXT (repeatable)")
    args = parser.parse_args(argv)
    if args.results:
        from codebase.results_check import results_checks  # it builds on this module
        checks = results_checks(args.logs)
    else:
        checks = CHECKS
    if args.only:
        checks = [c for c in checks if any(text in c.name for text in args.only)]
        if not checks:
            parser.error(f"no check's name contains {' or '.join(map(repr, args.only))}")
    # The checks are many small tensor operations: on a CPU shared with training, extra
    # threads spin against the busy cores and run them tens of times slower.
    global _CACHE
    _CACHE, failed, threads = {}, [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for check in checks:
            v = verdict(check, failed)
            if not v.passed:
                failed.append(check.name)
            print(v.line, flush=True)
    finally:
        _CACHE = None
        torch.set_num_threads(threads)
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
