"""codebase.utils: the self-check's checks, and a few identities.

Each check of the self-check (codebase/check/) compares a function with its expected values over
odd batch sizes, every parameter shape and extreme values; here each one is a test. The tests
below add what the checks do not look at.
"""
import pytest
import torch

from codebase import utils as ut
from codebase.check import runner as check

UTILS_CHECKS = {c.name: c for c in check.CHECKS if hasattr(ut, c.target)}


@pytest.mark.parametrize("name", UTILS_CHECKS)
def test_self_check(name):
    result = check.verdict(UTILS_CHECKS[name])
    if not result.passed:  # the check's own line, once: an assert would repeat it in two reprs
        pytest.fail(result.line, pytrace=False)


def test_log_normal_mixture_includes_the_log_k_of_uniform_weights():
    # k identical components: the mixture is that one Gaussian, so log k must cancel.
    z, m, v = torch.randn(6, 3), torch.zeros(1, 50, 3), torch.ones(1, 50, 3)
    torch.testing.assert_close(ut.log_normal_mixture(z, m, v), ut.log_normal(z, m[0, 0], v[0, 0]))


# BEGIN SOLUTION log_normal_mixture
# STUB: # (The model answer tests log_normal_mixture against a float64 reference here.)
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal  # noqa: E402


def rand_var(*shape, generator):
    return torch.rand(*shape, generator=generator, dtype=torch.float64) * 3 + 0.05


def reference_mixture(z, m, v):
    """log (1/k) sum_i N(z; m_i, v_i) through torch.distributions, in float64."""
    weights = Categorical(logits=torch.zeros(m.shape[:-1], dtype=torch.float64))
    comps = Independent(Normal(m.double(), v.double().sqrt()), 1)
    return MixtureSameFamily(weights, comps).log_prob(z.double())


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
# END SOLUTION


def test_kl_normal_is_zero_for_equal_gaussians_and_positive_otherwise():
    m, v = torch.randn(9, 4), torch.rand(9, 4) + 0.1
    torch.testing.assert_close(ut.kl_normal(m, v, m, v), torch.zeros(9))
    assert (ut.kl_normal(m, v, m + 0.1, v) > 0).all()
