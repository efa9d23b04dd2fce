"""A whole default run, compiled and eager, against a textbook loop: one process each, back to back.

    python -m benchmarks.compile_speed [--iter_max 20000] [--warm] [--no-write]

Times, as whole processes on this machine one after the other (each with every CPU it may use):
`python run_gmvae.py --compile off`, `python run_gmvae.py --compile on`, and a textbook course loop
(torchvision's MNIST with ToTensor, a shuffling DataLoader, eager steps, nn.ELU and BCE with logits,
then the same evaluation as run_gmvae.py). It prints each time and the ratios, and writes what it
printed, with the machine and the date, into its block of benchmarks/README.md. The compiled run
starts from an empty inductor cache, as a student's first run does, unless --warm. Run it alone on
the machine: two torch processes on 2 cores slow each other 5 to 11 times.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.train_speed import TextbookGMVAE, textbook_loop
from codebase.config import Config
from codebase.data import ensure_mnist, load_mnist
from codebase.evaluate import evaluate
from codebase.runtime.device import describe, select_device

ROOT = Path(__file__).resolve().parents[1]
README = Path(__file__).with_name("README.md")
BEGIN, END = "<!-- generated:compile-speed-begin -->", "<!-- generated:compile-speed-end -->"


def textbook_run(iterations, data_dir):
    """The textbook loop for `iterations` steps, then the run script's evaluation; returns its NELBO."""
    import torchvision
    from torchvision import transforms

    config = Config(data_dir=data_dir)
    device = select_device(config.device)
    dataset = torchvision.datasets.MNIST(data_dir, train=True, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch, shuffle=True)
    torch.manual_seed(0)
    model = TextbookGMVAE(z_dim=config.z, k=config.k).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    textbook_loop(model, optimizer, loader, iterations, device)
    test_x = load_mnist(data_dir, log=lambda *a: None)[2]
    return evaluate(model, test_x, device)["nelbo"]


def timed(argv, env=None):
    """(wall seconds, completed process) of one child process, run in a fresh folder."""
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        out = subprocess.run([sys.executable, *argv], cwd=tmp, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        wall = time.perf_counter() - began
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr}")
        results = next(Path(tmp, "logs").glob("*/results.json"), None)
        return wall, out, json.loads(results.read_text()) if results else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iter_max", type=int, default=Config().iter_max, help="training iterations of each run")
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--warm", action="store_true", help="let the compiled run use inductor's cache as it is")
    p.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/README.md as it is")
    p.add_argument("--textbook", action="store_true", help=argparse.SUPPRESS)  # the textbook child process
    args = p.parse_args(argv)
    ensure_mnist(args.data_dir)
    if args.textbook:
        print(json.dumps({"nelbo": textbook_run(args.iter_max, args.data_dir)}))
        return 0

    printed = []

    def report(line):
        print(line, flush=True)
        printed.append(line)

    device = select_device("auto")
    report(f"device: {device} ({describe(device)}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
           f"{args.iter_max:,} iterations, whole processes one after the other")
    script = [str(ROOT / "run_gmvae.py"), "--iter_max", str(args.iter_max), "--data-dir", args.data_dir]
    times = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {} if args.warm else {"TORCHINDUCTOR_CACHE_DIR": cache}
        for mode in ("off", "on"):
            wall, _, results = timed([*script, "--compile", mode], env)
            times[mode] = wall
            compiling = results["compile"]["compile_seconds"]
            report(f"run_gmvae.py --compile {mode:3s}: {wall:7.1f} s wall, {results['train_seconds']:7.1f} s "
                   f"training ({1000 * results['train_seconds'] / args.iter_max:.2f} ms a step"
                   + (f", compiling {compiling:.1f} s {'warm' if args.warm else 'cold'} included" if compiling
                      else "") + f"); NELBO {results['nelbo']:.2f}")
    wall, out, _ = timed(["-m", "benchmarks.compile_speed", "--textbook", "--iter_max", str(args.iter_max),
                          "--data-dir", args.data_dir])
    times["textbook"] = wall
    nelbo = json.loads(out.stdout.strip().splitlines()[-1])["nelbo"]
    report(f"{'textbook loop':24s}: {wall:7.1f} s wall; NELBO {nelbo:.2f}")
    report(f"ratios: compiled / textbook {times['on'] / times['textbook']:.2f}, eager / textbook "
           f"{times['off'] / times['textbook']:.2f}, compiled / eager {times['on'] / times['off']:.2f}")
    if not args.no_write:
        write_readme(printed, args.iter_max, args.warm)
    return 0


def write_readme(printed, iter_max, warm):
    """Put what this run printed, with the date and the command, between README.md's markers."""
    text = README.read_text()
    if BEGIN not in text:
        text += f"\n## compile_speed: a whole run, compiled and eager, against a textbook loop\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    flags = (f" --iter_max {iter_max}" if iter_max != Config().iter_max else "") + (" --warm" if warm else "")
    block = (f"{BEGIN}\n`python -m benchmarks.compile_speed{flags}` printed on {when}:\n\n"
             + "".join(f"    {line}\n" for line in printed) + END)
    README.write_text(head + block + tail)


if __name__ == "__main__":
    sys.exit(main())
