"""codebase.utils against independent references: torch.distributions and torch.logsumexp in float64."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import (Bernoulli, Categorical, Independent, MixtureSameFamily, Normal,
                                 kl_divergence)

from codebase import utils as ut

SHAPES = [(1, 1), (97, 10), (5, 3), (2, 7, 4)]


def rand_var(*shape, generator):
    return torch.rand(*shape, generator=generator, dtype=torch.float64) * 3 + 0.05


def reference_mixture(z, m, v):
    """log (1/k) sum_i N(z; m_i, v_i) through torch.distributions, in float64."""
    k = m.shape[-2]
    weights = Categorical(logits=torch.zeros(m.shape[:-1], dtype=torch.float64))
    comps = Independent(Normal(m.double(), v.double().sqrt()), 1)
    assert weights.probs.shape[-1] == k
    return MixtureSameFamily(weights, comps).log_prob(z.double())


@pytest.mark.parametrize("shape", SHAPES)
def test_log_normal_matches_torch_distributions(shape):
    g = torch.Generator().manual_seed(0)
    x, m = torch.randn(*shape, generator=g, dtype=torch.float64), torch.randn(*shape, generator=g, dtype=torch.float64)
    v = rand_var(*shape, generator=g)
    expected = Normal(m, v.sqrt()).log_prob(x).sum(-1)
    got = ut.log_normal(x, m, v)
    assert got.shape == shape[:-1]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)


def test_log_normal_broadcasts_a_shared_mean():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(97, 4, generator=g, dtype=torch.float64)
    m, v = torch.zeros(4, dtype=torch.float64), torch.full((4,), 2.0, dtype=torch.float64)
    torch.testing.assert_close(ut.log_normal(x, m, v), Normal(m, v.sqrt()).log_prob(x).sum(-1))


@pytest.mark.parametrize("batch,k,dim,shared", [(97, 500, 10, True), (1, 3, 2, True), (100, 1, 10, True),
                                                (13, 5, 3, False), (1, 500, 10, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_normal_mixture_matches_mixture_same_family(batch, k, dim, shared, dtype):
    g = torch.Generator().manual_seed(batch + k)
    z = torch.randn(batch, dim, generator=g, dtype=torch.float64) * 2
    m = torch.randn(1 if shared else batch, k, dim, generator=g, dtype=torch.float64)
    v = rand_var(1 if shared else batch, k, dim, generator=g)
    got = ut.log_normal_mixture(z.to(dtype), m.to(dtype), v.to(dtype))
    assert got.shape == (batch,) and got.dtype == dtype
    expected = reference_mixture(z.to(dtype), m.to(dtype), v.to(dtype)).to(dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def test_log_normal_mixture_includes_the_log_k_of_uniform_weights():
    # k identical components: the mixture is that one Gaussian, so log k must cancel.
    z, m, v = torch.randn(6, 3), torch.zeros(1, 50, 3), torch.ones(1, 50, 3)
    torch.testing.assert_close(ut.log_normal_mixture(z, m, v), ut.log_normal(z, m[0, 0], v[0, 0]))


MIXTURE_SHAPES = {"per row": lambda batch, k, dim: (batch, k, dim), "shared": lambda batch, k, dim: (1, k, dim),
                  "no batch dim": lambda batch, k, dim: (k, dim)}


@pytest.mark.parametrize("m_shape", MIXTURE_SHAPES)
@pytest.mark.parametrize("v_shape", MIXTURE_SHAPES)
def test_log_normal_mixture_takes_each_parameter_shape_independently(m_shape, v_shape):
    batch, k, dim = 11, 6, 3
    g = torch.Generator().manual_seed(3)
    z = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    m = torch.randn(MIXTURE_SHAPES[m_shape](batch, k, dim), generator=g, dtype=torch.float64)
    v = rand_var(*MIXTURE_SHAPES[v_shape](batch, k, dim), generator=g)
    # The reference gets both expanded to (batch, k, dim), so each row sees its own components.
    expected = reference_mixture(z, m.expand(batch, k, dim), v.expand(batch, k, dim))
    got = ut.log_normal_mixture(z, m, v)
    assert got.shape == (batch,)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)


def test_mixture_far_from_every_component_with_tiny_variances():
    # |z - m| up to 100 with variance 1e-8: log-densities near -5e12, still finite and exact.
    g = torch.Generator().manual_seed(4)
    m = torch.randn(1, 500, 10, generator=g) * 0.1
    v = torch.full((1, 500, 10), 1e-8)
    z = (torch.rand(97, 10, generator=g) * 200 - 100).requires_grad_()
    got = ut.log_normal_mixture(z, m, v)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), reference_mixture(z.detach(), m, v), rtol=1e-6, atol=0)
    got.sum().backward()
    assert torch.isfinite(z.grad).all() and (z.grad.abs() > 0).all()


def test_mixture_stays_accurate_near_a_far_out_component():
    # z sits 0.01 from a component at 50 with variance 1e-4: a form that expands the square
    # cancels terms of size 2.5e7 here, which float32 arithmetic would get wrong by nats.
    m = torch.full((1, 2, 3), 50.0)
    m[0, 1] = -50.0
    v = torch.full((1, 2, 3), 1e-4)
    z = torch.full((4, 3), 50.01)
    torch.testing.assert_close(ut.log_normal_mixture(z, m, v).double(), reference_mixture(z, m, v),
                               rtol=0, atol=1e-4)


def test_mixture_gradients_match_the_reference():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    m = torch.randn(1, 9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    v = rand_var(1, 9, 4, generator=g).requires_grad_()
    grads = torch.autograd.grad(ut.log_normal_mixture(z, m, v).sum(), (z, m, v))
    expected = torch.autograd.grad(reference_mixture(z, m, v).sum(), (z, m, v))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape,dim", [((97, 5), 1), ((5, 97), 0), ((3, 4, 5), 1), ((1, 1), 0)])
def test_log_sum_exp_and_log_mean_exp_match_torch(shape, dim):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 30
    torch.testing.assert_close(ut.log_sum_exp(x, dim), torch.logsumexp(x, dim))
    torch.testing.assert_close(ut.log_mean_exp(x, dim), torch.logsumexp(x, dim) - math.log(shape[dim]))


def test_log_sum_exp_extremes():
    x = torch.tensor([[1e4, 1e4 - 1, -1e4], [-1e4, -1e4, -1e4 - 5], [-math.inf] * 3, [math.inf, 0.0, 1.0]])
    got = ut.log_sum_exp(x, dim=1)
    expected = torch.logsumexp(x.double(), dim=1).float()
    assert got[2] == -math.inf and not torch.isnan(got).any()
    torch.testing.assert_close(got, expected)
    assert ut.log_mean_exp(x, dim=1)[2] == -math.inf


def test_log_sum_exp_gradient_is_softmax():
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True) * 1
    x = (x * 1e3).detach().requires_grad_()
    ut.log_sum_exp(x, 1).sum().backward()
    torch.testing.assert_close(x.grad, torch.softmax(x.detach(), 1))


@pytest.mark.parametrize("shape", SHAPES)
def test_log_bernoulli_with_logits_matches_torch_distributions(shape):
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(*shape, generator=g, dtype=torch.float64) * 5
    x = torch.bernoulli(torch.full(shape, 0.5, dtype=torch.float64), generator=g)
    got = ut.log_bernoulli_with_logits(x, logits)
    assert got.shape == shape[:-1]
    torch.testing.assert_close(got, Bernoulli(logits=logits).log_prob(x).sum(-1))


def test_log_bernoulli_with_huge_logits_is_finite():
    logits = torch.tensor([[1e4, -1e4, 1e4, -1e4]], requires_grad=True)
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    got = ut.log_bernoulli_with_logits(x, logits)
    torch.testing.assert_close(got, torch.tensor([-2e4]))
    got.sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[0.0, 0.0, -1.0, 1.0]]))


def test_log_bernoulli_broadcasts_logits_over_samples():
    x = torch.bernoulli(torch.full((3, 6), 0.5))
    logits = torch.randn(4, 3, 6)
    assert ut.log_bernoulli_with_logits(x, logits).shape == (4, 3)


@pytest.mark.parametrize("shape", SHAPES)
def test_kl_normal_matches_torch_distributions(shape):
    g = torch.Generator().manual_seed(8)
    qm, pm = torch.randn(*shape, generator=g, dtype=torch.float64), torch.randn(*shape, generator=g, dtype=torch.float64)
    qv, pv = rand_var(*shape, generator=g), rand_var(*shape, generator=g)
    expected = kl_divergence(Normal(qm, qv.sqrt()), Normal(pm, pv.sqrt())).sum(-1)
    torch.testing.assert_close(ut.kl_normal(qm, qv, pm, pv), expected)


def test_kl_normal_is_zero_for_equal_gaussians_and_positive_otherwise():
    m, v = torch.randn(9, 4), torch.rand(9, 4) + 0.1
    torch.testing.assert_close(ut.kl_normal(m, v, m, v), torch.zeros(9))
    assert (ut.kl_normal(m, v, m + 0.1, v) > 0).all()


def test_gaussians_with_tiny_variance_far_away_stay_finite():
    x = torch.full((3, 10), 100.0, requires_grad=True)
    m, v = torch.zeros(3, 10), torch.full((3, 10), 1e-8, requires_grad=True)
    lp = ut.log_normal(x, m, v)
    torch.testing.assert_close(lp.double(), Normal(m.double(), v.detach().double().sqrt()).log_prob(x.detach().double()).sum(-1))
    lp.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(v.grad).all()
    kl = ut.kl_normal(x.detach(), v, m, torch.ones(3, 10))
    assert torch.isfinite(kl).all()


def test_sample_gaussian_moments_gradients_and_generator():
    m = torch.tensor([1.0, -2.0, 0.0], requires_grad=True)
    v = torch.tensor([0.25, 4.0, 1e-6], requires_grad=True)
    z = ut.sample_gaussian(m.expand(200_000, 3), v.expand(200_000, 3), torch.Generator().manual_seed(9))
    torch.testing.assert_close(z.mean(0), m.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), v.detach(), rtol=0.02, atol=1e-7)
    z.sum().backward()
    assert (m.grad != 0).all() and (v.grad != 0).all()
    a = ut.sample_gaussian(torch.zeros(5), torch.ones(5), torch.Generator().manual_seed(10))
    b = ut.sample_gaussian(torch.zeros(5), torch.ones(5), torch.Generator().manual_seed(10))
    assert torch.equal(a, b)


def test_gaussian_parameters_split_and_positive_variance():
    h = torch.randn(97, 20) * 50
    m, v = ut.gaussian_parameters(h, dim=-1)
    assert m.shape == v.shape == (97, 10)
    assert torch.equal(m, h[:, :10])
    torch.testing.assert_close(v, F.softplus(h[:, 10:]) + 1e-8)
    assert (v > 0).all()
    m, v = ut.gaussian_parameters(torch.randn(1, 1000, 10), dim=1)
    assert m.shape == v.shape == (1, 500, 10)
