"""The encoder and decoder MLPs that both models use."""
from torch import nn

from codebase import utils as ut

X_DIM = 784
HIDDEN = 300


def mlp(sizes):
    """Linear layers of the given sizes with ELU between them (none after the last)."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ELU())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """q(z|x) = N(mu(x), diag(sigma^2(x))): an MLP 784 -> 300 -> 300 -> 2 * z_dim."""

    def __init__(self, z_dim):
        super().__init__()
        self.net = mlp([X_DIM, HIDDEN, HIDDEN, 2 * z_dim])

    def forward(self, x):
        """
        Args:
            x: tensor: (batch, 784): binary images

        Returns:
            m: tensor: (batch, z_dim): posterior means
            v: tensor: (batch, z_dim): posterior variances
        """
        return ut.gaussian_parameters(self.net(x), dim=-1)


class Decoder(nn.Module):
    """p(x|z) = Bern(f(z)): an MLP z_dim -> 300 -> 300 -> 784 giving Bernoulli logits."""

    def __init__(self, z_dim):
        super().__init__()
        self.net = mlp([z_dim, HIDDEN, HIDDEN, X_DIM])

    def forward(self, z):
        """
        Args:
            z: tensor: (..., z_dim): latent codes

        Returns:
            logits: tensor: (..., 784): Bernoulli logits of each pixel
        """
        return self.net(z)
