"""The usual mistakes that the self-check names: {key: the FAIL line's "likely cause"}; a cause with {what}
names the term it was found in (nelbo, kl, rec or niwae). The model answer's tests make every one of them.
"""
import re

HARD_CODED_100 = ("a batch size of 100 is hard-coded (e.g. .view(100, ...), .reshape(iw, 100) or / 100): "
                  "use x.size(0), -1 or .mean() instead")


def _sums(fn):
    """The causes of the four ways a sum over the last (feature) dimension goes wrong in `fn`."""
    return {f"{fn}: mean over dim": "averaged over the last dimension where summing was due",
            f"{fn}: not summed": "not summed over the last (feature) dimension",
            f"{fn}: summed over batch": "summed over the batch too: sum over the last (feature) dimension only",
            f"{fn}: mean over batch": "averaged over the batch: return one value per row"}


def _reductions(fn):
    return {f"{fn}: only the max": "returns only the max: add log(sum(exp(x - max))) to it",
            f"{fn}: keepdim": "keeps the reduced dimension: squeeze it (keepdim=False)",
            f"{fn}: mean of x": "returns mean(x), not log(mean(exp(x)))",
            f"{fn}: gradient nan": "the max shift makes inf - inf or 0 / 0 somewhere: detach the shift, and check "
                                   "rows whose entries are all very negative",
            f"{fn}: gradient cut": "the value is right but its gradient is not softmax(x): more than the max shift "
                                   "is cut from the graph (.detach(), .data or .item())"}


CAUSES = {
    "not a tensor": "return a torch tensor (no .item(), numpy or python numbers)",
    "detached": ".detach(), .item(), numpy or torch.tensor(...) cut the graph: use torch operations only",
    "log_normal: v as sd": "the variance v is used as a standard deviation: v is sigma^2 already, so divide "
                           "(x - m)^2 by v and add log v (not v^2, 2 log v)",
    "log_normal: sqrt(v) as variance": "sqrt(v) is used as the variance: v is the variance itself",
    "log_normal: no log 2pi": "the constant -1/2 log(2 pi) is missing (it counts once per dimension)",
    "log_normal: log 2pi once": "-1/2 log(2 pi) is added once, not once per dimension",
    "log_normal: no log v": "the -1/2 log v term is missing",
    "log_normal: no 1/2": "the factor 1/2 is missing: -1/2 (log(2 pi) + log v + (x - m)^2 / v)",
    "log_normal: sign": "the sign is reversed: this is -log N(x; m, v)",
    "log_normal: summed over dim 0": "summed over the first (batch) dimension instead of the last",
    **_sums("log_normal"),
    "log_normal: density first": "the density is computed first and its log taken after: exp(-(x - m)^2 / 2v) "
                                 "underflows to 0 far from m; write the log-density directly",
    "log_normal: gradient": "the formula divides by an exp or a density that underflows: stay in log space",
    "log_mean_exp: no log n": "returns log-sum-exp: subtract log n, the log of x.size(dim)",
    "log_mean_exp: log n twice": "subtracts log n twice",
    "log_mean_exp: log numel": "subtracts log of x.numel(): use log(x.size(dim))",
    "log_mean_exp: wrong size": "subtracts the log of the wrong size: use log(x.size(dim))",
    "log_mean_exp: naive": "a naive log(mean(exp(x))): exp underflows to 0 for very negative x (log 0 = -inf) and "
                           "overflows for large x (inf or nan); shift by the max first, e.g. log_sum_exp(x, dim) "
                           "- log n",
    **_reductions("log_mean_exp"),
    "log_sum_exp: minus log n": "returns log-mean-exp: log_sum_exp must not subtract log n",
    "log_sum_exp: naive": "computed as log(sum(exp(x))) without subtracting the max first: exp overflows to inf for "
                          "large x and underflows to 0 (log 0 = -inf) for very negative x; shift by x.max(dim) first",
    **_reductions("log_sum_exp"),
    "mixture: no log k": "the uniform weights 1/k are missing: log_sum_exp over the k components where "
                         "log_mean_exp was due (the value is off by exactly log k)",
    "mixture: log k twice": "log k is subtracted twice",
    "mixture: v as sd": "the variance v is used as a standard deviation (here or in log_normal)",
    "mixture: mean of logs": "the components' log-densities are averaged (a mean of logs) where log_mean_exp over "
                             "them (the log of the mean density) was due",
    "mixture: max": "takes the max over the components where log_mean_exp was due",
    "mixture: not reduced": "not reduced over the k components: log_mean_exp(..., dim=1)",
    "mixture: over batch": "reduced over the batch (dim 0) instead of the components",
    "mixture: summed over batch": "summed over the batch: return one value per row",
    "mixture: mean over batch": "averaged over the batch: return one value per row",
    "mixture: shapes": "m and v may each be (batch, k, dim), (1, k, dim) or (k, dim): let broadcasting pair "
                       "them with z.unsqueeze(1) instead of assuming one shape",
    "mixture: first row": "m[0] or v[0] keeps the components of the first row only: this function is called with m "
                          "and v of shape (batch, k, dim), (1, k, dim) or (k, dim), so let broadcasting pair "
                          "them with z.unsqueeze(1)",
    "mixture: broadcast": "z, m and v do not broadcast: z must be (batch, 1, dim), z.unsqueeze(1), against m and v "
                          "of (1, k, dim) or (batch, k, dim), for log-densities of shape (batch, k)",
    "mixture: unsqueeze": "z is (batch, dim) and the components are (., k, dim): z.unsqueeze(1), of shape "
                          "(batch, 1, dim), lines each z up with all k components",
    "mixture: underflow": "every component's density underflows to 0 far away, so log(mean(exp(.))) gives -inf: "
                          "use log_mean_exp over the component log-densities (it shifts by the max)",
    "mixture: gradient nan": "the gradient through the log-mean-exp is not finite: shift by the max (detached) so "
                             "no exp underflows to 0 / 0",
    "mixture: flat gradient": "the log-density is flat far away: an underflowed exp or a clamp stops the gradient",
    "sample_gaussian: shape": "return z of the shape of m: m + v.sqrt() * eps with eps of m.shape",
    "sample_gaussian: dtype": "draw eps with dtype=m.dtype",
    "sample_gaussian: v as sd": "the variance v is used as a standard deviation: z = m + v.sqrt() * eps, "
                                "not m + v * eps",
    "sample_gaussian: v ** 0.25": "eps is scaled by v ** 0.25: z = m + v.sqrt() * eps",
    "sample_gaussian: not scaled": "eps is not scaled by v.sqrt()",
    "sample_gaussian: no mean": "the mean m is not added: z = m + v.sqrt() * eps",
    "sample_gaussian: generator": "the generator= argument is ignored: pass generator=generator to torch.randn",
    "sample_gaussian: samples shape": "draw eps of m.shape, whatever its number of dimensions",
    "sample_gaussian: gradient nan": "v.sqrt() of a non-positive variance",
    "sample_gaussian: not reparameterised": "the draw is not reparameterised (torch.normal or .sample() cut the "
                                            "gradient): compute m + v.sqrt() * eps with eps = torch.randn(...)",
    "kl_normal: sign": "the sign is reversed: KL(q || p) is never negative",
    "kl_normal: swapped": "q and p are swapped: this is KL(p || q)",
    "kl_normal: v as sd": "the variances are used as standard deviations: qv and pv are sigma^2 already "
                          "(no squaring)",
    "kl_normal: no 1/2": "the factor 1/2 is missing",
    "kl_normal: no -1": "the -1 inside the bracket is missing (it is -1/2 per dimension)",
    **_sums("kl_normal"),
    "kl_normal: overflow": "a ratio of densities or an exp that under/overflows: use the closed form in log space",
    "gaussian_parameters: swapped": "m and v are swapped: m is the first half along dim, v comes from the second",
    "gaussian_parameters: interleaved": "the halves are taken as alternate entries: split into the first and the "
                                        "second half (torch.split or torch.chunk along dim)",
    "gaussian_parameters: ignores dim": "split along the last dimension whatever dim is: split along dim",
    "gaussian_parameters: exp": "v = exp(h): the variance is softplus(h) + 1e-8",
    "gaussian_parameters: no softplus": "v is the raw second half, which can be negative: softplus(h) + 1e-8",
    "gaussian_parameters: no floor": "the floor 1e-8 is missing: softplus underflows to 0 for very negative h, "
                                     "and then log v = -inf",
    "gaussian_parameters: overflow": "softplus written as log(1 + exp(h)) overflows to inf for large h: use "
                                     "F.softplus, which is linear there",
    "log_bernoulli_with_logits: sign": "the sign is reversed: this is -log p(x)",
    "log_bernoulli_with_logits: 0 and 1 swapped": "the probability of x = 1 is sigmoid(logits), not "
                                                  "1 - sigmoid(logits)",
    **_sums("log_bernoulli_with_logits"),
    "log_bernoulli_with_logits: logits as probabilities": "the logits are used as probabilities: they are "
                                                          "log(p / (1 - p)), any real number",
    "log_bernoulli_with_logits: log of sigmoid": "log(sigmoid(logits)) or log(1 - sigmoid(logits)) underflows "
                                                 "to log 0 = -inf for large logits: use a form that stays in log "
                                                 "space (F.logsigmoid, F.softplus or "
                                                 "F.binary_cross_entropy_with_logits)",
    "log_bernoulli_with_logits: gradient nan": "the value is finite but its gradient is not: torch.where computes "
                                               "both branches, and the branch not taken overflows for large "
                                               "logits; use a form that is finite for every logit",
    "bound: three values": "return three tensors, in the docstring's order",
    "bound: per-image": "per-image values: average over the batch with .mean()",
    "bound: not 0-dim": "reduce it to a 0-dim tensor with .mean() (no keepdim, no [None])",
    "bound: not a tensor": "keep it a tensor (no .item() or float()) so that it can be backpropagated",
    "bound: not finite": "an underflow in a log-density or a log-mean-exp: check the functions of codebase/utils.py "
                         "above",
    "bound: summed over batch": "{what} is summed over the batch where averaging was due: use .mean() over the "
                                "images",
    "bound: divided twice": "{what} is divided by the batch size twice (a .mean() and a / batch)",
    "bound: divided by 100": "{what} is divided by 100: " + HARD_CODED_100,
    "bound: hard-coded 100": HARD_CODED_100,
    "bound: encoder cut": "no gradient reaches the encoder: m, v or z is cut from the graph (.detach(), .data, "
                          "torch.no_grad() or .item()), so training cannot fit q(z|x)",
    "bound: decoder cut": "no gradient reaches the decoder: the reconstruction term is cut from the graph "
                          "(.detach(), .data, torch.no_grad() or .item())",
    "bound: z detached": "z is cut from the graph (a detached draw or torch.normal): the gradient must flow "
                         "through z = m + sqrt(v) * eps, as sample_gaussian draws it (reparameterisation)",
    "GMVAE: prior cut": "no gradient reaches the prior's parameters z_pre: self.prior() or log p(z) is cut from "
                        "the graph (.detach(), .data or torch.no_grad()), so training cannot learn the mixture",
    "GMVAE: z_pre": "the prior's parameters were renamed or reshaped (the check needs z_pre)",
    "GMVAE: prior split": "the prior's means and variances have the wrong shape: self.z_pre is (1, 2k, dim), so its "
                          "halves are split along dim=1, as self.prior() does (gaussian_parameters(self.z_pre, "
                          "dim=1)), not along the last dimension",
    "GMVAE: raw prior variances": "the prior's variances are negative: the second half of self.z_pre is taken as "
                                  "it is, and log v of a negative v is nan; take the prior from self.prior(), whose "
                                  "gaussian_parameters makes the variances positive (softplus)",
    "elbo: kl - rec": "nelbo = kl + rec, with rec = -log p(x|z) already positive",
    "elbo: rec - kl": "nelbo = kl + rec: the KL is subtracted",
    "elbo: nelbo not the sum": "the first value returned must be kl + rec, the sum of the other two",
    "elbo: nelbo sign": "the sign is reversed: nelbo is the negative ELBO, kl + rec",
    "elbo: rec sign": "rec has the wrong sign: rec = -log p(x|z), a positive number of nats",
    "elbo: rec per pixel": "log p(x|z) is averaged over the 784 pixels where summing was due",
    "elbo: decodes the mean": "rec decodes the mean m: decode the sample z ~ q(z|x)",
    "VAE: kl sign": "the KL's sign is reversed: kl = kl_normal(m, v, z_prior_m, z_prior_v) = KL(q || p) >= 0",
    "VAE: kl swapped": "q and p are swapped: kl_normal(m, v, z_prior_m, z_prior_v) is KL(q || p)",
    "VAE: kl by one sample": "kl is a one-sample estimate log q(z|x) - log p(z): the VAE's KL has a closed form, "
                             "kl_normal(m, v, z_prior_m, z_prior_v)",
    "bound: z with v as sd": "z is drawn as m + v * eps: v is the variance, so z = m + v.sqrt() * eps, as "
                             "ut.sample_gaussian(m, v) draws it",
    "GMVAE: log q with v as sd": "log q(z|x) takes v as a standard deviation (Normal(m, v)): v is the variance: "
                                 "ut.log_normal(z, m, v), or Normal(m, v.sqrt())",
    "GMVAE: kl sign": "the KL's sign is reversed: kl = log q(z|x) - log p(z), not log p(z) - log q(z|x)",
    "GMVAE: log k": "log p(z) is off by log k: the mixture's uniform weights are missing (see log_normal_mixture)",
    "GMVAE: standard normal prior": "p(z) is a standard normal here: the GMVAE's prior is the mixture, "
                                    "log_normal_mixture(z, *self.prior())",
    "iwae: log_sum_exp": "log_sum_exp over the samples where log_mean_exp was due (off by log iw)",
    "iwae: averaged": "log w is averaged over the samples (that is the ELBO): take log_mean_exp over the samples' "
                      "dimension (dim 0), then average over the batch",
    "iwae: over the batch": "log_mean_exp runs over the batch (dim 1) where the samples (dim 0) were due",
    "iwae: adds the kl": "log w adds the KL: log w = log p(x|z) + log p(z) - log q(z|x)",
    "iwae: leaves out the kl": "log w leaves out log p(z) - log q(z|x)",
    "iwae: sign": "the sign is reversed: negative_iwae_bound returns -IWAE, a positive number of nats",
    "iwae: kl sign": "kl's sign is reversed: kl = log q(z|x) - log p(z)",
    "iwae: rec sign": "rec has the wrong sign: rec = -log p(x|z)",
    "iwae-1: nelbo's kl sign": "the NELBO's KL has the wrong sign (see negative_elbo_bound)",
    "iwae-1: iwae summed": "the IWAE bound sums over the batch where averaging was due",
    "iwae-1: nelbo summed": "the NELBO sums over the batch where averaging was due",
    "iwae-1: differ": "IWAE-1 and the NELBO differ on the same draws of z: one of the two bounds is wrong (see "
                      "their checks)",
    "iwae falls: underflow": "an underflow in the log-mean-exp over the samples: use log_mean_exp",
    "iwae falls: flat": "the bound does not depend on k: log w is averaged over the samples (that is the ELBO for "
                        "every k) or log_mean_exp runs over the batch; take log_mean_exp(log_w, dim=0) over the k "
                        "samples",
    "iwae falls: not falling": "the bound must fall as k grows: check that log w has shape (iw, batch) with each z "
                               "paired with its own image, and that log_mean_exp reduces the samples",
}


def cause_of_error(message, batch, k, dim):
    """The key of CAUSES behind the error (its first line) of a call with `batch` images, k mixture
    components and latent dimension `dim`, or None."""
    sizes = re.search(r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\)", message or "")
    if not sizes:
        return None
    found = {int(sizes.group(1)), int(sizes.group(2))}
    if found == {batch, k}:
        return "mixture: unsqueeze"
    if found == {dim, k}:
        return "mixture: broadcast"
    if found == {dim, dim // 2}:
        return "GMVAE: prior split"
    return None
