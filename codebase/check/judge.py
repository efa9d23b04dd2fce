"""The judge: each check's PASS or FAIL line, from the probe's record and the expected values.

It never runs the code under test. A check with a judge of its own (functions.py, bounds.py) is judged
there, any other case by case (compare.judge_cases).
"""
from typing import NamedTuple

from codebase.check import bounds, functions
from codebase.check.calls import Raised, where
from codebase.check.compare import Failure, judge_cases
from codebase.check.inputs import BATCH, Z_DIM, K
from codebase.check.mistakes import CAUSES, cause_of_error

JUDGES = {**functions.JUDGES, **bounds.JUDGES}  # {check's key: its judge}


class Verdict(NamedTuple):
    name: str
    passed: bool
    line: str  # `PASS  <name>`, `FAIL  <name>: ...` or, for an optional check not written yet, `----  <name>: ...`
    optional: bool = False  # an optional check whose code is not written yet: not counted as a failure


def _raised(check, record, expected):
    """The Verdict of a check whose code is not written yet, else the (message, cause) of the error it raised."""
    if record.get("type") == "z_pre":
        return f"expected GMVAE.z_pre of shape (1, 1000, 10), got {record.get('message')}", CAUSES["GMVAE: z_pre"]
    if record.get("not_implemented"):
        origin = record.get("origin")
        said = "not implemented yet" + ("" if origin in (check.target, "<module>", "", None)
                                        else f" ({origin} raises NotImplementedError)")
        if check.optional:
            return Verdict(check.name, False, f"----  {check.name}: {said} (optional: the problem set does not ask "
                                              "for it)", optional=True)
        return Verdict(check.name, False, f"FAIL  {check.name}: {said}")
    located = f" ({where(record)})" if where(record) else ""
    sizes = (expected.get("batch", BATCH), K, Z_DIM) if check.kind and isinstance(expected, dict) else (0, 0, 0)
    cause = cause_of_error(record.get("message"), *sizes)
    if cause:  # a known mistake behind the error: said as the other FAIL lines say theirs
        return f"expected {check.function} to run, got {record.get('message')}{located}", CAUSES[cause]
    return f"{record.get('message')}{located}", None


def verdict(check, found, expected, failed=()):
    """The verdict of one check from the probe's record `found` and the expected values; never raises.

    failed: the names of the checks that failed before it, which the FAIL line names as likelier causes.
    """
    first = False  # whether it failed before what it tests (an import), where a failing callee is no likelier
    try:
        try:
            JUDGES.get(check.key, judge_cases)(check, found, expected)
            return Verdict(check.name, True, f"PASS  {check.name}")
        except Failure as e:
            message, cause = e.message, e.cause
        except Raised as e:
            judged = _raised(check, e.record, expected)
            if isinstance(judged, Verdict):
                return judged
            (message, cause), first = judged, e.record.get("type") in ("import", "z_pre")
    except Exception as e:  # results that are not what the probe writes (a forged or damaged file)
        message, cause, first = f"its results cannot be judged ({type(e).__name__}: {str(e)[:200]})", None, True
    broken = [] if first else [n for n in check.needs if n in failed]
    if broken:
        # A wrong callee is the likelier cause, and it can mimic the signature of another mistake.
        callee = f"{', '.join(broken)} fail{'s' if len(broken) == 1 else ''} too (see above): fix that first"
        cause = f"{callee} (if that is not it: {cause})" if cause else callee
    return Verdict(check.name, False, f"FAIL  {check.name}: {message}" + (f"; likely cause: {cause}" if cause else ""))
