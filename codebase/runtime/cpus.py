"""The CPUs this process may use, for thread counts (the run scripts' and the grader's). Imports nothing
heavy: the grader reads it without torch."""
import math
import os
from pathlib import Path


def usable_cpus(cgroup=Path("/sys/fs/cgroup")):
    """The CPUs this process may use: its affinity, within a container's CPU quota (cgroup v2 or v1),
    which a container's affinity does not show.

    Args:
        cgroup: Path: where the cgroup files are mounted (a test points it elsewhere)
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quotas = (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"))
    for quota_file, period_file in quotas:
        try:
            quota, period = (Path(cgroup, quota_file).read_text().split() + [""])[:2]
            if period_file:
                period = Path(cgroup, period_file).read_text().strip()
            if quota not in ("max", "-1"):
                cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
        except (OSError, ValueError):
            continue
    return cpus
