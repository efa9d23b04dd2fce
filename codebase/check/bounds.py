"""The checks of the models' bounds on a fixed untrained model: their probes and their judges.

A bound is compared with the expected values on a shared draw of z, then over more draws paired by seed
(in case it draws z in another order), and so are its gradients with respect to each part of the model.
Two checks compare the code under test with itself: IWAE-1 with the NELBO, and IWAE-k across k.
"""
import functools
import math
from types import SimpleNamespace

import numpy as np
import torch

from codebase.check import inputs as data
from codebase.check.calls import Raised, error_record, plain, seeded, student
from codebase.check.compare import compare, fail, fmt_num, items, take, type_of, which_mistake
from codebase.check.inputs import BATCH, F64, Z_DIM, K
from codebase.check.mistakes import CAUSES
from codebase.check.registry import ODD_BATCH

IW = 10  # importance samples in the same-draw comparisons of the IWAE bound
PAIRED_DRAWS = 16  # more draws of a bound, paired by seed, for a bound that draws z in another order
ELBO_REPEATS = 30  # NELBO and IWAE-1 draws for "IWAE-1 = NELBO on average"
# Draws per k for "IWAE falls with k": from k = 1 to 10 to 100 the means fall by a nat, then half a nat,
# and one draw's sd is 0.2 at most.
IWAE_REPEATS = {1: 30, 10: 4, 100: 1}
PROJECTIONS = 16  # a model's gradient is compared through this many fixed random projections
GRAD_RTOL = 1e-3  # float32 against float64 gradients differ by about 1e-5 of their size


def fixed_model(kind, seed):
    """The code under test's model of `kind` with the fixed parameters of inputs.fixed_state; Raised if the
    GMVAE's prior parameters z_pre are missing or of another shape."""
    with torch.random.fork_rng(devices=[]):
        model = student("models").make_model(SimpleNamespace(model=kind, z=Z_DIM, k=K))
    state = data.fixed_state(kind, seed)
    shape = tuple(getattr(getattr(model, "z_pre", None), "shape", ()))
    if kind == "gmvae" and shape != state["z_pre"].shape:
        raise Raised({"type": "z_pre", "message": str(shape or "none")})
    model.load_state_dict({name: t.float() for name, t in state.items()}, strict=False)
    return model


def bound_images(seed, which, batch):
    return data.images(seed, f"images:{which}", batch)


def draw_seed(seed, i):
    """The seed of the i-th draw of a bound (0: the draw that the expected values share)."""
    return seed * 1000 + i


def bound(model, x, k):
    """The bound under test as fn(generator=...): the NELBO (k = 0) or the IWAE bound with k samples."""
    if k:
        return lambda generator: model.negative_iwae_bound(x, k, generator=generator)
    return lambda generator: model.negative_elbo_bound(x, generator=generator)


@functools.cache
def _signs(n):
    return torch.from_numpy(np.stack([np.random.RandomState(j).randint(0, 2, n) * 2.0 - 1 for j in range(PROJECTIONS)]))


def project(flat):
    """The dot products of a flat vector with PROJECTIONS fixed random +-1 vectors: tensor: (PROJECTIONS,).
    Each has mean square |d|^2 for a difference d, so |P(a - b)| / |P b| estimates |a - b| / |b| (within a
    factor of about 1.5 for 16) without keeping the whole vector."""
    return _signs(flat.numel()) @ flat.double()


def model_grads(out, model):
    """{part: {nonzero, projections}} of the gradient of `out` with respect to each part's parameters."""
    parts = {"the encoder": list(model.enc.parameters()), "the decoder": list(model.dec.parameters())}
    if isinstance(getattr(model, "z_pre", None), torch.nn.Parameter):
        parts["the prior (z_pre)"] = [model.z_pre]
    params = [p for ps in parts.values() for p in ps]
    grads = iter(torch.autograd.grad(out, params, allow_unused=True, retain_graph=True))
    found = {}
    for part, ps in parts.items():
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().double() for p, g in zip(ps, grads)])
        found[part] = {"nonzero": bool((flat != 0).any()), "projections": project(flat)}
    return found


def _probe_bound(check, seed, results, batch):
    """The bound's values on the shared draw of z, with their gradients with respect to each part of
    the model, and on PAIRED_DRAWS more draws."""
    model = fixed_model(check.kind, seed)
    which = "iwae" if check.key == "iwae" else "elbo"
    fn = bound(model, bound_images(seed, which, batch), IW if which == "iwae" else 0)
    out = seeded(fn, draw_seed(seed, 0))
    results["draw"] = plain(out)
    first = out[0] if isinstance(out, (tuple, list)) and len(out) else None
    if isinstance(first, torch.Tensor):
        if check.kind == "gmvae" and not torch.isfinite(first).all():
            results["finite with positive z_pre"] = finite_with_positive_pre(model, fn, seed)
        results["requires_grad"] = first.requires_grad
        if first.requires_grad and first.dim() == 0:
            results["grads"] = model_grads(first, model)
    with torch.no_grad():
        results["paired"] = [plain(seeded(fn, draw_seed(seed, i))) for i in range(1, PAIRED_DRAWS + 1)]


def finite_with_positive_pre(model, fn, seed):
    """Whether the GMVAE's bound, not finite, becomes finite once the second half of z_pre (the prior's
    variances before their softplus) is made positive: a sign that the bound took them raw."""
    with torch.no_grad():
        saved = model.z_pre.detach().clone()
        model.z_pre[:, K:] = model.z_pre[:, K:].abs() + 0.1
        try:
            out = seeded(fn, draw_seed(seed, 0))
            return all(isinstance(t, torch.Tensor) and bool(torch.isfinite(t).all()) for t in out)
        except Exception:
            return False
        finally:
            model.z_pre.copy_(saved)


def probe_bound(check, seed, results):
    """The ELBO with a batch of 100; or, for the other checks, the ELBO or the IWAE bound with a batch of 97,
    and where that raises, whether it runs with 100, which tells a hard-coded batch size."""
    if check.key == "elbo":
        return _probe_bound(check, seed, results, BATCH)
    try:
        _probe_bound(check, seed, results, ODD_BATCH)
    except (NotImplementedError, Raised):
        raise
    except Exception as e:
        results["error at 97"] = error_record(e)
        try:
            _probe_bound(check, seed, {}, BATCH)
            results["runs at 100"] = True
        except Exception:
            results["runs at 100"] = False


def probe_draws(check, seed, results):
    """[(bound, kl, rec)] of draws on one batch, of the NELBO and IWAE-1 (iwae_one), or of IWAE-k for each k
    of IWAE_REPEATS (iwae_falls)."""
    for k in (0, 1) if check.key == "iwae_one" else IWAE_REPEATS:
        fn = bound(fixed_model(check.kind, seed), bound_images(seed, "draws", BATCH), k)
        with torch.no_grad():
            results[f"iwae{k}" if k else "nelbo"] = [plain(seeded(fn, draw_seed(seed, 100 + i)))
                                                     for i in range(IWAE_REPEATS[k] if k else ELBO_REPEATS)]


def scalars(out, names, finite=True):
    """A bound's three results as {name: float64 0-dim tensor}; a Failure unless 0-dim (finite) tensors."""
    values = items(out, 3, f"the bound to return three tensors ({', '.join(names)})", "bound: three values")
    for name, t in zip(names, values):
        if not isinstance(t, torch.Tensor):
            fail(f"{name} as a 0-dim tensor", type_of(t), "bound: not a tensor")
        if t.shape != ():
            fail(f"{name} as a scalar of shape ()", f"shape {tuple(t.shape)}",
                 "bound: per-image" if t.dim() == 1 and t.numel() > 1 else "bound: not 0-dim")
        if finite and not torch.isfinite(t):
            fail(f"a finite {name}", fmt_num(t), "bound: not finite")
    return {name: t.detach().to(F64) for name, t in zip(names, values)}


def _draws(found, key, count, names=("bound", "kl", "rec"), finite=False):
    """{name: tensor: (draws,)} of the probe's `count` draws of a bound under `key`."""
    draws = take(found, key)
    if not isinstance(draws, list) or len(draws) != count:
        raise Raised({"type": "missing", "message": f"the {key} draws are missing"})
    draws = [scalars(d, names, finite) for d in draws]
    return {name: torch.stack([d[name] for d in draws]) for name in names}


def _within(diffs, reference=None, slack=2e-3):
    """Whether differences of draws paired by seed are zero on average, within 6 standard errors of the
    smaller of their own spread and two independent draws' of the reference (if any): a bound that draws the
    same z differs by almost nothing, so a small steady bias shows; one that draws z in another order varies
    as the reference does (outside once in 40,000: t with 15 degrees of freedom); and a bound of pure noise
    cannot widen its own tolerance."""
    spread = diffs.std() if reference is None else min(diffs.std(), math.sqrt(2) * reference.std())
    return bool(diffs.mean().abs() <= 6 * spread / math.sqrt(len(diffs)) + slack)


def _at(expected, i):
    """The expected values and the usual mistakes' values ({term: {key of CAUSES: value}}) at draw(s) i."""
    return ({n: v[i] for n, v in expected["want"].items()},
            {n: {k: v[i] for k, v in ms.items()} for n, ms in expected["mistakes"].items()})


def judge_bound(check, found, expected):
    """A bound's values on the shared draw of z, then their gradients. Values off there are compared
    over more draws paired by seed (_paired), in case the bound draws z in another order."""
    results = found.get("results", {})
    if "error at 97" in results:
        error = Raised(results["error at 97"]).record
        if results.get("runs at 100") is True:
            fail(f"{expected['label']}.{check.target} to run with a batch of {expected['batch']} (it does with 100)",
                 error.get("message"), "bound: hard-coded 100")
        raise Raised(error)
    names = tuple(expected["terms"])
    draw = take(found, "draw")
    if results.get("finite with positive z_pre") is True:
        fail(f"a finite {names[0]}", "nan or inf (and finite values once the prior's pre-softplus variances are "
                                     "made positive)", "GMVAE: raw prior variances")
    got = scalars(draw, names)
    if check.key != "iwae":
        total = got["kl"] + got["rec"]
        compare(got["nelbo"], f"nelbo = kl + rec = {fmt_num(total)}", total, {
            "elbo: kl - rec": got["kl"] - got["rec"], "elbo: rec - kl": got["rec"] - got["kl"],
            "elbo: nelbo sign": -total}, rtol=1e-5, atol=1e-4, otherwise="elbo: nelbo not the sum")
    want, mistakes = _at(expected, 0)
    off = [n for n in got if not torch.isclose(got[n], want[n], rtol=1e-5, atol=1e-3)]
    for n in off:
        # float32 against float64 differs by about 1e-4 here; the usual mistakes by 0.1 or more.
        key = which_mistake(mistakes[n], lambda value, n=n: abs(got[n] - value) <= 3e-3)
        if key:
            fail(f"{n} = {fmt_num(want[n])}", fmt_num(got[n]), CAUSES[key].format(what=n))
    if off:
        _paired(found, expected, names)
    _gradients(found, expected, same_draw=not off)


def _paired(found, expected, names):
    """Values off on the shared draw of z, compared over draws paired by seed: a bound that draws z in
    another order passes, and a steady bias fails even when small, as the differences barely vary."""
    mine = _draws(found, "paired", PAIRED_DRAWS, names, finite=True)
    want, mistakes = _at(expected, slice(1, None))
    off = {}
    for n, values in mine.items():
        if _within(values - want[n], want[n]):
            continue
        said = f"{n} about {fmt_num(want[n].mean())} (the mean of {PAIRED_DRAWS} draws of z, paired by seed)"
        key = which_mistake(mistakes[n], lambda value, values=values, n=n: _within(values - value, want[n]))
        if key:
            fail(said, fmt_num(values.mean()), CAUSES[key].format(what=n))
        off[n] = said
    if off:
        # The total follows from its terms: name the terms that are off, or else the total.
        shown = [n for n in off if n != names[0]] or list(off)
        diffs = {n: mine[n] - want[n] for n in shown}
        said = [f"{n} is {abs(float(d.mean())):.3f} nats too {'high' if d.mean() > 0 else 'low'} "
                f"(+-{float(d.std()):.3f} across the draws)" for n, d in diffs.items()]
        fine = [n for n in mine if n not in off]
        fail(off[shown[0]], fmt_num(mine[shown[0]].mean()), f"not one of the usual mistakes: {', '.join(said)}"
             + (f"; {' and '.join(fine)} match{'es' if len(fine) == 1 else ''}" if fine else ""))


def _gradients(found, expected, same_draw):
    """The bound's gradients against the expected ones on the same draw of z; or, where its values differ
    there (z drawn in another order), whether they reach every part of the model."""
    if not found["results"].get("requires_grad"):
        fail("a bound that gradients can flow through", "a detached result", "detached")
    got = take(found, "grads")
    cut = {"the encoder": "bound: encoder cut", "the decoder": "bound: decoder cut",
           "the prior (z_pre)": "GMVAE: prior cut"}
    for part in expected["grads"]:
        if not got[part]["nonzero"]:
            fail(f"a gradient with respect to {part}", "none (zero)", cut[part])
    if not same_draw:
        return
    error = lambda g, reference: float((g - reference).norm() / reference.norm())
    for part, want in expected["grads"].items():
        g = got[part]["projections"].double()
        err = error(g, want)
        if err <= GRAD_RTOL:
            continue
        if error(g, expected["grads, z detached"][part]) <= GRAD_RTOL:
            cause = "bound: z detached"
        elif math.isfinite(err):
            cause = (f"not one of the usual mistakes: the values match, but the gradient with respect to {part} "
                     f"is off by {err:.0%} of its size")
        else:
            cause = f"the gradient with respect to {part} is not finite where the values are"
        fail(f"the gradient with respect to {part} of the reference on the same draw of z",
             f"one {err:.2g} of its size away", cause)


def judge_iwae_one(check, found, expected):
    elbo, iwae1 = _draws(found, "nelbo", ELBO_REPEATS), _draws(found, "iwae1", IWAE_REPEATS[1])["bound"]
    nelbo, kl = elbo["bound"], elbo["kl"]
    if not torch.isfinite(iwae1 - nelbo).all():
        fail("finite NELBO and IWAE-1 draws", "nan or inf", "bound: not finite")
    # Draw by draw, IWAE-1 = rec + kl = NELBO. A log w that adds the KL and a NELBO whose KL is negated
    # both give nelbo - 2 kl; the sign of the NELBO's kl tells them apart.
    same = lambda value: _within(iwae1 - value, slack=0.02)  # both sides are the code under test
    if not same(nelbo):
        fail(f"IWAE-1 = NELBO on average, {fmt_num(nelbo.mean())} (the mean of {len(iwae1)} draws)",
             f"IWAE-1 {fmt_num(iwae1.mean())}", which_mistake({
                  "iwae-1: nelbo's kl sign" if kl.mean() < 0 else "iwae: adds the kl": nelbo - 2 * kl,
                  "iwae: leaves out the kl": elbo["rec"], "iwae-1: iwae summed": nelbo * BATCH,
                  "iwae-1: nelbo summed": nelbo / BATCH}, same) or "iwae-1: differ")


def judge_iwae_falls(check, found, expected):
    iwae = {k: _draws(found, f"iwae{k}", n)["bound"] for k, n in IWAE_REPEATS.items()}
    means = {k: v.mean() for k, v in iwae.items()}
    finite = all(torch.isfinite(m) for m in means.values())
    if finite and means[1] > means[10] > means[100]:
        return
    noise = 4 * max(float(v.std()) / math.sqrt(len(v)) if len(v) > 1 else 0.0 for v in iwae.values())
    flat = finite and abs(float(means[1] - means[100])) <= noise + 0.02
    fail("IWAE-1 > IWAE-10 > IWAE-100 (means over repeated draws)",
         ", ".join(f"IWAE-{k} {fmt_num(m)}" for k, m in means.items()),
         "iwae falls: " + ("underflow" if not finite else "flat" if flat else "not falling"))


# {check's key: its probe, or its judge}
PROBES = {"elbo": probe_bound, "odd_batch": probe_bound, "iwae": probe_bound, "iwae_one": probe_draws,
          "iwae_falls": probe_draws}
JUDGES = {"elbo": judge_bound, "odd_batch": judge_bound, "iwae": judge_bound, "iwae_one": judge_iwae_one,
          "iwae_falls": judge_iwae_falls}
