"""Workflow tier: lint, the default grid's job graph, real tiny runs, exact reruns, kill and resume."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ncil.pipeline import paths
from tests.conftest import ROOT, copy_project, env, run

ARTIFACT_DIRS = ("runs", "results", "data")


def snakemake(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "snakemake", "--cores", "2", *args], project, check=check)


def job_counts(output: str) -> dict[str, int]:
    stats = output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


def artifacts(project: Path) -> dict[str, bytes]:
    """Every produced artifact (not logs, benchmarks or the cost table: timings) by relative path."""
    out = {}
    costs = project / paths.cost_table_file("digits")
    for top in ARTIFACT_DIRS:
        for f in sorted((project / top).rglob("*")):
            if f.is_file() and f.parent != costs.parent:
                out[str(f.relative_to(project))] = f.read_bytes()
    return out


def test_snakemake_lint_is_clean():
    proc = run([sys.executable, "-m", "snakemake", "--lint"], ROOT)
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_default_grid_job_graph(tmp_path):
    project = copy_project(tmp_path / "default", tiny=False)
    shutil.copytree(ROOT / "grids", project / "grids")  # as in a clone: the paper data sets' grids beside
    proc = snakemake(project, "--dry-run")
    counts = job_counts(proc.stdout)
    # 2 settings (4+2x3: 4 tasks, 5+1x5: 6 tasks) x 12 methods x 3 seeds. Task 0 is shared by the methods
    # of one base recipe (plain, rotation, rotation_resnet18, official): 4 recipes x 2 base sizes x 3 seeds
    # = 24 base jobs, plus 12 methods x 3 seeds x (3 + 5) incremental jobs.
    assert counts["train_base"] == 24 and counts["train"] == 12 * 3 * (3 + 5)
    # 388 at 22d7a6e; + each data set's sections of the paper tables (paper_sections, issue 10 item 8)
    # + the cost summary for the report (costs, Snakemake only: item 11); 468 with fcs and ours_official
    # (issue 12: 6 base jobs, 48 incremental ones, 12 evaluations and 12 summaries more).
    assert counts["total"] == 468
    assert counts["evaluate"] == counts["summarize"] == 72
    assert counts["split"] == 4 and counts["prepare"] == 1 and counts["results_table"] == 1
    assert counts["paper_sections"] == counts["paper_tables"] == counts["figures"] == counts["figure4"] == 1
    assert counts["costs"] == 1
    assert "runs/digits/base4/plain/seed1/task_0/model.pt" in proc.stdout


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory) -> Path:
    """The tiny grid's project, shared by the dry runs below (they plan, never write an output)."""
    return copy_project(tmp_path_factory.mktemp("tiny") / "p")


def test_named_target_builds_only_what_it_needs(tiny_grid):
    project = tiny_grid
    proc = snakemake(project, "--dry-run", "results/digits/base4_inc2/finetune/seed1/metrics.json")
    counts = job_counts(proc.stdout)
    assert counts["train_base"] == 1 and counts["train"] == 3 and counts["summarize"] == 1
    assert "results_table" not in counts


@pytest.mark.parametrize("target, rule, jobs", [("tables", "results_table", 1), ("metrics", "summarize", 2),
                                                ("models", "train", 6), ("models", "train_base", 1)])
def test_named_targets(tiny_grid, target, rule, jobs):
    counts = job_counts(snakemake(tiny_grid, "--dry-run", target).stdout)
    assert counts[rule] == jobs and counts[target] == 1


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    project = copy_project(tmp_path_factory.mktemp("reference") / "p")
    snakemake(project)
    return project


@pytest.mark.slow
def test_tiny_grid_runs_end_to_end(reference_run):
    files = artifacts(reference_run)
    assert "results/tables/digits_results.md" in files
    table = files["results/tables/digits_results.md"].decode()
    assert "| 4+2x3 | finetune |" in table and "| 4+2x3 | joint |" in table
    for method in ("finetune", "joint"):
        for t in range(4):
            assert f"results/digits/base4_inc2/{method}/seed1/eval/task_{t}.parquet" in files
    for t in range(1, 4):
        assert f"runs/digits/base4_inc2/joint/seed1/task_{t}/centers.parquet" in files
    bench = reference_run / "benchmarks/train/digits/base4/plain/seed1/task_0.tsv"
    assert bench.read_text().startswith("s\th:m:s")


@pytest.mark.slow
def test_rerun_from_scratch_is_bit_identical(reference_run, tmp_path):
    again = copy_project(tmp_path / "again")
    snakemake(again)
    first, second = artifacts(reference_run), artifacts(again)
    assert sorted(first) == sorted(second)
    different = [name for name in first if first[name] != second[name]]
    assert different == []


@pytest.mark.slow
def test_killed_workflow_resumes_at_the_first_missing_task(reference_run, tmp_path):
    from ncil.pipeline import io

    project = copy_project(tmp_path / "killed")
    running = "runs/digits/base4_inc2/finetune/seed1/task_2"
    marker = project / "logs/train/digits/base4_inc2/finetune/seed1/task_2.log"  # task 1 is done
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=project, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert marker.exists(), "the workflow did not reach task 2 in time"
    os.killpg(proc.pid, signal.SIGKILL)  # the scheduler and its running job die at once
    proc.wait()

    # Jobs that finished before the kill (one core: every job but the one that was running).
    finished = {p: p.stat().st_mtime_ns for p in (project / "runs").rglob("*.*")
                if p.suffix in (".pt", ".parquet") and running not in str(p)}  # artifacts, not platform.json
    assert project / "runs/digits/base4_inc2/finetune/seed1/task_1/model.pt" in finished
    assert not (project / running / "centers.parquet").exists()
    for path in finished:  # no complete-looking partial artifact: every finished file loads
        io.load_checkpoint(path) if path.suffix == ".pt" else io.read_centers(path)
    snakemake(project, "--unlock")
    snakemake(project)
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was redone"
    assert artifacts(project) == artifacts(reference_run)


@pytest.mark.slow
def test_parameter_change_reruns_only_its_dependents(reference_run, tmp_path):
    import shutil

    project = tmp_path / "changed"
    shutil.copytree(reference_run, project, symlinks=True)
    snakemake(project, "--dry-run")  # nothing to do
    params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.replace("train_on: seen", "train_on: current"))
    proc = snakemake(project, "--dry-run")
    counts = job_counts(proc.stdout)
    # Only joint's three incremental tasks, its evaluation and summary, and the tables (digits' sections,
    # then the tables assembled from them), the figures and the cost summary.
    assert counts == {"train": 3, "evaluate": 1, "summarize": 1, "results_table": 1, "paper_sections": 1,
                      "paper_tables": 1, "figures": 1, "costs": 1, "all": 1, "total": 11}
    outputs = [line for line in proc.stdout.splitlines() if line.strip().startswith("output:")]
    assert len(outputs) == 10
    assert not [line for line in outputs if "finetune" in line or "base4/plain" in line]


# --- A second grid never rewrites the first one's results (issue 10, item 8) ----------------------


def _folder_params() -> dict:
    import copy

    import yaml

    params = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    params["dataset"] = {**params["dataset"], "name": "folder"}
    return params


def test_every_grid_writes_only_its_own_sections_and_figures():
    """A grid's steps write its data set's section files and figures, never the shared tables (which
    before this change every grid rebuilt from its own metrics only)."""
    from ncil.pipeline import paths
    from ncil.pipeline.workflow import steps

    grid_steps = steps(_folder_params(), "grids/folder/params.yaml", report=False)
    outs = {f for s in grid_steps for f in s.outs.values()}
    assert set(paths.paper_sections("folder")) <= outs
    assert not {f for t in paths.PAPER_TABLES for f in paths.paper_table_files(t)} & outs
    assert not [f for f in outs if "digits" in f]
    assert {s.kind for s in grid_steps} >= {"paper_sections", "figures"}
    assert "paper_tables" not in {s.kind for s in grid_steps}


def test_the_root_grid_assembles_the_tables_from_every_data_set_present(tmp_path):
    """paper_tables reads the section files of every data set under the root (committed inputs, not
    outputs of this grid), and no file has two producers across the two grids."""
    import yaml

    from ncil.pipeline import paths
    from ncil.pipeline.workflow import steps

    for path in paths.paper_sections("folder"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    root_steps = steps(params, root=str(tmp_path))
    (tables,) = [s for s in root_steps if s.kind == "paper_tables"]
    assert list(tables.deps.values()) == paths.paper_sections("digits") + paths.paper_sections("folder")
    assert tables.cmd[tables.cmd.index("--sections") + 1:][:16] == tuple(tables.deps.values())
    producers = [f for s in root_steps + steps(_folder_params(), "grids/folder/params.yaml", report=False)
                 for f in s.outs.values()]
    assert len(producers) == len(set(producers))
    # Without another data set's sections, the tables read digits' only.
    (alone,) = [s for s in steps(params, root=str(tmp_path / "empty")) if s.kind == "paper_tables"]
    assert list(alone.deps.values()) == paths.paper_sections("digits")
