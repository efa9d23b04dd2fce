"""What the VAE and the GMVAE share: the networks, the IWAE bound and sampling.

A subclass defines its prior through `log_prior` and `sample_z`, and its own
`negative_elbo_bound`.
"""
import torch
from torch import nn

from codebase import utils as ut
from codebase.models.nns import Decoder, Encoder


class LatentModel(nn.Module):
    def __init__(self, z_dim):
        super().__init__()
        self.z_dim = z_dim
        self.enc = Encoder(z_dim)
        self.dec = Decoder(z_dim)

    def log_prior(self, z):
        """log p(z): tensor: (n,), for z: tensor: (n, z_dim)."""
        raise NotImplementedError

    def sample_z(self, n, generator=None):
        """z: tensor: (n, z_dim): draws from the prior."""
        raise NotImplementedError

    def log_importance_weights(self, x, iw, generator=None):
        """log p(x, z_j) - log q(z_j|x) for `iw` draws z_j ~ q(z|x) per image.

        Args:
            x: tensor: (batch, 784): binary images
            iw: int: number of importance samples
            generator: torch.Generator or None: source of the sampling noise

        Returns:
            log_w: tensor: (iw, batch): log importance weights
            log_px_z: tensor: (iw, batch): log p(x|z_j)
            kl: tensor: (iw, batch): log q(z_j|x) - log p(z_j)
        """
        # BEGIN SOLUTION iwae_bound
        # STUB: # TODO (optional, beyond the problem set; --iwae needs it): the three tensors of the
        # STUB: # docstring, each (iw, batch).
        # STUB: raise NotImplementedError("LatentModel.log_importance_weights (codebase/models/base.py)")
        m, v = self.enc(x)
        z = ut.sample_gaussian(m.expand(iw, *m.shape), v.expand(iw, *v.shape), generator)
        log_px_z = ut.log_bernoulli_with_logits(x, self.dec(z))
        kl = ut.log_normal(z, m, v) - self.log_prior(z.reshape(-1, self.z_dim)).view(iw, -1)
        return log_px_z - kl, log_px_z, kl
        # END SOLUTION

    def negative_iwae_bound(self, x, iw, generator=None):
        """Negative importance-weighted bound with `iw` samples per image.

        Args:
            x: tensor: (batch, 784): binary images
            iw: int: number of importance samples
            generator: torch.Generator or None: source of the sampling noise

        Returns:
            niwae: tensor: (): -mean_x log mean_j p(x, z_j) / q(z_j|x), z_j ~ q(z|x)
            kl: tensor: (): the ELBO's KL term, log q(z|x) - log p(z) averaged over the samples
            rec: tensor: (): the ELBO's reconstruction term, averaged over the samples
        """
        # BEGIN SOLUTION iwae_bound
        # STUB: # TODO (optional, beyond the problem set; --iwae needs it): the three scalars of the docstring.
        # STUB: raise NotImplementedError("LatentModel.negative_iwae_bound (codebase/models/base.py)")
        log_w, log_px_z, kl = self.log_importance_weights(x, iw, generator)
        niwae = -ut.log_mean_exp(log_w, dim=0).mean()
        return niwae, kl.mean(), -log_px_z.mean()
        # END SOLUTION

    def compute_sigmoid_given(self, z):
        """Bernoulli means of p(x|z): tensor: (n, 784), for z: tensor: (n, z_dim)."""
        return torch.sigmoid(self.dec(z))

    def sample_x(self, n, generator=None):
        """x: tensor: (n, 784): binary draws from p(x), x ~ p(x|z) with z ~ p(z)."""
        probs = self.compute_sigmoid_given(self.sample_z(n, generator))
        return torch.bernoulli(probs, generator=generator)
