"""The grader's judge: the figures of a grading, computed on the trusted side. It never imports the
submission: it runs from the grading code's own folder, whose codebase/ is the starter's.

    python -m course.judge --seed SEED --probe FOLDER --checks NAME... [--checkpoint FILE --data-dir DIR] --out FILE

- The checks: each result file that the sandboxed probe wrote (FOLDER/<name>.pt, copied there by the
  grader) is loaded with weights_only=True, its sizes checked first (load), and judged against the
  references, computed afresh for this grading's seed (codebase.check.references, which the sandbox
  user cannot read).
- The training: the run's final checkpoint is loaded the same way; its model's keys, shapes and dtypes
  must be the starter GMVAE's. NELBO, KL and Rec are computed with the reference bound on the course's
  100-image subset, as the course evaluates (binarised once with seed 0, 100 evaluations averaged),
  and the 10 x 20 grid is drawn from those weights.
The verdicts and figures go to FILE as JSON, the grid beside it as a PNG. The judge runs under the
children's address-space limit (LIMITS.memory_gb), so that no file can make it take the machine's memory.
"""
import argparse
import json
import math
import resource
import sys
import zipfile
from pathlib import Path

import torch

from codebase.check import judge, references
from codebase.check.figures import GRADED_SETTING
from codebase.check.registry import CHECKS, by_name
from codebase.config import GRID_COLS, GRID_ROWS
from codebase.data import load_mnist
from codebase.evaluate import SUBSET_REPEATS, eval_subset, sample_binary
from codebase.models import GMVAE
from codebase.runtime.files import write_png_grid
from course.settings import LIMITS
from course.untrusted import shown

REPEATS_AT_ONCE = 10  # subset evaluations per pass: bounds the judge's memory
MAX_OBJECTS = 100_000  # in one loaded file: a probe's results hold a few dozen, a checkpoint a few hundred
# A file's pickled structure, which the weights-only unpickler reads at about a second a megabyte, so that
# the files of a grading cannot hold the judge past its time: the probe's are under 12 kB, a checkpoint's 6 kB.
MAX_PICKLE_BYTES = 1 << 20
# A file's zip directory, which zipfile reads at about 4 MB a second (400,000 empty members in a 32 MB file took
# 8 s): torch.save's hold a few hundred members at most, in under 12 kB.
MAX_DIRECTORY_BYTES = 1 << 20
# Of a check's line: the self-check's own are under 600 characters; a forged error message can be megabytes.
LINE_CHARS = 2000


class Unusable(ValueError):
    """A file that a child wrote cannot be loaded safely: why, in a few words (the submission's fault)."""


def limit_memory(gb=LIMITS.memory_gb):
    """Bound this process's address space as the sandbox bounds the student's children: whatever a file
    from a child makes the judge allocate past the checks of load() fails as a MemoryError or a
    RuntimeError of that file, which is the submission's, instead of the container's out-of-memory kill,
    which would read as the grader's."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = int(gb * (1 << 30))
    cap = cap if hard == resource.RLIM_INFINITY else min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def load(path):
    """A file of torch.save's that a child wrote, loaded as weights only, with its size bounded by the
    file's own before any tensor of it is computed with.

    Only uncompressed members are accepted, as torch.save writes them: a compressed one unpacks to up to
    a thousand times its size while loading. After loading, no tensor may claim more values than its
    storage holds (an expanded view of one zero can claim billions, which any elementwise operation
    would then make real), and all storages together fit in the file.

    Raises:
        Unusable: why not
    """
    size = Path(path).stat().st_size
    try:
        with open(path, "rb") as f:
            end = zipfile._EndRecData(f)  # the end record alone, which says how large the directory is
            directory = end[zipfile._ECD_SIZE] if end else 0
            if directory > MAX_DIRECTORY_BYTES:
                raise Unusable(f"its directory is {directory:,} bytes, where torch.save writes a few kB")
            with zipfile.ZipFile(f) as archive:
                infos = archive.infolist()
    except Unusable:
        raise
    except Exception:
        raise Unusable("it is not a file that torch.save writes") from None
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1 or info.compress_size != info.file_size:
            raise Unusable("it holds a compressed or encrypted member, which torch.save never writes")
    if sum(info.file_size for info in infos) > size:
        raise Unusable("its members add up to more than the file")
    if any(info.filename.endswith(".pkl") and info.file_size > MAX_PICKLE_BYTES for info in infos):
        raise Unusable(f"its pickled structure is over {MAX_PICKLE_BYTES >> 20} MB, where torch.save writes a few kB")
    try:
        found = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        raise Unusable(f"it cannot be loaded as weights ({type(e).__name__})") from None
    _check_sizes(found, size)
    return found


def _check_sizes(found, size):
    """Raise Unusable unless every tensor in `found` is dense and strided, and their storages fit in `size`
    bytes; reads only the tensors' metadata, and walks nested containers without recursion."""
    todo, storages, count = [found], {}, 0
    while todo:
        value = todo.pop()
        count += 1
        if count > MAX_OBJECTS:
            raise Unusable(f"it holds more than {MAX_OBJECTS:,} objects")
        if isinstance(value, dict):
            todo += [*value.keys(), *value.values()]
        elif isinstance(value, (list, tuple, set, frozenset)):
            todo += list(value)
        elif isinstance(value, torch.Tensor):
            if value.layout != torch.strided or value.is_quantized or value.is_nested:
                raise Unusable(f"it holds a tensor of layout {value.layout}, which the probe never writes")
            storage = value.untyped_storage()
            if value.numel() * value.element_size() > storage.nbytes():
                raise Unusable(f"it holds a tensor of shape {tuple(value.shape)} that claims more values than its "
                               f"data holds ({storage.nbytes():,} bytes)")
            storages[storage.data_ptr()] = storage.nbytes()
    if sum(storages.values()) > size:
        raise Unusable("its tensors hold more data than the file")


def judge_checks(seed, names, folder):
    """{name: {"passed", "line"}} of the checks named, in the registry's order, from their probe files."""
    wanted = [c for c in CHECKS if c.name in names]
    verdicts, failed = {}, []
    for check in wanted:
        path = Path(folder) / f"{check.name}.pt"
        if not path.is_file():
            continue  # it never ran: the grader says why
        try:
            found = load(path)
        except Unusable as e:
            found = {"error": {"type": "unreadable", "message": f"its results cannot be read: {e}"}}
        v = judge.verdict(check, found, references.expected(check, seed), failed)
        if not v.passed:
            failed.append(check.name)
        # What the line quotes of the results (an error's message, its file names) was written by the student's
        # process: one line, escaped and bounded, so that it can pose as no line of the grader's.
        verdicts[check.name] = {"passed": v.passed, "line": shown(v.line, LINE_CHARS)}
    return verdicts


def trained_state(path):
    """The model's parameters from a checkpoint, as {name: float32 tensor}; or why they cannot be used."""
    try:
        saved = load(path)
    except Unusable as e:
        return None, f"the checkpoint cannot be used: {e}"
    state = saved.get("model") if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        return None, "the checkpoint holds no model weights"
    z, k = GRADED_SETTING["gmvae"]["z"], GRADED_SETTING["gmvae"]["k"]
    with torch.random.fork_rng(devices=[]):
        wanted = GMVAE(z_dim=z, k=k).state_dict()
    if set(state) != set(wanted):
        missing, extra = sorted(set(wanted) - set(state)), sorted(map(str, set(state) - set(wanted)))
        return None, (f"its weights are not the starter GMVAE's (missing: {', '.join(missing) or 'none'}; "
                      f"unexpected: {', '.join(extra[:5]) or 'none'})")
    for name, want in wanted.items():
        got = state[name]
        if not isinstance(got, torch.Tensor) or got.layout != torch.strided or got.shape != want.shape \
                or got.dtype != want.dtype:
            what = f"{tuple(got.shape)} {got.dtype}" if isinstance(got, torch.Tensor) else type(got).__name__
            return None, f"its {name} is {what}, where the starter GMVAE's is {tuple(want.shape)} {want.dtype}"
        if not torch.isfinite(got).all():
            return None, f"its {name} holds nan or inf: training diverged"
    return {name: state[name].clone(memory_format=torch.contiguous_format) for name in wanted}, None


def figures(state, test_x):
    """NELBO, KL and Rec of the trained weights by the reference bound, on the course's subset as the course
    evaluates it; each with its standard deviation over the evaluations."""
    subset = eval_subset(test_x, torch.device("cpu"))
    state64 = {name: t.double() for name, t in state.items()}
    generator = torch.Generator().manual_seed(0)
    rows = []
    with torch.no_grad():
        for start in range(0, SUBSET_REPEATS, REPEATS_AT_ONCE):
            repeats = min(REPEATS_AT_ONCE, SUBSET_REPEATS - start)
            eps = torch.randn(repeats, *subset.shape[:1], GRADED_SETTING["gmvae"]["z"], generator=generator,
                              dtype=torch.float64)
            t = references.terms("gmvae", state64, subset, eps)
            kl, rec = (t["log_q"] - t["log_p"]).mean(1), -t["log_px"].mean(1)
            rows.append(torch.stack([kl + rec, kl, rec], 1))
    rows = torch.cat(rows)
    return {**dict(zip(("nelbo", "kl", "rec"), rows.mean(0).tolist())),
            **dict(zip(("nelbo_sd", "kl_sd", "rec_sd"), rows.std(0).tolist()))}


def judge_training(checkpoint, data_dir, grid_path):
    """{"problem"} or {"figures", "grid"}: the trained model's figures and the grid drawn from it."""
    _, _, test_x, _ = load_mnist(data_dir, log=lambda *a: None)  # the grader's own: its failure is the grader's
    try:
        found = _judge_training(checkpoint, test_x, grid_path)
    except Exception as e:  # weights that load but cannot be used (the student's file): not the grader's failure
        found = {"problem": f"its weights cannot be used ({type(e).__name__}: {str(e)[:200]})"}
    if "problem" in found:  # it may quote the checkpoint's own names, which the student's process wrote
        found["problem"] = shown(found["problem"], LINE_CHARS)
    return found


def _judge_training(checkpoint, test_x, grid_path):
    state, problem = trained_state(checkpoint)
    if problem:
        return {"problem": problem}
    found = figures(state, test_x)
    if not all(math.isfinite(v) for v in found.values()):
        return {"problem": "the bound of these weights is not finite"}
    model = GMVAE(z_dim=GRADED_SETTING["gmvae"]["z"], k=GRADED_SETTING["gmvae"]["k"])
    model.load_state_dict(state)
    draws = sample_binary(model, GRID_ROWS * GRID_COLS, torch.device("cpu"))
    write_png_grid(grid_path, draws, GRID_ROWS, GRID_COLS)
    return {"figures": found, "grid": {"rows": GRID_ROWS, "cols": GRID_COLS, "ink": float(draws.mean())}}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m course.judge", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--probe", required=True, help="the probe's result files, one per check, named <check>.pt")
    p.add_argument("--checks", nargs="*", default=[], help="the checks to judge, by name")
    p.add_argument("--checkpoint", help="the training run's final checkpoint")
    p.add_argument("--data-dir", dest="data_dir", help="MNIST")
    p.add_argument("--out", required=True, help="the verdicts and figures, as JSON")
    args = p.parse_args(argv)
    limit_memory()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    for name in args.checks:
        by_name(name)  # an unknown name is the grader's mistake: fail loudly
    out = Path(args.out)
    found = {"checks": judge_checks(args.seed, args.checks, args.probe)}
    if args.checkpoint:
        found["training"] = judge_training(args.checkpoint, args.data_dir, out.with_suffix(".png"))
    out.write_text(json.dumps(found, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
