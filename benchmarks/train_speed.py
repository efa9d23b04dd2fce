"""Training and evaluation speed: the project's trainer against a textbook loop.

    python -m benchmarks.train_speed [--steps 500] [--device auto] [--no-full] [--no-write]

Prints steps/s of both loops for the same number of GMVAE steps and their ratio,
the time and peak memory of the full evaluation (with --iwae), and the training
time of the full default run, and writes what it printed, with the machine and the
date, into benchmarks/README.md. A script, not a test: timings depend on the machine.
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from codebase import utils as ut
from codebase.config import Config
from codebase.data import ensure_mnist, load_mnist
from codebase.evaluate import evaluate
from codebase.models import GMVAE, make_model
from codebase.runtime.device import describe, select_device
from codebase.train import make_optimizer, train, training_generator

ROOT = Path(__file__).resolve().parents[1]
README = Path(__file__).with_name("README.md")
BEGIN, END = "<!-- generated:benchmark-begin -->", "<!-- generated:benchmark-end -->"



class TextbookGMVAE(GMVAE):
    """The same model with the reconstruction term as course code usually writes it, BCE with logits;
    the mixture density is the student's broadcast form in both."""

    def negative_elbo_bound(self, x, generator=None):
        m, v = self.enc(x)
        z = ut.sample_gaussian(m, v, generator)
        rec = F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(-1).mean()
        kl = (ut.log_normal(z, m, v) - ut.log_normal_mixture(z, *self.prior())).mean()
        return kl + rec, kl, rec


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def textbook_steps_per_second(config, device, steps, model_cls):
    """The usual course loop: torchvision MNIST, ToTensor, a shuffling DataLoader, eager steps."""
    import torchvision
    from torchvision import transforms

    dataset = torchvision.datasets.MNIST(config.data_dir, train=True, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch, shuffle=True)
    torch.manual_seed(0)
    model = model_cls(z_dim=config.z, k=config.k).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    return (steps - 10) / textbook_loop(model, optimizer, loader, steps, device)


def textbook_loop(model, optimizer, loader, steps, device):
    """`steps` eager steps over `loader`, pass after pass; returns the seconds of those after the first 10
    (their warm-up)."""
    done, began = 0, time.perf_counter()
    while done < steps:
        for xu, _ in loader:
            if done == 10:
                sync(device)
                began = time.perf_counter()
            x = torch.bernoulli(xu.to(device).reshape(xu.size(0), -1))
            optimizer.zero_grad()
            loss, _, _ = model.negative_elbo_bound(x)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    sync(device)
    return time.perf_counter() - began


def project_steps_per_second(config, device, steps):
    """The project's trainer (data on the device, batches by index, a CUDA graph on GPUs)."""
    train_x = load_mnist(config.data_dir, log=lambda *a: None)[0]
    data = (train_x.float() / 255).to(device)
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10, steps):  # the difference leaves out warm-up and the CUDA graph's capture
            c = replace(config, iter_max=n, iter_save=10**9, checkpoint_root=tmp, log_root=tmp)
            torch.manual_seed(0)
            model = make_model(c).to(device)
            optimizer = make_optimizer(model, c, device)
            sync(device)
            began = time.perf_counter()
            train(model, optimizer, data, c, device, training_generator(c, device), log=lambda *a: None)
            sync(device)
            rates.append(time.perf_counter() - began)
    return (steps - 10) / (rates[1] - rates[0])


def evaluation_figures(config, device):
    """Time and peak memory of evaluate(..., iwae=True), in this process."""
    test_x = load_mnist(config.data_dir, log=lambda *a: None)[2]
    torch.manual_seed(0)
    model = make_model(config).to(device)
    evaluate(model, test_x, device)  # warm-up
    sync(device)
    began = time.perf_counter()
    evaluate(model, test_x, device, iwae=True)
    sync(device)
    seconds = time.perf_counter() - began
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return {"eval_seconds": seconds, "peak_rss_mb": peak_mb, "peak_gpu_mb": gpu_mb}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=500, help="GMVAE steps timed in each loop")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--no-full", action="store_true", help="skip the full default run")
    p.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/README.md as it is")
    p.add_argument("--section", choices=("eval",), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = select_device(args.device)
    config = Config(data_dir=args.data_dir)
    ensure_mnist(args.data_dir)

    if args.section == "eval":  # run in a child process, so its peak memory is evaluation's own
        print(json.dumps(evaluation_figures(config, device)))
        return 0

    printed = []

    def report(line):
        print(line, flush=True)
        printed.append(line)

    report(f"device: {device} ({describe(device)}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    rates = {
        "textbook loop, textbook model": textbook_steps_per_second(config, device, args.steps, TextbookGMVAE),
        "textbook loop, this model": textbook_steps_per_second(config, device, args.steps, GMVAE),
        "this codebase": project_steps_per_second(config, device, args.steps),
    }
    for what, rate in rates.items():
        report(f"{what:30s}: {rate:7.1f} steps/s ({20000 / rate:6.1f} s per 20,000 steps)")
    ours = rates["this codebase"]
    report(f"speed-up: {ours / rates['textbook loop, textbook model']:.2f}x over the textbook loop and model, "
          f"{ours / rates['textbook loop, this model']:.2f}x from the data pipeline alone")

    child = subprocess.run([sys.executable, "-m", "benchmarks.train_speed", "--section", "eval",
                            "--device", str(device.type), "--data-dir", args.data_dir],
                           cwd=ROOT, capture_output=True, text=True, check=True)
    ev = json.loads(child.stdout.strip().splitlines()[-1])
    report(f"{'evaluation':30s}: {ev['eval_seconds']:7.2f} s with --iwae (subset x100, full test split, "
          f"IWAE-1..1000); peak RSS {ev['peak_rss_mb']:.0f} MB" +
          (f", peak GPU {ev['peak_gpu_mb']:.0f} MB" if device.type == "cuda" else ""))

    if not args.no_full:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, str(ROOT / "run_gmvae.py"), "--device", str(device.type),
                   "--data-dir", args.data_dir]
            began = time.perf_counter()
            subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)
            wall = time.perf_counter() - began
            results = json.loads(next(Path(tmp, "logs").glob("*/results.json")).read_text())
        report(f"{'full run':30s}: {results['train_seconds']:7.1f} s training, {wall:.1f} s wall "
              f"(python run_gmvae.py); NELBO {results['nelbo']:.2f}")
    if not args.no_write:
        write_readme(printed, args.steps)
    return 0


def write_readme(printed, steps):
    """Put what this run printed, with the date and the command, between README.md's markers."""
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = (f"{BEGIN}\n`python -m benchmarks.train_speed --steps {steps}` printed on {when}:\n\n"
             + "".join(f"    {line}\n" for line in printed) + END)
    README.write_text(head + block + tail)


if __name__ == "__main__":
    sys.exit(main())
