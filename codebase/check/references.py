"""The expected values of every check, computed independently in float64: the instructor's side.

Each reference is built on torch.distributions and torch.logsumexp and never calls the code under
test: the models' bounds are computed from the fixed parameters with the networks written out here.
Besides the right value, each reference gives the values of the usual mistakes (mistakes.py), so
that the judge can name a wrong one, and how closely a value must match.

This file is the model answer's and the grader's, never the starter's: `course.handout` stores the
values it computes for the local seed in the starter's expected.pt instead.
"""
import math

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, Independent, MixtureSameFamily, Normal, kl_divergence

from codebase.check import inputs as data
from codebase.check.bounds import IW, PAIRED_DRAWS, bound_images, draw_seed, project
from codebase.check.calls import gen
from codebase.check.figures import MODEL_LABELS
from codebase.check.functions import (
    MIXTURE_CASES,
    PAIRED_SHAPES,
    REDUCTION_CASES,
    SAMPLE_DRAWS,
    SAMPLE_M,
    SAMPLE_V,
    inputs_of,
)
from codebase.check.inputs import F64, Z_DIM, K
from codebase.check.registry import ODD_BATCH

REFERENCES = {}  # {check's key: its reference}


def references(*keys):
    """A decorator: @references("key", ...) puts the function into REFERENCES under those checks' keys."""
    def register(fn):
        REFERENCES.update(dict.fromkeys(keys, fn))
        return fn
    return register


def mixture(z, m, v, sd=None):
    """log (1/k) sum_i N(z; m_i, v_i) through torch.distributions (sd: the scales to use instead)."""
    m, v = torch.broadcast_tensors(m, v)
    weights = Categorical(logits=torch.zeros(m.shape[:-1], dtype=m.dtype))
    return MixtureSameFamily(weights, Independent(Normal(m, v.sqrt() if sd is None else sd), 1)).log_prob(z)


def case(what, want, mistakes=None, **options):
    """The spec of one comparison: the value expected of `what`, the usual mistakes, and the options of
    compare.compare (where, rtol, atol, nonfinite, otherwise, match, on_error).

    A mistake whose shape no other value has is kept as that shape alone: the shape names it.
    """
    want, mistakes = want.detach().to(F64), {k: v.detach().to(F64) for k, v in (mistakes or {}).items()}
    shapes = [tuple(want.shape)] + [tuple(v.shape) for v in mistakes.values()]
    return {"what": what, "want": want, "mistakes": {
        k: tuple(v.shape) if shapes.count(tuple(v.shape)) == 1 else v for k, v in mistakes.items()}, **options}


def _sums(fn, each):
    """The four ways the sum over the last dimension of `each` goes wrong in `fn`."""
    return {f"{fn}: mean over dim": each.mean(-1), f"{fn}: summed over batch": each.sum(),
            f"{fn}: mean over batch": each.sum(-1).mean(), f"{fn}: not summed": each}


def _log_normal_mistakes(x, m, v):
    lp, log_2pi = Normal(m, v.sqrt()).log_prob(x), math.log(2 * math.pi)
    return {"log_normal: v as sd": Normal(m, v).log_prob(x).sum(-1),
            "log_normal: sqrt(v) as variance": Normal(m, v.pow(0.25)).log_prob(x).sum(-1),
            "log_normal: no log 2pi": lp.sum(-1) + 0.5 * x.size(-1) * log_2pi,
            "log_normal: log 2pi once": lp.sum(-1) + 0.5 * (x.size(-1) - 1) * log_2pi,
            "log_normal: no log v": (lp + 0.5 * torch.log(v)).sum(-1), "log_normal: no 1/2": 2 * lp.sum(-1),
            "log_normal: sign": -lp.sum(-1), "log_normal: summed over dim 0": lp.sum(0),
            **_sums("log_normal", lp)}


# ---------------------------------------------------------------------------------------------
# codebase/utils.py: {case: spec}, in the order the judge takes them
# ---------------------------------------------------------------------------------------------

@references("log_normal")
def ref_log_normal(check, seed):
    cases = {}
    for i, (x_shape, p_shape) in enumerate(PAIRED_SHAPES):
        x, m, v = inputs_of("log_normal", seed, i)
        cases[i] = case("log_normal(x, m, v)", Normal(m, v.sqrt()).log_prob(x).sum(-1), _log_normal_mistakes(x, m, v),
                        where=f"for x of shape {x_shape}, m and v of shape {p_shape}")
    return cases


@references("log_normal_far")
def ref_log_normal_far(check, seed):
    x, m, v = (t.double() for t in inputs_of("log_normal_far", seed, "far"))  # the float32 values, as the probe's
    return {"far": case("log_normal(x, m, v)", Normal(m, v.sqrt()).log_prob(x).sum(-1), _log_normal_mistakes(x, m, v),
                        rtol=1e-5, atol=0, where="at x - m = 100, v = 1e-8 (float32)",
                        nonfinite="log_normal: density first"),
            "far grads": {"names": ["x", "v"], "nonfinite": "log_normal: gradient"}}


@references("log_sum_exp", "log_mean_exp")
def ref_reduction(check, seed):
    name, cases = check.target, {}
    shift = (lambda n: math.log(n)) if name == "log_mean_exp" else (lambda n: 0.0)
    for i, (shape, dim) in enumerate(REDUCTION_CASES):
        x, _ = inputs_of(name, seed, i)
        n, lse = shape[dim], torch.logsumexp(x, dim)
        if name == "log_mean_exp":
            mistakes = {"log_mean_exp: no log n": lse, "log_mean_exp: log n twice": lse - 2 * math.log(n),
                        "log_mean_exp: log numel": lse - math.log(x.numel()),
                        "log_mean_exp: wrong size": lse - math.log(shape[dim - 1])}  # another dimension's
        else:
            mistakes = {"log_sum_exp: minus log n": lse - math.log(n)}
        mistakes |= {f"{name}: only the max": x.amax(dim), f"{name}: keepdim": (lse - shift(n)).unsqueeze(dim),
                     f"{name}: mean of x": x.mean(dim)}
        cases[i] = case(f"{name}(x, dim={dim})", lse - shift(n), mistakes, where=f"for x of shape {shape}")
    x = inputs_of(name, seed, "far")[0].double()  # the float32 rows, as the probe passes them
    where = "for float32 rows near 1e4, -1e4 and -200"
    cases["far"] = case(f"{name}(x, dim=1)", torch.logsumexp(x, 1) - shift(3), where=where, rtol=1e-6, atol=1e-4,
                        nonfinite=f"{name}: naive")
    cases["far grads"] = {"names": ["x"], "nonfinite": f"{name}: gradient nan", "compare": [
        case(f"the gradient of {name} (a softmax)", torch.softmax(x, 1), rtol=1e-4, atol=1e-5,
             otherwise=f"{name}: gradient cut")]}
    return cases


def _first_row(z, m, v):
    """log_mean_exp(log_normal(z.unsqueeze(1), m[0], v[0]), dim=1): the components of the first row only
    (for m of shape (k, dim), the first component alone)."""
    comps = Normal(m[0], v[0].sqrt()).log_prob(z.unsqueeze(1)).sum(-1)
    return torch.logsumexp(comps, 1) - math.log(comps.size(1))


@references("log_normal_mixture")
def ref_mixture(check, seed):
    cases = {}
    for i, (batch, k, dim, m_lead, v_lead) in enumerate(MIXTURE_CASES):
        z, m, v = inputs_of("log_normal_mixture", seed, i)
        want = mixture(z, m, v)
        comps = Independent(Normal(m, v.sqrt()), 1).log_prob(z.unsqueeze(1))  # (batch, k)
        where = f"for z of shape {(batch, dim)}, m of shape {tuple(m.shape)} and v of shape {tuple(v.shape)}"
        cases[i] = case("log_normal_mixture(z, m, v)", want, {
            "mixture: no log k": want + math.log(k), "mixture: log k twice": want - math.log(k),
            "mixture: v as sd": mixture(z, m, v, sd=v), "mixture: mean of logs": comps.mean(-1),
            "mixture: max": comps.amax(-1), "mixture: not reduced": comps,
            "mixture: over batch": torch.logsumexp(comps, 0) - math.log(batch),
            "mixture: summed over batch": want.sum(), "mixture: mean over batch": want.mean(),
            "mixture: first row": _first_row(z, m, v)},
            rtol=1e-7, atol=1e-6, where=where, sizes=(batch, k, dim),
            **({} if m_lead == v_lead == (1,) else {"on_error": "mixture: shapes"}))
    return cases


@references("mixture_far")
def ref_mixture_far(check, seed):
    z, m, v = (t.double() for t in inputs_of("mixture_far", seed, "far"))
    return {"far": case("log_normal_mixture(z, m, v)", mixture(z, m, v), {"mixture: v as sd": mixture(z, m, v, sd=v)},
                        rtol=1e-5, atol=1e-3,
                        where="up to 100 away from every component, with v = 1e-8 (float32)",
                        nonfinite="mixture: underflow"),
            "far grads": {"names": ["z"], "nonfinite": "mixture: gradient nan", "nonzero": "mixture: flat gradient"}}


@references("sample_gaussian")
def ref_sample_gaussian(check, seed):
    m, v, ones = torch.tensor(SAMPLE_M, dtype=F64), torch.tensor(SAMPLE_V, dtype=F64), torch.ones(3, dtype=F64)
    # The sample variance is within 2% (6 sd) and the mean within 0.05 (7 sd). The variance goes
    # first because a wrong scale also widens the spread of the mean.
    return {"n": SAMPLE_DRAWS, "expanded shape": (3, ODD_BATCH, Z_DIM),
            "variance": case(f"the variance of {SAMPLE_DRAWS:,} draws", v, {
                "sample_gaussian: v as sd": v.pow(2), "sample_gaussian: v ** 0.25": v.sqrt(),
                "sample_gaussian: not scaled": ones}, rtol=0.02, atol=0, match=(0.05, 0)),
            "mean": case(f"the mean of {SAMPLE_DRAWS:,} draws", m, {"sample_gaussian: no mean": 0 * ones},
                         rtol=0, atol=0.05, match=(0.05, 0.05))}


@references("kl_normal")
def ref_kl_normal(check, seed):
    cases = {}
    for i, (q_shape, p_shape) in enumerate(PAIRED_SHAPES):
        qm, qv, pm, pv = inputs_of("kl_normal", seed, i)
        each = kl_divergence(Normal(qm, qv.sqrt()), Normal(pm, pv.sqrt()))
        want = each.sum(-1)
        cases[i] = case("kl_normal(qm, qv, pm, pv)", want, {
            "kl_normal: sign": -want,
            "kl_normal: swapped": kl_divergence(Normal(pm, pv.sqrt()), Normal(qm, qv.sqrt())).sum(-1),
            "kl_normal: v as sd": kl_divergence(Normal(qm, qv), Normal(pm, pv)).sum(-1),
            "kl_normal: no 1/2": 2 * want, "kl_normal: no -1": want + 0.5 * qm.size(-1),
            **_sums("kl_normal", each)}, where=f"for q of shape {q_shape}, p of shape {p_shape}")
    qm, qv, pm, pv = (t.double() for t in inputs_of("kl_normal", seed, "far"))
    want = kl_divergence(Normal(qm, qv.sqrt()), Normal(pm, pv.sqrt())).sum(-1)
    cases["far"] = case("kl_normal(qm, qv, 0, 1)", want, rtol=1e-5, atol=1e-3,
                        where="for qm = 100, qv = 1e-8 (float32)", nonfinite="kl_normal: overflow")
    return cases


@references("gaussian_parameters")
def ref_gaussian_parameters(check, seed):
    cases = {}
    for i in range(3):
        h, dim = inputs_of("gaussian_parameters", seed, i)
        h64, atol = h.double(), 0 if h.dtype == torch.float32 else 1e-7
        first, second = torch.split(h64, h.size(dim) // 2, dim=dim)
        where = f"for h of shape {tuple(h.shape)}, dim={dim}" + (", float32" if h.dtype == torch.float32 else "")
        cases[i] = {"pair": f"(m, v) {where}", "parts": [
            case("m", first, {
                "gaussian_parameters: swapped": second,
                "gaussian_parameters: interleaved": h64.unflatten(dim, (-1, 2)).unbind(dim if dim < 0 else dim + 1)[0],
                "gaussian_parameters: ignores dim": torch.split(h64, h.size(-1) // 2, dim=-1)[0]},
                where=where, atol=atol),
            case("v", F.softplus(second) + 1e-8, {
                "gaussian_parameters: no floor": F.softplus(second), "gaussian_parameters: exp": second.exp(),
                "gaussian_parameters: no softplus": second}, where=where, rtol=1e-6, atol=atol, match=(1e-3, 1e-12),
                nonfinite="gaussian_parameters: overflow")]}
    return cases


@references("log_bernoulli_with_logits")
def ref_log_bernoulli(check, seed):
    cases = {}
    bernoulli = lambda logits: Bernoulli(logits=logits, validate_args=False)
    for i in range(2):
        x, logits = inputs_of("log_bernoulli_with_logits", seed, i)
        each = bernoulli(logits).log_prob(x)
        cases[i] = case("log_bernoulli_with_logits(x, logits)", each.sum(-1), {
            "log_bernoulli_with_logits: sign": -each.sum(-1),
            "log_bernoulli_with_logits: 0 and 1 swapped": bernoulli(logits).log_prob(1 - x).sum(-1),
            **_sums("log_bernoulli_with_logits", each)},
            where=f"for x of shape {tuple(x.shape)}, logits of shape {tuple(logits.shape)}",
            nonfinite="log_bernoulli_with_logits: logits as probabilities")
    x, logits = (t.double() for t in inputs_of("log_bernoulli_with_logits", seed, "far"))
    where = "for logits of +-1e4 and +-100 (float32)"
    cases["far"] = case("log_bernoulli_with_logits(x, logits)", bernoulli(logits).log_prob(x).sum(-1), rtol=1e-6,
                        atol=1e-4, where=where, nonfinite="log_bernoulli_with_logits: log of sigmoid")
    cases["far grads"] = {"names": ["logits"], "nonfinite": "log_bernoulli_with_logits: gradient nan", "compare": [
        case("the gradient x - sigmoid(logits)", x - torch.sigmoid(logits), rtol=1e-5, atol=1e-6, where=where)]}
    return cases


# ---------------------------------------------------------------------------------------------
# The models' bounds, from the fixed parameters (inputs.fixed_state) with the networks written out
# ---------------------------------------------------------------------------------------------

def network(state, prefix, h):
    """The MLP whose Linear layers are state's <prefix>.net.<i>.weight and .bias, with ELU between them."""
    layers = sorted(int(name.split(".")[2]) for name in state if name.startswith(f"{prefix}.net.")
                    and name.endswith(".weight"))
    for j, i in enumerate(layers):
        h = F.elu(h) if j else h
        h = h @ state[f"{prefix}.net.{i}.weight"].T + state[f"{prefix}.net.{i}.bias"]
    return h


def terms(kind, state, x, eps, detach_z=False):
    """Float64 log-densities of a model with parameters `state`, each (batch,) or (iw, batch), at
    z = m + sqrt(v) eps: the draw that sample_gaussian makes from the noise eps, (batch, z_dim) or
    (iw, batch, z_dim). The usual mistakes' terms come too (log p(x|z) at the mean, the standard
    normal prior, the closed-form KLs, v taken as a standard deviation in z or in log q)."""
    x64 = x.to(F64)
    h = network(state, "enc", x64)
    m, v = h[..., :Z_DIM], F.softplus(h[..., Z_DIM:]) + 1e-8
    z, z_v_as_sd = m + v.sqrt() * eps.to(F64), m + v * eps.to(F64)
    z = z.detach() if detach_z else z
    q, std = Normal(m, v.sqrt()), Normal(torch.zeros_like(m), torch.ones_like(m))
    log_p_std = Independent(std, 1).log_prob(z)
    log_prior = lambda z: Independent(std, 1).log_prob(z)
    if kind == "gmvae":
        pre = state["z_pre"][0]
        log_prior = lambda z: mixture(z, pre[:K], F.softplus(pre[K:]) + 1e-8)
    bern = lambda logits: Independent(Bernoulli(logits=logits, validate_args=False), 1).log_prob(x64)
    return {"log_px": bern(network(state, "dec", z)), "log_px_at_mean": bern(network(state, "dec", m)).expand(
        z.shape[:-1]), "log_q": Independent(q, 1).log_prob(z), "log_p": log_prior(z), "log_p_std": log_p_std,
        "kl_closed": kl_divergence(q, std).sum(-1), "kl_swapped": kl_divergence(std, q).sum(-1),
        "log_q_v_as_sd": Independent(Normal(m, v), 1).log_prob(z),
        "v as sd": {"log_px": bern(network(state, "dec", z_v_as_sd)),
                    "kl": Independent(q, 1).log_prob(z_v_as_sd) - log_prior(z_v_as_sd)}}


def _with_batch_mistakes(want, mistakes, batch):
    """want and mistakes, with the ways each batch average goes wrong added to the mistakes."""
    return want, {term: {**mistakes[term], "bound: summed over batch": value * batch,
                         "bound: divided twice": value / batch,
                         **({"bound: divided by 100": value * batch / 100} if batch != 100 else {})}
                  for term, value in want.items()}


def elbo_reference(kind, state, x, eps, detach_z=False):
    """want: {nelbo, kl, rec: 0-dim tensor with its graph} on the draw of z from the noise eps;
    mistakes: {term: {key of CAUSES: value}}: the usual mistakes' values."""
    t = terms(kind, state, x, eps, detach_z)
    kl_mc, rec = (t["log_q"] - t["log_p"]).mean(), -t["log_px"].mean()
    if kind == "vae":
        kl = t["kl_closed"].mean()
        kl_mistakes = {"VAE: kl sign": -kl, "VAE: kl swapped": t["kl_swapped"].mean(), "VAE: kl by one sample": kl_mc}
    else:
        kl = kl_mc
        kl_mistakes = {"GMVAE: kl sign": -kl, "GMVAE: log k": kl - math.log(K),
                       "GMVAE: standard normal prior": (t["log_q"] - t["log_p_std"]).mean(),
                       "GMVAE: log q with v as sd": (t["log_q_v_as_sd"] - t["log_p"]).mean(),
                       "bound: z with v as sd": t["v as sd"]["kl"].mean()}
    return _with_batch_mistakes({"nelbo": kl + rec, "kl": kl, "rec": rec}, {
        "nelbo": {"elbo: nelbo sign": -(kl + rec)}, "kl": kl_mistakes,
        "rec": {"elbo: rec sign": -rec, "elbo: rec per pixel": rec / 784,
                "elbo: decodes the mean": -t["log_px_at_mean"].mean(),
                "bound: z with v as sd": -t["v as sd"]["log_px"].mean()}}, x.size(0))


def iwae_reference(kind, state, x, eps, detach_z=False):
    """The float64 niwae, kl and rec of the IWAE bound, and the usual mistakes, as elbo_reference gives them."""
    t = terms(kind, state, x, eps, detach_z)
    niwae = lambda log_w, dim=0: -(torch.logsumexp(log_w, dim) - math.log(log_w.size(dim))).mean()
    log_w = t["log_px"] + t["log_p"] - t["log_q"]
    want = {"niwae": niwae(log_w), "kl": (t["log_q"] - t["log_p"]).mean(), "rec": -t["log_px"].mean()}
    b, iw = want["niwae"], eps.size(0)
    return _with_batch_mistakes(want, {
        "niwae": {"iwae: log_sum_exp": b - math.log(iw), "iwae: averaged": -log_w.mean(),
                  "iwae: over the batch": niwae(log_w, dim=1),
                  "iwae: adds the kl": niwae(t["log_px"] - t["log_p"] + t["log_q"]),
                  "iwae: leaves out the kl": niwae(t["log_px"]), "iwae: sign": -b,
                  **({"GMVAE: log k": b - math.log(K)} if kind == "gmvae" else {})},
        "kl": {"iwae: kl sign": -want["kl"]}, "rec": {"iwae: rec sign": -want["rec"]}}, x.size(0))


def part_grads(out, state):
    """{part: projections} of the gradient of `out` with respect to each part's parameters (bounds.project)."""
    parts = {"the encoder": [n for n in state if n.startswith("enc.")],
             "the decoder": [n for n in state if n.startswith("dec.")]}
    if "z_pre" in state:
        parts["the prior (z_pre)"] = ["z_pre"]
    names = [n for ns in parts.values() for n in ns]
    grads = dict(zip(names, torch.autograd.grad(out, [state[n] for n in names], retain_graph=True)))
    return {part: project(torch.cat([grads[n].flatten() for n in ns])) for part, ns in parts.items()}


@references("elbo", "iwae", "odd_batch")
def ref_bound(check, seed):
    """A bound's want and mistakes, each a tensor: (draws,) over the probe's draws of z (the shared one first),
    and the gradients of its first value on the shared draw, with z as drawn and with z cut from the graph."""
    which = "iwae" if check.key == "iwae" else "elbo"
    batch = ODD_BATCH if check.key in ("iwae", "odd_batch") else 100
    state = {n: t.requires_grad_() for n, t in data.fixed_state(check.kind, seed).items()}
    x = bound_images(seed, which, batch)
    shape = (IW, batch, Z_DIM) if which == "iwae" else (batch, Z_DIM)
    reference = iwae_reference if which == "iwae" else elbo_reference
    draws = []
    for i in range(PAIRED_DRAWS + 1):
        eps = torch.randn(shape, generator=gen(draw_seed(seed, i)))
        with torch.set_grad_enabled(i == 0):
            draws.append(reference(check.kind, state, x, eps))
    want, first = draws[0][0], next(iter(draws[0][0]))
    eps = torch.randn(shape, generator=gen(draw_seed(seed, 0)))
    return {"terms": list(want), "label": MODEL_LABELS[check.kind], "batch": batch,
            "want": {n: torch.stack([w[n].detach() for w, _ in draws]) for n in want},
            "mistakes": {n: {k: torch.stack([m[n][k].detach() for _, m in draws]) for k in ms}
                         for n, ms in draws[0][1].items()},
            "grads": part_grads(want[first], state),
            "grads, z detached": part_grads(reference(check.kind, state, x, eps, detach_z=True)[0][first], state)}


@references("iwae_one", "iwae_falls")
def ref_none(check, seed):
    """Checks that compare the code under test with itself (IWAE-1 against the NELBO, IWAE-k across k)."""
    return {}


def expected(check, seed):
    """The expected values of one check on the inputs of `seed`."""
    return REFERENCES[check.key](check, seed)
