"""The VAE and the GMVAE, and the networks they share."""
from codebase.models.gmvae import GMVAE
from codebase.models.vae import VAE

__all__ = ["GMVAE", "VAE", "make_model"]


def make_model(config):
    """A fresh model as a Config says: config.model ("gmvae" or "vae"), config.z and config.k."""
    if config.model == "gmvae":
        return GMVAE(z_dim=config.z, k=config.k)
    return VAE(z_dim=config.z)
