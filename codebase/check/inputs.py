"""The inputs of the checks, made from a seed by numpy's RandomState, whose stream numpy keeps fixed for good:
the same numbers on every machine and torch version, so expected.pt's values stay right wherever the checks
run. The local self-check uses SEED; the grader draws a new seed for each grading.
"""
import math
import zlib

import numpy as np
import torch

F64 = torch.float64
Z_DIM, K = 10, 500  # the graded model
BATCH = 100  # training's batch
SEED = 1


def _rng(seed, name):
    return np.random.RandomState([seed, zlib.crc32(name.encode())])


def normal(seed, name, shape, scale=1.0, dtype=F64):
    """Standard normal draws times `scale`: tensor of `shape`."""
    return torch.from_numpy(_rng(seed, name).standard_normal(shape) * scale).to(dtype)


def uniform(seed, name, shape, low=0.0, high=1.0, dtype=F64):
    return torch.from_numpy(_rng(seed, name).uniform(low, high, shape)).to(dtype)


def variances(seed, name, shape, dtype=F64):
    """Variances from 0.05 to 3.05."""
    return uniform(seed, name, shape, 0.05, 3.05, dtype)


def images(seed, name, n):
    """Binary images: tensor: (n, 784), float32, about a quarter of the pixels on."""
    return (uniform(seed, name, (n, 784)) < 0.25).float()


def generator_seed(seed, name):
    """A seed for a torch.Generator that a function under test draws from."""
    return int(_rng(seed, name).randint(0, 2**31 - 1))


def fixed_state(kind, seed):
    """{name: float64 tensor}: the parameters of an untrained model of `kind`, fixed by the seed. A weight
    and the bias after it are uniform within +-1/sqrt(fan-in), as torch initialises them; the GMVAE's prior is
    spread out (means N(0, 1), pre-softplus variances N(0, 1/4)): with all k components at one place,
    mistakes between components would go unseen."""
    from codebase.models.nns import Decoder, Encoder
    with torch.random.fork_rng(devices=[]):
        nets = {"enc": Encoder(Z_DIM), "dec": Decoder(Z_DIM)}
    state, bound = {}, 1.0
    for net, module in nets.items():
        for name, p in module.named_parameters():
            if p.dim() == 2:  # a weight, and the bias after it
                bound = 1 / math.sqrt(p.shape[1])
            state[f"{net}.{name}"] = uniform(seed, f"{kind}:{net}.{name}", tuple(p.shape), -bound, bound)
    if kind == "gmvae":
        half, where = (1, K, Z_DIM), f"{kind}:z_pre"
        state["z_pre"] = torch.cat([normal(seed, where + ":m", half), normal(seed, where + ":v", half, 0.5)], 1)
    return state
