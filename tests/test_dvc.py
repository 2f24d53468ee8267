"""DVC tier: repro, lock, metrics, remote round trip, Hydra experiments, graph agreement with Snakemake."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from ncil.pipeline import paths
from tests.conftest import ROOT, copy_project, run

DVC = [sys.executable, "-m", "dvc"]


def dvc(project: Path, *args: str, check: bool = True):
    return run([*DVC, *args], project, check=check)


def git(project: Path, *args: str, check: bool = True):
    return run(["git", *args], project, check=check)


def init_repo(project: Path) -> Path:
    git(project, "init", "-q", "-b", "main")
    git(project, "config", "user.email", "ci@example.invalid")
    git(project, "config", "user.name", "ci")
    shutil.copy2(ROOT / ".gitignore", project / ".gitignore")
    dvc(project, "init", "-q")
    shutil.copy2(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    stamp = project / paths.PARAMS_CHECK_STAMP  # committed, as in the repository (ncil/pipeline/dvcgen.py)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()
    git(project, "add", "-A")
    git(project, "commit", "-qm", "project")
    return project


def tracked_bytes(project: Path) -> dict[str, bytes]:
    """Every file of runs/ and data/ that DVC tracks (dvc.lock's outputs; the untracked platform.json
    sidecars beside the checkpoints are machine records, not artifacts)."""
    from ncil.pipeline import io

    outs = {out["path"] for stage in io.read_yaml(project / "dvc.lock")["stages"].values() for out in stage.get("outs", [])}
    files = {}
    for top in ("runs", "data"):
        for f in sorted((project / top).rglob("*")):
            rel = f.relative_to(project).as_posix()
            if f.is_file() and any(rel == o or rel.startswith(o.rstrip("/") + "/") for o in outs):
                files[rel] = f.read_bytes()
    return files


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> Path:
    project = init_repo(copy_project(tmp_path_factory.mktemp("dvc") / "p"))
    dvc(project, "repro")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "reproduce")
    return project


@pytest.mark.slow
def test_dvc_and_snakemake_agree_on_the_default_grid(tmp_path):
    from dvc.repo import Repo

    project = copy_project(tmp_path / "default", tiny=False)
    dvc(project, "init", "--no-scm", "-q")
    with Repo(str(project)) as repo:
        dvc_outs = {str(Path(o.fs_path).relative_to(project)) for o in repo.index.outs}
    summary = run([sys.executable, "-m", "snakemake", "--summary"], project).stdout.splitlines()
    snakemake_outs = {line.split("\t")[0] for line in summary[1:] if line.strip()}
    # DVC's first stage checks params.yaml and dvc.yaml; Snakemake does that when it loads (no job).
    assert dvc_outs - snakemake_outs == {paths.PARAMS_CHECK_STAMP}
    # The cost summary is Snakemake's only: it reads the benchmark files Snakemake writes (DVC writes none).
    costs = paths.cost_table_file("digits")
    assert snakemake_outs - dvc_outs == {costs, costs[: -len(".md")] + ".csv"}
    # data (6 arrays + manifest), 4 splits, 312 training jobs (24 shared base tasks + 12 methods x 3 seeds
    # x 8 incremental tasks) x (model, centers), 72 runs x (eval folder, metrics.json), the results table
    # (md, csv), digits' sections of paper tables 1/2/3/5 (md, csv), the tables assembled from the
    # sections (md, csv), Table 4 (md, csv: the paper's DyTox values), the EFCIL benchmark table (md, csv: the
    # quoted values of issue 25's methods), Figure 3 (png, csv) per setting, Figure 4 (png, csv), the cost table
    # (md, csv).
    assert len(snakemake_outs) == 7 + 4 + 312 * 2 + 72 * 2 + 2 + 8 + 8 + 2 + 2 + 2 * 2 + 2 + 2


@pytest.mark.slow
def test_repro_tracks_artifacts_and_metrics(reproduced):
    assert "up to date" in dvc(reproduced, "status").stdout
    lock = (reproduced / "dvc.lock").read_text()
    assert "runs/digits/base4/plain/seed1/task_0/model.pt" in lock and "md5:" in lock
    # Checkpoints and centers are in DVC's cache and ignored by git; metrics and tables are in git.
    assert git(reproduced, "check-ignore", "runs/digits/base4/plain/seed1/task_0/model.pt").returncode == 0
    tracked = git(reproduced, "ls-files").stdout.split()
    assert "results/digits/base4_inc2/joint/seed1/metrics.json" in tracked
    assert "results/tables/digits_results.md" in tracked
    assert not [f for f in tracked if f.startswith(("runs/", "data/"))]
    shown = json.loads(dvc(reproduced, "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    metrics = files["results/digits/base4_inc2/finetune/seed1/metrics.json"]["data"]
    assert {"avg_accuracy", "last_accuracy", "avg_forgetting"} <= set(metrics)


@pytest.mark.slow
def test_fresh_clone_reproduces_the_committed_lock(reproduced, tmp_path):
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(reproduced), str(clone)], tmp_path)
    dvc(clone, "repro")
    assert git(clone, "status", "--porcelain").stdout == ""  # dvc.lock and results/ unchanged


@pytest.mark.slow
def test_push_pull_round_trip(reproduced, tmp_path):
    before = tracked_bytes(reproduced)
    assert sum(name.endswith("/model.pt") for name in before) == 7  # shared task 0 + 3 tasks x 2 methods
    dvc(reproduced, "remote", "add", "-f", "-d", "local", str(tmp_path / "remote"))
    dvc(reproduced, "push")
    for top in ("runs", "data", ".dvc/cache"):
        shutil.rmtree(reproduced / top)
    dvc(reproduced, "pull")
    assert tracked_bytes(reproduced) == before
    assert "up to date" in dvc(reproduced, "status").stdout


@pytest.mark.slow
def test_parameter_change_invalidates_only_dependent_stages(reproduced, tmp_path):
    clone = tmp_path / "changed"
    shutil.copytree(reproduced, clone, symlinks=True)
    params = (clone / "params.yaml").read_text()
    (clone / "params.yaml").write_text(params.replace("train_on: seen", "train_on: current"))
    status = json.loads(dvc(clone, "status", "--json").stdout)
    # Only the stages that read method.joint changed (and the check of params.yaml, whose constant
    # output changes nothing downstream); the rest of the chain follows when they rerun.
    assert sorted(status) == ["check_params"] + [f"train_digits_base4_inc2_joint_seed1_task{t}" for t in (1, 2, 3)]
    assert all("method.joint" in json.dumps(status[name]) for name in status if name != "check_params")


@pytest.mark.slow
def test_hydra_experiment_with_key_and_group_overrides(reproduced, tmp_path):
    clone = tmp_path / "exp"
    shutil.copytree(reproduced, clone, symlinks=True)
    dvc(clone, "exp", "run", "-S", "train=digits", "-S", "train.epochs=2")
    from ncil.pipeline import io

    params = io.read_yaml(clone / "params.yaml")
    assert params["train"]["epochs"] == 2 and params["model"]["embed_dim"] == 16
    diff = dvc(clone, "metrics", "diff", "--json").stdout
    changed = json.loads(diff)
    # Joint training changes with the schedule; (tiny) fine-tuning may forget identically either way.
    assert "avg_accuracy" in changed["results/digits/base4_inc2/joint/seed1/metrics.json"]
    lock = io.read_yaml(clone / "dvc.lock")["stages"]["train_digits_base4_plain_seed1_task0"]
    assert lock["params"]["params.yaml"]["train"]["epochs"] == 2
    bad = dvc(clone, "exp", "run", "-S", "train.epoch=3", check=False)
    assert bad.returncode != 0 and "train.epoch" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_snakemake_run_matches_the_dvc_lock(reproduced, tmp_path):
    """What CI's check-reproduction relies on: a from-scratch Snakemake run hashes to dvc repro's lock."""
    clone = tmp_path / "smk"
    run(["git", "clone", "-q", str(reproduced), str(clone)], tmp_path)
    run([sys.executable, "-m", "snakemake", "--cores", "2"], clone)
    dvc(clone, "commit", "--force")  # Snakemake's outputs into the DVC cache, hashes into dvc.lock
    # The same hashes dvc repro recorded; the cost table is Snakemake's only (a measurement, as in
    # the Makefile's CHECK_CLEAN).
    assert git(clone, "status", "--porcelain", "--", ".", ":!results/costs").stdout == ""
    assert (clone / paths.cost_table_file("digits")).is_file()
    assert json.loads(dvc(clone, "status", "--json").stdout) == {}


@pytest.mark.slow
def test_the_committed_lock_records_exactly_the_stages_of_dvc_yaml():
    """A stage renamed or removed from dvc.yaml must not stay behind in dvc.lock: the reproduction check
    compares every output the lock records (a stale `paper_tables_digits` entry once failed it)."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert sorted(set(lock) - set(stages)) == [] and sorted(set(stages) - set(lock)) == []
    recorded = [out["path"] for stage in lock.values() for out in stage.get("outs", [])]
    assert len(recorded) == len(set(recorded)), "an output recorded by two stages"
