"""A real single-node Slurm (Debian's slurm-wlm and munge) started for the tests, as root.

``start(folder)`` writes a minimal ``slurm.conf`` into ``folder``, starts ``munged``, ``slurmctld``
and ``slurmd`` and waits until ``sinfo`` shows the node idle; it returns the environment the
clients need (``SLURM_CONF``) and a ``stop()``. Any step that cannot work here (not root, the
packages missing, a daemon that dies) raises ``Unavailable`` with the reason, so the test skips.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


class Unavailable(Exception):
    pass


CONF = """ClusterName=harness-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
MinJobAge=10
KillWait=5
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder: Path, timeout: float = 60.0):
    if os.geteuid() != 0:
        raise Unavailable("the test Slurm needs root (SlurmUser=root)")
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo") if shutil.which(b) is None]
    if missing:
        raise Unavailable(f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)")
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir(exist_ok=True)
    host = socket.gethostname()
    conf = folder / "slurm.conf"
    conf.write_text(CONF.format(host=host, folder=folder, cpus=os.cpu_count() or 1,
                                ctld_port=_free_port(), d_port=_free_port()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    key = Path("/etc/munge/munge.key")
    socket_path = folder / "munge" / "munge.socket"
    if not key.is_file():
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], capture_output=True)
    procs = []
    munge = subprocess.run(["munged", "--force", f"--socket={socket_path}", f"--pid-file={folder}/munge/munged.pid",
                            f"--log-file={folder}/munge/munged.log", f"--seed-file={folder}/munge/seed"],
                           capture_output=True, text=True)
    if munge.returncode != 0:
        raise Unavailable(f"munged did not start: {munge.stderr.strip()[:200]}")
    # Slurm's auth/munge looks for the default socket; point it at ours through the plugin's option
    env["SLURM_CONF"] = str(conf)
    conf.write_text(conf.read_text().replace("AuthType=auth/munge",
                                             f"AuthType=auth/munge\nAuthInfo=socket={socket_path}"))
    for daemon in (["slurmctld", "-i", "-f", str(conf)], ["slurmd", "-f", str(conf)]):
        done = subprocess.run(daemon, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            stop_all(folder)
            raise Unavailable(f"{daemon[0]} did not start: {done.stderr.strip()[:200]}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout.strip()
        if state in ("idle", "mix", "alloc"):
            return env, lambda: stop_all(folder)
        if state.startswith(("unk", "down", "drain")):
            subprocess.run(["scontrol", "update", f"nodename={host}", "state=resume"], env=env, capture_output=True)
        time.sleep(1)
    logs = (folder / "slurmctld.log").read_text()[-300:] if (folder / "slurmctld.log").exists() else ""
    stop_all(folder)
    raise Unavailable(f"the node did not become idle within {timeout:.0f}s ({logs.strip()[-200:]})")


def stop_all(folder: Path) -> None:
    for pid_file in (folder / "slurmd.pid", folder / "slurmctld.pid", folder / "munge" / "munged.pid"):
        try:
            os.kill(int(pid_file.read_text().strip()), 15)
        except (OSError, ValueError):
            pass
