"""The checks: the one list that the self-check and the grader read (it imports neither torch nor the code
under test). They run in this order, callees before callers; when the checks of the functions a check
builds on fail too, its FAIL line says to fix those first.
"""
from dataclasses import dataclass

from codebase.check.figures import MODEL_LABELS

ODD_BATCH = 97  # a batch size that a hard-coded 100 cannot survive
# The given functions of the student's two files: an error raised inside one comes from the student's call,
# and a FAIL line points at that call.
GIVEN_FUNCTIONS = ("sample_gaussian", "gaussian_parameters", "log_normal", "log_bernoulli_with_logits", "kl_normal",
                   "log_sum_exp", "log_mean_exp", "prior", "log_prior", "sample_z", "__init__")


@dataclass(frozen=True)
class Check:
    name: str  # what its PASS or FAIL line begins with
    key: str  # which probe, references and judge it uses (one per kind of check)
    function: str  # the function it tests, as the student knows it ("GMVAE.negative_elbo_bound")
    target: str  # that function's own name, to tell its NotImplementedError from a callee's
    kind: str = None  # the model ("gmvae" or "vae") of a check of a bound
    needs: tuple = ()  # the names of the checks of the functions it calls
    optional: bool = False  # of code the problem set does not ask for (the IWAE bound): unwritten, no failure


def _checks():
    far, mixture_far = "log_normal: far points, tiny variances", "log_normal_mixture: far points, tiny variances"
    checks = [Check(name, key, name.split(":")[0], name.split(":")[0], needs=needs) for name, key, needs in [
        ("log_normal", "log_normal", ()),
        (far, "log_normal_far", ()),
        ("log_sum_exp", "log_sum_exp", ()),
        ("log_mean_exp", "log_mean_exp", ("log_sum_exp",)),
        ("log_normal_mixture", "log_normal_mixture", ("log_normal", "log_mean_exp")),
        (mixture_far, "mixture_far", ("log_mean_exp", far)),
        ("sample_gaussian", "sample_gaussian", ()),
        ("kl_normal", "kl_normal", ()),
        ("gaussian_parameters", "gaussian_parameters", ()),
        ("log_bernoulli_with_logits", "log_bernoulli_with_logits", ())]]
    encode = ("gaussian_parameters", "sample_gaussian", "log_bernoulli_with_logits")
    for kind, label in MODEL_LABELS.items():
        elbo, iwae = f"{label}.negative_elbo_bound", f"{label}.negative_iwae_bound"
        prior = ("log_normal", "log_normal_mixture") if kind == "gmvae" else ("kl_normal",)
        iwae_prior = ("log_normal", "log_mean_exp") + (("log_normal_mixture",) if kind == "gmvae" else ())
        checks += [
            Check(elbo, "elbo", elbo, "negative_elbo_bound", kind, encode + prior),
            Check(f"{label}: odd batch of {ODD_BATCH}", "odd_batch", elbo, "negative_elbo_bound", kind, (elbo,)),
            Check(iwae, "iwae", iwae, "negative_iwae_bound", kind, encode + iwae_prior, optional=True),
            Check(f"{label}: IWAE-1 = NELBO on average", "iwae_one", iwae, "negative_iwae_bound", kind, (elbo, iwae),
                  optional=True),
            Check(f"{label}: IWAE falls with k (1, 10, 100)", "iwae_falls", iwae, "negative_iwae_bound", kind,
                  (iwae,), optional=True)]
    return checks


CHECKS = _checks()


def by_name(name):
    """The check called `name`; KeyError if there is none."""
    for c in CHECKS:
        if c.name == name:
            return c
    raise KeyError(f"no check is called {name!r}")


def checks_of(function):
    """The checks that test `function` (e.g. "GMVAE.negative_elbo_bound"), in order."""
    return [c for c in CHECKS if c.function == function]


def context_of(function):
    """The checks of the functions that `function` builds on, each once, in order."""
    own = {c.name for c in checks_of(function)}
    needed, todo = set(), [n for c in checks_of(function) for n in c.needs]
    while todo:
        name = todo.pop()
        if name not in needed and name not in own:
            needed.add(name)
            todo += list(by_name(name).needs)
    return [c for c in CHECKS if c.name in needed]
