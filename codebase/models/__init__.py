"""The VAE and the GMVAE, and the networks they share."""
from codebase.models.gmvae import GMVAE
from codebase.models.vae import VAE

__all__ = ["GMVAE", "VAE"]
