"""VAE with a learned prior: a uniform mixture of k diagonal Gaussians."""
import math

import torch
from torch import nn

from codebase import utils as ut
from codebase.models.base import LatentModel


class GMVAE(LatentModel):
    def __init__(self, z_dim=10, k=500):
        super().__init__(z_dim)
        self.k = k
        # Means and pre-softplus variances of the k components, stacked along dim 1.
        # The mixture weights are uniform and fixed (1 / k), so they need no tensor.
        self.z_pre = nn.Parameter(torch.randn(1, 2 * k, z_dim) / math.sqrt(k * z_dim))

    def prior(self):
        """
        Returns:
            m: tensor: (1, k, z_dim): component means
            v: tensor: (1, k, z_dim): component variances
        """
        return ut.gaussian_parameters(self.z_pre, dim=1)

    def negative_elbo_bound(self, x, generator=None):
        """Single-sample estimate of the negative ELBO, averaged over the batch.

        KL(q(z|x) || p(z)) has no closed form under a mixture prior, so it is
        estimated with the same sample of z: log q(z|x) - log p(z).

        Args:
            x: tensor: (batch, 784): binary images
            generator: torch.Generator or None: source of the sampling noise

        Returns:
            nelbo: tensor: (): kl + rec
            kl: tensor: (): one-sample estimate of KL(q(z|x) || p(z))
            rec: tensor: (): -log p(x|z) for the same sample
        """
        # BEGIN SOLUTION gmvae_negative_elbo_bound
        # STUB: # TODO (Problem 3.1): the negative ELBO and its KL and Rec decomposition, averaged over the
        # STUB: # batch: nelbo = kl + rec, all scalars, with the KL estimated from one sample of z as above.
        # STUB: raise NotImplementedError("GMVAE.negative_elbo_bound (codebase/models/gmvae.py, Problem 3.1)")
        m, v = self.enc(x)
        z = ut.sample_gaussian(m, v, generator)
        rec = -ut.log_bernoulli_with_logits(x, self.dec(z)).mean()
        kl = (ut.log_normal(z, m, v) - ut.log_normal_mixture(z, *self.prior())).mean()
        return kl + rec, kl, rec
        # END SOLUTION

    def log_prior(self, z):
        return ut.log_normal_mixture(z, *self.prior())

    def sample_z(self, n, generator=None):
        m, v = self.prior()
        component = torch.randint(self.k, (n,), generator=generator, device=m.device)
        return ut.sample_gaussian(m[0, component], v[0, component], generator)
