"""Evaluation on the course's fixed 100-image subset and on the full test split.

Every random draw comes from evaluation's own torch.Generator: a model gives the same figures
whether it was just trained or loaded from a checkpoint.
"""
import torch

from codebase import utils as ut
from codebase.data import EVAL_SUBSET

SUBSET_REPEATS = 100  # the subset's bound is averaged over this many evaluations
IWAE_KS = (1, 10, 100, 1000)
MAX_ROWS = 10_000  # rows per forward pass: bounds evaluation's memory
BINARIZE_SEED = 0  # the course binarises the evaluation images once, with seed 0


def binarize(gray, seed, device):
    """x: tensor: (n, 784): float32 in {0, 1}, drawn once from gray: tensor: (n, 784): uint8 gray levels."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(gray.float() / 255, generator=generator).to(device)


def eval_subset(test_x, device):
    """The course's 100 evaluation images, binarised as the course does: tensor: (100, 784)."""
    return binarize(test_x[list(EVAL_SUBSET)], BINARIZE_SEED, device)


def elbo_terms(model, x, generator):
    """(nelbo, kl, rec), tensor: (3,), averaged over x: tensor: (n, 784): binary images."""
    total = torch.zeros(3, dtype=torch.float64)
    for chunk in x.split(MAX_ROWS):
        total += torch.stack(model.negative_elbo_bound(chunk, generator=generator)).double().cpu() * len(chunk)
    return total / len(x)


def negative_iwae(model, x, iw, generator):
    """The negative IWAE-iw bound, float, averaged over x: tensor: (batch, 784): binary images."""
    per_chunk = max(MAX_ROWS // len(x), 1)
    log_w = torch.cat([model.log_importance_weights(x, min(per_chunk, iw - done), generator)[0]
                       for done in range(0, iw, per_chunk)])
    return -ut.log_mean_exp(log_w, dim=0).mean().item()


@torch.inference_mode()
def evaluate(model, test_x, device, iwae=False, seed=0):
    """Every figure the run scripts report.

    Args:
        model: GMVAE or VAE, on `device`
        test_x: tensor: (10000, 784): uint8 gray levels of the test split
        iwae: bool: also the IWAE bounds on the subset, each averaged over max(100 // k, 1) evaluations
        seed: int: seed of evaluation's own generator

    Returns:
        results: dict: nelbo, kl, rec and nelbo_sd (over the repeats) on the subset;
            test_nelbo, test_kl, test_rec on the full split; iwae: {k: -IWAE-k} if asked
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    subset = eval_subset(test_x, device)
    repeats = torch.stack([elbo_terms(model, subset, generator) for _ in range(SUBSET_REPEATS)])
    nelbo, kl, rec = repeats.mean(dim=0).tolist()
    results = {"nelbo": nelbo, "kl": kl, "rec": rec, "nelbo_sd": repeats[:, 0].std().item()}
    test_nelbo, test_kl, test_rec = elbo_terms(model, binarize(test_x, BINARIZE_SEED, device), generator).tolist()
    results.update(test_nelbo=test_nelbo, test_kl=test_kl, test_rec=test_rec)
    if iwae:
        times = {k: max(100 // k, 1) for k in IWAE_KS}
        results["iwae"] = {k: sum(negative_iwae(model, subset, k, generator) for _ in range(n)) / n
                           for k, n in times.items()}
    return results


@torch.inference_mode()
def sample_means(model, n, device, seed=0):
    """Bernoulli means of p(x|z) for n draws z ~ p(z): tensor: (n, 784)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return model.compute_sigmoid_given(model.sample_z(n, generator)).cpu()


@torch.inference_mode()
def sample_binary(model, n, device, seed=0):
    """x ~ p(x|z) for n draws z ~ p(z): tensor: (n, 784) in {0, 1}; with sample_means' seed, the same z."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return model.sample_x(n, generator).cpu()
