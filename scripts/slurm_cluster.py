"""A one-node SLURM cluster on this machine, for testing profiles/slurm against a real SLURM.

    python scripts/slurm_cluster.py start [--dir DIR]   # prints `export SLURM_CONF=DIR/slurm.conf`
    python scripts/slurm_cluster.py status [--dir DIR]
    python scripts/slurm_cluster.py stop [--dir DIR]

``start`` installs Debian's slurm-wlm and munge with apt-get when their daemons are missing (as root),
writes its own slurm.conf, cgroup.conf and munge key in DIR (default: a folder under the temporary
directory), starts munged, slurmctld and slurmd there, and waits until ``sinfo`` shows the node idle.
The node has this machine's CPUs and memory and two partitions on it, ``cpu`` (the default) and
``gpu`` (named as profiles/slurm's commented keys; no GPU exists, no gres is declared). There is no
accounting (no slurmdbd: jobs are followed with squeue), ProctrackType=proctrack/linuxproc,
TaskPlugin=task/none. ``stop`` ends exactly the processes ``start`` recorded in DIR/pids.json, by PID.
Clients (sbatch, squeue, sinfo, Snakemake's executor) find the cluster through ``SLURM_CONF``; inside
a job, srun finds slurmd's cached copy (slurmd runs configless: ``--conf-server``).

Exit status: 0 on success; 2 when SLURM cannot be installed or started here (the reason on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DIR = Path(tempfile.gettempdir()) / "ncil-slurm"
DAEMONS = ("munged", "slurmctld", "slurmd")
PACKAGES = ("slurm-wlm", "munge")
UNAVAILABLE = 2
# munged listens on munge's default socket: slurmd runs configless and must reach munge before it has
# a slurm.conf (an AuthInfo=socket=... there comes too late), as must every client inside a job.
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


class Unavailable(RuntimeError):
    """SLURM cannot be installed or started on this machine; the message says why."""


def find(binary: str) -> str | None:
    return shutil.which(binary) or next((p for d in ("/usr/sbin", "/sbin") if os.path.exists(p := f"{d}/{binary}")), None)


def install() -> None:
    """apt-get install slurm-wlm munge when a daemon is missing (root and apt-get required)."""
    if all(find(d) for d in DAEMONS):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(f"{', '.join(d for d in DAEMONS if not find(d))} missing and cannot be installed "
                          "here (needs root and apt-get: apt-get install slurm-wlm munge)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise Unavailable(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    if not all(find(d) for d in DAEMONS):
        raise Unavailable(f"after apt-get install {' '.join(PACKAGES)}: {[d for d in DAEMONS if not find(d)]} still missing")


def node_facts() -> tuple[int, int]:
    """(CPUs, RealMemory MB) of this machine: `slurmd -C`'s values, memory 5% under them (slurmd drains
    a node whose configured memory exceeds what it finds)."""
    proc = subprocess.run([find("slurmd"), "-C"], capture_output=True, text=True)
    facts = dict(kv.split("=", 1) for kv in proc.stdout.split() if "=" in kv)
    cpus = int(facts.get("CPUs", os.cpu_count() or 1))
    mem = int(facts.get("RealMemory", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20))
    return cpus, int(mem * 0.95)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(d: Path, host: str, cpus: int, mem: int, ctld_port: int, slurmd_port: int) -> str:
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    return f"""# Written by scripts/slurm_cluster.py: a one-node test cluster (no accounting).
ClusterName=ncil
SlurmctldHost={host}
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=300
SlurmctldParameters=enable_configless
KillWait=30
JobRequeue=1
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={host} Default=NO MaxTime=INFINITE State=UP
"""


def client_env(d: Path) -> dict:
    return dict(os.environ, SLURM_CONF=str(d / "slurm.conf"))


def sinfo_state(d: Path) -> str:
    """The node's state as sinfo reports it (one line per partition, the same node: their set)."""
    proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=client_env(d), capture_output=True, text=True)
    if proc.returncode != 0:
        return f"(sinfo failed: {proc.stderr.strip()})"
    return ",".join(sorted(set(proc.stdout.split())))


def read_pids(d: Path) -> dict:
    path = d / "pids.json"
    return json.loads(path.read_text()) if path.exists() else {}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_pidfile(path: Path, timeout: float = 20) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return int(path.read_text().split()[0])
        time.sleep(0.2)
    raise Unavailable(f"{path}: no PID written within {timeout:.0f} s (see {path.parent}/log/)")


def start(d: Path, timeout: float = 90) -> None:
    if any(alive(pid) for pid in read_pids(d).values()):
        raise Unavailable(f"{d}: a cluster from this folder is running (pids.json); stop it first")
    install()
    for sub in ("munge", "state", "spool", "log"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(d / "munge", 0o700)
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    host = socket.gethostname().split(".")[0]
    cpus, mem = node_facts()
    ctld_port = free_port()
    (d / "slurm.conf").write_text(slurm_conf(d, host, cpus, mem, ctld_port, free_port()))
    (d / "cgroup.conf").write_text("# unused: proctrack/linuxproc and task/none load no cgroup plugin\nCgroupPlugin=autodetect\n")
    pids: dict[str, int] = {}

    def record() -> None:
        (d / "pids.json").write_text(json.dumps(pids, indent=1))

    if MUNGE_SOCKET.exists():
        probe = subprocess.run(["munge", "-n"], capture_output=True)
        if probe.returncode == 0:
            raise Unavailable(f"a munged already listens on {MUNGE_SOCKET} (another cluster?): stop it first")
        MUNGE_SOCKET.unlink()
    MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    munge_args = [find("munged"), f"--socket={MUNGE_SOCKET}", f"--key-file={key}",
                  f"--pid-file={d}/munge/munged.pid", f"--log-file={d}/log/munged.log",
                  f"--seed-file={d}/munge/munged.seed"]
    if os.geteuid() == 0:
        munge_args.append("--force")  # munged refuses to run as root without it
    try:
        steps = [("munged", munge_args, d / "munge" / "munged.pid"),
                 ("slurmctld", [find("slurmctld"), "-f", str(d / "slurm.conf"), "-i"], d / "slurmctld.pid"),
                 # configless: slurmd fetches slurm.conf from slurmctld and caches it where clients in a
                 # job find it without SLURM_CONF (/run/slurm/conf), as srun inside a Snakemake job step
                 # must: the jobstep executor drops every SLURM_* variable but the job's identity
                 ("slurmd", [find("slurmd"), "--conf-server", f"127.0.0.1:{ctld_port}"], d / "slurmd.pid")]
        for name, cmd, pidfile in steps:
            proc = subprocess.run(cmd, env=client_env(d), capture_output=True, text=True)  # each daemonises
            if proc.returncode != 0:
                raise Unavailable(f"{name} did not start ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}")
            pids[name] = wait_pidfile(pidfile)
            record()
        end = time.monotonic() + timeout
        state = ""
        while time.monotonic() < end:
            state = sinfo_state(d)
            if state == "idle":
                return
            time.sleep(1)
        raise Unavailable(f"node not idle after {timeout:.0f} s (sinfo: {state!r}; logs in {d}/log/)")
    except BaseException:
        stop(d)
        raise


def stop(d: Path) -> list[str]:
    """SIGTERM each recorded daemon by PID, in reverse start order, then SIGKILL any left after 15 s."""
    pids = read_pids(d)
    stopped = []
    for name in reversed(list(pids)):
        pid = pids[name]
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + 15
            while alive(pid) and time.monotonic() < end:
                time.sleep(0.2)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
            stopped.append(f"{name} {pid}")
    (d / "pids.json").unlink(missing_ok=True)
    cache = Path("/run/slurm/conf")  # configless slurmd's link to its config cache in d
    if cache.is_symlink() and Path(os.readlink(cache)).is_relative_to(d):
        cache.unlink()
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state folder (default {DEFAULT_DIR})")
    parser.add_argument("--timeout", type=float, default=90, help="seconds to wait for the node to be idle")
    args = parser.parse_args(argv)
    d = args.dir.resolve()
    try:
        if args.action == "start":
            d.mkdir(parents=True, exist_ok=True)
            start(d, args.timeout)
            print(f"export SLURM_CONF={d / 'slurm.conf'}")
        elif args.action == "stop":
            print("stopped: " + (", ".join(stop(d)) or "nothing running"))
        else:
            pids = read_pids(d)
            print(json.dumps({"pids": {n: (p, alive(p)) for n, p in pids.items()},
                              "sinfo": sinfo_state(d) if pids else None}))
    except Unavailable as err:
        print(f"slurm unavailable: {err}", file=sys.stderr)
        return UNAVAILABLE
    return 0


if __name__ == "__main__":
    sys.exit(main())
