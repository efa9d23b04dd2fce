"""The checks of codebase/utils.py's functions: their inputs, their probes, and the judge of sample_gaussian
(the others are judged case by case: compare.judge_cases).
"""
import torch

from codebase.check import inputs as data
from codebase.check.calls import error_record, gen, input_grads, plain, student
from codebase.check.compare import compare, fail, judge_grads, take, type_of
from codebase.check.inputs import F64, Z_DIM, K
from codebase.check.registry import ODD_BATCH

# x and m, v (or q and p): per row, batched in two dimensions, and shared by the batch as the VAE's prior is
PAIRED_SHAPES = [((ODD_BATCH, 10), (ODD_BATCH, 10)), ((2, 7, 4), (2, 7, 4)), ((ODD_BATCH, 10), (10,))]
# (batch, k, dim, m's leading shape, v's): GMVAE.prior's shapes first, then every mix of per-row,
# shared and unbatched components
MIXTURE_CASES = [(ODD_BATCH, K, Z_DIM, (1,), (1,))] + [(13, 5, 3, a, b) for a, b in [
    ((13,), (13,)), ((), ()), ((13,), (1,)), ((1,), (13,)), ((), (1,)), ((13,), ())]]
REDUCTION_CASES = [((ODD_BATCH, 5), 1), ((5, ODD_BATCH), 0), ((3, 4, 5), 1)]
# {check's key: how many cases of inputs_of it calls the function on}
CASES = {"log_normal": len(PAIRED_SHAPES), "log_normal_far": 0, "log_sum_exp": len(REDUCTION_CASES),
         "log_mean_exp": len(REDUCTION_CASES), "log_normal_mixture": len(MIXTURE_CASES), "mixture_far": 0,
         "kl_normal": len(PAIRED_SHAPES), "gaussian_parameters": 3, "log_bernoulli_with_logits": 2}
# {check's key: the arguments of its case "far" (extreme values in float32) that gradients are taken for}
FAR_GRADS = {"log_normal_far": (0, 2), "log_sum_exp": (0,), "log_mean_exp": (0,), "mixture_far": (0,),
             "kl_normal": (), "log_bernoulli_with_logits": (1,)}
SAMPLE_DRAWS = 200_000
SAMPLE_M, SAMPLE_V = [1.0, -2.0, 0.5], [0.25, 4.0, 9.0]


def inputs_of(key, seed, i=0):
    """The arguments that the check `key` passes in its case i (0, 1, ... or "far"), made from the seed."""
    name = f"{key}:{i}"
    if i == "far":
        return _far(key, seed)
    if key == "log_normal":
        x_shape, p_shape = PAIRED_SHAPES[i]
        return (data.normal(seed, name + ":x", x_shape, 1.5), data.normal(seed, name + ":m", p_shape),
                data.variances(seed, name + ":v", p_shape))
    if key in ("log_sum_exp", "log_mean_exp"):
        shape, dim = REDUCTION_CASES[i]
        return data.normal(seed, name, shape, 5.0), dim
    if key == "log_normal_mixture":
        batch, k, dim, m_lead, v_lead = MIXTURE_CASES[i]
        return (data.normal(seed, name + ":z", (batch, dim), 2.0), data.normal(seed, name + ":m", (*m_lead, k, dim)),
                data.variances(seed, name + ":v", (*v_lead, k, dim)))
    if key == "kl_normal":
        q_shape, p_shape = PAIRED_SHAPES[i]
        return (data.normal(seed, name + ":qm", q_shape, 1.5), data.variances(seed, name + ":qv", q_shape),
                data.normal(seed, name + ":pm", p_shape), data.variances(seed, name + ":pv", p_shape))
    if key == "gaussian_parameters":
        return [(data.normal(seed, name, (ODD_BATCH, 2 * Z_DIM), 3.0), -1),
                (data.normal(seed, name, (1, 14, 4), 3.0), 1),
                (torch.tensor([[1e4, -1e4, 0.0, -200.0, 1e4, -1e4, 0.5, -200.0]]), -1)][i]
    if key == "log_bernoulli_with_logits":
        logits_shape = [(ODD_BATCH, 784), (3, ODD_BATCH, 784)][i]
        x = (data.uniform(seed, name + ":x", (ODD_BATCH, 784)) < 0.3).to(F64)
        return x, data.normal(seed, name + ":logits", logits_shape, 4.0)
    if key == "sample_gaussian":
        return (data.normal(seed, key + ":m", (ODD_BATCH, Z_DIM), dtype=torch.float32),
                data.uniform(seed, key + ":v", (ODD_BATCH, Z_DIM), 0.1, 1.1, torch.float32))
    raise KeyError(key)


def _far(key, seed):
    """The float32 arguments of the case "far": values whose densities or exponentials under- or overflow."""
    if key == "log_normal_far":  # 100 away with variance 1e-8: log-densities near -5e12
        return torch.full((3, 10), 100.0), torch.zeros(3, 10), torch.full((3, 10), 1e-8)
    if key in ("log_sum_exp", "log_mean_exp"):  # exp(1e4) overflows, and exp(-200) already underflows to 0
        return torch.tensor([[1e4, 1e4 - 1, -1e4], [-1e4, -1e4, -1e4 - 5], [-200.0, -199.0, -201.0]]), 1
    if key == "mixture_far":  # |z - m| up to 100 with variance 1e-8: every component's density is exp(-5e12) = 0
        return (data.uniform(seed, key + ":z", (ODD_BATCH, Z_DIM), -100, 100, torch.float32),
                data.normal(seed, key + ":m", (1, K, Z_DIM), 0.1, torch.float32), torch.full((1, K, Z_DIM), 1e-8))
    if key == "kl_normal":  # a far, narrow q against N(0, 1): large but finite
        return torch.full((3, 10), 100.0), torch.full((3, 10), 1e-8), torch.zeros(10), torch.ones(10)
    if key == "log_bernoulli_with_logits":  # logits of +-1e4 and +-100, each against x = 0 and x = 1
        x = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]]).expand(2, 8)
        return x, torch.tensor([[1e4, 1e4, -1e4, -1e4, 100.0, 100.0, -100.0, -100.0]]).repeat(2, 1)
    raise KeyError(key)


def probe_function(check, seed, results):
    """The function's value (or error) on each case, then its value and gradients on the case "far"."""
    fn = getattr(student("utils"), check.target)
    for i in range(CASES[check.key]):
        try:
            results[i] = plain(fn(*inputs_of(check.key, seed, i)))
        except NotImplementedError:  # a RuntimeError too, but the function is not written: no case can run
            raise
        except (RuntimeError, IndexError, ValueError) as e:  # e.g. a shape of m and v that it does not take
            results[i] = {"type": "error", "error": error_record(e)}
    if check.key in FAR_GRADS:
        args = inputs_of(check.key, seed, "far")
        wrt = [args[j].requires_grad_() for j in FAR_GRADS[check.key]]
        got = fn(*args)
        results["far"] = plain(got)
        if wrt:
            results["far grads"] = input_grads(got, wrt)


def probe_sample_gaussian(check, seed, results):
    ut, n = student("utils"), SAMPLE_DRAWS
    m, v = torch.tensor(SAMPLE_M), torch.tensor(SAMPLE_V)
    results["draws"] = plain(ut.sample_gaussian(m.expand(n, 3), v.expand(n, 3),
                                                gen(data.generator_seed(seed, "sample_gaussian"))))
    # The IWAE bound's case, m and v expanded to (iw, batch, dim), drawn twice from generators seeded alike.
    m, v = (t.requires_grad_() for t in inputs_of("sample_gaussian", seed))
    shape, again = (3, ODD_BATCH, Z_DIM), data.generator_seed(seed, "sample_gaussian:again")
    a, b = (ut.sample_gaussian(m.expand(shape), v.expand(shape), gen(again)) for _ in range(2))
    results["expanded"], results["again"] = plain(a), plain(b)
    results["expanded grads"] = input_grads(a, (m, v))


def judge_sample_gaussian(check, found, expected):
    n, shape = expected["n"], tuple(expected["expanded shape"])
    z = take(found, "draws")
    if not isinstance(z, torch.Tensor) or z.shape != (n, 3):
        got = f"shape {tuple(z.shape)}" if isinstance(z, torch.Tensor) else type_of(z)
        fail(f"samples of shape ({n}, 3)", got, "sample_gaussian: shape")
    if z.dtype != torch.float32:
        fail("float32 samples for float32 m and v", str(z.dtype), "sample_gaussian: dtype")
    compare(z.double().var(0), **expected["variance"])
    compare(z.double().mean(0), **expected["mean"])
    a, b = take(found, "expanded"), take(found, "again")
    if not isinstance(a, torch.Tensor) or a.shape != shape:
        fail(f"samples of shape {shape} for m and v of that shape",
             f"shape {tuple(a.shape)}" if isinstance(a, torch.Tensor) else type_of(a), "sample_gaussian: samples shape")
    if not isinstance(b, torch.Tensor) or not torch.equal(a, b):
        fail("the same draw from two generators seeded alike", "different draws", "sample_gaussian: generator")
    record = take(found, "expanded grads")
    judge_grads(a, record, {"names": ["m", "v"], "nonfinite": "sample_gaussian: gradient nan"})
    gm, gv = record["grads"][:2]
    if not (gm == shape[0]).all() or not (gv != 0).all():
        fail("gradients that reach m and v (reparameterisation)", "zero or wrong gradients",
             "sample_gaussian: not reparameterised")


# {check's key: its probe, or its judge if it has one of its own}
PROBES = {**dict.fromkeys(CASES, probe_function), "sample_gaussian": probe_sample_gaussian}
JUDGES = {"sample_gaussian": judge_sample_gaussian}
