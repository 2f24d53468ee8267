"""profiles/slurm on a real SLURM: a one-node cluster (scripts/slurm_cluster.py) runs the tiny grid
through Snakemake's SLURM executor, and every output must be byte-identical to a local run.

Marker ``slurm`` (``python -m pytest -m slurm tests/test_slurm.py``). Where SLURM cannot be installed or
started here the tests are skipped with the reason, which .ci/run prints. The shared DVC cache a
cluster's clones use (docs/cluster.md) is tested here too, without SLURM.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, copy_project, env, run

CLUSTER = ROOT / "scripts" / "slurm_cluster.py"
# What a run writes that must not depend on where it ran (logs, benchmarks and the cost table are
# timings and host names: left out).
COMPARED = ("data", "results", "runs")
EXCLUDED = ("results/costs/",)
SLURM_TIMEOUT = 1800


def hashes(project: Path) -> dict[str, str]:
    out = {}
    for top in COMPARED:
        for path in sorted((project / top).rglob("*")):
            rel = path.relative_to(project).as_posix()
            if path.is_file() and not rel.startswith(EXCLUDED):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """SLURM_CONF of a running one-node cluster, stopped (its PIDs only) after the module."""
    state = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run([sys.executable, str(CLUSTER), "start", "--dir", str(state)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"SLURM unavailable: {proc.stderr.strip() or proc.stdout.strip()}")
    try:
        yield str(state / "slurm.conf")
    finally:
        subprocess.run([sys.executable, str(CLUSTER), "stop", "--dir", str(state)], check=False)


@pytest.mark.slurm
def test_profile_partitions_when_filled_in(tmp_path):
    """The commented partition keys of profiles/slurm are valid YAML of the expected shape once the
    user uncomments them (the cluster test runs with them uncommented)."""
    import yaml

    text = uncomment_partitions((ROOT / "profiles/slurm/config.yaml").read_text())
    cfg = yaml.safe_load(text)
    assert cfg["executor"] == "slurm"
    assert cfg["slurm-status-command"] == "squeue"
    assert cfg["slurm-keep-successful-logs"] is True and cfg["slurm-logdir"] == "logs/slurm"
    assert 'slurm_partition="cpu"' in cfg["default-resources"]
    assert {rule: v["slurm_partition"] for rule, v in cfg["set-resources"].items()} == {
        "train_base": "gpu", "train": "gpu", "evaluate": "gpu", "train_base_memory": "gpu", "train_memory": "gpu",
        "train_base_statistics": "gpu", "train_statistics": "gpu", "evaluate_statistics": "gpu"}
    assert {"prepare=setup", "split=setup", "summarize=report"} <= set(cfg["groups"])


def uncomment_partitions(text: str) -> str:
    """profiles/slurm's config with the partition keys uncommented (slurm_account stays commented:
    the test cluster has no accounting to check an account against)."""
    text = re.sub(r"^(\s*)# (- slurm_partition=)", r"\1\2", text, flags=re.M)
    text = re.sub(r"^# (set-resources:)", r"\1", text, flags=re.M)
    return re.sub(r"^#(   \w+: \{slurm_partition)", r"\1", text, flags=re.M)


def slurm_project(dest: Path) -> Path:
    project = copy_project(dest)
    profile = project / "profiles" / "slurm" / "config.yaml"
    profile.write_text(uncomment_partitions(profile.read_text()))
    return project


def slurm_env(conf: str) -> dict:
    e = env()
    e["SLURM_CONF"] = conf
    return e


def snakemake_slurm(project: Path, conf: str, *targets: str, check: bool = True) -> subprocess.CompletedProcess:
    cores = str(min(os.cpu_count() or 1, 8))  # a group job must fit the node (profiles/slurm: cores)
    cmd = ["snakemake", "--executor", "slurm", "--workflow-profile", "profiles/slurm", "--cores", cores, "--verbose", *targets]
    proc = subprocess.run(cmd, cwd=project, env=slurm_env(conf), capture_output=True, text=True, timeout=SLURM_TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def local_log(project: Path) -> Path:
    return project.with_name(project.name + ".log")


def local_run(project: Path, *targets: str) -> subprocess.Popen:
    """``snakemake --cores 1`` in ``project``, started in the background: the local reference run goes on
    while the SLURM run, which mostly waits on the scheduler, runs beside it (``finish_local`` waits). Its
    output goes to ``local_log(project)`` (a pipe nobody reads while the SLURM run goes on could fill up)."""
    with open(local_log(project), "w") as log:
        return subprocess.Popen(["snakemake", "--cores", "1", *targets], cwd=project, env=env(),
                                stdout=log, stderr=subprocess.STDOUT)


def finish_local(proc: subprocess.Popen, project: Path) -> str:
    """Wait for ``local_run`` (killed past SLURM_TIMEOUT); the end of its output, for the test to show."""
    try:
        proc.wait(timeout=SLURM_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return local_log(project).read_text()[-4000:]


@pytest.mark.slurm
def test_tiny_grid_on_slurm_is_byte_identical_to_a_local_run(cluster, tmp_path):
    local = copy_project(tmp_path / "local")
    reference = local_run(local)
    try:
        remote = slurm_project(tmp_path / "slurm")
        proc = snakemake_slurm(remote, cluster)
    finally:
        local_out = finish_local(reference, local)
    assert reference.returncode == 0, f"local snakemake failed:\n{local_out}"
    log = proc.stdout + proc.stderr
    expected, got = hashes(local), hashes(remote)
    assert len(expected) > 20  # data, 2 splits, 7 checkpoints + centers, evaluations, metrics, tables, figures
    assert set(got) == set(expected), f"files differ: {sorted(set(got) ^ set(expected))}"
    assert [f for f in expected if got[f] != expected[f]] == []
    # GPU rules went to the gpu partition, grouped CPU steps to cpu, with a time limit (`--verbose`
    # logs each sbatch call); job logs are kept (also on success) under logs/slurm/
    assert re.search(r"sbatch call: .*rule_train_base.* -p gpu -t \d+ --mem \d+ --requeue", log)
    assert re.search(r"sbatch call: .*group_setup.* -p cpu -t \d+ --mem \d+", log)
    kept = list((remote / "logs" / "slurm").rglob("*.log"))
    assert any("train_base" in str(p) for p in kept) and any("group_report" in str(p) for p in kept)
    # small steps were grouped: fewer sbatch calls than jobs
    submitted = len(re.findall(r"has been submitted with SLURM jobid", log))
    assert 0 < submitted < 20


@pytest.mark.slurm
@pytest.mark.skipif(not (ROOT / "ncil" / "learning" / "resume.py").exists(),
                    reason="ncil/learning/resume.py does not exist yet: training cannot resume after SIGTERM (issue 11 item 4)")
def test_sigterm_through_slurm_resumes_to_identical_bytes(cluster, tmp_path):
    """scancel --signal=TERM a running training job once it has saved resume.pt; Snakemake's retry
    (profiles/slurm: retries) resumes it, and the task's checkpoint and centers are byte-identical to
    an uninterrupted local run."""
    target = "runs/digits/base4/plain/seed1/task_0"
    files = [f"{target}/model.pt", f"{target}/centers.parquet"]
    overrides = ["train.epochs=30"]  # long enough to catch between two epochs
    local = copy_project(tmp_path / "local")
    run([sys.executable, "-m", "ncil", "params", *overrides], local)
    reference = local_run(local, *files)
    sm = None
    try:
        remote = slurm_project(tmp_path / "slurm")
        run([sys.executable, "-m", "ncil", "params", *overrides], remote)
        cores = str(min(os.cpu_count() or 1, 8))
        cmd = ["snakemake", "--executor", "slurm", "--workflow-profile", "profiles/slurm", "--cores", cores, *files]
        sm = subprocess.Popen(cmd, cwd=remote, env=slurm_env(cluster), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        state, deadline = remote / target / "resume.pt", time.monotonic() + 900
        while not state.exists():
            assert sm.poll() is None, f"snakemake ended before a resume state was written:\n{sm.stdout.read()[-4000:]}"
            assert time.monotonic() < deadline, "no resume.pt within 15 minutes"
            time.sleep(0.5)
        jobs = subprocess.run(["squeue", "-h", "-o", "%i %j", "-t", "RUNNING"], env=slurm_env(cluster),
                              capture_output=True, text=True, check=True).stdout.split("\n")
        ids = [line.split()[0] for line in jobs if line.strip()]
        assert ids, "no running SLURM job to signal"
        subprocess.run(["scancel", "--signal=TERM", *ids], env=slurm_env(cluster), check=True)
        out, _ = sm.communicate(timeout=SLURM_TIMEOUT)
    finally:
        if sm is not None and sm.poll() is None:
            sm.kill()
        local_out = finish_local(reference, local)
    assert reference.returncode == 0, f"local snakemake failed:\n{local_out}"
    assert sm.returncode == 0, out[-4000:]
    assert re.search(r"[Tt]rying to restart|attempt 2|Retry", out), "the job was not retried:\n" + out[-3000:]
    for f in files:
        assert (remote / f).read_bytes() == (local / f).read_bytes(), f"{f}: resumed run differs from a clean run"
    assert not (remote / target / "resume.pt").exists(), "resume state left behind after the task completed"


@pytest.mark.slow
def test_shared_dvc_cache_second_clone_checks_out_without_rerunning(tmp_path):
    """Clone A commits its outputs into a cache on the "shared file system" (cache.dir, cache.shared
    group, cache.type symlink); clone B, a git clone, gets them with `dvc checkout`: nothing reruns,
    `dvc status` is clean and the outputs are links into the shared cache, not copies."""
    from tests.test_dvc import dvc, git, init_repo

    shared = tmp_path / "shared-cache"
    a = init_repo(copy_project(tmp_path / "a"))
    dvc(a, "cache", "dir", str(shared))
    dvc(a, "config", "cache.shared", "group")
    dvc(a, "config", "cache.type", "symlink")
    stage = "prepare_digits"
    dvc(a, "repro", stage)
    git(a, "add", "-A")
    git(a, "commit", "-qm", "prepared")
    outputs = [p.relative_to(a) for p in sorted((a / "data" / "digits").iterdir())]
    assert len(outputs) >= 7  # manifest + train/val/test images and labels
    assert all((a / p).is_symlink() for p in outputs)

    b = tmp_path / "b"
    run(["git", "clone", "-q", str(a), str(b)], tmp_path)
    assert not (b / "data" / "digits").exists()
    dvc(b, "checkout", stage)
    status = dvc(b, "status", stage).stdout
    assert "up to date" in status.lower() or status.strip() == "", status
    for p in outputs:
        link = b / p
        assert link.is_symlink(), f"{p}: a copy, not a link into the shared cache"
        assert Path(os.readlink(link)).resolve().is_relative_to(shared.resolve())
        assert link.read_bytes() == (a / p).read_bytes()
    assert not (b / "logs" / "prepare").exists()  # nothing ran in clone B
    # group-shared cache: files readable and writable by the group
    cached = next(f for f in shared.rglob("*") if f.is_file())
    assert cached.stat().st_mode & 0o040
