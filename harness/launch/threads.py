"""Each process's share of this node's CPU cores, applied to torch, BLAS and child processes.

The rule: ``threads = max(1, (cores - busy) // processes)``, where

- ``cores``: the CPUs in this process's affinity mask (taskset, a Slurm or container cpuset),
  capped by the cgroup CPU quota;
- ``busy``: cores other programs keep busy: the larger of the 1-minute load average (rounded) and
  the processes running right now, but only when the mask spans the whole machine (a cpuset is
  assumed to be ours alone);
- ``processes``: harness processes sharing those cores (torchrun ranks on the node, evaluation or
  pool workers).

``HARNESS_THREADS=N`` overrides the rule, and so does an ``OMP_NUM_THREADS`` the user set (torchrun's
own default of 1 is not taken as the user's choice). Why it matters: torch's default is one thread
per core, and threads that wait at a barrier for a sibling descheduled by another job spin; with a
second busy process on a 2-core machine one training step took 6.7 s instead of 0.045 s.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# what the user (or a parent process deciding for its children) set, read before we set anything
_GIVEN = {var: os.environ.get(var, "") for var in ("HARNESS_THREADS", "OMP_NUM_THREADS")}


@dataclass(frozen=True)
class ThreadShare:
    threads: int
    cores: int
    busy: int
    processes: int
    source: str  # "rule", "HARNESS_THREADS" or "OMP_NUM_THREADS"

    def describe(self) -> str:
        if self.source != "rule":
            return f"{self.threads} thread(s) per process, set by {self.source}"
        return (f"{self.threads} thread(s) per process = max(1, ({self.cores} cores - {self.busy} busy) "
                f"// {self.processes} process(es) on this node); HARNESS_THREADS=N overrides")


def processes_on_this_node() -> int:
    """torchrun's ranks on this node (1 outside torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _quota_cores() -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``), None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _busy_cores() -> int:
    """Cores other programs keep busy: max(1-minute load average, processes running now minus us)."""
    try:
        fields = Path("/proc/loadavg").read_text().split()
        running_now = int(fields[3].split("/")[0]) - 1  # the count includes this process
        return max(round(float(fields[0])), running_now, 0)
    except (OSError, ValueError, IndexError):
        return max(round(os.getloadavg()[0]), 0) if hasattr(os, "getloadavg") else 0


def thread_share(processes: int | None = None) -> ThreadShare:
    """This process's share of the cores (see the module docstring for the rule)."""
    processes = max(1, processes if processes is not None else processes_on_this_node())
    mask = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _quota_cores()
    cores = max(1, min(mask, math.floor(quota)) if quota else mask)
    whole_machine = mask >= (os.cpu_count() or mask)  # no cpuset: other users' load lands on our cores
    busy = min(cores - 1, _busy_cores()) if whole_machine else 0
    for var, value in _GIVEN.items():
        torchrun_default = var == "OMP_NUM_THREADS" and value == "1" and "TORCHELASTIC_RUN_ID" in os.environ
        if value.isdigit() and int(value) >= 1 and not torchrun_default:
            return ThreadShare(int(value), cores, busy, processes, var)
    return ThreadShare(max(1, (cores - busy) // processes), cores, busy, processes, "rule")


def apply_thread_share(processes: int | None = None) -> ThreadShare:
    """Give this process its share: torch's intra-op threads now (if torch is loaded), and the
    OpenMP/BLAS variables for libraries loaded later and for child processes (which inherit them)."""
    share = thread_share(processes)
    for var in _THREAD_VARS:
        os.environ[var] = str(share.threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(share.threads)
    return share
