"""The run scripts' first look at the model's functions, before any data, training or file: a function that
is still a stub, or fails outright on two random images, is named in one line with the likely mistake.
"""
import torch

from codebase.check.calls import error_record, where
from codebase.check.mistakes import CAUSES, cause_of_error
from codebase.runtime.errors import UserError, first_line


class UnfinishedCode(UserError):
    """A function the run needs is not written yet, or fails at once; the message names it."""


def preflight(model, device, iwae):
    """Try the prior and the bounds of `model` (on `device`) on two random images, the importance-weighted
    bound too if `iwae`; raise UnfinishedCode if one fails. The prior goes first: the bounds build on it."""
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.bernoulli(torch.full((2, 784), 0.3, device=device), generator=generator)
    probes = [("the prior's log-density", lambda: model.log_prior(torch.zeros(2, model.z_dim, device=device))),
              ("negative_elbo_bound", lambda: model.negative_elbo_bound(x, generator=generator))]
    if iwae:
        probes.append(("negative_iwae_bound", lambda: model.negative_iwae_bound(x, 2, generator=generator)))
    for what, probe in probes:
        try:
            with torch.no_grad():
                probe()
        except NotImplementedError as e:
            if what == "negative_iwae_bound":
                raise UnfinishedCode("--iwae needs the importance-weighted bound of codebase/models/base.py "
                                     f"(not implemented yet: {e or what}): write it, or run without --iwae.") from None
            raise UnfinishedCode(f"not implemented yet: {e or what}. Write it, check it with "
                                 "python -m codebase.check, then run again.") from None
        except Exception as e:  # any failure of the student's code, before the run starts
            record = error_record(e)
            located = f", {where(record)}" if where(record) else ""
            cause = cause_of_error(record["message"], len(x), getattr(model, "k", 0), model.z_dim)
            likely = f" Likely cause: {CAUSES[cause]}." if cause else ""
            raise UnfinishedCode(f"{what} fails on two random images ({first_line(e)}{located}).{likely} "
                                 "Run python -m codebase.check to find the mistake.") from None
