"""The judge: compare what the probe recorded with the expected values, and name the likely mistake.

It never runs the code under test: it reads the probe's results (tensors and plain data) and the
expected values (computed by the course's references, or stored in expected.pt), and gives each check
its PASS or FAIL line. A wrong value is matched against the usual mistakes (mistakes.py); for any
other mistake the FAIL line says what is off, by how much and which way.
"""
import math
from typing import NamedTuple

import torch

from codebase.check.inputs import F64, Z_DIM, K
from codebase.check.mistakes import CAUSES, cause_of_error
from codebase.check.probe import ELBO_REPEATS, IWAE_REPEATS, PAIRED_DRAWS, where
from codebase.check.registry import registrar

JUDGES = {}  # {check's key: its judge}; a check without one is judged case by case (judge_cases)
judges = registrar(JUDGES)

GRAD_RTOL = 1e-3  # float32 against float64 gradients differ by about 1e-5 of their size


class Failure(Exception):
    """A FAIL: the message (expected ..., got ...) and the likely cause. first: it comes before what the
    check tests (an import), so failing callees are no likelier a cause."""

    def __init__(self, message, cause=None, first=False):
        super().__init__(message)
        self.message, self.cause, self.first = message, cause, first


class Raised(Exception):
    """The code under test raised where the judge needs its result: record is the probe's error record
    (a dict; anything else, from a forged results file, becomes one that says so)."""

    def __init__(self, record):
        if not isinstance(record, dict):
            record = {"type": "unreadable", "message": "its error cannot be read"}
        super().__init__(str(record))
        self.record = record


class Verdict(NamedTuple):
    name: str
    passed: bool
    line: str  # `PASS  <name>`, `FAIL  <name>: ...` or, for an optional check not written yet, `----  <name>: ...`
    optional: bool = False  # an optional check whose code is not written yet: not counted as a failure


def fail(expected, got, cause):
    """cause: a key of CAUSES, or the text itself."""
    raise Failure(f"expected {expected}, got {got}", CAUSES.get(cause, cause))


def fmt_num(x):
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.4e}" if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3) else f"{x:.4f}"


def fmt_shape(t):
    return f"({', '.join(map(str, t.shape))}{',' if t.dim() == 1 else ''})"


def type_of(value):
    """The type's name of a value the probe recorded (a tensor, or {"type": name})."""
    if isinstance(value, torch.Tensor):
        return "Tensor"
    return str(value.get("type")) if isinstance(value, dict) else type(value).__name__


def items(value):
    """The items of a tuple or list the probe recorded, or None if it was none."""
    if isinstance(value, dict) and value.get("type") in ("tuple", "list") and isinstance(value.get("items"), list):
        return value["items"]
    return None


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


def _off(got, want):
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
            match=(1e-3, 1e-3), on_error=None, sizes=None):
    """Raise a Failure unless `got` equals the float64 reference `want`.

    what, where: the value and its inputs as the message names them, e.g. "log_normal(x, m, v)", "for x ..."
    mistakes: {key of CAUSES: value}, most specific first, recognised to within match = (rtol, atol), or
        {key: shape} for one that its shape alone names
    nonfinite, otherwise: keys of CAUSES for nan or inf where `want` is finite, and for any other difference
    on_error, sizes: unused here (judge_cases takes them: the cause when the function raised on this case,
        and the case's (batch, k, dim) for cause_of_error)
    """
    mistakes = mistakes or {}
    where = f" {where}" if where else ""
    if not isinstance(got, torch.Tensor):
        fail(f"{what} as a tensor of shape {fmt_shape(want)}{where}", type_of(got), "not a tensor")
    shaped_alike = [v for v in mistakes.values() if not isinstance(v, tuple) and v.shape == got.shape]
    if got.shape != want.shape and not shaped_alike:  # before any copy: a shape may be huge
        cause = which_mistake(mistakes, lambda value: isinstance(value, tuple) and tuple(value) == tuple(got.shape))
        fail(f"{what} of shape {fmt_shape(want)}{where}", f"shape {fmt_shape(got)}",
             cause or f"the result must have shape {fmt_shape(want)}")
    got = got.detach().to(F64)
    cause = which_mistake(mistakes, lambda value: tuple(value) == tuple(got.shape) if isinstance(value, tuple) else
                          value.shape == got.shape and torch.isclose(got, value, *match).all())
    if got.shape != want.shape:
        fail(f"{what} of shape {fmt_shape(want)}{where}", f"shape {fmt_shape(got)}",
             cause or f"the result must have shape {fmt_shape(want)}")
    at = lambda i: f"[{', '.join(map(str, i))}]" if i else ""
    bad = ~torch.isfinite(got) & torch.isfinite(want)
    if bad.any():
        i = tuple(bad.nonzero()[0].tolist())
        fail(f"a finite {what}{at(i)} = {fmt_num(want[i])}{where}", fmt_num(got[i]), cause or nonfinite or otherwise)
    if not torch.isclose(got, want, rtol, atol).all():
        i = torch.unravel_index((got - want).abs().nan_to_num(nan=math.inf).flatten().argmax(), got.shape)
        i = tuple(int(j) for j in i)
        where += f" (shape {fmt_shape(want)}; the largest error)" if i else ""
        fail(f"{what}{at(i)} = {fmt_num(want[i])}{where}", fmt_num(got[i]), cause or otherwise or _off(got, want))


def judge_grads(value, record, spec):
    """The gradients of a value with respect to the inputs: they exist, are finite, and match if asked."""
    names = spec["names"]
    if not isinstance(record, dict) or not record.get("requires_grad"):
        fail(f"a result that gradients can flow through to {', '.join(names)}", "a detached result", "detached")
    grads = record.get("grads") or []
    for i, name in enumerate(names):
        g = grads[i] if i < len(grads) else None
        if not isinstance(g, torch.Tensor):
            fail(f"a gradient with respect to {name}", "none",
                 f"{name} does not reach the result through torch operations")
        if not torch.isfinite(g).all():
            fail(f"finite gradients with respect to {name}", "nan or inf", spec["nonfinite"])
        if spec.get("nonzero") and not (g.abs() > 0).all():
            fail(f"a non-zero gradient with respect to every {name}", "zeros", spec["nonzero"])
        compared = spec.get("compare") or []
        if i < len(compared) and compared[i]:
            compare(g, **compared[i])


def judge_cases(check, found, expected):
    """A check made of comparisons, case by case in the references' order."""
    for key, spec in expected.items():
        if isinstance(key, str) and key.endswith(" grads"):
            judge_grads(take(found, key.removesuffix(" grads")), take(found, key), spec)
            continue
        try:
            got = take(found, key)
        except Raised as e:
            cause = cause_of_error(e.record.get("message"), *spec.get("sizes", (0, 0, 0)))
            if e.record.get("not_implemented") or not (cause or spec.get("on_error")):
                raise
            located = f" ({where(e.record)})" if where(e.record) else ""
            fail(f"{spec['what']} to run {spec['where']}", f"{e.record.get('message')}{located}",
                 cause or spec["on_error"])
        if "parts" in spec:
            pair = items(got)
            if pair is None or len(pair) != 2:
                fail(spec["pair"], type_of(got) + (f" of {len(pair)}" if pair is not None else ""),
                     "return the two halves m, v")
            for part, part_spec in zip(pair, spec["parts"]):
                compare(part, **part_spec)
        else:
            compare(got, **spec)


@judges("sample_gaussian")
def judge_sample_gaussian(check, found, expected):
    n, shape = expected["n"], tuple(expected["expanded shape"])
    z = take(found, "draws")
    if not isinstance(z, torch.Tensor) or z.shape != (n, 3):
        got = f"shape {fmt_shape(z)}" if isinstance(z, torch.Tensor) else type_of(z)
        fail(f"samples of shape ({n}, 3)", got, "sample_gaussian: shape")
    if z.dtype != torch.float32:
        fail("float32 samples for float32 m and v", str(z.dtype), "sample_gaussian: dtype")
    compare(z.double().var(0), **expected["variance"])
    compare(z.double().mean(0), **expected["mean"])
    a, b = take(found, "expanded"), take(found, "again")
    if not isinstance(a, torch.Tensor) or a.shape != shape:
        fail(f"samples of shape {shape} for m and v of that shape",
             f"shape {fmt_shape(a)}" if isinstance(a, torch.Tensor) else type_of(a), "sample_gaussian: samples shape")
    if not isinstance(b, torch.Tensor) or not torch.equal(a, b):
        fail("the same draw from two generators seeded alike", "different draws", "sample_gaussian: generator")
    record = take(found, "expanded grads")
    judge_grads(a, record, {"names": ["m", "v"], "nonfinite": "sample_gaussian: gradient nan"})
    gm, gv = record["grads"][:2]
    if not (gm == shape[0]).all() or not (gv != 0).all():
        fail("gradients that reach m and v (reparameterisation)", "zero or wrong gradients",
             "sample_gaussian: not reparameterised")


# ---------------------------------------------------------------------------------------------
# The bounds
# ---------------------------------------------------------------------------------------------

def scalars(out, names, finite=True):
    """A bound's three results as {name: float64 0-dim tensor}; a Failure unless 0-dim (finite) tensors."""
    values = items(out)
    if values is None or len(values) != 3:
        fail(f"the bound to return three tensors ({', '.join(names)})",
             type_of(out) + (f" of {len(values)}" if values is not None else ""), "bound: three values")
    for name, t in zip(names, values):
        if not isinstance(t, torch.Tensor):
            fail(f"{name} as a 0-dim tensor", type_of(t), "bound: not a tensor")
        if t.shape != ():
            fail(f"{name} as a scalar of shape ()", f"shape {fmt_shape(t)}",
                 "bound: per-image" if t.dim() == 1 and t.numel() > 1 else "bound: not 0-dim")
        if finite and not torch.isfinite(t):
            fail(f"a finite {name}", fmt_num(t), "bound: not finite")
    return {name: t.detach().to(F64) for name, t in zip(names, values)}


def _stack(draws):
    """[{name: 0-dim tensor, or a dict of them}], one a draw, as {name: tensor: (draws,)}, nested alike."""
    return {n: _stack([d[n] for d in draws]) if isinstance(value, dict) else torch.stack([d[n] for d in draws])
            for n, value in draws[0].items()}


def _within(diffs, slack=2e-3):
    """Whether differences of draws paired by seed are zero on average, up to their own spread: 6 standard
    errors (a correct bound, with 16 draws' t of 15 degrees of freedom, is outside them once in 40,000)."""
    return bool(diffs.mean().abs() <= 6 * diffs.std() / math.sqrt(len(diffs)) + slack)


@judges("elbo", "iwae", "odd_batch")
def judge_bound(check, found, expected):
    """A bound's values on the shared draw of z, then their gradients. Values off there are compared
    over more draws paired by seed (_paired), in case the bound draws z in another order."""
    if "error at 97" in found.get("results", {}):
        results = found["results"]
        error = Raised(results["error at 97"]).record
        if results.get("runs at 100") is True:
            fail(f"{expected['label']}.{check.target} to run with a batch of {expected['batch']} (it does with 100)",
                 error.get("message"), "bound: hard-coded 100")
        raise Raised(error)
    names = tuple(expected["terms"])
    draw = take(found, "draw")
    if found["results"].get("finite with positive z_pre") is True:
        fail(f"a finite {names[0]}", "nan or inf (and finite values once the prior's pre-softplus variances are "
                                     "made positive)", "GMVAE: raw prior variances")
    got = scalars(draw, names)
    if check.key == "elbo" or check.key == "odd_batch":
        total = got["kl"] + got["rec"]
        compare(got["nelbo"], f"nelbo = kl + rec = {fmt_num(total)}", total, {
            "elbo: kl - rec": got["kl"] - got["rec"], "elbo: rec - kl": got["rec"] - got["kl"],
            "elbo: nelbo sign": -total}, rtol=1e-5, atol=1e-4, otherwise="elbo: nelbo not the sum")
    want = {n: v[0] for n, v in expected["want"].items()}
    mistakes = {n: {k: v[0] for k, v in ms.items()} for n, ms in expected["mistakes"].items()}
    off = [n for n in got if not torch.isclose(got[n], want[n], rtol=1e-5, atol=1e-3)]
    for n in off:
        # float32 against float64 differs by about 1e-4 here; the usual mistakes by 0.1 or more.
        key = which_mistake(mistakes[n], lambda value, n=n: abs(got[n] - value) <= 3e-3)
        if key:
            fail(f"{n} = {fmt_num(want[n])}", fmt_num(got[n]), CAUSES[key].format(what=n))
    if off:
        _paired(found, expected, names)
    _gradients(found, expected, same_draw=not off)


def _paired(found, expected, names):
    """Values off on the shared draw of z, compared over draws paired by seed: a bound that draws z in
    another order passes, and a steady bias fails even when small, as the differences barely vary."""
    paired = take(found, "paired")
    if not isinstance(paired, list) or len(paired) != PAIRED_DRAWS:
        raise Raised({"type": "missing", "message": "the paired draws are missing"})
    mine = _stack([scalars(out, names) for out in paired])
    want = {n: v[1:] for n, v in expected["want"].items()}
    mistakes = {n: {k: v[1:] for k, v in ms.items()} for n, ms in expected["mistakes"].items()}
    off = {}
    for n, values in mine.items():
        if _within(values - want[n]):
            continue
        said = f"{n} about {fmt_num(want[n].mean())} (the mean of {PAIRED_DRAWS} draws of z, paired by seed)"
        key = which_mistake(mistakes[n], lambda value, values=values: _within(values - value))
        if key:
            fail(said, fmt_num(values.mean()), CAUSES[key].format(what=n))
        off[n] = said
    if off:
        # The total follows from its terms: name the terms that are off, or else the total.
        shown = [n for n in off if n != names[0]] or list(off)
        diffs = {n: mine[n] - want[n] for n in shown}
        said = [f"{n} is {abs(float(d.mean())):.3f} nats too {'high' if d.mean() > 0 else 'low'} "
                f"(+-{float(d.std()):.3f} across the draws)" for n, d in diffs.items()]
        fine = [n for n in mine if n not in off]
        fail(off[shown[0]], fmt_num(mine[shown[0]].mean()), f"not one of the usual mistakes: {', '.join(said)}"
             + (f"; {' and '.join(fine)} match{'es' if len(fine) == 1 else ''}" if fine else ""))


def _gradients(found, expected, same_draw):
    """The bound's gradients against the reference's on the same draw of z; or, where its values differ
    there (z drawn in another order), whether they reach every part of the model."""
    if not found["results"].get("requires_grad"):
        fail("a bound that gradients can flow through", "a detached result", "detached")
    got = take(found, "grads")
    cut = {"the encoder": "bound: encoder cut", "the decoder": "bound: decoder cut",
           "the prior (z_pre)": "GMVAE: prior cut"}
    for part in expected["grads"]:
        if not got[part]["nonzero"]:
            fail(f"a gradient with respect to {part}", "none (zero)", cut[part])
    if not same_draw:
        return
    error = lambda g, reference: float((g - reference).norm() / reference.norm())
    for part, want in expected["grads"].items():
        g = got[part]["projections"].double()
        err = error(g, want)
        if err <= GRAD_RTOL:
            continue
        if error(g, expected["grads, z detached"][part]) <= GRAD_RTOL:
            cause = "bound: z detached"
        elif math.isfinite(err):
            cause = (f"not one of the usual mistakes: the values match, but the gradient with respect to {part} "
                     f"is off by {err:.0%} of its size")
        else:
            cause = f"the gradient with respect to {part} is not finite where the values are"
        fail(f"the gradient with respect to {part} of the reference on the same draw of z",
             f"one {err:.2g} of its size away", cause)


def _draws(found, key, count):
    """{bound, kl, rec: tensor: (draws,)} of the probe's repeated draws under `key`."""
    draws = take(found, key)
    if not isinstance(draws, list) or len(draws) != count:
        raise Raised({"type": "missing", "message": f"the draws {key} are missing"})
    return _stack([scalars(d, ("bound", "kl", "rec"), finite=False) for d in draws])


@judges("iwae_one")
def judge_iwae_one(check, found, expected):
    elbo, iwae1 = _draws(found, "nelbo", ELBO_REPEATS), _draws(found, "iwae1", IWAE_REPEATS[1])["bound"]
    nelbo, kl, batch = elbo["bound"], elbo["kl"], 100
    if not torch.isfinite(iwae1 - nelbo).all():
        fail("finite NELBO and IWAE-1 draws", "nan or inf", "bound: not finite")
    # Draw by draw, IWAE-1 = rec + kl = NELBO. A log w that adds the KL and a NELBO whose KL is negated
    # both give nelbo - 2 kl; the sign of the NELBO's kl tells them apart.
    same = lambda value: _within(iwae1 - value, slack=0.02)
    if not same(nelbo):
        fail(f"IWAE-1 = NELBO on average, {fmt_num(nelbo.mean())} (the mean of {len(iwae1)} draws)",
             f"IWAE-1 {fmt_num(iwae1.mean())}", which_mistake({
                  "iwae-1: nelbo's kl sign" if kl.mean() < 0 else "iwae: adds the kl": nelbo - 2 * kl,
                  "iwae: leaves out the kl": elbo["rec"], "iwae-1: iwae summed": nelbo * batch,
                  "iwae-1: nelbo summed": nelbo / batch}, same) or "iwae-1: differ")


@judges("iwae_falls")
def judge_iwae_falls(check, found, expected):
    iwae = {k: _draws(found, f"iwae{k}", n)["bound"] for k, n in IWAE_REPEATS.items()}
    means = {k: v.mean() for k, v in iwae.items()}
    finite = all(torch.isfinite(m) for m in means.values())
    if finite and means[1] > means[10] > means[100]:
        return
    noise = 4 * max(float(v.std()) / math.sqrt(len(v)) if len(v) > 1 else 0.0 for v in iwae.values())
    flat = finite and abs(float(means[1] - means[100])) <= noise + 0.02
    fail("IWAE-1 > IWAE-10 > IWAE-100 (means over repeated draws)",
         ", ".join(f"IWAE-{k} {fmt_num(m)}" for k, m in means.items()),
         "iwae falls: " + ("underflow" if not finite else "flat" if flat else "not falling"))


def _raised(check, record, expected):
    """(optional, message, cause) of a check whose code raised, from the probe's error record."""
    kind = record.get("type")
    if kind == "z_pre":
        return False, f"expected GMVAE.z_pre of shape (1, 1000, 10), got {record.get('message')}", \
            CAUSES["GMVAE: z_pre"]
    if record.get("not_implemented"):
        origin = record.get("origin")
        callee = "" if origin in (check.target, "<module>", "", None) else f" ({origin} raises NotImplementedError)"
        return check.optional, f"not implemented yet{callee}", None
    located = f" ({where(record)})" if where(record) else ""
    sizes = (expected.get("batch", 100), K, Z_DIM) if check.kind and isinstance(expected, dict) else (0, 0, 0)
    cause = cause_of_error(record.get("message"), *sizes)
    if cause:  # a known mistake behind the error: said as the other FAIL lines say theirs
        return False, f"expected {check.function} to run, got {record.get('message')}{located}", CAUSES[cause]
    return False, f"{record.get('message')}{located}", None


def _judged(check, found, expected):
    """A check's Verdict if it passed or waits to be written, else its FAIL as (message, cause, first)."""
    try:
        JUDGES.get(check.key, judge_cases)(check, found, expected)
    except Failure as e:
        return e.message, e.cause, e.first
    except Raised as e:
        optional, message, cause = _raised(check, e.record, expected)
        if optional:
            return Verdict(check.name, False, f"----  {check.name}: {message} (optional: the problem set does not "
                                              "ask for it)", optional=True)
        if e.record.get("not_implemented"):
            return Verdict(check.name, False, f"FAIL  {check.name}: {message}")
        return message, cause, e.record.get("type") in ("import", "z_pre")
    return Verdict(check.name, True, f"PASS  {check.name}")


def verdict(check, found, expected, failed=()):
    """The verdict of one check from the probe's record `found` and the expected values; never raises.

    failed: the names of the checks that failed before it, which the FAIL line names as likelier causes.
    """
    try:
        judged = _judged(check, found, expected)
    except Exception as e:  # results that are not what the probe writes (a forged or damaged file)
        judged = f"its results cannot be judged ({type(e).__name__}: {str(e)[:200]})", None, True
    if isinstance(judged, Verdict):
        return judged
    message, cause, first = judged
    broken = [] if first else [n for n in check.needs if n in failed]
    if broken:
        # A wrong callee is the likelier cause, and it can mimic the signature of another mistake.
        callee = f"{', '.join(broken)} fail{'s' if len(broken) == 1 else ''} too (see above): fix that first"
        cause = f"{callee} (if that is not it: {cause})" if cause else callee
    cause = f"; likely cause: {cause}" if cause else ""
    return Verdict(check.name, False, f"FAIL  {check.name}: {message}{cause}")
