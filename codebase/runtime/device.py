"""The device and the CPU threads of a run, chosen once by codebase/run.py and passed down."""
import os
import platform

import torch

from codebase.runtime.cpus import usable_cpus
from codebase.runtime.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")


class DeviceError(UserError):
    """The requested device is not available; the message says what to use instead."""


def select_device(name):
    """The torch.device for --device: auto picks cuda, then mps, then the cpu."""
    has_mps = torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda, but torch sees no CUDA GPU here "
                          "(torch.cuda.is_available() is False). Use --device cpu or --device auto.")
    if name == "mps" and not has_mps:
        raise DeviceError("--device mps, but this machine or torch build has no MPS. "
                          "Use --device cpu or --device auto.")
    return torch.device(name)


def cpu_threads(requested=0):
    """torch's thread count: `requested` if given, else $OMP_NUM_THREADS, else the usable CPUs. Several runs at
    once on few cores must each take fewer: threads that outnumber the cores make each run several times
    slower (benchmarks/README.md)."""
    if requested:
        return requested
    try:
        return max(int(os.environ.get("OMP_NUM_THREADS", "")), 1)
    except ValueError:
        return usable_cpus()


def describe(device):
    """The device's model name, for results.json (which machine produced the figures)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
