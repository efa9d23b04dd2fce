"""The VAE and GMVAE bounds: shapes, identities, independent references and gradients."""
import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from codebase import utils as ut
from codebase.models import GMVAE, VAE


def make(model_cls, seed=0):
    torch.manual_seed(seed)
    return model_cls(z_dim=10, k=500) if model_cls is GMVAE else model_cls(z_dim=10)


def images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, 784, generator=g) * 0.5, generator=g)


@pytest.mark.parametrize("model_cls", [GMVAE, VAE])
@pytest.mark.parametrize("batch", [97, 1, 1000])
def test_bound_is_three_scalars_and_nelbo_is_kl_plus_rec(model_cls, batch):
    nelbo, kl, rec = make(model_cls).negative_elbo_bound(images(batch))
    assert nelbo.shape == kl.shape == rec.shape == ()
    torch.testing.assert_close(nelbo, kl + rec)
    # An untrained decoder gives about 784 * log 2 nats per image, not a batch sum.
    assert 300 < rec.item() < 1000


def test_gmvae_bound_matches_torch_distributions_on_the_same_sample():
    model, x = make(GMVAE), images(97)
    nelbo, kl, rec = model.negative_elbo_bound(x, generator=torch.Generator().manual_seed(1))
    # Redo the computation independently, drawing the same z from the same seed.
    m, v = model.enc(x)
    z = m + v.sqrt() * torch.randn(m.shape, generator=torch.Generator().manual_seed(1))
    pm, pv = model.prior()
    prior = MixtureSameFamily(Categorical(logits=torch.zeros(500, dtype=torch.float64)),
                              Independent(Normal(pm[0].double(), pv[0].double().sqrt()), 1))
    q = Independent(Normal(m.double(), v.double().sqrt()), 1)
    want_kl = (q.log_prob(z.double()) - prior.log_prob(z.double())).mean()
    want_rec = torch.nn.functional.binary_cross_entropy_with_logits(model.dec(z), x, reduction="sum") / 97
    torch.testing.assert_close(kl.double(), want_kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(rec, want_rec, rtol=1e-5, atol=1e-3)


def test_vae_kl_is_closed_form_against_standard_normal():
    model, x = make(VAE), images(31)
    _, kl, _ = model.negative_elbo_bound(x)
    m, v = model.enc(x)
    want = torch.distributions.kl_divergence(Normal(m, v.sqrt()), Normal(0.0, 1.0)).sum(-1).mean()
    torch.testing.assert_close(kl, want)


@pytest.mark.parametrize("model_cls", [GMVAE, VAE])
def test_iwae_one_equals_the_nelbo_in_expectation_and_falls_with_k(model_cls):
    model, x = make(model_cls), images(50)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        nelbo = torch.stack([model.negative_elbo_bound(x, g)[0] for _ in range(200)]).mean()
        iwae = {k: torch.stack([model.negative_iwae_bound(x, k, g)[0] for _ in range(max(200 // k, 2))]).mean()
                for k in (1, 10, 100)}
    assert abs(iwae[1] - nelbo) < 0.1
    assert iwae[1] > iwae[10] > iwae[100]


@pytest.mark.parametrize("model_cls", [GMVAE, VAE])
def test_iwae_returns_scalars_with_odd_batches(model_cls):
    out = make(model_cls).negative_iwae_bound(images(97), 3)
    assert all(t.shape == () for t in out)


def test_iwae_matches_a_direct_computation():
    model, x = make(GMVAE), images(5)
    log_w, log_px_z, kl = model.log_importance_weights(x, 7, torch.Generator().manual_seed(3))
    assert log_w.shape == log_px_z.shape == kl.shape == (7, 5)
    niwae, _, _ = model.negative_iwae_bound(x, 7, torch.Generator().manual_seed(3))
    want = -(torch.logsumexp(log_w.double(), dim=0) - math.log(7)).mean()
    torch.testing.assert_close(niwae.double(), want, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("model_cls", [GMVAE, VAE])
def test_gradients_reach_every_parameter(model_cls):
    model = make(model_cls)
    model.negative_elbo_bound(images(20))[0].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    if model_cls is GMVAE:
        assert "z_pre" in dict(model.named_parameters())


def test_gmvae_prior_parameter_and_vae_prior_buffers():
    model = make(GMVAE)
    assert model.z_pre.shape == (1, 1000, 10)
    assert 0.005 < model.z_pre.std().item() < 0.02  # N(0, 1) / sqrt(500 * 10) = 0.0141
    m, v = model.prior()
    assert m.shape == v.shape == (1, 500, 10) and (v > 0).all()
    vae = make(VAE)
    assert {"z_prior_m", "z_prior_v"} <= dict(vae.named_buffers()).keys()
    assert "z_prior_m" not in dict(vae.named_parameters())


@pytest.mark.parametrize("model_cls", [GMVAE, VAE])
def test_samples(model_cls):
    model = make(model_cls)
    g = torch.Generator().manual_seed(4)
    assert model.sample_z(7, g).shape == (7, 10)
    x = model.sample_x(7, g)
    assert x.shape == (7, 784) and set(x.unique().tolist()) <= {0.0, 1.0}
    means = model.compute_sigmoid_given(model.sample_z(3, g))
    assert means.shape == (3, 784) and ((means >= 0) & (means <= 1)).all()


def test_gmvae_prior_samples_come_from_the_components():
    model = make(GMVAE)
    with torch.no_grad():
        model.z_pre[0, :500] = torch.arange(500.0).unsqueeze(1) * 10  # far-apart means
        model.z_pre[0, 500:] = -20.0  # variances about 2e-9
    z = model.sample_z(1000, torch.Generator().manual_seed(5))
    nearest = z[:, 0] / 10
    torch.testing.assert_close(nearest, nearest.round(), atol=1e-3, rtol=0)
    assert len(nearest.round().unique()) > 400  # uniform weights: most of the 500 are drawn


def test_elu_is_the_same_function_as_torch():
    from codebase.models.nns import ELU
    x = torch.linspace(-30, 30, 10001, dtype=torch.float64, requires_grad=True)
    ELU()(x).sum().backward()
    y = x.detach().clone().requires_grad_()
    torch.nn.functional.elu(y).sum().backward()
    torch.testing.assert_close(ELU()(x), torch.nn.functional.elu(y))
    torch.testing.assert_close(x.grad, y.grad)
