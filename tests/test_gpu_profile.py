"""The GPU workstation profile: N `gpu` units, every train/evaluate job claims one, each on its own GPU."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime

import pytest

from ncil.pipeline.config import parse_params
from ncil.pipeline.hydra_conf import compose
from tests import conftest
from tests.conftest import copy_project, ncil, run


def _resources(output: str) -> dict[str, set[int]]:
    """gpu claimed per rule, from a dry run's job listing."""
    claims: dict[str, set[int]] = {}
    for rule, gpu in re.findall(r"^(?:local)?rule (\w+):.*?resources: [^\n]*?gpu=(\d+)", output, re.M | re.S):
        claims.setdefault(rule, set()).add(int(gpu))
    return claims


@pytest.mark.slow
def test_gpu_profile_gives_each_gpu_job_the_whole_gpu(tmp_path):
    project = copy_project(tmp_path / "p")
    target = ["results/digits/base4_inc2/finetune/seed1/metrics.json"]
    default = run([sys.executable, "-m", "snakemake", "-n", *target], project).stdout
    gpu = run([sys.executable, "-m", "snakemake", "-n", "--workflow-profile", "profiles/gpu", *target], project).stdout
    assert _resources(default)["train"] == {0}  # CPU machine: runtime.gpus_per_job 0
    claims = _resources(gpu)
    # one unit in total (profile), one per job: train/evaluate jobs run one at a time, data jobs beside them
    assert claims["train"] == {1} and claims["evaluate"] == {1}
    assert claims["prepare"] == {0} and claims["split"] == {0}
    # without the profile's set-resources, the claim comes from runtime.gpus_per_job (rules/train.smk);
    # Snakemake clips each claim to what the machine offers, so offer more than one unit here
    offer = ["--resources", "gpu=4"]
    assert _resources(run([sys.executable, "-m", "snakemake", "-n", *target, *offer], project).stdout)["train"] == {0}
    ncil(["params", "runtime=gpu"], project)
    from_config = _resources(run([sys.executable, "-m", "snakemake", "-n", *target, *offer], project).stdout)
    assert from_config["train"] == {1} and from_config["evaluate"] == {1} and from_config["split"] == {0}
    p = parse_params(compose(["runtime=gpu"]))
    assert (p.runtime.device, p.runtime.gpus_per_job, p.runtime.compile) == ("cuda", 1, False)


def _log_span(path) -> tuple[datetime, datetime]:
    stamps = [datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S") for line in path.read_text().splitlines()
              if line[:4].isdigit()]
    return stamps[0], stamps[-1]


@pytest.mark.slow
def test_gpu_jobs_never_overlap_under_the_gpu_profile(tmp_path):
    """A real run of the tiny grid's models with 2 cores: the finetune and joint chains could run side by
    side after the shared task 0 (they do under profiles/default), but under the GPU profile every train
    job waits for the GPU."""
    project = copy_project(tmp_path / "p")
    run([sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/gpu", "--cores", "2", "models"], project)
    logs = sorted((project / "logs/train").rglob("*.log"))
    assert len(logs) == 7  # shared task 0 + 3 tasks x 2 methods
    spans = sorted(_log_span(p) for p in logs)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, spans


def _claims(logs) -> list[tuple[datetime, datetime, str, str]]:
    """(first line, last line, claimed device, log) of each job log, from its "GPU d of ..." line."""
    out = []
    for path in logs:
        found = re.findall(r" INFO GPU (\S+) of 0,1 \(CUDA_VISIBLE_DEVICES=\1\); pool from NCIL_GPU_POOL$",
                           path.read_text(), re.M)
        assert len(found) == 1, (path, path.read_text()[:2000])
        out.append((*_log_span(path), found[0], path.name))
    return out


@pytest.mark.slow
def test_n_gpus_run_n_jobs_at_once_each_on_its_own_gpu(tmp_path):
    """The tiny grid under profiles/gpu with two simulated GPUs (gpu=2, 4 cores): the train and evaluate
    jobs that overlapped in time held different GPUs, and every output is byte-identical to a plain run."""
    plain = copy_project(tmp_path / "plain")
    run([sys.executable, "-m", "snakemake", "--cores", "1", "metrics"], plain)
    project = copy_project(tmp_path / "gpu")
    ncil(["params", "runtime.device=cpu", "runtime.gpus_per_job=1"], project)
    env = {**conftest.env(), "NCIL_GPU_POOL": "0,1", "NCIL_GPU_LOCK_DIR": str(tmp_path / "locks")}
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/gpu", "--resources", "gpu=2",
           "--cores", "4", "metrics"]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]

    jobs = _claims(sorted((project / "logs/train").rglob("*.log")) + sorted((project / "logs/evaluate").rglob("*.log")))
    assert len(jobs) == 9  # shared task 0 + 3 tasks x 2 methods, 2 evaluations
    assert {device for *_, device, _ in jobs} == {"0", "1"}
    overlapping = [(a, b) for i, a in enumerate(jobs) for b in jobs[i + 1:] if a[0] < b[1] and b[0] < a[1]]
    assert overlapping  # the two methods' chains ran side by side after task 0
    assert all(a[2] != b[2] for a, b in overlapping), overlapping
    outputs = sorted(p.relative_to(plain) for p in [*(plain / "runs").rglob("*.pt"), *(plain / "runs").rglob("*.parquet"),
                                                     *(plain / "results").rglob("eval/*.parquet")])
    assert len(outputs) == 7 * 2 + 4 * 2  # checkpoints and centers of 7 tasks, 4 evaluations per method
    assert [p for p in outputs if (plain / p).read_bytes() != (project / p).read_bytes()] == []
