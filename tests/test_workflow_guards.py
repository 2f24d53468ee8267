"""Bad input stops both engines before anything runs or is deleted (issue 10, item 5, workflow parts),
and every named target works on a fresh clone."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ncil.pipeline import paths
from tests.conftest import ROOT, copy_project, ncil, run
from tests.test_dvc import dvc, init_repo

# Hand edits of params.yaml: (what is replaced, by what, words the one-line error must contain).
BAD_EDITS = {
    "no seeds": ("seeds: [1]", "seeds: []", ["seeds", "at least one seed"]),
    "negative epochs": ("epochs: 1,", "epochs: -2,", ["train.epochs", "-2"]),
    "epochs as a word": ("epochs: 1,", "epochs: two,", ["train.epochs", "two"]),
    "unknown key": ("seeds: [1]", "seeds: [1]\nseed: 3", ["seed", "unknown key"]),
    "unknown choice": ("train_on: seen", "train_on: everything", ["method.joint.train_on", "everything"]),
    "unknown method": ("  joint:", "  jiont:", ["method.jiont"]),
    # A key given twice: Snakemake's configfile: would keep the last value silently (DVC refuses the file).
    "key given twice": ("epochs: 1,", "epochs: 1, epochs: 50,", ["train.epochs", "given twice", "columns"]),
    "top-level key twice": ("seeds: [1]", "seeds: [1]\nseeds: [2]", ["seeds", "given twice", "lines"]),
}
# Outputs that exist before the bad edit and must survive it (a committed table, a task-0 checkpoint).
KEPT = ["results/tables/digits_results.md", "runs/digits/base4/plain/seed1/task_0/model.pt"]


def edit(project: Path, old: str, new: str) -> None:
    params = project / "params.yaml"
    text = params.read_text()
    assert old in text, (old, text)
    params.write_text(text.replace(old, new, 1))


def plant_outputs(project: Path) -> dict[str, bytes]:
    for name in KEPT:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(b"an output of an earlier run")
    return {name: (project / name).read_bytes() for name in KEPT}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("guards") / "p")


@pytest.mark.parametrize("case", [
    *BAD_EDITS,
])
def test_snakemake_refuses_a_bad_params_file_in_one_line(pristine, tmp_path, case):
    project = tmp_path / "p"
    shutil.copytree(pristine, project)
    before = plant_outputs(project)
    old, new, words = BAD_EDITS[case]
    edit(project, old, new)
    for args in (["-n"], ["--cores", "1"]):  # a dry run, and a real run: both stop while loading
        proc = run([sys.executable, "-m", "snakemake", *args], project, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        error = [line for line in out.splitlines() if line.startswith("error: ")]
        assert len(error) == 1 and all(w in error[0] for w in words), out
        assert "params.yaml" in error[0] and "Traceback" not in out and "Building DAG" not in out, out
    assert {name: (project / name).read_bytes() for name in KEPT} == before
    assert not (project / "logs").exists()  # no job started


def test_a_bad_grid_file_is_refused_naming_it(pristine, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(pristine, project)
    grid = project / paths.grid_params("cifar100")
    grid.parent.mkdir(parents=True)
    text = (ROOT / paths.grid_params("cifar100")).read_text()
    grid.write_text(re.sub(r"seeds: \[[^\]]*\]", "seeds: [1, 1]", text))
    proc = run([sys.executable, "-m", "snakemake", "-n"], project, check=False)
    assert proc.returncode != 0
    assert "error: grids/cifar100/params.yaml: seeds: expected distinct seeds" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory) -> Path:
    return init_repo(copy_project(tmp_path_factory.mktemp("dvcguard") / "p"))  # the stamp committed too


def test_dvc_check_stage_passes_on_a_valid_grid_and_changes_nothing_downstream(dvc_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(dvc_project, project, symlinks=True)
    dvc(project, "repro", "--single-item", "check_params")
    assert (project / paths.PARAMS_CHECK_STAMP).read_bytes() == b""  # constant: downstream stays valid
    status = dvc(project, "status", "check_params").stdout
    assert "check_params" not in status or "up to date" in status


@pytest.mark.parametrize("case", ["negative epochs", "no seeds"])
def test_dvc_repro_stops_at_the_check_before_any_stage_runs(dvc_project, tmp_path, case):
    project = tmp_path / "p"
    shutil.copytree(dvc_project, project, symlinks=True)
    before = plant_outputs(project)
    old, new, words = BAD_EDITS[case]
    edit(project, old, new)
    proc = dvc(project, "repro", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and all(w in out for w in words), out
    assert re.findall(r"Running stage '(\w+)'", out) == ["check_params"], out
    assert {name: (project / name).read_bytes() for name in KEPT} == before
    assert not (project / "data").exists()


def test_dvc_yaml_out_of_step_with_params_is_detected_before_repro(dvc_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(dvc_project, project, symlinks=True)
    edit(project, "seeds: [1]", "seeds: [1, 2]")  # a valid grid, but dvc.yaml was not regenerated
    proc = dvc(project, "repro", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "dvc.yaml is out of date with params.yaml" in out, out
    assert "Running stage 'prepare" not in out and not (project / "data").exists()
    ncil(["dvc-yaml"], project)  # the fix the message names
    assert "check_params" in dvc(project, "status").stdout  # now stale only because params.yaml changed


def test_dvc_exp_run_with_a_bad_override_runs_no_stage(dvc_project, tmp_path):
    """Only the check runs (and fails): no stage removes its outputs. (With outputs recorded in a
    dvc.lock, tests/test_staleness.py checks they are all still there, byte for byte.)"""
    project = tmp_path / "p"
    shutil.copytree(dvc_project, project, symlinks=True)
    proc = dvc(project, "exp", "run", "-S", "train.epochs=-2", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "error: params.yaml: train.epochs" in out and "-2" in out, out
    assert re.findall(r"Running stage '(\w+)'", out) == ["check_params"], out
    assert (project / paths.PARAMS_CHECK_STAMP).exists()  # persist: not even the stamp is removed


@pytest.mark.slow
def test_gpu_runtime_without_cuda_stops_both_engines_before_any_job(dvc_project, tmp_path, monkeypatch):
    """runtime=gpu composed where there is no CUDA (CUDA_VISIBLE_DEVICES='' hides any GPU, so on every
    machine): a dry run warns; a local Snakemake run exits 2 and DVC stops at check_params, before any job."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    project = tmp_path / "p"
    shutil.copytree(dvc_project, project, symlinks=True)
    ncil(["params", "runtime=gpu"], project)  # composing is fine: the grid may be meant for another machine
    refusal = "params.yaml: runtime.device: 'cuda' needs a CUDA GPU, but CUDA_VISIBLE_DEVICES='' hides every GPU"
    dry = run([sys.executable, "-m", "snakemake", "-n"], project)
    assert f"warning: {refusal}" in dry.stderr, dry.stderr
    real = run([sys.executable, "-m", "snakemake", "--cores", "1"], project, check=False)
    assert real.returncode == 2 and f"\nerror: {refusal}" in real.stderr, real.stderr
    assert not (project / "logs").exists() and not (project / "data").exists()  # no job started
    proc = dvc(project, "repro", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"error: {refusal}" in out, out
    assert re.findall(r"Running stage '(\w+)'", out) == ["check_params"], out
    assert not (project / "data").exists()


# --- Named targets on a fresh clone -----------------------------------------------------------------
DOC_TARGETS = ["results/digits/base4_inc2/joint/seed2/metrics.json",
                  "runs/digits/base5_inc1/finetune/seed1/task_3/model.pt"]
NEEDS_DATA = {"cifar100": "data/raw/cifar-100-python", "tinyimagenet": "data/raw/tiny-imagenet-200",
              "imagenet_subset": "data/raw/imagenet"}


def snakefile_targets() -> list[str]:
    return re.findall(r"^rule (\w+):", (ROOT / "Snakefile").read_text(), re.M)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if run(["git", "status", "--porcelain", "--", "Snakefile", "rules", "ncil"], ROOT).stdout.strip():
        pytest.skip("uncommitted workflow changes: a clone would not test them")
    dest = tmp_path_factory.mktemp("clone") / "ncil"
    run(["git", "clone", "-q", str(ROOT), str(dest)], ROOT)
    return dest


def test_the_docs_list_the_snakefile_targets():
    """docs/workflow.md ("Running part of it") names every Snakefile target and the two example files."""
    doc = (ROOT / "docs" / "workflow.md").read_text()
    listed = set(re.findall(r"snakemake --cores \w+ ([\w/.-]+)", doc))
    assert {"tables", "report", "metrics", "models", *DOC_TARGETS} <= listed
    assert set(snakefile_targets()) - {"all"} <= listed | set(NEEDS_DATA)


@pytest.mark.slow
@pytest.mark.parametrize("target", [*snakefile_targets(), *DOC_TARGETS])
def test_every_named_target_works_on_a_fresh_clone(clone, target):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2", target], cwd=clone,
                          capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if target in NEEDS_DATA:  # a paper data set: its raw data is not in a clone; the error says where to put it
        assert proc.returncode != 0 and f"{NEEDS_DATA[target]}" in out and "not found" in out, out
        return
    assert proc.returncode == 0, out
    assert "MissingInputException" not in out and "cifar100" not in out.split("Job stats", 1)[-1], out


@pytest.mark.slow
@pytest.mark.parametrize("cover", [True, False], ids=["ci-subset", "every-run"])
def test_the_reproduction_targets_build_their_dag_at_once_on_a_fresh_clone(clone, tmp_path, cover):
    """All of seed 1's runs in one Snakemake call, before any params stamp exists (.ncil/ is not in git).
    The stamps are written while the DAG is built; Snakemake lists a folder once then, and took the
    stamps written after that for missing inputs (stop 29's CI: MissingInputException naming
    .ncil/params/digits/train.ours_w_direct.txt)."""
    fresh = tmp_path / "ncil"
    shutil.copytree(clone, fresh, ignore=shutil.ignore_patterns(".ncil", ".snakemake"))
    targets = run([sys.executable, "scripts/check_reproduction.py", "targets", "--seed", "1",
                   *(["--cover"] if cover else [])], fresh).stdout.split()
    assert len(targets) >= 12
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2", *targets], cwd=fresh,
                          capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "MissingInputException" not in out, out[-3000:]
    stamps = sorted(p.name for p in (fresh / ".ncil" / "params" / "digits").iterdir())
    assert {"prepare.txt", "split.txt", "train.txt", "train.ours.txt", "evaluate.ours.txt"} <= set(stamps), stamps
    assert not [name for name in stamps if name.endswith(".tmp")], stamps


def test_a_grid_file_with_a_key_given_twice_is_refused_naming_it(pristine, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(pristine, project)
    grid = project / paths.grid_params("cifar100")
    grid.parent.mkdir(parents=True)
    text = (ROOT / paths.grid_params("cifar100")).read_text()
    grid.write_text(text.replace("\nseeds:", "\nseeds: [1]\nseeds:", 1))
    proc = run([sys.executable, "-m", "snakemake", "-n"], project, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out
    assert re.search(r"^error: grids/cifar100/params.yaml: seeds: the key is given twice, at lines \d+ and \d+ ", out,
                     re.M), out


@pytest.mark.slow
@pytest.mark.parametrize("override", ["train.epochs=0", "seeds=[1,2]", "runtime=gpu"])
def test_a_refused_dvc_experiment_leaves_the_users_grid_as_it_was(dvc_project, tmp_path, monkeypatch, override):
    """`dvc exp run -S` composes params.yaml from conf/ and its overrides alone (DVC's Hydra integration),
    not from the overrides of the workspace's grid. Refused (a bad value; a grid of another shape; a GPU
    this machine lacks), it leaves params.yaml and dvc.yaml byte for byte as they were, and its advice
    keeps that grid (before: params.yaml stayed replaced and the advice, `python -m ncil dvc-yaml`,
    switched dvc.yaml to it)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU on any machine: runtime=gpu is refused
    project = tmp_path / "p"
    shutil.copytree(dvc_project, project, symlinks=True)
    ncil(["params", "train.epochs=2", "model.embed_dim=8"], project)  # the user's own grid, uncommitted
    before = {name: (project / name).read_bytes() for name in ("params.yaml", "dvc.yaml")}
    proc = dvc(project, "exp", "run", "-S", override, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "is put back as it was" in out, out
    assert "python -m ncil params train.epochs=2 model.embed_dim=8 KEY=VALUE" in out, out
    assert "run `python -m ncil dvc-yaml`" not in out
    assert {name: (project / name).read_bytes() for name in before} == before
    assert re.findall(r"Running stage '(\w+)'", out) == ["check_params"], out
