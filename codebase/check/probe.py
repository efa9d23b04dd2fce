"""The probe: run your functions on the checks' inputs and record what they return. It judges nothing.

A record holds the values returned, whether they carry a gradient and the gradients the judge needs, or
the error raised and where in your files. The grader runs the probe in a sandboxed process, one file of
results per check, as each finishes:

    python -m codebase.check.probe --seed SEED --out FOLDER [--only NAME ...]
"""
import argparse
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
    """One check's record: {"results": {...}} and, if the code under test raised, {"error": ...}.
    Whatever the code under test does to torch's random state, grad mode or warnings stays inside."""
    found, dtype = {"results": {}}, torch.get_default_dtype()
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PROBES[check.key](check, seed, found["results"])
    except Raised as e:
        found["error"] = e.record
    except (Exception, SystemExit) as e:
        found["error"] = error_record(e)
    finally:
        torch.set_default_dtype(dtype)
    return found


def main(argv=None):
    """Probe the checks named (all by default) and write each one's record to FOLDER/<n>.pt as it ends."""
    p = argparse.ArgumentParser(prog="python -m codebase.check.probe", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="the folder for the results, one file per check")
    p.add_argument("--only", action="append", metavar="NAME", help="a check's exact name (repeatable)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for n, check in enumerate([by_name(name) for name in args.only] if args.only else CHECKS):
        torch.save({"name": check.name, **run(check, args.seed)}, out / f".{n}.tmp")
        os.replace(out / f".{n}.tmp", out / f"{n}.pt")  # the grader reads a file as soon as it is there
    return 0


if __name__ == "__main__":
    sys.exit(main())
