"""The CPUs this process may use, for thread counts. Without torch: the grader reads it too."""
import math
import os
from pathlib import Path


def usable_cpus(cgroup=Path("/sys/fs/cgroup")):
    """The CPUs in this process's affinity, within a container's CPU quota (cgroup v2, else v1), which the
    affinity does not show. `cgroup`: where the cgroup files are (a test points it elsewhere)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            quota, period = (Path(cgroup, quota_file).read_text().split() + [""])[:2]
            if period_file:
                period = Path(cgroup, period_file).read_text().strip()
            if quota not in ("max", "-1"):
                cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
        except (OSError, ValueError):
            continue
    return cpus
