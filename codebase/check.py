"""Self-check: which of your functions is wrong, and why.

    python -m codebase.check              # every function, in a few seconds on a CPU
    python -m codebase.check --only kl    # only the checks whose name contains "kl"
    python -m codebase.check --results    # the trained models' figures (codebase/results_check.py)

Each check runs a function of codebase/ as it is now on fixed inputs, and compares its values (for
the bounds, also their gradients) with a float64 reference built on torch.distributions and
torch.logsumexp. A wrong value is matched against the usual mistakes (codebase/mistakes.py) to name
the likely cause; for any other mistake the FAIL line says what is off, by how much and which way.

The checks of codebase/utils.py are below; those of the models' bounds, which judge a bound on its
maths and not on how it draws z, are in codebase/check_bounds.py; the comparison with a reference
and the naming of a mistake are codebase/check_tools.py's.
"""
import argparse
import math
import sys
import traceback
import warnings
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from codebase import check_bounds as bounds
from codebase.check_tools import (F64, K, ODD_BATCH, SEED, Z_DIM, Check, Failure, compare, fail, fmt_shape, gen,
                                  input_grads, reference_mixture, student)
from codebase.errors import first_line
from codebase.reference import MODEL_LABELS


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
    ut, g = student("utils"), gen(SEED)
    for x_shape, p_shape in PAIRED_SHAPES:
        x, m, v = _randn(x_shape, g) * 1.5, _randn(p_shape, g), _rand_var(p_shape, g)
        compare("log_normal(x, m, v)", ut.log_normal(x, m, v), Normal(m, v.sqrt()).log_prob(x).sum(-1),
                _log_normal_mistakes(x, m, v), where=f"for x of shape {x_shape}, m and v of shape {p_shape}")


def check_log_normal_extremes():
    # 100 away with variance 1e-8: log-densities near -5e12, fine in float32 if kept in log space.
    x, m = torch.full((3, 10), 100.0, requires_grad=True), torch.zeros(3, 10)
    v = torch.full((3, 10), 1e-8, requires_grad=True)
    got = student("utils").log_normal(x, m, v)
    x64, m64, v64 = (t.detach().double() for t in (x, m, v))
    compare("log_normal(x, m, v)", got, Normal(m64, v64.sqrt()).log_prob(x64).sum(-1),
            _log_normal_mistakes(x64, m64, v64), rtol=1e-5, atol=0, where="at x - m = 100, v = 1e-8 (float32)",
            nonfinite="log_normal: density first")
    input_grads(got, (x, v), ("x", "v"), "log_normal: gradient")


def check_reduction(name):
    """log_sum_exp or log_mean_exp, as `name` says, against torch.logsumexp."""
    fn, g = getattr(student("utils"), name), gen(SEED + 2)
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
        compare(f"{name}(x, dim={dim})", fn(x, dim), lse - shift(n), mistakes, where=f"for x of shape {shape}")

    # float32 as in training: exp(1e4) overflows, and exp(-200) already underflows to 0.
    x = torch.tensor([[1e4, 1e4 - 1, -1e4], [-1e4, -1e4, -1e4 - 5], [-200.0, -199.0, -201.0]], requires_grad=True)
    got, x64 = fn(x, 1), x.detach().double()
    compare(f"{name}(x, dim=1)", got, torch.logsumexp(x64, 1) - shift(3), where="for float32 rows near 1e4, "
            "-1e4 and -200", rtol=1e-6, atol=1e-4, nonfinite=f"{name}: naive")
    (grad,) = input_grads(got, (x,), ("x",), f"{name}: gradient nan")
    compare(f"the gradient of {name} (a softmax)", grad, torch.softmax(x64, 1), rtol=1e-4, atol=1e-5,
            otherwise=f"{name}: gradient cut")


def check_log_normal_mixture():
    ut, g = student("utils"), gen(SEED + 3)
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
            fail(f"log_normal_mixture(z, m, v) {where}", first_line(e), "mixture: shapes")
        want = reference_mixture(z, m, v)
        comps = Independent(Normal(m, v.sqrt()), 1).log_prob(z.unsqueeze(1))  # (batch, k)
        compare("log_normal_mixture(z, m, v)", got, want, {
            "mixture: no log k": want + math.log(k), "mixture: log k twice": want - math.log(k),
            "mixture: v as sd": reference_mixture(z, m, v, sd=v), "mixture: mean of logs": comps.mean(-1),
            "mixture: max": comps.amax(-1), "mixture: not reduced": comps,
            "mixture: over batch": torch.logsumexp(comps, 0) - math.log(batch),
            "mixture: summed over batch": want.sum(), "mixture: mean over batch": want.mean()},
            rtol=1e-7, atol=1e-6, where=where)


def check_log_normal_mixture_extremes():
    # |z - m| up to 100 with variance 1e-8: every component density is exp(-5e12) = 0 in floating point.
    g = gen(SEED + 4)
    m, v = torch.randn(1, K, Z_DIM, generator=g) * 0.1, torch.full((1, K, Z_DIM), 1e-8)
    z = (torch.rand(ODD_BATCH, Z_DIM, generator=g) * 200 - 100).requires_grad_()
    got = student("utils").log_normal_mixture(z, m, v)
    compare("log_normal_mixture(z, m, v)", got, reference_mixture(z.detach().double(), m.double(), v.double()),
            rtol=1e-5, atol=1e-3, where="up to 100 away from every component, with v = 1e-8 (float32)",
            nonfinite="mixture: underflow")
    (grad,) = input_grads(got, (z,), ("z",), "mixture: gradient nan")
    if not (grad.abs() > 0).all():
        fail("a non-zero gradient with respect to every z", "zeros", "mixture: flat gradient")


def check_sample_gaussian():
    ut, n = student("utils"), 200_000
    m, v = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.25, 4.0, 9.0])
    z = ut.sample_gaussian(m.expand(n, 3), v.expand(n, 3), gen(SEED + 5))
    if not isinstance(z, torch.Tensor) or z.shape != (n, 3):
        got = f"shape {fmt_shape(z)}" if isinstance(z, torch.Tensor) else type(z).__name__
        fail(f"samples of shape ({n}, 3)", got, "sample_gaussian: shape")
    if z.dtype != m.dtype:
        fail("float32 samples for float32 m and v", str(z.dtype), "sample_gaussian: dtype")
    # The sample variance is within 2% (6 sd) and the mean within 0.05 (7 sd). The variance goes
    # first because a wrong scale also widens the spread of the mean.
    v64, ones = v.double(), torch.ones(3, dtype=F64)
    compare(f"the variance of {n:,} draws", z.double().var(0), v64, {
        "sample_gaussian: v as sd": v64.pow(2), "sample_gaussian: v ** 0.25": v64.sqrt(),
        "sample_gaussian: not scaled": ones}, rtol=0.02, atol=0, match=(0.05, 0))
    compare(f"the mean of {n:,} draws", z.double().mean(0), m.double(),
            {"sample_gaussian: no mean": 0 * ones}, rtol=0, atol=0.05, match=(0.05, 0.05))

    # The IWAE bound's case, m and v expanded to (iw, batch, dim), drawn twice from generators seeded alike.
    g, shape = gen(SEED + 6), (3, ODD_BATCH, Z_DIM)
    m = torch.randn(ODD_BATCH, Z_DIM, generator=g, requires_grad=True)
    v = (torch.rand(ODD_BATCH, Z_DIM, generator=g) + 0.1).requires_grad_()
    a, b = (ut.sample_gaussian(m.expand(shape), v.expand(shape), gen(7)) for _ in range(2))
    if a.shape != shape:
        fail(f"samples of shape {shape} for m and v of that shape", f"shape {fmt_shape(a)}",
             "sample_gaussian: samples shape")
    if not torch.equal(a, b):
        fail("the same draw from two generators seeded alike", "different draws", "sample_gaussian: generator")
    gm, gv = input_grads(a, (m, v), ("m", "v"), "sample_gaussian: gradient nan")
    if not (gm == shape[0]).all() or not (gv != 0).all():
        fail("gradients that reach m and v (reparameterisation)", "zero or wrong gradients",
             "sample_gaussian: not reparameterised")


def check_kl_normal():
    ut, g = student("utils"), gen(SEED + 9)
    for q_shape, p_shape in PAIRED_SHAPES:
        qm, qv = _randn(q_shape, g) * 1.5, _rand_var(q_shape, g)
        pm, pv = _randn(p_shape, g), _rand_var(p_shape, g)
        each = kl_divergence(Normal(qm, qv.sqrt()), Normal(pm, pv.sqrt()))
        want = each.sum(-1)
        compare("kl_normal(qm, qv, pm, pv)", ut.kl_normal(qm, qv, pm, pv), want, {
            "kl_normal: sign": -want,
            "kl_normal: swapped": kl_divergence(Normal(pm, pv.sqrt()), Normal(qm, qv.sqrt())).sum(-1),
            "kl_normal: v as sd": kl_divergence(Normal(qm, qv), Normal(pm, pv)).sum(-1),
            "kl_normal: no 1/2": 2 * want, "kl_normal: no -1": want + 0.5 * qm.size(-1),
            **_sum_mistakes("kl_normal", each)}, where=f"for q of shape {q_shape}, p of shape {p_shape}")
    # A far, narrow q against N(0, 1): large but finite, in float32.
    qm, qv = torch.full((3, 10), 100.0), torch.full((3, 10), 1e-8)
    want = kl_divergence(Normal(qm.double(), qv.double().sqrt()), Normal(0.0, 1.0)).sum(-1)
    compare("kl_normal(qm, qv, 0, 1)", ut.kl_normal(qm, qv, torch.zeros(10), torch.ones(10)), want,
            rtol=1e-5, atol=1e-3, where="for qm = 100, qv = 1e-8 (float32)", nonfinite="kl_normal: overflow")


def check_gaussian_parameters():
    ut, g = student("utils"), gen(SEED + 10)
    # The encoder's case (dim=-1), GMVAE.prior's (dim=1), then float32 halves of +-1e4 and -200.
    cases = [(_randn((ODD_BATCH, 2 * Z_DIM), g) * 3, -1, 1e-7), (_randn((1, 14, 4), g) * 3, 1, 1e-7),
             (torch.tensor([[1e4, -1e4, 0.0, -200.0, 1e4, -1e4, 0.5, -200.0]]), -1, 0)]
    for h, dim, atol in cases:
        h64 = h.double()
        first, second = torch.split(h64, h.size(dim) // 2, dim=dim)
        where = f"for h of shape {fmt_shape(h)}, dim={dim}" + (", float32" if h.dtype == torch.float32 else "")
        got = ut.gaussian_parameters(h, dim=dim)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            fail(f"(m, v) {where}", type(got).__name__, "return the two halves m, v")
        compare("m", got[0], first, {
            "gaussian_parameters: swapped": second,
            "gaussian_parameters: interleaved": h64.unflatten(dim, (-1, 2)).unbind(dim if dim < 0 else dim + 1)[0],
            "gaussian_parameters: ignores dim": torch.split(h64, h.size(-1) // 2, dim=-1)[0]},
            where=where, atol=atol)
        compare("v", got[1], F.softplus(second) + 1e-8, {
            "gaussian_parameters: no floor": F.softplus(second), "gaussian_parameters: exp": second.exp(),
            "gaussian_parameters: no softplus": second}, where=where, rtol=1e-6, atol=atol, match=(1e-3, 1e-12),
            nonfinite="gaussian_parameters: overflow")


def check_log_bernoulli_with_logits():
    ut, g = student("utils"), gen(SEED + 11)
    bernoulli = lambda logits: Bernoulli(logits=logits, validate_args=False)
    # The ELBO's case, then the IWAE bound's: images (batch, 784) against logits (iw, batch, 784).
    for l_shape in [(ODD_BATCH, 784), (3, ODD_BATCH, 784)]:
        x = torch.bernoulli(torch.full((ODD_BATCH, 784), 0.3, dtype=F64), generator=g)
        logits = _randn(l_shape, g) * 4
        each = bernoulli(logits).log_prob(x)
        compare("log_bernoulli_with_logits(x, logits)", ut.log_bernoulli_with_logits(x, logits), each.sum(-1), {
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
    compare("log_bernoulli_with_logits(x, logits)", got, bernoulli(l64).log_prob(x.double()).sum(-1), rtol=1e-6,
            atol=1e-4, where=where, nonfinite="log_bernoulli_with_logits: log of sigmoid")
    (grad,) = input_grads(got, (logits,), ("logits",), "log_bernoulli_with_logits: gradient nan")
    compare("the gradient x - sigmoid(logits)", grad, x.double() - torch.sigmoid(l64), rtol=1e-5, atol=1e-6,
            where=where)


# --- The list of checks and the runner ---

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
            (elbo, bounds.check_elbo, "negative_elbo_bound", encode + elbo_needs),
            (iwae, bounds.check_iwae, "negative_iwae_bound", encode + ("log_normal", "log_mean_exp") + mixture),
            (f"{label}: odd batch of {ODD_BATCH}", bounds.check_odd_batch, "negative_elbo_bound", (elbo, iwae)),
            (f"{label}: IWAE-1 = NELBO on average", bounds.check_iwae_one, "negative_iwae_bound", (elbo, iwae)),
            (f"{label}: IWAE falls with k (1, 10, 100)", bounds.check_iwae_falls, "negative_iwae_bound", (iwae,))]]
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
        from codebase.results_check import results_checks
        checks = results_checks(args.logs)
    else:
        checks = CHECKS
    if args.only:
        checks = [c for c in checks if any(text in c.name for text in args.only)]
        if not checks:
            parser.error(f"no check's name contains {' or '.join(map(repr, args.only))}")
    # The checks are many small tensor operations: on a CPU shared with training, extra
    # threads spin against the busy cores and run them tens of times slower.
    failed, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with bounds.models_made_once():
            for check in checks:
                v = verdict(check, failed)
                if not v.passed:
                    failed.append(check.name)
                print(v.line, flush=True)
    finally:
        torch.set_num_threads(threads)
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
