"""The judge's tools: what the probe recorded against the expected values. A wrong value is matched
against the usual mistakes (mistakes.py); for any other, the FAIL says what is off, by how much and which way.
"""
import math

import torch

from codebase.check.calls import Raised, where
from codebase.check.inputs import F64
from codebase.check.mistakes import CAUSES, cause_of_error


class Failure(Exception):
    """A FAIL: the message (expected ..., got ...) and the likely cause."""

    def __init__(self, message, cause=None):
        super().__init__(message)
        self.message, self.cause = message, cause


def fail(expected, got, cause):
    """cause: a key of CAUSES, or the text itself."""
    raise Failure(f"expected {expected}, got {got}", CAUSES.get(cause, cause))


def fmt_num(x):
    x = float(x)  # inf and nan print as themselves either way
    return f"{x:.4e}" if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3) else f"{x:.4f}"


def type_of(value):
    """The type's name of a value the probe recorded (a tensor, or {"type": name})."""
    return str(value.get("type")) if isinstance(value, dict) else type(value).__name__


def items(value, n, expected, cause):
    """The n items of a tuple or list the probe recorded; a Failure if it recorded anything else."""
    found = value.get("items") if isinstance(value, dict) and value.get("type") in ("tuple", "list") else None
    if not isinstance(found, list) or len(found) != n:
        fail(expected, type_of(value) + (f" of {len(found)}" if isinstance(found, list) else ""), cause)
    return found


def take(found, key):
    """results[key] of a probe's record; if it is missing, the error that kept the probe from it."""
    results = found.get("results") if isinstance(found, dict) else None
    if isinstance(results, dict) and key in results:
        value = results[key]
        if isinstance(value, dict) and value.get("type") == "error" and "error" in value:
            raise Raised(value["error"])
        return value
    error = found.get("error") if isinstance(found, dict) else None
    raise Raised(error if isinstance(error, dict) else {"type": "missing", "message": f"no result for {key!r}"})


def which_mistake(mistakes, matches):
    """The key of the first usual mistake in {key of CAUSES: value} whose value `matches`, or None."""
    return next((key for key, value in mistakes.items() if matches(value)), None)


def off_by(got, want):
    """What is known of a mistake outside CAUSES: how far off the values are, and which way."""
    d = (got - want).flatten()
    d = d[torch.isfinite(d)]
    if not len(d):
        return None
    size = fmt_num(d.abs().max())
    if d.max() - d.min() <= 1e-6 * (1 + d.abs().max()):
        how = f"{'every value' if got.numel() > 1 else 'it'} is {size} too {'high' if d[0] > 0 else 'low'}"
    else:
        how = f"the values are off by up to {size}, {float((d > 0).double().mean()):.0%} of them too high"
    return f"not one of the usual mistakes: {how}"


def compare(got, what, want, mistakes=None, where="", rtol=1e-7, atol=1e-7, nonfinite=None, otherwise=None,
            match=(1e-3, 1e-3)):
    """Raise a Failure unless `got` equals the float64 reference `want`.

    what, where: the value and its inputs as the message names them, e.g. "log_normal(x, m, v)", "for x ..."
    mistakes: {key of CAUSES: value}, most specific first, recognised to within match = (rtol, atol), or
        {key: shape} for one that its shape alone names
    nonfinite, otherwise: keys of CAUSES for nan or inf where `want` is finite, and for any other difference
    """
    mistakes = mistakes or {}
    where = f" {where}" if where else ""
    if not isinstance(got, torch.Tensor):
        fail(f"{what} as a tensor of shape {tuple(want.shape)}{where}", type_of(got), "not a tensor")
    # Only a result of a shape that some value has is copied: a wrong shape may be huge.
    if got.shape in [want.shape] + [v.shape for v in mistakes.values() if not isinstance(v, tuple)]:
        got = got.detach().to(F64)
    cause = which_mistake(mistakes, lambda value: tuple(value) == tuple(got.shape) if isinstance(value, tuple) else
                          value.shape == got.shape and torch.isclose(got, value, *match).all())
    if got.shape != want.shape:
        fail(f"{what} of shape {tuple(want.shape)}{where}", f"shape {tuple(got.shape)}",
             cause or f"the result must have shape {tuple(want.shape)}")
    at = lambda i: str(list(i)) if i else ""
    bad = ~torch.isfinite(got) & torch.isfinite(want)
    if bad.any():
        i = tuple(bad.nonzero()[0].tolist())
        fail(f"a finite {what}{at(i)} = {fmt_num(want[i])}{where}", fmt_num(got[i]), cause or nonfinite or otherwise)
    if not torch.isclose(got, want, rtol, atol).all():
        i = torch.unravel_index((got - want).abs().nan_to_num(nan=math.inf).flatten().argmax(), got.shape)
        i = tuple(int(j) for j in i)
        where += f" (shape {tuple(want.shape)}; the largest error)" if i else ""
        fail(f"{what}{at(i)} = {fmt_num(want[i])}{where}", fmt_num(got[i]), cause or otherwise or off_by(got, want))


def judge_grads(value, record, spec):
    """The gradients of a value with respect to the inputs named in spec: they exist, are finite, and
    (if spec says so) are non-zero and match the compare() specs of spec["compare"]."""
    names = spec["names"]
    if not isinstance(record, dict) or not record.get("requires_grad"):
        fail(f"a result that gradients can flow through to {', '.join(names)}", "a detached result", "detached")
    grads = record.get("grads") or []
    for i, name in enumerate(names):
        g = grads[i] if i < len(grads) else None
        if not isinstance(g, torch.Tensor):
            fail(f"a gradient with respect to {name}", "none",
                 f"{name} does not reach the result through torch operations")
        # An expanded view of one zero claims billions of values, which isfinite or abs would make real.
        if g.layout != torch.strided or g.numel() * g.element_size() > g.untyped_storage().nbytes():
            fail(f"a gradient with respect to {name} as autograd returns it",
                 f"a view of shape {tuple(g.shape)} over {g.untyped_storage().nbytes():,} bytes",
                 "these results were not written by the self-check's probe")
        if not torch.isfinite(g).all():
            fail(f"finite gradients with respect to {name}", "nan or inf", spec["nonfinite"])
        if spec.get("nonzero") and not (g.abs() > 0).all():
            fail(f"a non-zero gradient with respect to every {name}", "zeros", spec["nonzero"])
        compared = spec.get("compare") or []
        if i < len(compared) and compared[i]:
            compare(g, **compared[i])


def judge_cases(check, found, expected):
    """A check made of comparisons, case by case. expected: {case: compare()'s arguments, or for a pair
    {"pair", "parts": one each}, or for "<case> grads" judge_grads's spec}; a spec may add on_error, the
    cause if the function raised on this case, and sizes, its (batch, k, dim) for cause_of_error."""
    for key, spec in expected.items():
        if isinstance(key, str) and key.endswith(" grads"):
            judge_grads(take(found, key.removesuffix(" grads")), take(found, key), spec)
            continue
        spec = dict(spec)
        on_error, sizes = spec.pop("on_error", None), spec.pop("sizes", (0, 0, 0))
        try:
            got = take(found, key)
        except Raised as e:
            cause = cause_of_error(e.record.get("message"), *sizes)
            if e.record.get("not_implemented") or not (cause or on_error):
                raise
            located = f" ({where(e.record)})" if where(e.record) else ""
            fail(f"{spec['what']} to run {spec['where']}", f"{e.record.get('message')}{located}", cause or on_error)
        if "parts" in spec:
            for part, part_spec in zip(items(got, 2, spec["pair"], "return the two halves m, v"), spec["parts"]):
                compare(part, **part_spec)
        else:
            compare(got, **spec)
