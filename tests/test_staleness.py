"""After a code edit, DVC and Snakemake agree on what is stale, and only the steps that run the edited
file are (issue 10, item 4). One real run of a one-run grid (4 tasks, one epoch each), shared."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_project, ncil, run
from tests.test_commands_agree import dry_run_jobs, normalise
from tests.test_dvc import dvc, git, init_repo

ONE_RUN = """\
defaults:
  - dataset: digits
  - model: vit_digits_tiny
  - train: smoke
  - runtime: cpu
  - scenario: [base4_inc2]
  - method: [finetune]
  - _self_
preset: paper
order_seed: 1993
seeds: [1]
"""

pytestmark = pytest.mark.slow


def snakemake(project: Path, *args: str):
    return run([sys.executable, "-m", "snakemake", "--cores", "2", *args], project)


def artifacts(project: Path) -> dict[str, bytes]:
    return {str(f.relative_to(project)): f.read_bytes() for top in ("data", "runs", "results")
            for f in sorted((project / top).rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def produced(tmp_path_factory) -> Path:
    """The one-run grid made by Snakemake and recorded by DVC (as `make check-reproduction` does)."""
    project = copy_project(tmp_path_factory.mktemp("stale") / "p")
    (project / "conf" / "config.yaml").write_text(ONE_RUN)
    ncil(["params"], project)  # params.yaml and dvc.yaml of the one-run grid
    init_repo(project)  # with the committed stamp of check_params
    snakemake(project)
    dvc(project, "commit", "--force", "--quiet")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "run")
    return project


def stale_dvc_commands(project: Path) -> set[str]:
    status = json.loads(dvc(project, "status", "--json").stdout)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    return {normalise(stages[name]["cmd"]) for name in status}


def with_downstream(project: Path, commands: set[str]) -> set[str]:
    """``commands`` and every stage that reads their outputs, transitively (dvc.yaml's graph): what
    `dvc repro` reruns once the stale stages' outputs change."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    outs = {name: {next(iter(o)) if isinstance(o, dict) else o for o in st.get("outs", []) + st.get("metrics", [])}
            for name, st in stages.items()}
    todo = [name for name, st in stages.items() if normalise(st["cmd"]) in commands]
    done = set(todo)
    while todo:
        made = outs[todo.pop()]
        for name, st in stages.items():
            if name not in done and made & set(st["deps"]):
                done.add(name)
                todo.append(name)
    return {normalise(stages[name]["cmd"]) for name in done}


def snakemake_jobs(project: Path) -> list[dict]:
    out = snakemake(project, "--dry-run", "--printshellcmds").stdout
    return [job for job in dry_run_jobs(out) if job["shell"]]


def job_key(job: dict) -> str:
    """A dry-run job as one sortable text (its rule, inputs, outputs and command)."""
    return json.dumps(job, sort_keys=True)


COSTS = "python -m ncil costs "  # the Snakemake-only step (timings are not DVC outputs): no DVC stage to agree with


def dvc_engine_jobs(jobs: list[dict]) -> set[str]:
    """The shell commands of Snakemake's jobs that have a DVC stage (every job but the cost table)."""
    return {job["shell"] for job in jobs if not job["shell"].startswith(COSTS)}


def test_a_fresh_run_is_up_to_date_in_both_engines(produced):
    assert json.loads(dvc(produced, "status", "--json").stdout) == {}
    assert "Nothing to be done" in snakemake(produced, "--dry-run").stdout


CHECK = "dvc-yaml"  # check_params (DVC only) reruns when fingerprints.yaml changes: a validation, no artifact
REPORT_VERBS = ["figures", "paper-sections", "paper-tables", "tables"]  # Figure 3 reads the tables' formatting too


def copied(produced: Path, tmp_path: Path, metadata: bool = True) -> Path:
    """A copy of the run project (mtimes kept); without ``metadata``, as a copied checkout: no .snakemake/."""
    project = tmp_path / "p"
    shutil.copytree(produced, project, symlinks=True)
    if not metadata:
        shutil.rmtree(project / ".snakemake")
    return project


def edit(project: Path, module: str, code: str = "\n_EDITED = 1\n", refresh: bool = True) -> None:
    """A code edit (a statement, not a comment) and, as a developer does, `python -m ncil dvc-yaml`."""
    with open(project / module, "a") as fh:
        fh.write(code)
    if refresh:
        ncil(["dvc-yaml"], project)


def stale_verbs(project: Path) -> list[str]:
    return sorted(cmd.split()[3] for cmd in stale_dvc_commands(project) if cmd.split()[3] != CHECK)


def nothing_stale(project: Path) -> None:
    ncil(["dvc-yaml", "--check"], project)  # the fingerprints still follow the code: no refresh needed
    assert json.loads(dvc(project, "status", "--json").stdout) == {}
    assert "Nothing to be done" in snakemake(project, "--dry-run").stdout


@pytest.mark.parametrize("metadata", [True, False], ids=["has-run", "copied-checkout"])
def test_editing_the_table_code_makes_only_the_report_steps_stale(produced, tmp_path, metadata):
    project = copied(produced, tmp_path, metadata)
    # Without metadata Snakemake goes by mtimes, and `dvc commit` re-linked the cached outputs after the run
    # (newer than what reads them): what it schedules before the edit is not the edit's doing.
    before = set() if metadata else dvc_engine_jobs(snakemake_jobs(project))
    edit(project, "ncil/reports/results_table.py")
    assert stale_verbs(project) == REPORT_VERBS
    stale = {c for c in stale_dvc_commands(project) if c.split()[3] != CHECK}
    after = dvc_engine_jobs(snakemake_jobs(project))
    assert stale == with_downstream(project, stale) and stale <= after  # nothing reads their outputs
    if metadata:
        assert after == stale
    # no summarize step added: no metrics.json is rewritten (its recorded fingerprints do not include tables)
    assert not [cmd for cmd in after - before if cmd.split()[3] in ("train", "evaluate", "summarize")]


def test_editing_how_a_gpu_is_claimed_makes_nothing_stale(produced, tmp_path):
    project = copied(produced, tmp_path)
    edit(project, "ncil/pipeline/devices.py", refresh=False)
    nothing_stale(project)


def test_a_docstring_and_comment_edit_makes_nothing_stale(produced, tmp_path):
    project = copied(produced, tmp_path)
    source = (project / "ncil" / "learning" / "training.py").read_text()
    assert source.startswith('"""')
    (project / "ncil" / "learning" / "training.py").write_text('"""Edited docstring. ' + source[3:] + "\n# a comment\n")
    nothing_stale(project)


@pytest.mark.parametrize("metadata", [True, False], ids=["has-run", "copied-checkout"])
def test_editing_the_training_code_makes_the_same_steps_stale_in_both(produced, tmp_path, metadata):
    project = copied(produced, tmp_path, metadata)
    before = set() if metadata else dvc_engine_jobs(snakemake_jobs(project))  # see the report-edit test
    edit(project, "ncil/learning/training.py")
    stale = {c for c in stale_dvc_commands(project) if c.split()[3] != CHECK}
    assert sorted(re.search(r"--task (\d)", cmd).group(1) for cmd in stale) == ["0", "1", "2", "3"]
    # Snakemake lists the jobs that rerun, DVC's status the stages whose own dependencies changed:
    # those and everything downstream of them are the same set.
    all_jobs = snakemake_jobs(project)
    jobs = dvc_engine_jobs(all_jobs)
    expected = with_downstream(project, stale)
    # + evaluation, summary, results table, paper sections, paper tables, Figure 3
    assert expected <= jobs and jobs - before <= expected and len(expected) == 4 + 1 + 1 + 4
    if metadata:
        assert jobs == expected
    assert any(job["shell"].startswith(COSTS) for job in all_jobs)  # new metrics: the cost table is redone too


def test_a_code_edit_without_refreshing_the_fingerprints_stops_both_engines(produced, tmp_path):
    project = copied(produced, tmp_path)
    edit(project, "ncil/learning/training.py", refresh=False)
    snakemake_dry_run = [sys.executable, "-m", "snakemake", "--cores", "2", "--dry-run"]
    for proc in (ncil(["dvc-yaml", "--check"], project, check=False), run(snakemake_dry_run, project, check=False)):
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        assert "fingerprints.yaml: out of date with the code of" in out and "python -m ncil dvc-yaml" in out, out


def test_verify_refuses_metrics_made_by_other_training_code(produced, tmp_path):
    project = copied(produced, tmp_path)
    ncil(["verify"], project)
    edit(project, "ncil/learning/training.py")
    proc = ncil(["verify"], project, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "code_fingerprints.train" in out, out


TRAIN_AND_EVALUATE = ["evaluate", "train", "train", "train", "train"]  # the keys train.* are read by both


@pytest.mark.parametrize("metadata", [True, False], ids=["has-run", "copied-checkout"])
def test_a_parameter_edit_makes_the_same_steps_stale_in_both_and_verify_refuses(produced, tmp_path, metadata):
    project = copied(produced, tmp_path, metadata)
    before = set() if metadata else dvc_engine_jobs(snakemake_jobs(project))  # see the report-edit test
    ncil(["verify"], project)
    ncil(["params", "train.epochs=2"], project)  # smoke: 1 epoch
    assert stale_verbs(project) == TRAIN_AND_EVALUATE
    stale = {c for c in stale_dvc_commands(project) if c.split()[3] != CHECK}
    jobs = dvc_engine_jobs(snakemake_jobs(project))
    expected = with_downstream(project, stale)
    assert expected <= jobs and jobs - before <= expected  # in a copied checkout too: the params stamp is newer
    if metadata:
        assert jobs == expected
    proc = ncil(["verify"], project, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "ran with params.yaml: train.epochs = 1, and params.yaml has 2 now" in out, out


def test_a_checkout_without_params_stamps_gets_them_without_a_rerun(produced, tmp_path):
    project = copied(produced, tmp_path, metadata=False)
    before = snakemake_jobs(project)
    shutil.rmtree(project / ".ncil")
    # a missing stamp is no evidence of an edit: the same jobs, in whatever order Snakemake lists independent jobs
    # (it varied between runs: a table job before or after the figures job)
    assert sorted(snakemake_jobs(project), key=job_key) == sorted(before, key=job_key)
    stamps = sorted((project / ".ncil" / "params").rglob("*.txt"))
    assert stamps and all(f.stat().st_mtime == 1 for f in stamps)


def test_a_fresh_clone_after_dvc_checkout_is_up_to_date_in_both_once_touched(produced, tmp_path):
    """A new clone (every file dated now), its outputs from the shared DVC cache, then `snakemake --touch`
    (docs/workflow.md): no job and no stage to run, with no change at all."""
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(produced), str(clone))
    dvc(clone, "cache", "dir", "--local", str(produced / ".dvc" / "cache"))
    dvc(clone, "checkout", "--quiet")
    snakemake(clone, "--touch")
    assert json.loads(dvc(clone, "status", "--json").stdout) == {}
    assert "Nothing to be done" in snakemake(clone, "--dry-run").stdout


def test_dvc_exp_run_with_a_bad_override_keeps_every_output(produced, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(produced, project, symlinks=True)
    before = artifacts(project)
    proc = dvc(project, "exp", "run", "-S", "train.epochs=-2", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "train.epochs" in out, out
    assert re.findall(r"Running stage '(\w+)'", out) == ["check_params"], out
    after = artifacts(project)
    assert after == before  # no stage folder emptied, nothing rewritten
