"""One GPU per job (ncil/pipeline/devices.py): the pool, the plan, the locks, and concurrent processes claiming."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ncil.pipeline import devices
from ncil.pipeline.devices import GpuClaimError, Pool
from tests import conftest

NO_DRIVER = lambda: ((), "the driver (none here)")  # noqa: E731


@pytest.fixture(autouse=True)
def _no_claim_left():
    yield
    devices.release_all()


# --- the pool -------------------------------------------------------------------------------------


def test_device_lists_are_parsed_and_checked():
    assert devices.parse_device_list(" 0, 2,3,", "X") == ("0", "2", "3")
    assert devices.parse_device_list("GPU-8f2c1a4e-77aa,MIG-1b2c", "X") == ("GPU-8f2c1a4e-77aa", "MIG-1b2c")
    with pytest.raises(GpuClaimError, match=r"NCIL_GPU_POOL='0,1,0': a device is listed twice"):
        devices.parse_device_list("0,1,0", "NCIL_GPU_POOL")
    with pytest.raises(GpuClaimError, match=r"'\$1' is not a device id"):
        devices.parse_device_list("0,$1", "NCIL_GPU_POOL")
    assert devices.visible_devices("") == () and devices.visible_devices("-1") == ()  # CUDA: no GPU


def test_driver_listing_reads_proc_then_nvidia_smi(tmp_path):
    proc = tmp_path / "gpus"
    for bus in ("0000:b1:00.0", "0000:1a:00.0", "0000:3b:00.0"):
        (proc / bus).mkdir(parents=True)
    never = lambda name: pytest.fail("nvidia-smi must not run when /proc lists the GPUs")  # noqa: E731
    assert devices.driver_listing(proc, which=never) == (("0000:1a:00.0", "0000:3b:00.0", "0000:b1:00.0"), str(proc))

    smi_out = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aa)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bb)\n"
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, smi_out, "")

    missing = tmp_path / "absent"
    assert devices.driver_listing(missing, which=lambda n: "/usr/bin/nvidia-smi", run=fake_run) == (
        ("gpu0", "gpu1"), "nvidia-smi -L")
    assert calls == [["/usr/bin/nvidia-smi", "-L"]]
    assert devices.driver_listing(missing, which=lambda n: None)[0] == ()


def test_pool_prefers_the_override_then_cuda_visible_devices_then_the_driver():
    driver = lambda: (("0000:1a:00.0", "0000:3b:00.0"), "/proc/driver/nvidia/gpus")  # noqa: E731
    both = {"NCIL_GPU_POOL": "5,6,7", "CUDA_VISIBLE_DEVICES": "2,3"}
    assert devices.pool_from_env(both, driver) == Pool(("5", "6", "7"), "NCIL_GPU_POOL")
    assert devices.pool_from_env({"CUDA_VISIBLE_DEVICES": "2,3"}, driver) == Pool(("2", "3"), "CUDA_VISIBLE_DEVICES")
    assert devices.pool_from_env({"CUDA_VISIBLE_DEVICES": ""}, driver).devices == ()  # the user hid every GPU
    assert devices.pool_from_env({}, driver) == Pool(("0", "1"), "/proc/driver/nvidia/gpus",
                                                     pci=("0000:1a:00.0", "0000:3b:00.0"), from_driver=True)


# --- the plan: who claims, from what --------------------------------------------------------------


def test_plan_claims_only_for_gpu_jobs_and_leaves_slurm_alone():
    four = lambda: (("a", "b", "c", "d"), "/proc/driver/nvidia/gpus")  # noqa: E731
    assert devices.plan({}, 0, four) == devices.Plan(0, None, "runtime.gpus_per_job is 0: not a GPU job")
    p = devices.plan({}, 1, four)
    assert (p.count, p.pool.devices) == (1, ("0", "1", "2", "3"))
    # SLURM gave the job its GPU: nothing to do
    slurm = devices.plan({"SLURM_JOB_ID": "77", "CUDA_VISIBLE_DEVICES": "3"}, 1, four)
    assert slurm.pool is None and slurm.reason == "SLURM job 77 has its GPUs (CUDA_VISIBLE_DEVICES=3)"
    assert devices.plan({"SLURM_JOB_ID": "77", "SLURM_JOB_GPUS": "1"}, 1, four).pool is None
    # a local run inside a 4-GPU allocation shares its GPUs out; a SLURM job without GPUs is a workstation
    inside = devices.plan({"SLURM_JOB_ID": "77", "CUDA_VISIBLE_DEVICES": "4,5,6,7"}, 1, four)
    assert inside.pool.devices == ("4", "5", "6", "7") and inside.pool.source == "CUDA_VISIBLE_DEVICES"
    assert devices.plan({"SLURM_JOB_ID": "77"}, 1, four).pool.devices == ("0", "1", "2", "3")
    none = devices.plan({}, 1, NO_DRIVER)
    assert none.pool is None and none.reason == "no GPU to claim: the driver (none here) lists none"
    with pytest.raises(GpuClaimError, match=r"runtime.gpus_per_job 3: the pool has only 2 GPU\(s\) \(0,1, from NCIL_GPU_POOL\)"):
        devices.plan({"NCIL_GPU_POOL": "0,1"}, 3, four)


def test_settings_lock_folder_wait_limit_and_device(tmp_path):
    assert devices.lock_dir({"NCIL_GPU_LOCK_DIR": "/x/locks", "XDG_RUNTIME_DIR": "/run/user/5"}) == Path("/x/locks")
    assert devices.lock_dir({"XDG_RUNTIME_DIR": "/run/user/5"}) == Path("/run/user/5/ncil-gpus")
    assert devices.lock_dir({}, uid=1234) == Path("/tmp/ncil-gpus-1234")
    assert devices.lock_file(Path("/l"), "MIG-GPU-aa/1/0") == Path("/l/gpu-MIG-GPU-aa_1_0.lock")
    assert devices.wait_limit({}) is None and devices.wait_limit({"NCIL_GPU_WAIT_S": "90"}) == 90.0
    for bad in ("0", "-5", "soon"):
        with pytest.raises(GpuClaimError, match=rf"NCIL_GPU_WAIT_S='{bad}': expected a number of seconds > 0"):
            devices.wait_limit({"NCIL_GPU_WAIT_S": bad})
    devices.check_device("cuda", 1), devices.check_device("cuda:0", 1), devices.check_device("cuda:1", 2)
    with pytest.raises(GpuClaimError, match=r"runtime.device 'cuda:1' with runtime.gpus_per_job 1: .* cuda:0..cuda:0"):
        devices.check_device("cuda:1", 1)
    # the per-user default folder must be this user's own folder, not a link someone left
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "ncil-gpus").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(GpuClaimError, match=r"expected a folder of user"):
        devices.prepare_folder(devices.lock_dir({"XDG_RUNTIME_DIR": str(tmp_path)}), default=True)


def test_the_log_line_names_the_gpu_and_the_pool():
    pool = Pool(("0", "1", "2", "3"), "NCIL_GPU_POOL")
    assert devices.describe(("2",), pool) == "GPU 2 of 0,1,2,3 (CUDA_VISIBLE_DEVICES=2); pool from NCIL_GPU_POOL"
    driver = Pool(("0", "1"), "/proc/driver/nvidia/gpus", pci=("0000:1a:00.0", "0000:3b:00.0"), from_driver=True)
    assert devices.describe(("0", "1"), driver) == (
        "GPUs 0,1 of 0,1 (CUDA_VISIBLE_DEVICES=0,1); pool from /proc/driver/nvidia/gpus, PCI 0000:1a:00.0,0000:3b:00.0")


# --- the locks, in one process (flock: each open of a lock file is its own claimant) ---------------


def test_claims_take_free_devices_in_order_and_release_them(tmp_path):
    pool = Pool(("0", "1"), "test")
    a = devices.try_claim(pool, 1, tmp_path, note="job a")
    b = devices.try_claim(pool, 1, tmp_path, note="job b")
    assert (a.devices, b.devices) == (("0",), ("1",))
    assert devices.try_claim(pool, 1, tmp_path) is None  # both taken
    assert devices.holders(pool, tmp_path) == "0: job a; 1: job b"
    assert devices.try_claim(pool, 2, tmp_path) is None
    a.release()
    # all or nothing: two wanted, one free -> none taken, and the free one is still free afterwards
    assert devices.try_claim(pool, 2, tmp_path) is None
    c = devices.try_claim(pool, 1, tmp_path)
    assert c.devices == ("0",)
    b.release(), c.release()
    both = devices.try_claim(pool, 2, tmp_path)
    assert both.devices == ("0", "1")


def test_a_waiting_claim_logs_and_gives_up_at_its_limit(tmp_path):
    pool = Pool(("0",), "test")
    holder = devices.try_claim(pool, 1, tmp_path, note="pid 42")
    now = [100.0]
    lines: list[str] = []

    def sleep(s):
        now[0] += s

    with pytest.raises(GpuClaimError) as err:
        devices.claim(pool, 1, tmp_path, wait_s=1500, poll_s=100, log=lines.append, clock=lambda: now[0], sleep=sleep)
    assert str(err.value) == (f"no free GPU after 1500 s (NCIL_GPU_WAIT_S=1500): 1 of 0 wanted, held by 0: pid 42 "
                              f"(locks in {tmp_path})")
    # one line at once, then one every WAIT_LOG_S (600 s): at 0, 600, 1200
    assert [line.split("(waited ")[1].split(" s,")[0] for line in lines] == ["0", "600", "1200"]
    assert lines[0] == f"waiting for 1 free GPU(s) of 0 (waited 0 s, limit 1500 s): held by 0: pid 42; locks in {tmp_path}"
    # the holder lets go while another waits (no limit): the waiter gets the device at the next try
    polls = []

    def release_on_third(s):
        polls.append(s)
        if len(polls) == 3:
            holder.release()

    got = devices.claim(pool, 1, tmp_path, poll_s=0.5, log=lambda m: None, sleep=release_on_third)
    assert got.devices == ("0",) and polls == [0.5, 0.5, 0.5]


# --- the CLI's hook --------------------------------------------------------------------------------


def _params(tmp_path, device="cpu", gpus=1) -> str:
    """A valid params file (the committed one) with this runtime.device and runtime.gpus_per_job."""
    path = tmp_path / "params.yaml"
    text = (conftest.ROOT / "params.yaml").read_text()
    text, n = re.subn(r"(?m)^(runtime: \{device: )[^,]+(, .*gpus_per_job: )\d+", rf"\g<1>{device}\g<2>{gpus}", text)
    assert n == 1, "params.yaml's runtime line changed shape"
    path.write_text(text)
    return str(path)


def _runtime(tmp_path, device="cpu", gpus=1):
    """The parsed runtime section of ``_params`` (what the CLI hands ``claim_for_job``)."""
    from ncil.pipeline.config import load_params

    return load_params(_params(tmp_path, device, gpus))[0].runtime


TWO_GPUS = lambda: (("0000:1a:00.0", "0000:3b:00.0"), "/proc/driver/nvidia/gpus")  # noqa: E731


def test_a_pool_naming_no_gpu_of_this_machine_is_refused_where_a_job_opens_cuda():
    with pytest.raises(GpuClaimError, match=r"^NCIL_GPU_POOL='a': 'a' is not a GPU of this machine \(expected ids "
                                            r"among 0,1, the 2 GPU\(s\) /proc/driver/nvidia/gpus lists, or GPU-/MIG- "
                                            r"UUIDs; unset NCIL_GPU_POOL to claim from all of them\)$"):
        devices.check_pool(Pool(("a",), "NCIL_GPU_POOL"), "auto", TWO_GPUS)
    with pytest.raises(GpuClaimError, match=r"'2' is not a GPU of this machine"):
        devices.check_pool(Pool(("1", "2"), "NCIL_GPU_POOL"), "cuda", TWO_GPUS)
    devices.check_pool(Pool(("1", "GPU-8f2c1a4e"), "NCIL_GPU_POOL"), "cuda", TWO_GPUS)  # ids of this machine
    devices.check_pool(Pool(("a",), "NCIL_GPU_POOL"), "cpu", TWO_GPUS)  # a CPU job hides nothing it uses
    devices.check_pool(Pool(("a",), "NCIL_GPU_POOL"), "auto", NO_DRIVER)  # no GPU here: simulated devices
    devices.check_pool(Pool(("7",), "CUDA_VISIBLE_DEVICES"), "auto", TWO_GPUS)  # only the override is checked


def test_the_hook_refuses_a_pool_that_would_hide_the_real_gpus(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "driver_listing", lambda *args, **kwargs: TWO_GPUS())
    env = {"NCIL_GPU_POOL": "a", "NCIL_GPU_LOCK_DIR": str(tmp_path / "locks")}
    with pytest.raises(GpuClaimError, match=r"^NCIL_GPU_POOL='a': 'a' is not a GPU of this machine"):
        devices.claim_for_job(_runtime(tmp_path, device="auto"), env, log=lambda line: None)
    assert "CUDA_VISIBLE_DEVICES" not in env and not devices._HELD


def test_a_cuda_job_on_a_machine_without_cuda_stops_in_one_line_before_its_data(tmp_path):
    """CUDA_VISIBLE_DEVICES='' hides every GPU, so torch finds none here on any machine."""
    params = _params(tmp_path, device="cuda:0", gpus=0)
    env = {**conftest.env(), "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(conftest.ROOT)}
    cmd = [sys.executable, "-m", "ncil", "train", "--params", params, "--split", str(tmp_path / "split.json"),
           "--task", "0", "--seed", "1", "--method", "finetune", "--checkpoint", str(tmp_path / "model.pt"),
           "--centers", str(tmp_path / "centers.parquet")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr == (
        f"error: {params}: runtime.device: 'cuda:0' needs a CUDA GPU, but CUDA_VISIBLE_DEVICES='' hides every GPU; "
        "compose runtime=cpu (or runtime.device=auto) to run here, or run on a GPU machine\n"), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written
    assert devices.cuda_refusal("cpu", "p.yaml") == devices.cuda_refusal("auto", "p.yaml") == ""  # never refused


def test_the_hook_sets_cuda_visible_devices_and_logs_the_claim(tmp_path):
    env = {"NCIL_GPU_POOL": "0,1,2,3", "NCIL_GPU_LOCK_DIR": str(tmp_path / "locks")}
    (tmp_path / "locks").mkdir()
    taken = devices.try_claim(Pool(("0", "1", "2", "3"), "t"), 2, tmp_path / "locks")  # another job holds 0 and 1
    lines: list[str] = []
    got = devices.claim_for_job(_runtime(tmp_path), env, log=lines.append)
    assert got.devices == ("2",) and env["CUDA_VISIBLE_DEVICES"] == "2" and "CUDA_DEVICE_ORDER" not in env
    assert lines == ["GPU 2 of 0,1,2,3 (CUDA_VISIBLE_DEVICES=2); pool from NCIL_GPU_POOL"]
    assert (tmp_path / "locks" / "gpu-2.lock").read_text().startswith(f"pid {os.getpid()} since ")
    # a second call in this process keeps its claim (a fresh flock would wait for itself)
    assert devices.claim_for_job(_runtime(tmp_path), env, log=lines.append) is got
    taken.release()


def test_the_hook_numbers_driver_gpus_as_nvidia_smi_does(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "driver_listing", lambda: (("0000:1a:00.0", "0000:3b:00.0"), "/proc/driver/nvidia/gpus"))
    env = {"NCIL_GPU_LOCK_DIR": str(tmp_path)}
    got = devices.claim_for_job(_runtime(tmp_path, device="cuda"), env, log=lambda m: None)
    assert got.devices == ("0",) and env["CUDA_VISIBLE_DEVICES"] == "0" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_the_hook_refuses_or_skips_with_a_reason(tmp_path, monkeypatch):
    env = {"NCIL_GPU_POOL": "0,1", "NCIL_GPU_LOCK_DIR": str(tmp_path / "locks")}
    with pytest.raises(GpuClaimError, match="runtime.device 'cuda:1'"):
        devices.claim_for_job(_runtime(tmp_path, device="cuda:1"), dict(env), log=lambda m: None)
    assert not (tmp_path / "locks").exists()  # refused before any lock
    lines: list[str] = []
    slurm = {"SLURM_JOB_ID": "9", "CUDA_VISIBLE_DEVICES": "1"}
    assert devices.claim_for_job(_runtime(tmp_path), slurm, log=lines.append) is None
    assert slurm["CUDA_VISIBLE_DEVICES"] == "1"
    # not a GPU job: silent on a CPU, a warning where several GPUs would all be opened as cuda:0
    assert devices.claim_for_job(_runtime(tmp_path, device="cpu", gpus=0), dict(env), log=lines.append) is None
    assert devices.claim_for_job(_runtime(tmp_path, device="auto", gpus=0), dict(env), log=lines.append) is None
    assert lines[0] == "GPU claim skipped: SLURM job 9 has its GPUs (CUDA_VISIBLE_DEVICES=1)"
    assert lines[1].startswith("warning: runtime.gpus_per_job is 0, so this job claims no GPU and opens the first of 0,1")
    assert len(lines) == 2
    monkeypatch.setattr(devices, "driver_listing", NO_DRIVER)
    assert devices.claim_for_job(_runtime(tmp_path, device="auto", gpus=0), {}, log=lines.append) is None
    assert len(lines) == 2  # the default grid on a CPU machine: no line at all


# --- concurrent processes --------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from ncil.pipeline import devices
    job, mode, params, folder = sys.argv[1:5]
    from ncil.pipeline.config import load_params
    runtime = load_params(params)[0].runtime
    devices.POLL_S = 0.05
    log = Path(folder, f"job{job}.log")
    def say(line):
        with open(log, "a") as fh:
            fh.write(line + "\\n")
    def note(**rec):
        with open(Path(folder, "record.jsonl"), "a") as fh:
            fh.write(json.dumps({"job": job, **rec}) + "\\n")
    devices.claim_for_job(runtime, log=say)
    note(device=os.environ["CUDA_VISIBLE_DEVICES"], start=time.monotonic())
    if mode == "hang":
        time.sleep(600)
    while mode == "fail" and not Path(folder, "go").exists():  # the test says when to fail
        time.sleep(0.02)
    time.sleep(0.3 if mode == "ok" else 0)
    note(end=time.monotonic())  # before the exit releases the device
    if mode == "fail":
        raise RuntimeError("this job fails while holding its GPU")
""")


def _records(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            out.setdefault(rec.pop("job"), {}).update(rec)
    return out


def _wait_for(predicate, what: str, limit: float = 60.0):
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_concurrent_jobs_share_two_devices_and_get_back_those_of_failed_and_killed_jobs(tmp_path):
    """5 processes, 2 devices: job 1 holds one until it is killed -9, job 2 fails while holding the other,
    jobs 3-5 wait, then take the devices those two left, one after the other."""
    params, record = _params(tmp_path), tmp_path / "record.jsonl"
    env = {**conftest.env(), "NCIL_GPU_POOL": "0,1", "NCIL_GPU_LOCK_DIR": str(tmp_path / "locks"),
           "PYTHONPATH": str(conftest.ROOT)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("SLURM_JOB_ID", None)

    def start(job: str, mode: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", WORKER, job, mode, params, str(tmp_path)], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def log(job: str) -> str:
        path = tmp_path / f"job{job}.log"
        return path.read_text() if path.exists() else ""

    procs = {"1": start("1", "hang"), "2": start("2", "fail")}
    _wait_for(lambda: {"1", "2"} <= set(_records(record)), "jobs 1 and 2 claiming")
    for job in ("3", "4", "5"):
        procs[job] = start(job, "ok")
    _wait_for(lambda: all("waiting for 1 free GPU(s) of 0,1" in log(j) for j in "345"), "jobs 3-5 waiting")
    assert set(_records(record)) == {"1", "2"}  # nobody got a third device
    (tmp_path / "go").touch()
    assert procs["2"].wait(60) == 1
    _wait_for(lambda: len(_records(record)) == 3, "a waiting job taking job 2's device")
    kill_time = time.monotonic()
    procs["1"].send_signal(signal.SIGKILL)
    assert procs["1"].wait(60) == -signal.SIGKILL
    for job in ("3", "4", "5"):
        assert procs[job].wait(60) == 0, procs[job].communicate()[1]
    errs = {job: p.communicate()[1] for job, p in procs.items()}
    recs = _records(record)
    recs["1"]["end"] = kill_time

    assert {recs["1"]["device"], recs["2"]["device"]} == {"0", "1"}
    assert "RuntimeError: this job fails while holding its GPU" in errs["2"]
    assert all(f"GPU {r['device']} of 0,1 (CUDA_VISIBLE_DEVICES={r['device']}); pool from NCIL_GPU_POOL" in log(job)
               for job, r in recs.items())
    spans = sorted((r["start"], r["end"], r["device"], job) for job, r in recs.items())
    for s1, e1, d1, j1 in spans:  # while job j1 held its device, nobody else held that device
        assert all(d2 != d1 for s2, e2, d2, j2 in spans if j2 != j1 and s2 < e1 and s1 < e2), spans
    events = sorted([(s, 1) for s, _, _, _ in spans] + [(e, -1) for _, e, _, _ in spans], key=lambda ev: (ev[0], ev[1]))
    running = [sum(step for _, step in events[: i + 1]) for i in range(len(events))]
    assert max(running) == 2, (running, spans)  # two at once, never three
    # the failed job's device went to a waiting job after it failed, the killed job's after the kill
    later = [recs[j] for j in "345"]
    assert any(r["device"] == recs["2"]["device"] and recs["2"]["end"] < r["start"] < kill_time for r in later), spans
    assert any(r["device"] == recs["1"]["device"] and r["start"] > kill_time for r in later), spans
