"""The VAE and GMVAE bounds: the self-check's checks against float64 references, and the models' parts.

Each check of the self-check (codebase/check/) compares a bound and its gradients with the expected
values on the same draw of z, at batches of 100 and 97, and tests the IWAE bound's behaviour in k;
here each one is a test. The tests below add batch sizes, the
priors' parameters, sampling and the networks.
"""
import pytest
import torch

from codebase import utils as ut
from codebase.check import runner as check
from codebase.models import GMVAE, VAE

MODEL_CHECKS = {c.name: c for c in check.CHECKS if not hasattr(ut, c.target)}


@pytest.mark.parametrize("name", MODEL_CHECKS)
def test_self_check(name):
    result = check.verdict(MODEL_CHECKS[name])
    if not (result.passed or result.optional):  # optional: the IWAE bound, not written yet
        pytest.fail(result.line, pytrace=False)  # the check's own line, once


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
