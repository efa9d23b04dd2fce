"""The self-check's checks of the models' bounds: a fixed untrained model against float64 references.

Each bound is judged on its maths, not on how it draws z: torch's global random state is seeded
like the generator it is given, and a bound that draws z in another order (a loop, a second z for
the KL) is compared over FALLBACK_DRAWS draws paired by seed. Its gradients are compared too, so
that a bound which cuts the encoder, the decoder or the prior off from the loss fails.
"""
import contextlib
import copy
import math
from functools import partial
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from codebase.check_tools import (BATCH, F64, K, ODD_BATCH, SEED, Z_DIM, Failure, compare, fail, fmt_num,
                                  fmt_shape, gen, reference_mixture, seeded, student, which_mistake)
from codebase.errors import first_line
from codebase.mistakes import CAUSES
from codebase.reference import MODEL_LABELS

IW = 10  # importance samples in the same-draw comparisons of the IWAE bound
ELBO_REPEATS = 30  # NELBO and IWAE-1 draws averaged for "IWAE-1 = NELBO"
# Draws averaged per k for "IWAE falls with k": the means of the fixed models fall by 1.4 to 1.6
# nats from k = 1 to 10 and 0.45 to 0.8 from 10 to 100, where one draw's sd is 0.2, 0.07 and 0.08.
IWAE_REPEATS = {1: 30, 10: 4, 100: 1}
FALLBACK_DRAWS = 16  # draws paired by seed when a bound samples z in another order
GRAD_RTOL = 1e-3  # float32 against float64 gradients differ by about 1e-5 of their size


_CACHE = None  # {(function, args): value} within models_made_once()


@contextlib.contextmanager
def models_made_once():
    """Within it, the fixed models and their draws are made once, for every check that uses them;
    outside it, every time, as the code under test may change between calls."""
    global _CACHE
    _CACHE = {}
    try:
        yield
    finally:
        _CACHE = None


def _once_a_run(make):
    """make(*args), or its value from earlier in models_made_once()."""
    def cached(*args):
        if _CACHE is None:
            return make(*args)
        if (make, args) not in _CACHE:
            _CACHE[make, args] = make(*args)
        return _CACHE[make, args]
    return cached


def _images(n, seed):
    g = gen(seed)
    return torch.bernoulli(torch.rand(n, 784, generator=g) * 0.5, generator=g)


@_once_a_run
def _model(kind):
    """The fixed untrained model of a kind and its float64 twin, which the references use."""
    models = student("models")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = models.make_model(SimpleNamespace(model=kind, z=Z_DIM, k=K))
    if kind == "gmvae":
        if getattr(model, "z_pre", None) is None or tuple(model.z_pre.shape) != (1, 2 * K, Z_DIM):
            fail(f"GMVAE.z_pre of shape (1, {2 * K}, {Z_DIM})",
                 str(getattr(getattr(model, "z_pre", None), "shape", "none")), "GMVAE: z_pre")
        # At initialisation all k components sit at 0 with one variance, so the mixture is a
        # single Gaussian and mistakes between components would go unseen: spread them out.
        g = gen(SEED + 10)
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
        log_p = reference_mixture(z, pre[:K], F.softplus(pre[K:]) + 1e-8)
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
    t = _terms(kind, model64, x, torch.randn(x.size(0), Z_DIM, generator=gen(seed)), detach_z)
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
    t = _terms(kind, model64, x, torch.randn(IW, x.size(0), Z_DIM, generator=gen(seed)), detach_z)
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
        fail(f"the bound to return three tensors ({', '.join(names)})",
             f"{type(out).__name__}{f' of {len(out)}' if isinstance(out, (tuple, list)) else ''}",
             "bound: three values")
    for name, t in zip(names, out):
        if not isinstance(t, torch.Tensor):
            fail(f"{name} as a 0-dim tensor", type(t).__name__, "bound: not a tensor")
        if t.shape != ():
            fail(f"{name} as a scalar of shape ()", f"shape {fmt_shape(t)}",
                 "bound: per-image" if t.dim() == 1 and t.numel() > 1 else "bound: not 0-dim")
        if finite and not torch.isfinite(t):
            fail(f"a finite {name}", fmt_num(t), "bound: not finite")
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
        key = which_mistake(mistakes[n], lambda value: abs(got[n] - value) <= 3e-3)
        if key:
            fail(f"{n} = {fmt_num(want[n])}", fmt_num(got[n]), CAUSES[key].format(what=n))
    if off:
        _paired(bound, reference, got)
    _gradients(models, out[0], None if off else lambda detach_z: reference(SEED, detach_z)[0][next(iter(got))])


def _paired(bound, reference, got):
    """Values off on the reference's draw of z, compared over draws paired by seed: a bound that draws z
    in another order passes, and a steady bias fails even when small, as the differences barely vary."""
    seeds = range(SEED + 1, SEED + 1 + FALLBACK_DRAWS)
    with torch.no_grad():
        mine = _stack([_scalars(seeded(bound, s), tuple(got)) for s in seeds])
        want, mistakes = (_stack(part) for part in zip(*map(reference, seeds)))
    off = {}
    for n, values in mine.items():
        if _within(values - want[n]):
            continue
        expected = f"{n} about {fmt_num(want[n].mean())} (the mean of {FALLBACK_DRAWS} draws of z, paired by seed)"
        key = which_mistake(mistakes[n], lambda value: _within(values - value))
        if key:
            fail(expected, fmt_num(values.mean()), CAUSES[key].format(what=n))
        off[n] = expected
    if off:
        # The total follows from its terms: name the terms that are off, or else the total.
        shown = [n for n in off if n != next(iter(mine))] or list(off)
        diffs = {n: mine[n] - want[n] for n in shown}
        said = [f"{n} is {abs(float(d.mean())):.3f} nats too {'high' if d.mean() > 0 else 'low'} "
                f"(+-{float(d.std()):.3f} across the draws)" for n, d in diffs.items()]
        fine = [n for n in mine if n not in off]
        fail(off[shown[0]], fmt_num(mine[shown[0]].mean()), f"not one of the usual mistakes: {', '.join(said)}"
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
        fail("a bound that gradients can flow through", "a detached result", "detached")
    model, model64 = models
    got = _flat_grads(out, model)
    cut = {"the encoder": "bound: encoder cut", "the decoder": "bound: decoder cut",
           "the prior (z_pre)": "GMVAE: prior cut"}
    for part, g in got.items():
        if not (g != 0).any():
            fail(f"a gradient with respect to {part}", "none (zero)", cut[part])
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
        fail(f"the gradient with respect to {part} of the reference on the same draw of z",
             f"one {err:.2g} of its size away", cause)


def check_elbo(kind, batch=BATCH, image_seed=11):
    """negative_elbo_bound of the fixed model against its float64 reference, on the same draw of z."""
    model, model64 = models = _model(kind)
    x = _images(batch, image_seed)
    bound = lambda generator: model.negative_elbo_bound(x, generator=generator)
    out = seeded(bound, SEED)
    got = _scalars(out, ("nelbo", "kl", "rec"))
    total = got["kl"] + got["rec"]
    compare(f"nelbo = kl + rec = {fmt_num(total)}", got["nelbo"], total, {
        "elbo: kl - rec": got["kl"] - got["rec"], "elbo: rec - kl": got["rec"] - got["kl"],
        "elbo: nelbo sign": -total},
        rtol=1e-5, atol=1e-4, otherwise="elbo: nelbo not the sum")
    _judge(models, bound, partial(_elbo_reference, kind, model64, x), out, got)


def check_iwae(kind, batch=BATCH, image_seed=12):
    """negative_iwae_bound with IW samples against its float64 reference, on the same draws of z."""
    model, model64 = models = _model(kind)
    x = _images(batch, image_seed)
    bound = lambda generator: model.negative_iwae_bound(x, IW, generator=generator)
    out = seeded(bound, SEED)
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
            fail(f"{MODEL_LABELS[kind]}.negative_{bound}_bound to run with a batch of {ODD_BATCH} (it does with "
                 f"{BATCH})", first_line(e), "bound: hard-coded 100")


@_once_a_run
def _draws(kind, k):
    """{bound, kl, rec: tensor: (draws,)}: the fixed model's NELBO (k = 0) or IWAE-k bound on one batch,
    over draws paired by seed, for the k-dependence checks."""
    model, x = _model(kind)[0], _images(BATCH, 14)
    bound = partial(model.negative_iwae_bound, x, k) if k else partial(model.negative_elbo_bound, x)
    with torch.no_grad():
        return _stack([_scalars(seeded(bound, 1000 + i), ("bound", "kl", "rec"), finite=False)
                       for i in range(IWAE_REPEATS[k] if k else ELBO_REPEATS)])


def check_iwae_one(kind):
    elbo, iwae1 = _draws(kind, 0), _draws(kind, 1)["bound"][:ELBO_REPEATS]
    nelbo, kl = elbo["bound"], elbo["kl"]
    if not torch.isfinite(iwae1 - nelbo).all():
        fail("finite NELBO and IWAE-1 draws", "nan or inf", "bound: not finite")
    # Draw by draw, IWAE-1 = rec + kl = NELBO. A log w that adds the KL and a NELBO whose KL is negated
    # both give nelbo - 2 kl; the sign of the NELBO's kl tells them apart.
    same = lambda value: _within(iwae1 - value, slack=0.02)
    if not same(nelbo):
        fail(f"IWAE-1 = NELBO on average, {fmt_num(nelbo.mean())} (the mean of {len(iwae1)} draws)",
             f"IWAE-1 {fmt_num(iwae1.mean())}", which_mistake({
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
    fail("IWAE-1 > IWAE-10 > IWAE-100 (means over repeated draws)",
         ", ".join(f"IWAE-{k} {fmt_num(m)}" for k, m in means.items()),
         "iwae falls: " + ("underflow" if not finite else "flat" if flat else "not falling"))
