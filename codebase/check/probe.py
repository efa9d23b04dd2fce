"""The probe: run your functions on the checks' inputs and keep what they return. It judges nothing.

For each check it calls the code of codebase/ as it is now and records the raw results: the values
returned, whether they carry a gradient, and the gradients the judge needs. A function that raises
is recorded with its error and where in your files it was raised. judge.py compares the results
with the expected values.

The grader runs the probe in a sandboxed process, one file of results per check, as they finish:

    python -m codebase.check.probe --seed SEED --out FOLDER [--only NAME ...]
"""
import argparse
import contextlib
import importlib
import io
import os
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

from codebase.check import inputs as data
from codebase.check.inputs import BATCH, F64, Z_DIM, K
from codebase.check.registry import CHECKS, GIVEN_FUNCTIONS, ODD_BATCH, by_name, registrar

IW = 10  # importance samples in the same-draw comparisons of the IWAE bound
PAIRED_DRAWS = 16  # more draws of a bound, paired by seed, for a bound that draws z in another order
ELBO_REPEATS = 30  # NELBO and IWAE-1 draws for "IWAE-1 = NELBO on average"
# Draws per k for "IWAE falls with k": the means of the fixed models fall by more than a nat from
# k = 1 to 10 and by about half a nat from 10 to 100, where one draw's sd is 0.2, 0.07 and 0.08.
IWAE_REPEATS = {1: 30, 10: 4, 100: 1}
PROJECTIONS = 16  # a model's gradient is compared through this many fixed random projections
STUDENT_FILES = ("codebase/utils.py", "codebase/models/gmvae.py")  # the files that a student edits


PROBES = {}  # {check's key: its probe}
probes = registrar(PROBES)


class Raised(Exception):
    """The code under test cannot be probed at all (its module does not import, its model is not the
    graded one): `record` says why, as error_record would."""

    def __init__(self, record):
        super().__init__(record["message"])
        self.record = record


def error_record(error):
    """An exception as plain data: its type, first line, whether it is NotImplementedError, the function
    that raised it, and the frames of its traceback in the student's files, innermost last."""
    from codebase.runtime.errors import first_line
    frames = traceback.extract_tb(error.__traceback__)
    mine = [{"file": Path(f.filename).name, "line": f.lineno, "function": f.name} for f in frames
            if Path(f.filename).as_posix().endswith(STUDENT_FILES)]
    return {"type": type(error).__name__, "message": first_line(error), "frames": mine,
            "origin": frames[-1].name if frames else "", "not_implemented": isinstance(error, NotImplementedError)}


def where(record):
    """Where in the student's files an error arose: the student's own lines that led to it, outermost
    first, and the given function it was raised in, if any; "" when no frame is in those files."""
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
        from codebase.runtime.errors import first_line
        raise Raised({"type": "import", "message": f"cannot import codebase.{module}: {first_line(e)}",
                      "frames": [], "origin": "", "not_implemented": False}) from None


def gen(seed):
    return torch.Generator().manual_seed(seed)


def seeded(fn, seed, *args):
    """fn(*args, generator=...) with torch's global random state seeded alike, so that a function that
    ignores generator= draws the same noise; the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args, generator=gen(seed))


def draw_seed(seed, i):
    """The seed of the i-th draw of a bound (0: the draw that the references share)."""
    return seed * 1000 + i


def input_grads(out, inputs):
    """{requires_grad, grads}: whether `out` carries a gradient, and d out.sum() / d input (None where none)."""
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return {"requires_grad": False, "grads": []}
    grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
    return {"requires_grad": True, "grads": [None if g is None else g.detach().clone() for g in grads]}


_SIGNS = {}


def project(flat):
    """The PROJECTIONS dot products of a flat vector with fixed random +-1 vectors: tensor: (PROJECTIONS,).

    Each projection of a difference d has mean square |d|^2, so |P(a - b)| / |P b| estimates
    |a - b| / |b| (within a factor of about 1.5 for 16 of them) without keeping the whole vector.
    """
    n = flat.numel()
    if n not in _SIGNS:
        _SIGNS[n] = torch.from_numpy(np.stack([np.random.RandomState(j).randint(0, 2, n) * 2.0 - 1
                                               for j in range(PROJECTIONS)]))
    return _SIGNS[n] @ flat.double()


def model_parts(model):
    """{part: its parameters} of a model: the encoder, the decoder and, for the GMVAE, the prior."""
    parts = {"the encoder": list(model.enc.parameters()), "the decoder": list(model.dec.parameters())}
    if isinstance(getattr(model, "z_pre", None), torch.nn.Parameter):
        parts["the prior (z_pre)"] = [model.z_pre]
    return parts


def model_grads(out, model):
    """{part: {norm, projections}} of the gradient of `out` with respect to each part's parameters."""
    parts = model_parts(model)
    params = [p for ps in parts.values() for p in ps]
    grads = iter(torch.autograd.grad(out, params, allow_unused=True, retain_graph=True))
    found = {}
    for part, ps in parts.items():
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().double()
                          for p, g in zip(ps, grads)])
        found[part] = {"norm": flat.norm(), "nonzero": bool((flat != 0).any()), "projections": project(flat)}
    return found


# ---------------------------------------------------------------------------------------------
# codebase/utils.py: each probe fills `results` with {case: returned value, ...}
# ---------------------------------------------------------------------------------------------

# x and m, v (or q and p): per row, batched in two dimensions, and shared by the batch as the VAE's prior is
PAIRED_SHAPES = [((ODD_BATCH, 10), (ODD_BATCH, 10)), ((2, 7, 4), (2, 7, 4)), ((ODD_BATCH, 10), (10,))]
# (batch, k, dim, m's leading shape, v's): GMVAE.prior's shapes first, then every mix of per-row,
# shared and unbatched components
MIXTURE_CASES = [(ODD_BATCH, K, Z_DIM, (1,), (1,))] + [(13, 5, 3, a, b) for a, b in [
    ((13,), (13,)), ((), ()), ((13,), (1,)), ((1,), (13,)), ((), (1,)), ((13,), ())]]
REDUCTION_CASES = [((ODD_BATCH, 5), 1), ((5, ODD_BATCH), 0), ((3, 4, 5), 1)]
REDUCTION_EXTREMES = [[1e4, 1e4 - 1, -1e4], [-1e4, -1e4, -1e4 - 5], [-200.0, -199.0, -201.0]]
BERNOULLI_EXTREMES = ([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]],
                      [[1e4, 1e4, -1e4, -1e4, 100.0, 100.0, -100.0, -100.0]])
SAMPLE_DRAWS = 200_000
SAMPLE_M, SAMPLE_V = [1.0, -2.0, 0.5], [0.25, 4.0, 9.0]


def inputs_of(key, seed, i=0):
    """The tensors a utils check passes in its case i, made from the seed (the references make the same)."""
    name = f"{key}:{i}"
    if key == "log_normal":
        x_shape, p_shape = PAIRED_SHAPES[i]
        return (data.normal(seed, name + ":x", x_shape, 1.5), data.normal(seed, name + ":m", p_shape),
                data.variances(seed, name + ":v", p_shape))
    if key in ("log_sum_exp", "log_mean_exp"):
        shape, dim = REDUCTION_CASES[i]
        return data.normal(seed, name, shape, 5.0), dim
    if key == "log_normal_mixture":
        batch, k, dim, m_lead, v_lead = MIXTURE_CASES[i]
        return (data.normal(seed, name + ":z", (batch, dim), 2.0), data.normal(seed, name + ":m", (*m_lead, k, dim)),
                data.variances(seed, name + ":v", (*v_lead, k, dim)))
    if key == "mixture_far":
        return (data.uniform(seed, key + ":z", (ODD_BATCH, Z_DIM), -100, 100, torch.float32),
                data.normal(seed, key + ":m", (1, K, Z_DIM), 0.1, torch.float32), torch.full((1, K, Z_DIM), 1e-8))
    if key == "kl_normal":
        q_shape, p_shape = PAIRED_SHAPES[i]
        return (data.normal(seed, name + ":qm", q_shape, 1.5), data.variances(seed, name + ":qv", q_shape),
                data.normal(seed, name + ":pm", p_shape), data.variances(seed, name + ":pv", p_shape))
    if key == "gaussian_parameters":
        return [(data.normal(seed, name, (ODD_BATCH, 2 * Z_DIM), 3.0), -1),
                (data.normal(seed, name, (1, 14, 4), 3.0), 1),
                (torch.tensor([[1e4, -1e4, 0.0, -200.0, 1e4, -1e4, 0.5, -200.0]]), -1)][i]
    if key == "log_bernoulli_with_logits":
        logits_shape = [(ODD_BATCH, 784), (3, ODD_BATCH, 784)][i]
        x = (data.uniform(seed, name + ":x", (ODD_BATCH, 784)) < 0.3).to(F64)
        return x, data.normal(seed, name + ":logits", logits_shape, 4.0)
    if key == "sample_gaussian":
        return (data.normal(seed, key + ":m", (ODD_BATCH, Z_DIM), dtype=torch.float32),
                data.uniform(seed, key + ":v", (ODD_BATCH, Z_DIM), 0.1, 1.1, torch.float32))
    raise KeyError(key)


@probes("log_normal")
def probe_log_normal(check, seed, results):
    for i in range(len(PAIRED_SHAPES)):
        results[i] = plain(student("utils").log_normal(*inputs_of("log_normal", seed, i)))


@probes("log_normal_far")
def probe_log_normal_far(check, seed, results):
    # 100 away with variance 1e-8: log-densities near -5e12, fine in float32 if kept in log space.
    x, v = torch.full((3, 10), 100.0, requires_grad=True), torch.full((3, 10), 1e-8, requires_grad=True)
    got = student("utils").log_normal(x, torch.zeros(3, 10), v)
    results["far"] = plain(got)
    results["far grads"] = input_grads(got, (x, v))


@probes("log_sum_exp", "log_mean_exp")
def probe_reduction(check, seed, results):
    fn = getattr(student("utils"), check.target)
    for i in range(len(REDUCTION_CASES)):
        results[i] = plain(fn(*inputs_of(check.target, seed, i)))
    # float32 as in training: exp(1e4) overflows, and exp(-200) already underflows to 0.
    x = torch.tensor(REDUCTION_EXTREMES, requires_grad=True)
    got = fn(x, 1)
    results["far"] = plain(got)
    results["far grads"] = input_grads(got, (x,))


@probes("log_normal_mixture")
def probe_mixture(check, seed, results):
    for i in range(len(MIXTURE_CASES)):
        try:
            results[i] = plain(student("utils").log_normal_mixture(*inputs_of("log_normal_mixture", seed, i)))
        except NotImplementedError:
            raise
        except (RuntimeError, IndexError, ValueError) as e:  # a shape this mixture does not take
            results[i] = {"type": "error", "error": error_record(e)}


@probes("mixture_far")
def probe_mixture_far(check, seed, results):
    # |z - m| up to 100 with variance 1e-8: every component density is exp(-5e12) = 0 in floating point.
    z, m, v = inputs_of("mixture_far", seed)
    z.requires_grad_()
    got = student("utils").log_normal_mixture(z, m, v)
    results["far"] = plain(got)
    results["far grads"] = input_grads(got, (z,))


@probes("sample_gaussian")
def probe_sample_gaussian(check, seed, results):
    ut, n = student("utils"), SAMPLE_DRAWS
    m, v = torch.tensor(SAMPLE_M), torch.tensor(SAMPLE_V)
    results["draws"] = plain(ut.sample_gaussian(m.expand(n, 3), v.expand(n, 3),
                                                gen(data.generator_seed(seed, "sample_gaussian"))))
    # The IWAE bound's case, m and v expanded to (iw, batch, dim), drawn twice from generators seeded alike.
    m, v = (t.requires_grad_() for t in inputs_of("sample_gaussian", seed))
    shape, again = (3, ODD_BATCH, Z_DIM), data.generator_seed(seed, "sample_gaussian:again")
    a, b = (ut.sample_gaussian(m.expand(shape), v.expand(shape), gen(again)) for _ in range(2))
    results["expanded"], results["again"] = plain(a), plain(b)
    results["expanded grads"] = input_grads(a, (m, v))


@probes("kl_normal")
def probe_kl_normal(check, seed, results):
    ut = student("utils")
    for i in range(len(PAIRED_SHAPES)):
        results[i] = plain(ut.kl_normal(*inputs_of("kl_normal", seed, i)))
    # A far, narrow q against N(0, 1): large but finite, in float32.
    results["far"] = plain(ut.kl_normal(torch.full((3, 10), 100.0), torch.full((3, 10), 1e-8), torch.zeros(10),
                                        torch.ones(10)))


@probes("gaussian_parameters")
def probe_gaussian_parameters(check, seed, results):
    for i in range(3):
        h, dim = inputs_of("gaussian_parameters", seed, i)
        results[i] = plain(student("utils").gaussian_parameters(h, dim=dim))


@probes("log_bernoulli_with_logits")
def probe_log_bernoulli(check, seed, results):
    ut = student("utils")
    # The ELBO's case, then the IWAE bound's: images (batch, 784) against logits (iw, batch, 784).
    for i in range(2):
        results[i] = plain(ut.log_bernoulli_with_logits(*inputs_of("log_bernoulli_with_logits", seed, i)))
    # Logits of +-1e4 and +-100 in float32, each against x = 0 and x = 1: all finite in log space.
    x = torch.tensor(BERNOULLI_EXTREMES[0]).expand(2, 8)
    logits = torch.tensor(BERNOULLI_EXTREMES[1]).repeat(2, 1).requires_grad_()
    got = ut.log_bernoulli_with_logits(x, logits)
    results["far"] = plain(got)
    results["far grads"] = input_grads(got, (logits,))


# ---------------------------------------------------------------------------------------------
# The models' bounds, on a fixed untrained model (inputs.fixed_model)
# ---------------------------------------------------------------------------------------------

_CACHE = None  # {(what, args): value} within made_once()


@contextlib.contextmanager
def made_once():
    """Within it, the fixed models and the bounds' draws are made once for every check that uses them;
    outside it, every time, as the code under test may change between calls."""
    global _CACHE
    _CACHE = {}
    try:
        yield
    finally:
        _CACHE = None


def _once(make):
    def cached(*args):
        if _CACHE is None:
            return make(*args)
        if (make, args) not in _CACHE:
            _CACHE[make, args] = make(*args)
        return _CACHE[make, args]
    return cached


@_once
def fixed_model(kind, seed):
    """The model of `kind` made by the code under test, with the fixed parameters of inputs.fixed_state.

    Raises:
        Raised: the GMVAE's prior parameters z_pre are missing or of another shape
    """
    from types import SimpleNamespace
    with torch.random.fork_rng(devices=[]):
        model = student("models").make_model(SimpleNamespace(model=kind, z=Z_DIM, k=K))
    state = data.fixed_state(kind, seed)
    shape = tuple(getattr(getattr(model, "z_pre", None), "shape", ()))
    if kind == "gmvae" and shape != state["z_pre"].shape:
        raise Raised({"type": "z_pre", "message": str(shape or "none"), "frames": [], "origin": "",
                      "not_implemented": False})
    model.load_state_dict({name: t.float() for name, t in state.items()}, strict=False)
    return model


def bound_images(seed, which, batch):
    return data.images(seed, f"images:{which}", batch)


def _bound(model, which, batch, seed):
    """The bound under test as fn(generator=...): the ELBO, or the IWAE bound with IW samples."""
    x = bound_images(seed, which, batch)
    if which == "iwae":
        return lambda generator: model.negative_iwae_bound(x, IW, generator=generator)
    return lambda generator: model.negative_elbo_bound(x, generator=generator)


def probe_bound(check, seed, results, which, batch):
    """A bound of the fixed model: its values on the shared draw of z, with their gradients with
    respect to each part of the model, and on PAIRED_DRAWS more draws."""
    model = fixed_model(check.kind, seed)
    bound = _bound(model, which, batch, seed)
    out = seeded(bound, draw_seed(seed, 0))
    results["draw"] = plain(out)
    first = out[0] if isinstance(out, (tuple, list)) and len(out) else None
    if isinstance(first, torch.Tensor) and check.kind == "gmvae" and not torch.isfinite(first).all():
        results["finite with positive z_pre"] = finite_with_positive_pre(model, bound, seed)
    if isinstance(first, torch.Tensor):
        results["requires_grad"] = first.requires_grad
        if first.requires_grad and first.dim() == 0:
            results["grads"] = model_grads(first, model)
    with torch.no_grad():
        results["paired"] = [plain(seeded(bound, draw_seed(seed, i))) for i in range(1, PAIRED_DRAWS + 1)]


def finite_with_positive_pre(model, bound, seed):
    """Whether the GMVAE's bound, not finite, becomes finite once the second half of z_pre (the prior's
    variances before their softplus) is made positive: a sign that the bound took them raw."""
    with torch.no_grad():
        saved = model.z_pre.detach().clone()
        model.z_pre[:, K:] = model.z_pre[:, K:].abs() + 0.1
        try:
            out = seeded(bound, draw_seed(seed, 0))
            return all(isinstance(t, torch.Tensor) and bool(torch.isfinite(t).all()) for t in out)
        except Exception:
            return False
        finally:
            model.z_pre.copy_(saved)


@probes("elbo")
def probe_elbo(check, seed, results):
    probe_bound(check, seed, results, "elbo", BATCH)


@probes("iwae", "odd_batch")
def probe_odd_batch(check, seed, results):
    """A bound with a batch of 97 (the ELBO, or for the IWAE check the IWAE bound); where that raises,
    whether it runs with 100, which tells a hard-coded batch size."""
    which = "iwae" if check.key == "iwae" else "elbo"
    try:
        probe_bound(check, seed, results, which, ODD_BATCH)
    except (NotImplementedError, Raised):
        raise
    except Exception as e:
        results["error at 97"] = error_record(e)
        try:
            probe_bound(check, seed, {}, which, BATCH)
            results["runs at 100"] = True
        except Exception:
            results["runs at 100"] = False


@_once
def draws(kind, k, seed):
    """[(bound, kl, rec)] of the fixed model's NELBO (k = 0) or IWAE-k bound on one batch, one per draw."""
    model = fixed_model(kind, seed)
    x = bound_images(seed, "draws", BATCH)
    bound = (lambda generator: model.negative_iwae_bound(x, k, generator=generator)) if k else \
        (lambda generator: model.negative_elbo_bound(x, generator=generator))
    with torch.no_grad():
        return [plain(seeded(bound, draw_seed(seed, 100 + i))) for i in range(IWAE_REPEATS[k] if k else ELBO_REPEATS)]


@probes("iwae_one")
def probe_iwae_one(check, seed, results):
    results["nelbo"] = draws(check.kind, 0, seed)
    results["iwae1"] = draws(check.kind, 1, seed)


@probes("iwae_falls")
def probe_iwae_falls(check, seed, results):
    for k in IWAE_REPEATS:
        results[f"iwae{k}"] = draws(check.kind, k, seed)


def run(check, seed):
    """One check's raw results: {"results": {...}} and, if the code under test raised, {"error": ...}.

    Whatever the code under test does to torch's random state, grad mode or warnings stays inside.
    """
    results, found = {}, {}
    dtype = torch.get_default_dtype()
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PROBES[check.key](check, seed, results)
    except Raised as e:
        found["error"] = e.record
    except (Exception, SystemExit) as e:
        found["error"] = error_record(e)
    finally:
        torch.set_default_dtype(dtype)
    found["results"] = results
    return found


def main(argv=None):
    """Probe the checks named (all by default) and write each one's results to FOLDER/<n>.pt as it ends."""
    p = argparse.ArgumentParser(prog="python -m codebase.check.probe", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="the folder for the results, one file per check")
    p.add_argument("--only", action="append", metavar="NAME", help="a check's exact name (repeatable)")
    args = p.parse_args(argv)
    checks = [by_name(name) for name in args.only] if args.only else CHECKS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    with made_once():
        for n, check in enumerate(checks):
            buffer = io.BytesIO()
            torch.save({"name": check.name, **run(check, args.seed)}, buffer)
            tmp = out / f".{n}.tmp"
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, out / f"{n}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
