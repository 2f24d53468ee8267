"""One GPU per job on a multi-GPU workstation: a job claims free devices before torch starts CUDA.

Snakemake counts GPUs (``--resources gpu=N``; each train/evaluate job claims
``runtime.gpus_per_job``) but does not say which GPU a job gets: without help every job would open
``cuda:0``. So a ``train`` or ``evaluate`` process whose params file has ``runtime.gpus_per_job >= 1``
takes that many devices from the workstation's pool, sets ``CUDA_VISIBLE_DEVICES`` to them and so
sees only those (as ``cuda:0``...). ``ncil/cli.py`` calls ``claim_for_job`` before anything
imports torch.

* The pool: ``NCIL_GPU_POOL`` (comma-separated ids; simulated devices for tests), else the devices of
  ``CUDA_VISIBLE_DEVICES`` when the user set it, else the GPUs the driver lists
  (``/proc/driver/nvidia/gpus/*``, else ``nvidia-smi -L``), numbered 0.. in PCI bus order (the
  numbering of ``nvidia-smi``; ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is set so CUDA numbers them the same).
  torch is never imported for this.
* A claim is an exclusive ``flock`` on one lock file per device in the lock folder
  (``NCIL_GPU_LOCK_DIR``, else ``$XDG_RUNTIME_DIR/ncil-gpus``, else ``/tmp/ncil-gpus-<uid>``). The
  kernel drops the lock when the process ends, however it ends (kill -9 included): no stale claims.
  A claim of several devices is all or nothing.
* All devices taken (another Snakemake run, a job started by hand): the job waits, with a log line
  at once and every ``WAIT_LOG_S``, and by default without a limit (``NCIL_GPU_WAIT_S`` sets one).
* Under SLURM with GPUs assigned (``SLURM_JOB_ID`` and ``CUDA_VISIBLE_DEVICES`` or
  ``SLURM_JOB_GPUS``) SLURM has already chosen: nothing is claimed, unless SLURM gave the allocation
  more GPUs than one job uses (a local Snakemake run inside a multi-GPU allocation), where jobs share
  them out as on a workstation.

The decisions are pure functions of the environment (``plan``); ``claim`` and ``claim_for_job`` do
the locking and the logging.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ncil.pipeline.config import ConfigError

ENV_POOL = "NCIL_GPU_POOL"
ENV_LOCK_DIR = "NCIL_GPU_LOCK_DIR"
ENV_WAIT = "NCIL_GPU_WAIT_S"
CLAIMING_VERBS = ("train", "evaluate")
PROC_GPUS = Path("/proc/driver/nvidia/gpus")
POLL_S = 1.0  # how often a waiting job tries the locks again
WAIT_LOG_S = 600.0  # how often a waiting job says so in its log
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")


class GpuClaimError(ConfigError):
    """No device can be claimed as configured (exit 2, one line naming the setting)."""


@dataclass(frozen=True)
class Pool:
    devices: tuple[str, ...]  # the ids CUDA_VISIBLE_DEVICES takes: indices, GPU-/MIG- UUIDs
    source: str  # where they came from (for the log line)
    pci: tuple[str, ...] = ()  # PCI bus id of each device, where the driver listing gave them
    from_driver: bool = False  # numbered by this module: CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA agree


@dataclass(frozen=True)
class Plan:
    """What a job does: claim ``count`` devices of ``pool``, or nothing (``pool`` None) and why."""

    count: int
    pool: Pool | None
    reason: str = ""


def parse_device_list(text: str, where: str) -> tuple[str, ...]:
    """``"0, 2,3"`` -> ("0", "2", "3"); refuses a repeated or malformed id, naming ``where``."""
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    for item in items:
        if not _TOKEN.fullmatch(item):
            raise GpuClaimError(f"{where}={text!r}: {item!r} is not a device id (expected indices like 0,1 or GPU-/MIG- UUIDs)")
    if len(set(items)) != len(items):
        raise GpuClaimError(f"{where}={text!r}: a device is listed twice")
    return items


def visible_devices(text: str) -> tuple[str, ...]:
    """The devices of a user's ``CUDA_VISIBLE_DEVICES``; "" and "-1" (CUDA's way to hide every GPU) list none."""
    return () if text.strip() in ("", "-1") else parse_device_list(text, "CUDA_VISIBLE_DEVICES")


def driver_listing(proc_dir: Path = PROC_GPUS, which: Callable[[str], str | None] = shutil.which,
                   run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> tuple[tuple[str, ...], str]:
    """PCI bus ids of the GPUs the NVIDIA driver lists (sorted, i.e. nvidia-smi's order) and the source.

    ``/proc/driver/nvidia/gpus/<bus id>`` first (no process to start); else the ``GPU <n>:`` lines of
    ``nvidia-smi -L`` (their ids are then "gpu<n>"); else none.
    """
    try:
        found = sorted(p.name for p in proc_dir.iterdir())
    except OSError:
        found = []
    if found:
        return tuple(found), str(proc_dir)
    exe = which("nvidia-smi")
    if exe:
        try:
            out = run([exe, "-L"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        numbers = re.findall(r"^GPU (\d+):", out, re.M)
        if numbers:
            return tuple(f"gpu{n}" for n in numbers), "nvidia-smi -L"
    return (), "the driver (no /proc/driver/nvidia/gpus, no nvidia-smi)"


Listing = Callable[[], tuple[tuple[str, ...], str]]


def pool_from_env(env: Mapping[str, str], listing: Listing | None = None) -> Pool:
    """The devices jobs may claim: ``NCIL_GPU_POOL``, else ``CUDA_VISIBLE_DEVICES``, else the driver's GPUs
    (``listing``, default ``driver_listing``)."""
    if env.get(ENV_POOL) is not None:
        return Pool(parse_device_list(env[ENV_POOL], ENV_POOL), ENV_POOL)
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        return Pool(visible_devices(env["CUDA_VISIBLE_DEVICES"]), "CUDA_VISIBLE_DEVICES")
    buses, source = (listing or driver_listing)()
    return Pool(tuple(str(i) for i in range(len(buses))), source, pci=buses, from_driver=bool(buses))


def plan(env: Mapping[str, str], gpus_per_job: int, listing: Listing | None = None) -> Plan:
    """Whether a job that Snakemake counted as using ``gpus_per_job`` GPUs claims devices, and from which pool."""
    if gpus_per_job < 1:
        return Plan(0, None, "runtime.gpus_per_job is 0: not a GPU job")
    slurm_gpus = env.get("CUDA_VISIBLE_DEVICES") if env.get("SLURM_JOB_ID") else None
    if env.get("SLURM_JOB_ID") and env.get(ENV_POOL) is None:
        if slurm_gpus is None and env.get("SLURM_JOB_GPUS"):
            return Plan(0, None, f"SLURM job {env['SLURM_JOB_ID']} has its GPUs (SLURM_JOB_GPUS={env['SLURM_JOB_GPUS']})")
        if slurm_gpus is not None and len(visible_devices(slurm_gpus)) <= gpus_per_job:
            return Plan(0, None, f"SLURM job {env['SLURM_JOB_ID']} has its GPUs (CUDA_VISIBLE_DEVICES={slurm_gpus})")
    pool = pool_from_env(env, listing)
    if not pool.devices:
        return Plan(0, None, f"no GPU to claim: {pool.source} lists none")
    if gpus_per_job > len(pool.devices):
        raise GpuClaimError(f"runtime.gpus_per_job {gpus_per_job}: the pool has only {len(pool.devices)} GPU(s) "
                            f"({','.join(pool.devices)}, from {pool.source}); expected at most {len(pool.devices)}")
    return Plan(gpus_per_job, pool)


def check_pool(pool: Pool, device: str, listing: Listing | None = None) -> None:
    """``NCIL_GPU_POOL`` must name GPUs of this machine where a job opens CUDA on one of them
    (``runtime.device`` not cpu) and the driver lists GPUs: ``CUDA_VISIBLE_DEVICES=a`` would hide every
    real GPU, and the job would fall back to the CPU or fail. Simulated ids (the tests') are fine on a
    machine without GPUs, or for jobs on the CPU. UUIDs (GPU-/MIG-) are taken as they are."""
    if pool.source != ENV_POOL or device == "cpu":
        return
    buses, source = (listing or driver_listing)()
    if not buses:
        return
    known = tuple(str(i) for i in range(len(buses)))
    unknown = [d for d in pool.devices if d not in known and not d.startswith(("GPU-", "MIG-"))]
    if unknown:
        raise GpuClaimError(f"{ENV_POOL}={','.join(pool.devices)!r}: {unknown[0]!r} is not a GPU of this machine "
                            f"(expected ids among {','.join(known)}, the {len(known)} GPU(s) {source} lists, or "
                            f"GPU-/MIG- UUIDs; unset {ENV_POOL} to claim from all of them)")


def cuda_refusal(device: str, source: str, env: Mapping[str, str] | None = None) -> str:
    """Why ``runtime.device`` (of the params file ``source``) cannot run on this machine, in one line; ''
    when it can. Only cuda and cuda:N can be refused, when torch finds no CUDA GPU here (torch is
    imported for that, so call this after any GPU claim has set ``CUDA_VISIBLE_DEVICES``)."""
    if not device.startswith("cuda"):
        return ""
    import torch

    if torch.cuda.is_available():
        return ""
    env = os.environ if env is None else env
    hidden = env.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):  # CUDA's ways to hide every GPU (visible_devices)
        why = f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU"
    else:
        why = f"torch {torch.__version__} finds no CUDA GPU on this machine"
    return (f"{source}: runtime.device: {device!r} needs a CUDA GPU, but {why}; compose runtime=cpu (or "
            f"runtime.device=auto) to run here, or run on a GPU machine")


def lock_dir(env: Mapping[str, str], uid: int | None = None) -> Path:
    """``NCIL_GPU_LOCK_DIR``, else ``$XDG_RUNTIME_DIR/ncil-gpus``, else ``/tmp/ncil-gpus-<uid>``."""
    if env.get(ENV_LOCK_DIR):
        return Path(env[ENV_LOCK_DIR])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "ncil-gpus"
    return Path("/tmp") / f"ncil-gpus-{os.getuid() if uid is None else uid}"


def wait_limit(env: Mapping[str, str]) -> float | None:
    """``NCIL_GPU_WAIT_S`` in seconds (None: wait as long as it takes)."""
    text = env.get(ENV_WAIT)
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise GpuClaimError(f"{ENV_WAIT}={text!r}: expected a number of seconds > 0 (unset: no limit)")
    return value


def lock_file(folder: Path, device: str) -> Path:
    return folder / f"gpu-{re.sub(r'[^A-Za-z0-9._-]', '_', device)}.lock"


def check_device(device: str, count: int) -> None:
    """A claiming job sees its ``count`` GPUs as cuda:0..count-1; ``runtime.device cuda:K`` beyond them is refused."""
    match = re.fullmatch(r"cuda:(\d+)", device)
    if match and int(match.group(1)) >= count:
        raise GpuClaimError(f"runtime.device {device!r} with runtime.gpus_per_job {count}: the job sees only the "
                            f"GPU(s) it claims, numbered from cuda:0; expected device cuda, auto or cuda:0..cuda:{count - 1}")


def describe(claimed: Sequence[str], pool: Pool) -> str:
    """The claim's log line: ``GPU 2 of 0,1,2,3 (CUDA_VISIBLE_DEVICES=2)``, plus where the pool came from."""
    noun = "GPU" if len(claimed) == 1 else "GPUs"
    line = f"{noun} {','.join(claimed)} of {','.join(pool.devices)} (CUDA_VISIBLE_DEVICES={','.join(claimed)})"
    extra = f"pool from {pool.source}"
    if pool.pci:
        extra += ", PCI " + ",".join(pool.pci[pool.devices.index(d)] for d in claimed)
    return f"{line}; {extra}"


@dataclass
class Claim:
    """Devices held by this process: open, flock'ed lock files (released when the process ends)."""

    devices: tuple[str, ...]
    pool: Pool
    folder: Path
    fds: tuple[int, ...]

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)  # closing the only descriptor drops the flock
        self.fds = ()


def prepare_folder(folder: Path, default: bool) -> None:
    """Create the lock folder (0700 when it is the per-user default, which must be this user's own)."""
    try:
        folder.mkdir(mode=0o700 if default else 0o777, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError as err:
        raise GpuClaimError(f"GPU lock folder {folder}: cannot create it ({err.strerror or err}); set {ENV_LOCK_DIR}") from None
    if default and (not os.path.isdir(folder) or os.path.islink(folder) or info.st_uid != os.getuid()):
        raise GpuClaimError(f"GPU lock folder {folder}: expected a folder of user {os.getuid()}, found one of user "
                            f"{info.st_uid} or a link; remove it or set {ENV_LOCK_DIR}")


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding the exclusive flock of ``path``, or None if another process holds it."""
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except PermissionError:  # another user's lock file in a shared folder: flock needs no write access
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise GpuClaimError(f"GPU lock file {path}: cannot open it ({err.strerror or err}); set {ENV_LOCK_DIR}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise GpuClaimError(f"GPU lock file {path}: flock failed ({err.strerror or err})") from None
    return fd


def _note_holder(fd: int, note: str) -> None:
    """Write who holds the device into its lock file (diagnostics for waiting jobs; not the lock itself)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode(), 0)
    except OSError:
        pass


def holders(pool: Pool, folder: Path) -> str:
    """``0: pid 123 (...), 1: pid 456 (...)`` from the lock files, for the waiting line."""
    parts = []
    for device in pool.devices:
        try:
            note = lock_file(folder, device).read_text(errors="replace").strip()
        except OSError:
            note = ""
        parts.append(f"{device}: {note or '?'}")
    return "; ".join(parts)


def try_claim(pool: Pool, count: int, folder: Path, note: str = "") -> Claim | None:
    """The first ``count`` free devices of ``pool`` (in pool order), locked; None if fewer are free (all or nothing)."""
    held: list[tuple[str, int]] = []
    for device in pool.devices:
        fd = _try_lock(lock_file(folder, device))
        if fd is not None:
            held.append((device, fd))
            if len(held) == count:
                for _, lock_fd in held:
                    _note_holder(lock_fd, note)
                return Claim(tuple(d for d, _ in held), pool, folder, tuple(f for _, f in held))
    for _, fd in held:
        os.close(fd)
    return None


def claim(pool: Pool, count: int, folder: Path, *, wait_s: float | None = None, poll_s: float | None = None,
          log: Callable[[str], None] = print, note: str = "", clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Claim:
    """Claim ``count`` devices of ``pool``, waiting while they are taken (up to ``wait_s``; None: no limit)."""
    poll_s = POLL_S if poll_s is None else poll_s
    start = clock()
    next_log = start
    while True:
        got = try_claim(pool, count, folder, note)
        if got is not None:
            return got
        now = clock()
        waited = now - start
        if wait_s is not None and waited >= wait_s:
            raise GpuClaimError(f"no free GPU after {waited:.0f} s ({ENV_WAIT}={wait_s:g}): {count} of "
                                f"{','.join(pool.devices)} wanted, held by {holders(pool, folder)} (locks in {folder})")
        if now >= next_log:
            log(f"waiting for {count} free GPU(s) of {','.join(pool.devices)} (waited {waited:.0f} s, "
                f"limit {'none' if wait_s is None else f'{wait_s:g} s'}): held by {holders(pool, folder)}; locks in {folder}")
            next_log = now + WAIT_LOG_S
        sleep(poll_s if wait_s is None else max(0.0, min(poll_s, wait_s - waited)))


def unclaimed_warning(pool: Pool) -> str:
    """The log line of a job that claims nothing (gpus_per_job 0) on a machine with several GPUs: it will
    open the first visible one, as every other such job does; '' with fewer than two."""
    if len(pool.devices) < 2:
        return ""
    return (f"warning: runtime.gpus_per_job is 0, so this job claims no GPU and opens the first of "
            f"{','.join(pool.devices)} (from {pool.source}) like every other such job; compose runtime=gpu "
            f"(gpus_per_job 1) to give each job its own")


_HELD: list[Claim] = []  # this process's claim: kept referenced until the process ends


def release_all() -> None:
    """Drop this process's claim now (the CLI never needs to: the process's end drops it)."""
    while _HELD:
        _HELD.pop().release()


def claim_for_job(runtime, env: MutableMapping[str, str] | None = None,
                  log: Callable[[str], None] | None = None) -> Claim | None:
    """The CLI's hook for train/evaluate: claim the GPUs of ``runtime`` (the job's parsed ``RuntimeConfig``:
    its ``gpus_per_job`` and ``device``) and set CUDA_VISIBLE_DEVICES in ``env`` (default ``os.environ``,
    before torch is imported).

    Returns the claim (None where nothing is claimed); a second call in the same process reuses it.
    """
    environ = os.environ if env is None else env
    say = log or logging.getLogger("ncil").info
    count, device = runtime.gpus_per_job, runtime.device
    if _HELD:
        say(describe(_HELD[0].devices, _HELD[0].pool) + " (claimed earlier by this process)")
        return _HELD[0]
    decision = plan(environ, count)
    if decision.pool is None:
        if count >= 1:
            say(f"GPU claim skipped: {decision.reason}")
        elif device != "cpu" and not environ.get("SLURM_JOB_ID"):
            try:
                shared = unclaimed_warning(pool_from_env(environ))
            except GpuClaimError:  # a job that claims nothing does not fail on the pool's spelling
                shared = ""
            if shared:
                say(shared)
        return None
    check_device(device, decision.count)
    check_pool(decision.pool, device)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise GpuClaimError("a GPU claim must come before CUDA starts, but torch has initialised CUDA in this process")
    folder = lock_dir(environ)
    prepare_folder(folder, default=not environ.get(ENV_LOCK_DIR))
    note = f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv[:6])})"
    got = claim(decision.pool, decision.count, folder, wait_s=wait_limit(environ), log=say, note=note)
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(got.devices)
    if decision.pool.from_driver:
        environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    _HELD.append(got)
    say(describe(got.devices, got.pool))
    return got
