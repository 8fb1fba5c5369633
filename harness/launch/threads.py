"""Each process's share of this node's CPU cores, applied to torch, BLAS and child processes.

The rule: ``threads = max(1, (cores - busy) // processes)``, where

- ``cores``: the CPUs in this process's affinity mask (taskset, a Slurm or container cpuset),
  capped by the cgroup CPU quota;
- ``busy``: cores other programs keep busy now: the CPU time those cores spent working over a
  0.2 s sample of ``/proc/stat``, rounded (the 1-minute load average where that file cannot be
  read), but only when the mask spans the whole machine (a cpuset is assumed to be ours alone);
- ``processes``: harness processes sharing those cores (torchrun ranks on the node, evaluation or
  pool workers).

``HARNESS_THREADS=N`` overrides the rule, and so does an ``OMP_NUM_THREADS`` the user set (torchrun's
own default of 1 is not taken as the user's choice). Why it matters: torch's default is one thread
per core, and threads that wait at a barrier for a sibling descheduled by another job spin; with a
second busy process on a 2-core machine one training step took 6.7 s instead of 0.045 s.
Why not the load average: it is a mean decaying over minutes, so for minutes after a run ends (the
user's previous harness run included) it counts idle cores as busy, and the run that starts then
keeps one thread for its whole length. Measured on an idle 2-core machine, the quickstart (3 seeds,
empty caches) started just after another job had ended got 1 thread and took 339 s (guide training
218 s); sampling the cores it got 2 threads and took 203 s (122 s) with the load average still 1.
torchrun's ranks start together, so each sees its siblings busy starting up: they are taken out
of ``busy``, being counted in ``processes`` already.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# what the user (or a parent process deciding for its children) set, read before we set anything
_GIVEN = {var: os.environ.get(var, "") for var in ("HARNESS_THREADS", "OMP_NUM_THREADS")}


@dataclass(frozen=True)
class ThreadShare:
    threads: int
    cores: int
    busy: int | None  # None: not measured (a variable set the threads)
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


_SAMPLE_SECONDS = 0.2


def _read_stat() -> str | None:
    try:
        return Path("/proc/stat").read_text()
    except OSError:
        return None


def cpu_jiffies(stat: str, cpus: set[int]) -> tuple[int, int] | None:
    """(working, total) CPU time of ``cpus`` since boot, in jiffies, from the text of ``/proc/stat``;
    None where it names none of them. Working is all but idle and iowait (steal too: not ours to use)."""
    working = total = 0
    for line in stat.splitlines():
        name, *fields = line.split() or [""]
        if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cpus and len(fields) >= 8:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
            working += user + nice + system + irq + softirq + steal
            total += user + nice + system + idle + iowait + irq + softirq + steal
    return (working, total) if total else None


@lru_cache(maxsize=None)  # one sample per process: every caller sees the share it was given
def _busy_cores(cpus: frozenset[int]) -> int:
    """Cores of ``cpus`` other programs keep busy now: their working share over a short sample,
    rounded half up (a core counts as busy when at least half of it works)."""

    def jiffies() -> tuple[int, int] | None:
        stat = _read_stat()
        return cpu_jiffies(stat, cpus) if stat else None

    before = jiffies()
    time.sleep(_SAMPLE_SECONDS)
    after = jiffies()
    if before and after and after[1] > before[1]:
        return int(len(cpus) * (after[0] - before[0]) / (after[1] - before[1]) + 0.5)
    return max(round(os.getloadavg()[0]), 0) if hasattr(os, "getloadavg") else 0


def thread_share(processes: int | None = None) -> ThreadShare:
    """This process's share of the cores (see the module docstring for the rule)."""
    processes = max(1, processes if processes is not None else processes_on_this_node())
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    quota = _quota_cores()
    cores = max(1, min(len(cpus), math.floor(quota)) if quota else len(cpus))
    for var, value in _GIVEN.items():
        torchrun_default = var == "OMP_NUM_THREADS" and value == "1" and "TORCHELASTIC_RUN_ID" in os.environ
        if value.isdigit() and int(value) >= 1 and not torchrun_default:
            return ThreadShare(int(value), cores, None, processes, var)
    whole_machine = len(cpus) >= (os.cpu_count() or len(cpus))  # no cpuset: other users' load lands on our cores
    siblings = processes_on_this_node() - 1  # torchrun ranks starting beside us, already in `processes`
    busy = min(cores - 1, max(0, _busy_cores(frozenset(cpus)) - siblings)) if whole_machine else 0
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
