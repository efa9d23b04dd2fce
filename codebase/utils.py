"""Plain tensor math for the VAE and the GMVAE.

This module imports nothing from the project. Every log-density sums over the
last (feature) dimension and keeps the leading (batch) dimensions.
"""
import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def sample_gaussian(m, v, generator=None):
    """Draw z ~ N(m, diag(v)) by reparameterisation, so gradients reach m and v.

    Args:
        m: tensor: (batch, ..., dim): means
        v: tensor: (batch, ..., dim): variances
        generator: torch.Generator or None: source of the noise (None: torch's default)

    Returns:
        z: tensor: (batch, ..., dim): samples
    """
    # BEGIN SOLUTION sample_gaussian
    # STUB: # TODO: a draw z ~ N(m, diag(v)) through which gradients reach m and v, its noise drawn
    # STUB: # from `generator`. Returns (batch, ..., dim).
    # STUB: raise NotImplementedError("sample_gaussian (codebase/utils.py)")
    eps = torch.randn(m.shape, generator=generator, device=m.device, dtype=m.dtype)
    return m + v.sqrt() * eps
    # END SOLUTION


def gaussian_parameters(h, dim=-1):
    """Split a network output into a mean and a positive variance.

    Args:
        h: tensor: (batch, ..., 2 * dim, ...): the two halves side by side along `dim`
        dim: int: the dimension to split

    Returns:
        m: tensor: (batch, ..., dim, ...): means (first half)
        v: tensor: (batch, ..., dim, ...): variances, softplus(second half) + 1e-8
    """
    m, h = torch.split(h, h.size(dim) // 2, dim=dim)
    # The floor keeps log(v) and 1/v finite when softplus underflows to zero.
    v = F.softplus(h) + 1e-8
    return m, v


def log_normal(x, m, v):
    """Log-density of a Gaussian with diagonal covariance.

    Args:
        x: tensor: (batch, ..., dim): points
        m: tensor: (batch, ..., dim): means (broadcastable to x)
        v: tensor: (batch, ..., dim): variances (broadcastable to x)

    Returns:
        log_prob: tensor: (batch, ...): log N(x; m, diag(v)), summed over dim
    """
    # BEGIN SOLUTION log_normal
    # STUB: # TODO: log N(x; m, diag(v)) in log space (v is a variance), summed over the last dimension.
    # STUB: # Returns (batch, ...).
    # STUB: raise NotImplementedError("log_normal (codebase/utils.py)")
    return -0.5 * (LOG_2PI + torch.log(v) + (x - m).pow(2) / v).sum(-1)
    # END SOLUTION


def log_normal_mixture(z, m, v):
    """Log-density of a uniformly weighted mixture of k diagonal Gaussians.

    log p(z) = log (1/k) sum_i N(z; m_i, diag(v_i)): a log-mean-exp over the k
    component log-densities, so that it stays finite where every component's
    density underflows to zero.

    Args:
        z: tensor: (batch, dim): points
        m: tensor: (batch, k, dim), (1, k, dim) or (k, dim): component means
        v: tensor: (batch, k, dim), (1, k, dim) or (k, dim): component variances

    Returns:
        log_prob: tensor: (batch,): log p(z)
    """
    # BEGIN SOLUTION log_normal_mixture
    # STUB: # TODO (Problem 3.1): the log-density of z under the uniformly weighted mixture of Gaussians,
    # STUB: # for each sample in the batch. Returns (batch,).
    # STUB: raise NotImplementedError("log_normal_mixture (codebase/utils.py, Problem 3.1)")
    # (batch, 1, dim) broadcasts against the k components, giving (batch, k) log-densities.
    return log_mean_exp(log_normal(z.unsqueeze(1), m, v), dim=1)
    # END SOLUTION


def log_bernoulli_with_logits(x, logits):
    """Log-probability of binary observations under Bernoulli(sigmoid(logits)).

    Args:
        x: tensor: (batch, ..., dim): observations in {0, 1}
        logits: tensor: (batch, ..., dim): Bernoulli logits (broadcastable to x)

    Returns:
        log_prob: tensor: (batch, ...): summed over dim
    """
    # BEGIN SOLUTION log_bernoulli_with_logits
    # STUB: # TODO: x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)), summed over the last dimension, in a form
    # STUB: # that stays finite for logits of any size. Returns (batch, ...).
    # STUB: raise NotImplementedError("log_bernoulli_with_logits (codebase/utils.py)")
    # log sigmoid(l) = l - softplus(l) and log(1 - sigmoid(l)) = -softplus(l); softplus stays finite for any l.
    return (x * logits - F.softplus(logits)).sum(-1)
    # END SOLUTION


def kl_normal(qm, qv, pm, pv):
    """KL(q || p) between two diagonal Gaussians, in closed form.

    Args:
        qm: tensor: (batch, dim): means of q
        qv: tensor: (batch, dim): variances of q
        pm: tensor: (batch, dim): means of p (broadcastable)
        pv: tensor: (batch, dim): variances of p (broadcastable)

    Returns:
        kl: tensor: (batch,): summed over dim
    """
    # BEGIN SOLUTION kl_normal
    # STUB: # TODO: the closed form of KL(q || p) for diagonal Gaussians (qv, pv are variances), summed
    # STUB: # over the last dimension. Returns (batch,).
    # STUB: raise NotImplementedError("kl_normal (codebase/utils.py)")
    element_wise = 0.5 * (torch.log(pv) - torch.log(qv) + qv / pv + (qm - pm).pow(2) / pv - 1)
    return element_wise.sum(-1)
    # END SOLUTION


def log_sum_exp(x, dim=0):
    """log(sum(exp(x))) along `dim`, without overflow or underflow.

    Args:
        x: tensor: (..., n, ...): values
        dim: int: the dimension to reduce

    Returns:
        out: tensor: (..., ...): x with `dim` reduced; -inf where every entry is -inf
    """
    top = x.amax(dim, keepdim=True)
    # A row of -inf would give (-inf) - (-inf) = nan; shifting it by 0 instead keeps it -inf.
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top)).detach()
    return (top + (x - top).exp().sum(dim, keepdim=True).log()).squeeze(dim)


def log_mean_exp(x, dim):
    """log(mean(exp(x))) along `dim`, without overflow or underflow.

    Args:
        x: tensor: (..., n, ...): values
        dim: int: the dimension to reduce

    Returns:
        out: tensor: (..., ...): x with `dim` reduced
    """
    return log_sum_exp(x, dim) - math.log(x.size(dim))

