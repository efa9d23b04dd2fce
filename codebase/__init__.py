"""The VAE / GMVAE problem-set codebase."""
