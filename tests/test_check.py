"""The self-check (codebase/check.py): it passes the project's code and names every usual mistake.

MISTAKES below makes each mistake of codebase/mistakes.py once, as a broken stand-in for one
function that is monkeypatched in for the duration of one check, and asserts the check's
FAIL line gives that mistake's cause. One end-to-end test runs `python -m codebase.check` on a
broken copy of the package, as a student would.
"""
import math
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codebase import utils as ut
from codebase.check import runner as check
from codebase.check.mistakes import CAUSES
from codebase.models import GMVAE, VAE
from codebase.models.base import LatentModel

ROOT = Path(__file__).resolve().parents[1]

CHECKS = {c.name: c for c in check.CHECKS}
LOG_2PI = math.log(2 * math.pi)


def lines_of(text):
    return [line for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Broken stand-ins, written the way a student might
# ---------------------------------------------------------------------------------------------

def normal_terms(x, m, v):
    """The elementwise log-density, for stand-ins that get only its reduction wrong."""
    return -0.5 * (LOG_2PI + torch.log(v) + (x - m).pow(2) / v)


def bernoulli_terms(x, logits):
    return x * logits - F.softplus(logits)


def kl_terms(qm, qv, pm, pv):
    return 0.5 * (torch.log(pv) - torch.log(qv) + qv / pv + (qm - pm).pow(2) / pv - 1)


def steep(value):
    """`value` itself, with an infinite gradient: sqrt'(0)."""
    return value + torch.sqrt(value - value.detach())


def lse_cut(x, dim):
    top = x.amax(dim, keepdim=True)
    return (top + (x - top).exp().sum(dim, keepdim=True).log().detach()).squeeze(dim)


def lse_where_nan(x, logits):
    big = torch.where(logits > 0, logits + torch.log1p(torch.exp(-logits)), torch.log1p(torch.exp(logits)))
    return (x * logits - big).sum(-1)


def mixture_3d(z, m, v):
    b, k, d = m.shape  # assumes (batch or 1, k, dim)
    return ut.log_mean_exp(ut.log_normal(z.unsqueeze(1), m, v), dim=1)


def components(z, m, v):
    return ut.log_normal(z.unsqueeze(1), m, v)


def split(h, dim):
    return torch.split(h, h.size(dim) // 2, dim=dim)


def params(mean, var):
    """A gaussian_parameters stand-in from how it takes the mean and variance from the halves."""
    def gaussian_parameters(h, dim=-1):
        a, b = split(h, dim)
        return mean(a, b), var(a, b)
    return gaussian_parameters


def sample(z_of):
    """A sample_gaussian stand-in: z_of(m, v, eps) with eps ~ N(0, I) of m's shape and dtype."""
    def sample_gaussian(m, v, generator=None):
        return z_of(m, v, torch.randn(m.shape, generator=generator, dtype=m.dtype))
    return sample_gaussian


def elbo(kl=None, rec=None, mean=torch.mean, total=lambda kl, rec: kl + rec, cut=lambda m, v, z: (m, v, z)):
    """A negative_elbo_bound (of either model) with one part written wrong.

    kl(model, z, m, v) and rec(model, x, z, m): per-image terms; mean: the batch average;
    total: the nelbo from kl and rec; cut: what happens to m, v and z before use
    """
    def default_kl(model, z, m, v):
        if isinstance(model, GMVAE):
            return ut.log_normal(z, m, v) - ut.log_normal_mixture(z, *model.prior())
        return ut.kl_normal(m, v, model.z_prior_m, model.z_prior_v)

    def negative_elbo_bound(self, x, generator=None):
        m, v = self.enc(x)
        z = ut.sample_gaussian(m, v, generator)
        m, v, z = cut(m, v, z)
        r = mean((rec or (lambda model, x, z, m: -ut.log_bernoulli_with_logits(x, model.dec(z))))(self, x, z, m))
        k = mean((kl or default_kl)(self, z, m, v))
        return total(k, r), k, r
    return negative_elbo_bound


def gmvae_kl(log_prior):
    return elbo(kl=lambda model, z, m, v: ut.log_normal(z, m, v) - log_prior(model, z))


def iwae(niwae=lambda log_w: -ut.log_mean_exp(log_w, dim=0).mean(), kl=lambda kl: kl.mean(),
         rec=lambda log_px: -log_px.mean(), log_w=lambda log_px, kl: log_px - kl):
    """A negative_iwae_bound with one part written wrong."""
    def negative_iwae_bound(self, x, iw, generator=None):
        _, log_px, k = self.log_importance_weights(x, iw, generator)
        return niwae(log_w(log_px, k)), kl(k), rec(log_px)
    return negative_iwae_bound


def log_weights_100(self, x, iw, generator=None):
    """LatentModel.log_importance_weights with the batch hard-coded to 100."""
    m, v = self.enc(x)
    z = ut.sample_gaussian(m.expand(iw, *m.shape), v.expand(iw, *v.shape), generator)
    log_px = ut.log_bernoulli_with_logits(x, self.dec(z))
    kl = ut.log_normal(z, m, v) - self.log_prior(z.reshape(-1, self.z_dim)).view(iw, 100)
    return log_px - kl, log_px, kl


def gmvae_init_reshaped(self, z_dim=10, k=500):
    GMVAE_INIT(self, z_dim, k)
    self.z_pre = nn.Parameter(self.z_pre.detach().reshape(1, k, 2 * z_dim))


GMVAE_INIT = GMVAE.__init__
ELBO_G, ELBO_V, IWAE_G, IWAE_V = "GMVAE.negative_elbo_bound", "VAE.negative_elbo_bound", \
    "GMVAE.negative_iwae_bound", "VAE.negative_iwae_bound"
FAR = "log_normal: far points, tiny variances"
MIX_FAR = "log_normal_mixture: far points, tiny variances"
BERN = "log_bernoulli_with_logits"
ELBO, IWAE = "negative_elbo_bound", "negative_iwae_bound"

# key of CAUSES: (the check that names it, where the stand-in goes, the attribute, the stand-in)
MISTAKES = {
    "not a tensor": ("kl_normal", ut, "kl_normal", lambda *a: kl_terms(*a).sum(-1).numpy()),
    "detached": (FAR, ut, "log_normal", lambda x, m, v: normal_terms(x, m, v).sum(-1).detach()),
    "log_normal: v as sd": ("log_normal", ut, "log_normal",
                            lambda x, m, v: normal_terms(x, m, v.pow(2)).sum(-1)),
    "log_normal: sqrt(v) as variance": ("log_normal", ut, "log_normal",
                                        lambda x, m, v: normal_terms(x, m, v.sqrt()).sum(-1)),
    "log_normal: no log 2pi": ("log_normal", ut, "log_normal",
                               lambda x, m, v: (normal_terms(x, m, v) + 0.5 * LOG_2PI).sum(-1)),
    "log_normal: log 2pi once": ("log_normal", ut, "log_normal",
                                 lambda x, m, v: (normal_terms(x, m, v) + 0.5 * LOG_2PI).sum(-1) - 0.5 * LOG_2PI),
    "log_normal: no log v": ("log_normal", ut, "log_normal",
                             lambda x, m, v: (normal_terms(x, m, v) + 0.5 * torch.log(v)).sum(-1)),
    "log_normal: no 1/2": ("log_normal", ut, "log_normal", lambda x, m, v: 2 * normal_terms(x, m, v).sum(-1)),
    "log_normal: sign": ("log_normal", ut, "log_normal", lambda x, m, v: -normal_terms(x, m, v).sum(-1)),
    "log_normal: summed over dim 0": ("log_normal", ut, "log_normal", lambda x, m, v: normal_terms(x, m, v).sum(0)),
    "log_normal: mean over dim": ("log_normal", ut, "log_normal", lambda x, m, v: normal_terms(x, m, v).mean(-1)),
    "log_normal: not summed": ("log_normal", ut, "log_normal", normal_terms),
    "log_normal: summed over batch": ("log_normal", ut, "log_normal", lambda x, m, v: normal_terms(x, m, v).sum()),
    "log_normal: mean over batch": ("log_normal", ut, "log_normal",
                                    lambda x, m, v: normal_terms(x, m, v).sum(-1).mean()),
    "log_normal: density first": (FAR, ut, "log_normal", lambda x, m, v: torch.log(
        torch.exp(-(x - m).pow(2) / (2 * v)) / torch.sqrt(2 * math.pi * v)).sum(-1)),
    "log_normal: gradient": (FAR, ut, "log_normal", lambda x, m, v: steep(normal_terms(x, m, v).sum(-1))),
    "log_mean_exp: no log n": ("log_mean_exp", ut, "log_mean_exp", lambda x, dim: torch.logsumexp(x, dim)),
    "log_mean_exp: log n twice": ("log_mean_exp", ut, "log_mean_exp",
                                  lambda x, dim: torch.logsumexp(x, dim) - 2 * math.log(x.size(dim))),
    "log_mean_exp: log numel": ("log_mean_exp", ut, "log_mean_exp",
                                lambda x, dim: torch.logsumexp(x, dim) - math.log(x.numel())),
    "log_mean_exp: wrong size": ("log_mean_exp", ut, "log_mean_exp",
                                 lambda x, dim: torch.logsumexp(x, dim) - math.log(x.size(0))),
    "log_mean_exp: naive": ("log_mean_exp", ut, "log_mean_exp", lambda x, dim: torch.log(torch.exp(x).mean(dim))),
    "log_sum_exp: minus log n": ("log_sum_exp", ut, "log_sum_exp",
                                 lambda x, dim: torch.logsumexp(x, dim) - math.log(x.size(dim))),
    "log_sum_exp: naive": ("log_sum_exp", ut, "log_sum_exp", lambda x, dim: torch.log(torch.exp(x).sum(dim))),
    "mixture: no log k": ("log_normal_mixture", ut, "log_normal_mixture",
                          lambda z, m, v: ut.log_sum_exp(components(z, m, v), 1)),
    "mixture: log k twice": ("log_normal_mixture", ut, "log_normal_mixture",
                             lambda z, m, v: ut.log_mean_exp(components(z, m, v), 1) - math.log(m.size(-2))),
    "mixture: v as sd": ("log_normal_mixture", ut, "log_normal_mixture",
                         lambda z, m, v: ut.log_mean_exp(components(z, m, v.pow(2)), 1)),
    "mixture: mean of logs": ("log_normal_mixture", ut, "log_normal_mixture",
                              lambda z, m, v: components(z, m, v).mean(1)),
    "mixture: max": ("log_normal_mixture", ut, "log_normal_mixture", lambda z, m, v: components(z, m, v).amax(1)),
    "mixture: not reduced": ("log_normal_mixture", ut, "log_normal_mixture", components),
    "mixture: over batch": ("log_normal_mixture", ut, "log_normal_mixture",
                            lambda z, m, v: ut.log_mean_exp(components(z, m, v), 0)),
    "mixture: summed over batch": ("log_normal_mixture", ut, "log_normal_mixture",
                                   lambda z, m, v: ut.log_mean_exp(components(z, m, v), 1).sum()),
    "mixture: mean over batch": ("log_normal_mixture", ut, "log_normal_mixture",
                                 lambda z, m, v: ut.log_mean_exp(components(z, m, v), 1).mean()),
    "mixture: shapes": ("log_normal_mixture", ut, "log_normal_mixture", mixture_3d),
    "mixture: broadcast": ("log_normal_mixture", ut, "log_normal_mixture",
                           lambda z, m, v: ut.log_mean_exp(ut.log_normal(z.unsqueeze(-1), m, v), 1)),
    "mixture: first row": ("log_normal_mixture", ut, "log_normal_mixture",
                           lambda z, m, v: ut.log_mean_exp(ut.log_normal(z.unsqueeze(1), m[0], v[0]), 1)),
    "mixture: unsqueeze": ("log_normal_mixture", ut, "log_normal_mixture",
                           lambda z, m, v: ut.log_mean_exp(ut.log_normal(z, m, v), 1)),
    "mixture: underflow": (MIX_FAR, ut, "log_normal_mixture",
                           lambda z, m, v: torch.log(torch.exp(components(z, m, v)).mean(1))),
    "mixture: gradient nan": (MIX_FAR, ut, "log_normal_mixture",
                              lambda z, m, v: steep(ut.log_mean_exp(components(z, m, v), 1))),
    "mixture: flat gradient": (MIX_FAR, ut, "log_normal_mixture",
                               lambda z, m, v: ut.log_mean_exp(components(z, m, v), 1).detach() + 0 * z.sum(-1)),
    "sample_gaussian: shape": ("sample_gaussian", ut, "sample_gaussian",
                               sample(lambda m, v, eps: (m + v.sqrt() * eps).unsqueeze(0))),
    "sample_gaussian: dtype": ("sample_gaussian", ut, "sample_gaussian",
                               sample(lambda m, v, eps: m + v.sqrt() * eps.double())),
    "sample_gaussian: v as sd": ("sample_gaussian", ut, "sample_gaussian", sample(lambda m, v, eps: m + v * eps)),
    "sample_gaussian: v ** 0.25": ("sample_gaussian", ut, "sample_gaussian",
                                   sample(lambda m, v, eps: m + v.pow(0.25) * eps)),
    "sample_gaussian: not scaled": ("sample_gaussian", ut, "sample_gaussian", sample(lambda m, v, eps: m + eps)),
    "sample_gaussian: no mean": ("sample_gaussian", ut, "sample_gaussian",
                                 sample(lambda m, v, eps: v.sqrt() * eps)),
    "sample_gaussian: generator": ("sample_gaussian", ut, "sample_gaussian",
                                   lambda m, v, generator=None: m + v.sqrt() * torch.randn(m.shape)),
    "sample_gaussian: samples shape": ("sample_gaussian", ut, "sample_gaussian",
                                       sample(lambda m, v, eps: (m + v.sqrt() * eps).view(-1, m.size(-1)))),
    "sample_gaussian: gradient nan": ("sample_gaussian", ut, "sample_gaussian",
                                      sample(lambda m, v, eps: steep(m + v.sqrt() * eps))),
    "sample_gaussian: not reparameterised": ("sample_gaussian", ut, "sample_gaussian", lambda m, v, generator=None:
                                             torch.normal(m, v.sqrt(), generator=generator)),
    "kl_normal: sign": ("kl_normal", ut, "kl_normal", lambda *a: -kl_terms(*a).sum(-1)),
    "kl_normal: swapped": ("kl_normal", ut, "kl_normal", lambda qm, qv, pm, pv: kl_terms(pm, pv, qm, qv).sum(-1)),
    "kl_normal: v as sd": ("kl_normal", ut, "kl_normal",
                           lambda qm, qv, pm, pv: kl_terms(qm, qv.pow(2), pm, pv.pow(2)).sum(-1)),
    "kl_normal: no 1/2": ("kl_normal", ut, "kl_normal", lambda *a: 2 * kl_terms(*a).sum(-1)),
    "kl_normal: no -1": ("kl_normal", ut, "kl_normal", lambda *a: (kl_terms(*a) + 0.5).sum(-1)),
    "kl_normal: mean over dim": ("kl_normal", ut, "kl_normal", lambda *a: kl_terms(*a).mean(-1)),
    "kl_normal: not summed": ("kl_normal", ut, "kl_normal", kl_terms),
    "kl_normal: summed over batch": ("kl_normal", ut, "kl_normal", lambda *a: kl_terms(*a).sum()),
    "kl_normal: mean over batch": ("kl_normal", ut, "kl_normal", lambda *a: kl_terms(*a).sum(-1).mean()),
    "kl_normal: overflow": ("kl_normal", ut, "kl_normal", lambda *a: torch.log(torch.exp(kl_terms(*a))).sum(-1)),
    "gaussian_parameters: swapped": ("gaussian_parameters", ut, "gaussian_parameters",
                                     params(lambda a, b: b, lambda a, b: F.softplus(a) + 1e-8)),
    "gaussian_parameters: interleaved": ("gaussian_parameters", ut, "gaussian_parameters", lambda h, dim=-1: (
        h[..., ::2], F.softplus(h[..., 1::2]) + 1e-8)),
    "gaussian_parameters: ignores dim": ("gaussian_parameters", ut, "gaussian_parameters", lambda h, dim=-1: (
        split(h, -1)[0], F.softplus(split(h, -1)[1]) + 1e-8)),
    "gaussian_parameters: exp": ("gaussian_parameters", ut, "gaussian_parameters",
                                 params(lambda a, b: a, lambda a, b: torch.exp(b))),
    "gaussian_parameters: no softplus": ("gaussian_parameters", ut, "gaussian_parameters",
                                         params(lambda a, b: a, lambda a, b: b)),
    "gaussian_parameters: no floor": ("gaussian_parameters", ut, "gaussian_parameters",
                                      params(lambda a, b: a, lambda a, b: F.softplus(b))),
    "gaussian_parameters: overflow": ("gaussian_parameters", ut, "gaussian_parameters",
                                      params(lambda a, b: a, lambda a, b: torch.log(1 + torch.exp(b)) + 1e-8)),
    f"{BERN}: sign": (BERN, ut, BERN, lambda x, logits: -bernoulli_terms(x, logits).sum(-1)),
    f"{BERN}: 0 and 1 swapped": (BERN, ut, BERN, lambda x, logits: bernoulli_terms(1 - x, logits).sum(-1)),
    f"{BERN}: mean over dim": (BERN, ut, BERN, lambda x, logits: bernoulli_terms(x, logits).mean(-1)),
    f"{BERN}: not summed": (BERN, ut, BERN, bernoulli_terms),
    f"{BERN}: summed over batch": (BERN, ut, BERN, lambda x, logits: bernoulli_terms(x, logits).sum()),
    f"{BERN}: mean over batch": (BERN, ut, BERN, lambda x, logits: bernoulli_terms(x, logits).sum(-1).mean()),
    f"{BERN}: logits as probabilities": (BERN, ut, BERN, lambda x, p: (
        x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(-1)),
    f"{BERN}: log of sigmoid": (BERN, ut, BERN, lambda x, logits: (
        x * torch.log(torch.sigmoid(logits)) + (1 - x) * torch.log(1 - torch.sigmoid(logits))).sum(-1)),
    f"{BERN}: gradient nan": (BERN, ut, BERN, lse_where_nan),
    "bound: three values": (ELBO_V, VAE, ELBO, lambda self, x, generator=None: elbo()(self, x, generator)[:2]),
    "bound: per-image": (ELBO_V, VAE, ELBO, elbo(mean=lambda t: t)),
    "bound: not 0-dim": (ELBO_V, VAE, ELBO, elbo(mean=lambda t: t.mean(0, keepdim=True))),
    "bound: not a tensor": (ELBO_V, VAE, ELBO, elbo(mean=lambda t: t.mean().item())),
    "bound: not finite": (ELBO_V, VAE, ELBO, elbo(kl=lambda model, z, m, v: ut.kl_normal(m, v, 0 * m, 0 * v))),
    "bound: summed over batch": (ELBO_V, VAE, ELBO, elbo(mean=torch.sum)),
    "bound: divided twice": (IWAE_V, LatentModel, IWAE, iwae(kl=lambda kl: kl.mean() / kl.size(1))),
    "bound: divided by 100": ("VAE: odd batch of 97", VAE, ELBO, elbo(mean=lambda t: t.sum() / 100)),
    "bound: hard-coded 100": (IWAE_V, LatentModel, "log_importance_weights", log_weights_100),
    "bound: encoder cut": (ELBO_V, VAE, ELBO, elbo(cut=lambda m, v, z: (m.detach(), v.detach(), z.detach()))),
    "bound: decoder cut": (IWAE_V, LatentModel, IWAE, iwae(log_w=lambda log_px, kl: log_px.detach() - kl)),
    "bound: z detached": (ELBO_G, GMVAE, ELBO, elbo(cut=lambda m, v, z: (m, v, z.detach()))),
    "bound: z with v as sd": (ELBO_G, GMVAE, ELBO, elbo(cut=lambda m, v, z: (m, v, m + v * (z - m) / v.sqrt()))),
    "GMVAE: log q with v as sd": (ELBO_G, GMVAE, ELBO, elbo(kl=lambda model, z, m, v: torch.distributions.Normal(
        m, v).log_prob(z).sum(-1) - ut.log_normal_mixture(z, *model.prior()))),
    "GMVAE: prior cut": (ELBO_G, GMVAE, ELBO, gmvae_kl(lambda model, z: ut.log_normal_mixture(
        z, *(t.detach() for t in model.prior())))),
    "GMVAE: z_pre": (ELBO_G, GMVAE, "__init__", gmvae_init_reshaped),
    "GMVAE: prior split": (ELBO_G, GMVAE, ELBO, gmvae_kl(lambda model, z: ut.log_normal_mixture(
        z, *ut.gaussian_parameters(model.z_pre)))),
    "GMVAE: raw prior variances": (ELBO_G, GMVAE, ELBO, gmvae_kl(lambda model, z: ut.log_normal_mixture(
        z, model.z_pre[:, :model.k], model.z_pre[:, model.k:]))),
    "elbo: kl - rec": (ELBO_V, VAE, ELBO, elbo(total=lambda kl, rec: kl - rec)),
    "elbo: rec - kl": (ELBO_V, VAE, ELBO, elbo(total=lambda kl, rec: rec - kl)),
    "elbo: nelbo not the sum": (ELBO_V, VAE, ELBO, elbo(total=lambda kl, rec: kl + rec + 1)),
    "elbo: nelbo sign": (ELBO_V, VAE, ELBO, elbo(total=lambda kl, rec: -(kl + rec))),
    "elbo: rec sign": (ELBO_V, VAE, ELBO, elbo(rec=lambda model, x, z, m: ut.log_bernoulli_with_logits(
        x, model.dec(z)))),
    "elbo: rec per pixel": (ELBO_V, VAE, ELBO, elbo(rec=lambda model, x, z, m: -ut.log_bernoulli_with_logits(
        x, model.dec(z)) / 784)),
    "elbo: decodes the mean": (ELBO_G, GMVAE, ELBO, elbo(rec=lambda model, x, z, m: -ut.log_bernoulli_with_logits(
        x, model.dec(m)))),
    "VAE: kl sign": (ELBO_V, VAE, ELBO, elbo(kl=lambda model, z, m, v: -ut.kl_normal(
        m, v, model.z_prior_m, model.z_prior_v))),
    "VAE: kl swapped": (ELBO_V, VAE, ELBO, elbo(kl=lambda model, z, m, v: ut.kl_normal(
        model.z_prior_m, model.z_prior_v, m, v))),
    "VAE: kl by one sample": (ELBO_V, VAE, ELBO, elbo(kl=lambda model, z, m, v: ut.log_normal(z, m, v)
                                                      - ut.log_normal(z, model.z_prior_m, model.z_prior_v))),
    "GMVAE: kl sign": (ELBO_G, GMVAE, ELBO, elbo(kl=lambda model, z, m, v: ut.log_normal_mixture(
        z, *model.prior()) - ut.log_normal(z, m, v))),
    "GMVAE: log k": (IWAE_G, GMVAE, "log_prior", lambda self, z: ut.log_sum_exp(components(z, *self.prior()), 1)),
    "GMVAE: standard normal prior": (ELBO_G, GMVAE, ELBO, gmvae_kl(lambda model, z: ut.log_normal(
        z, torch.zeros_like(z), torch.ones_like(z)))),
    "iwae: log_sum_exp": (IWAE_V, LatentModel, IWAE, iwae(niwae=lambda log_w: -ut.log_sum_exp(log_w, 0).mean())),
    "iwae: averaged": (IWAE_V, LatentModel, IWAE, iwae(niwae=lambda log_w: -log_w.mean())),
    "iwae: over the batch": (IWAE_V, LatentModel, IWAE, iwae(niwae=lambda log_w: -ut.log_mean_exp(log_w, 1).mean())),
    "iwae: adds the kl": (IWAE_V, LatentModel, IWAE, iwae(log_w=lambda log_px, kl: log_px + kl)),
    "iwae: leaves out the kl": (IWAE_V, LatentModel, IWAE, iwae(log_w=lambda log_px, kl: log_px)),
    "iwae: sign": (IWAE_V, LatentModel, IWAE, iwae(niwae=lambda log_w: ut.log_mean_exp(log_w, 0).mean())),
    "iwae: kl sign": (IWAE_V, LatentModel, IWAE, iwae(kl=lambda kl: -kl.mean())),
    "iwae: rec sign": (IWAE_V, LatentModel, IWAE, iwae(rec=lambda log_px: log_px.mean())),
    "iwae-1: nelbo's kl sign": ("VAE: IWAE-1 = NELBO on average", VAE, ELBO, elbo(
        kl=lambda model, z, m, v: -ut.kl_normal(m, v, model.z_prior_m, model.z_prior_v))),
    "iwae-1: iwae summed": ("VAE: IWAE-1 = NELBO on average", LatentModel, IWAE, iwae(
        niwae=lambda log_w: -ut.log_mean_exp(log_w, 0).sum())),
    "iwae-1: nelbo summed": ("VAE: IWAE-1 = NELBO on average", VAE, ELBO, elbo(mean=torch.sum)),
    "iwae-1: differ": ("VAE: IWAE-1 = NELBO on average", LatentModel, IWAE, iwae(
        niwae=lambda log_w: -ut.log_mean_exp(log_w, 0).mean() + 1)),
    "iwae falls: underflow": ("VAE: IWAE falls with k (1, 10, 100)", LatentModel, IWAE, iwae(
        niwae=lambda log_w: -torch.log(torch.exp(log_w).mean(0)).mean())),
    "iwae falls: flat": ("VAE: IWAE falls with k (1, 10, 100)", LatentModel, IWAE, iwae(
        niwae=lambda log_w: -log_w.mean())),
    "iwae falls: not falling": ("VAE: IWAE falls with k (1, 10, 100)", LatentModel, IWAE, iwae(
        niwae=lambda log_w: -ut.log_mean_exp(log_w, 0).mean() + 2 * math.log(log_w.size(0)))),
}
for _fn in ("log_sum_exp", "log_mean_exp"):
    _shift = (lambda x, dim: 0.0) if _fn == "log_sum_exp" else (lambda x, dim: math.log(x.size(dim)))
    MISTAKES.update({
        f"{_fn}: only the max": (_fn, ut, _fn, lambda x, dim: x.amax(dim)),
        f"{_fn}: keepdim": (_fn, ut, _fn,
                            lambda x, dim, s=_shift: (torch.logsumexp(x, dim) - s(x, dim)).unsqueeze(dim)),
        f"{_fn}: mean of x": (_fn, ut, _fn, lambda x, dim: x.mean(dim)),
        f"{_fn}: gradient nan": (_fn, ut, _fn, lambda x, dim, s=_shift: steep(torch.logsumexp(x, dim) - s(x, dim))),
        f"{_fn}: gradient cut": (_fn, ut, _fn, lambda x, dim, s=_shift: lse_cut(x, dim) - s(x, dim)),
    })


def cause_of(line):
    assert "; likely cause: " in line, line
    return line.split("; likely cause: ", 1)[1]


def test_every_check_has_a_probe_a_reference_and_a_judge():
    from codebase.check import judge, probe, references
    keys = {c.key for c in CHECKS.values()}
    assert keys == set(probe.PROBES) == set(references.REFERENCES)
    assert set(judge.JUDGES) < keys  # the others are judged case by case


def test_every_cause_has_a_mistake_that_makes_it():
    assert sorted(MISTAKES) == sorted(CAUSES)
    assert {name for name, *_ in MISTAKES.values()} <= set(CHECKS)


@pytest.mark.parametrize("key", MISTAKES)
def test_a_mistake_fails_its_check_with_its_cause(key, monkeypatch):
    name, where, attribute, broken = MISTAKES[key]
    monkeypatch.setattr(where, attribute, broken)
    v = check.verdict(CHECKS[name])
    assert not v.passed and v.line.startswith(f"FAIL  {name}: expected ") and ", got " in v.line, v.line
    # A cause with {what} names the term it was found in.
    assert re.fullmatch(re.escape(CAUSES[key]).replace(re.escape("{what}"), r"\w+"), cause_of(v.line)), v.line


# ---------------------------------------------------------------------------------------------
# The project's own code, stubs, and what a check must survive
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow  # 14 s: each check passes in the unit tier already (test_models, test_utils); this is main()
def test_every_check_passes_on_the_project_code(capsys):
    threads = torch.get_num_threads()
    assert check.main([]) == 0
    out = lines_of(capsys.readouterr().out)
    assert out == [f"PASS  {name}" for name in CHECKS] + [f"{len(CHECKS)} passed, 0 failed"]
    assert torch.get_num_threads() == threads  # main() gives back the thread count it lowered


def stub(name):
    """A function called `name` that raises NotImplementedError, as the handout's stubs do."""
    def unwritten(*args, **kwargs):
        raise NotImplementedError
    return types.FunctionType(unwritten.__code__.replace(co_name=name), {})


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "GMVAE.negative_iwae_bound" else n
                                  for n in CHECKS])  # that one takes 5 s, VAE's the same path in 0.7 s
def test_a_stub_is_not_implemented_yet(name, monkeypatch):
    target = CHECKS[name].target
    where = ut if hasattr(ut, target) else LatentModel if target == IWAE else GMVAE if "GMVAE" in name else VAE
    monkeypatch.setattr(where, target, stub(target))
    v = check.verdict(CHECKS[name])
    if CHECKS[name].optional:  # the IWAE bound: reported, not counted as a failure
        optional = "not implemented yet (optional: the problem set does not ask for it)"
        assert v.optional and v.line == f"----  {name}: {optional}"
    else:
        assert not v.optional and v.line == f"FAIL  {name}: not implemented yet"


def test_a_stub_below_is_named_and_the_rest_still_run(monkeypatch, capsys):
    monkeypatch.setattr(ut, "kl_normal", stub("kl_normal"))
    assert check.main(["--only", "kl_normal", "--only", "negative_elbo_bound"]) == 1
    assert lines_of(capsys.readouterr().out) == [
        "FAIL  kl_normal: not implemented yet", "PASS  GMVAE.negative_elbo_bound",  # the GMVAE never calls it
        "FAIL  VAE.negative_elbo_bound: not implemented yet (kl_normal raises NotImplementedError)",
        "1 passed, 2 failed"]


def test_an_unexpected_exception_or_exit_is_a_fail_line(monkeypatch, capsys):
    def boom(*args):
        raise ValueError("boom\nsecond line")

    monkeypatch.setattr(ut, "kl_normal", boom)
    monkeypatch.setattr(ut, "log_normal", lambda *args: sys.exit(3))
    assert check.main(["--only", "kl_normal", "--only", "log_sum_exp", "--only", "log_normal: far"]) == 1
    assert lines_of(capsys.readouterr().out) == [
        "FAIL  log_normal: far points, tiny variances: SystemExit: 3", "PASS  log_sum_exp",
        "FAIL  kl_normal: ValueError: boom", "1 passed, 2 failed"]


def test_a_failing_callee_is_named_as_the_likelier_cause(monkeypatch, capsys):
    monkeypatch.setattr(ut, "kl_normal", lambda *a: 2 * kl_terms(*a).sum(-1))
    assert check.main(["--only", "kl_normal", "--only", "VAE.negative_elbo_bound"]) == 1
    line = lines_of(capsys.readouterr().out)[2]  # after kl_normal's and the GMVAE's, which passes
    assert line.startswith("FAIL  VAE.negative_elbo_bound: expected kl ")
    assert cause_of(line).startswith("kl_normal fails too (see above): fix that first (if that is not it: ")


def test_a_check_prints_nothing_and_leaves_torch_as_it_found_it(monkeypatch, capsys):
    def careless(m, v, generator=None):  # draws from the global generator, then turns gradients off
        torch.set_grad_enabled(False)
        print("debugging")
        return m + v.sqrt() * torch.randn(m.shape)

    monkeypatch.setattr(ut, "sample_gaussian", careless)
    state = torch.random.get_rng_state()
    v = check.verdict(CHECKS["sample_gaussian"])
    assert not v.passed and capsys.readouterr().out.startswith("debugging\n")
    assert torch.equal(torch.random.get_rng_state(), state) and torch.is_grad_enabled()


def test_only_without_a_match_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        check.main(["--only", "no such check"])
    assert e.value.code == 2 and "no check's name contains" in capsys.readouterr().err


def test_a_mistake_outside_the_list_says_how_far_off_and_which_way(monkeypatch):
    monkeypatch.setattr(ut, "log_normal", lambda x, m, v: normal_terms(x, m, v).sum(-1) + 0.3)
    assert cause_of(check.verdict(CHECKS["log_normal"]).line) == \
        "not one of the usual mistakes: every value is 0.3000 too high"


# ---------------------------------------------------------------------------------------------
# The bounds: judged on their maths, not on how they draw z
# ---------------------------------------------------------------------------------------------

def without_generator(self, x, iw, generator=None):
    """The IWAE bound drawing each sample in turn from torch's global generator."""
    m, v = self.enc(x)
    log_w = []
    for _ in range(iw):
        z = ut.sample_gaussian(m, v)
        log_w.append(ut.log_bernoulli_with_logits(x, self.dec(z)) + self.log_prior(z) - ut.log_normal(z, m, v))
    log_w = torch.stack(log_w)
    niwae = -ut.log_mean_exp(log_w, 0).mean()
    return niwae, niwae, niwae  # kl and rec, unasked for, are wrong: only the bound is judged here


def second_z(self, x, generator=None):
    m, v = self.enc(x)
    rec = -ut.log_bernoulli_with_logits(x, self.dec(ut.sample_gaussian(m, v, generator))).mean()
    z = ut.sample_gaussian(m, v, generator)  # a fresh draw for the KL: also an unbiased estimate
    kl = (ut.log_normal(z, m, v) - ut.log_normal_mixture(z, *self.prior())).mean()
    return kl + rec, kl, rec


@pytest.mark.parametrize("name, where, attribute, bound", [
    (ELBO_G, GMVAE, ELBO, lambda self, x, generator=None: GMVAE_ELBO(self, x)),
    (ELBO_V, VAE, ELBO, lambda self, x, generator=None: VAE_ELBO(self, x)),
    (ELBO_G, GMVAE, ELBO, second_z),
    ("VAE: IWAE falls with k (1, 10, 100)", LatentModel, IWAE, without_generator),
    ("GMVAE: IWAE-1 = NELBO on average", LatentModel, IWAE, without_generator),
])
def test_a_correct_bound_passes_however_it_draws_z(name, where, attribute, bound, monkeypatch):
    monkeypatch.setattr(where, attribute, bound)
    assert check.verdict(CHECKS[name]).passed


GMVAE_ELBO, VAE_ELBO = GMVAE.negative_elbo_bound, VAE.negative_elbo_bound


def test_the_iwae_bound_drawn_in_a_loop_is_compared_over_paired_draws(monkeypatch):
    monkeypatch.setattr(LatentModel, IWAE, without_generator)
    line = check.verdict(CHECKS[IWAE_V]).line
    assert line.startswith("FAIL  VAE.negative_iwae_bound: expected kl about ") and "paired by seed" in line
    assert cause_of(line).startswith("not one of the usual mistakes: kl is ")


@pytest.mark.parametrize("bias, said", [
    ((0.1, 0.0), "kl is 0.100 nats too high (+-0.000 across the draws); rec matches"),
    ((0.0, -0.2), "rec is 0.200 nats too low (+-0.000 across the draws); kl matches"),
])
def test_a_small_steady_bias_fails_and_says_which_term(bias, said, monkeypatch):
    def biased(self, x, generator=None):
        _, kl, rec = GMVAE_ELBO(self, x, generator)
        return kl + rec + sum(bias), kl + bias[0], rec + bias[1]

    monkeypatch.setattr(GMVAE, ELBO, biased)
    assert cause_of(check.verdict(CHECKS[ELBO_G]).line) == "not one of the usual mistakes: " + said


def test_a_bound_of_pure_noise_fails_though_its_own_spread_is_wide(monkeypatch):
    # Noise that no seed repeats, large enough that its own spread would excuse any mean, and a tiny
    # multiple of every parameter so that every gradient is non-zero.
    def noise(self, x, generator=None):
        draw = [1e4 * (int.from_bytes(os.urandom(4), "little") / 2**31 - 1) for _ in range(2)]  # -1e4 to 1e4
        touch = 1e-6 * sum(p.sum() for p in self.parameters())
        kl, rec = 1 + draw[0] + touch, 1 + draw[1] + touch
        return kl + rec, kl, rec

    monkeypatch.setattr(GMVAE, ELBO, noise)
    line = check.verdict(CHECKS[ELBO_G]).line
    assert line.startswith(f"FAIL  {ELBO_G}: "), line


# ---------------------------------------------------------------------------------------------
# End to end, as a student runs it
# ---------------------------------------------------------------------------------------------

def test_python_m_codebase_check_on_a_broken_copy(tmp_path):
    shutil.copytree(ROOT / "codebase", tmp_path / "codebase", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "codebase" / "models" / "gmvae.py"
    old = "rec = -ut.log_bernoulli_with_logits(x, self.dec(z)).mean()"
    assert path.read_text().count(old) == 1, "gmvae.py changed: update this test's mistake"
    path.write_text(path.read_text().replace(old, old.replace(".mean()", ".sum()")))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "codebase.check", "--only", "GMVAE.negative_elbo_bound",
                          "--only", "VAE.negative_elbo_bound"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=900, env=env)
    assert out.returncode == 1 and out.stderr == "", out.stderr
    lines = lines_of(out.stdout)
    assert lines[0].startswith("FAIL  GMVAE.negative_elbo_bound: expected rec = ")
    assert cause_of(lines[0]) == CAUSES["bound: summed over batch"].format(what="rec")
    assert lines[1:] == ["PASS  VAE.negative_elbo_bound", "1 passed, 1 failed"]
