"""The probe: run your functions on the checks' inputs and keep what they return. It judges nothing.

For each check it calls the code of codebase/ as it is now and records the raw results: the values
returned, whether they carry a gradient, and the gradients the judge needs (the probes of functions.py
and bounds.py). A function that raises is recorded with its error and where in your files it was raised.

The grader runs the probe in a sandboxed process, one file of results per check, as they finish:

    python -m codebase.check.probe --seed SEED --out FOLDER [--only NAME ...]
"""
import argparse
import io
import os
import sys
import warnings
from pathlib import Path

import torch

from codebase.check import bounds, functions
from codebase.check.calls import Raised, error_record
from codebase.check.registry import CHECKS, by_name

PROBES = {**functions.PROBES, **bounds.PROBES}  # {check's key: its probe}


def run(check, seed):
    """One check's raw results: {"results": {...}} and, if the code under test raised, {"error": ...}.

    Whatever the code under test does to torch's random state, grad mode or warnings stays inside.
    """
    results, found = {}, {}
    dtype = torch.get_default_dtype()
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PROBES[check.key](check, seed, results)
    except Raised as e:
        found["error"] = e.record
    except (Exception, SystemExit) as e:
        found["error"] = error_record(e)
    finally:
        torch.set_default_dtype(dtype)
    found["results"] = results
    return found


def main(argv=None):
    """Probe the checks named (all by default) and write each one's results to FOLDER/<n>.pt as it ends."""
    p = argparse.ArgumentParser(prog="python -m codebase.check.probe", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="the folder for the results, one file per check")
    p.add_argument("--only", action="append", metavar="NAME", help="a check's exact name (repeatable)")
    args = p.parse_args(argv)
    checks = [by_name(name) for name in args.only] if args.only else CHECKS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for n, check in enumerate(checks):
        buffer = io.BytesIO()
        torch.save({"name": check.name, **run(check, args.seed)}, buffer)
        tmp = out / f".{n}.tmp"
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, out / f"{n}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
