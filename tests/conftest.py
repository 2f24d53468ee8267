"""Shared fixtures: a throw-away copy of the project with a tiny grid, and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ["ncil", "conf", "rules", "profiles", "envs", "Snakefile", ".dvcignore", "pyproject.toml",
                 "fingerprints.yaml", "fingerprints"]
# A grid that runs in seconds: one setting (4 + 2 x 3), both methods, one seed, one epoch, tiny ViT.
TINY_OVERRIDES = ["model=vit_digits_tiny", "train=smoke", "scenario=[base4_inc2]", "seeds=[1]"]
TINY_CONFIG = """\
defaults:
  - dataset: digits
  - model: vit_digits_tiny
  - train: smoke
  - runtime: cpu
  - scenario: [base4_inc2]
  - preset: tiny    # TINY_PRESET: the bounds, as a preset option like conf/preset/*.yaml
  - _self_
order_seed: 1993
seeds: [1]
"""
TINY_PRESET = """\
# @package _global_
defaults:
  - /method: [finetune, joint]
  - _self_
preset: paper
"""


def env() -> dict:
    """Environment for subprocesses: this interpreter's bin first, pinned thread pools."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e["PYTHONDONTWRITEBYTECODE"] = "1"
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def ncil(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "ncil", *args], cwd, check=check)


def archived_tree(commit: str, dest: Path) -> Path:
    """``ncil/`` and ``conf/`` of ``commit`` extracted to ``dest`` (``git archive``), to run older code on this
    machine beside this tree's; skips where the repository lacks the commit (a shallow clone)."""
    import tarfile
    from io import BytesIO

    proc = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "ncil", "conf"], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"git archive {commit} failed: {proc.stderr.decode()[-200:]}")
    with tarfile.open(fileobj=BytesIO(proc.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


# Prepended to a script run on an archived tree: the editable install (`pip install --editable .`, the Makefile)
# puts a finder on sys.meta_path that maps every `ncil.*` name to THIS tree; an old tree lacking a module (the
# flat layout has no ncil/learning) would silently import it from here, mixing two commits' code. Without the
# finder a missing module raises ImportError, as in a clone of that commit.
_WITHOUT_EDITABLE_FINDER = """\
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not f.__module__.startswith("__editable__")]
"""


def python_in(tree: Path, script: str, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run ``script`` with this interpreter on the ``ncil`` of ``tree`` (this one or an ``archived_tree``) only."""
    return subprocess.run([sys.executable, "-c", _WITHOUT_EDITABLE_FINDER + script, *args], cwd=tree,
                          env={**env(), "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=timeout)


def copy_project(dest: Path, tiny: bool = True) -> Path:
    """Copy the project's code and configuration to ``dest`` and compose params.yaml there.

    With ``tiny``, the copy's conf/config.yaml defaults are the tiny grid (so Hydra, DVC's
    composition and `python -m ncil params` all agree on it); otherwise the real default grid.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    if tiny:
        (dest / "conf" / "config.yaml").write_text(TINY_CONFIG)
        (dest / "conf" / "preset" / "tiny.yaml").write_text(TINY_PRESET)
    ncil(["params"], dest)
    return dest


@pytest.fixture
def tiny_project(tmp_path) -> Path:
    return copy_project(tmp_path / "project")


# --- expensive state built once per session; each test gets its own copy ----------------------------
# The tiny grid's data, split files and the first two trained tasks of finetune (seed 1), made with
# the CLI exactly as a test would make them. A test that corrupts or overwrites a file works on its
# copy (`tiny_prepared`, `tiny_trained`), never on the session's template.
BASE_SPLIT = "results/digits/base4/split.json"
SETTING_SPLIT = "results/digits/base4_inc2/split.json"
BASE_TASK = "runs/digits/base4/plain/seed1/task_0"
FINETUNE_TASK_1 = "runs/digits/base4_inc2/finetune/seed1/task_1"


def train_tiny(project: Path, task: int, method: str = "finetune", check: bool = True) -> subprocess.CompletedProcess:
    """``python -m ncil train`` of task 0 (base recipe plain) or task 1 (``method``) of the tiny grid."""
    args = ["train", "--seed", "1", "--task", str(task), "--log", f"logs/t{task}.log"]
    if task == 0:
        args += ["--split", BASE_SPLIT, "--method", "plain",
                 "--checkpoint", f"{BASE_TASK}/model.pt", "--centers", f"{BASE_TASK}/centers.parquet"]
    else:
        inc = FINETUNE_TASK_1.replace("/finetune/", f"/{method}/")
        args += ["--split", SETTING_SPLIT, "--method", method,
                 "--prev-checkpoint", f"{BASE_TASK}/model.pt", "--prev-centers", f"{BASE_TASK}/centers.parquet",
                 "--checkpoint", f"{inc}/model.pt", "--centers", f"{inc}/centers.parquet"]
    return ncil(args, project, check=check)


def _copy(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def tiny_prepared_template(tmp_path_factory) -> Path:
    """Read-only: the tiny project after ``prepare`` and both ``split`` files (built once)."""
    project = copy_project(tmp_path_factory.mktemp("prepared") / "project")
    ncil(["prepare"], project)
    ncil(["split", "--initial", "4", "--out", BASE_SPLIT], project)
    ncil(["split", "--initial", "4", "--increment", "2", "--out", SETTING_SPLIT], project)
    return project


@pytest.fixture(scope="session")
def tiny_trained_template(tiny_prepared_template, tmp_path_factory) -> Path:
    """Read-only: the prepared tiny project with task 0 (plain) and task 1 (finetune) trained (built once)."""
    project = _copy(tiny_prepared_template, tmp_path_factory.mktemp("trained") / "project")
    train_tiny(project, 0)
    train_tiny(project, 1)
    return project


@pytest.fixture
def tiny_prepared(tiny_prepared_template, tmp_path) -> Path:
    """A fresh copy of the prepared tiny project (data and split files), for this test only."""
    return _copy(tiny_prepared_template, tmp_path / "project")


@pytest.fixture
def tiny_trained(tiny_trained_template, tmp_path) -> Path:
    """A fresh copy of the tiny project with tasks 0 and 1 trained, for this test only."""
    return _copy(tiny_trained_template, tmp_path / "project")


@pytest.fixture(scope="session")
def tiny_params() -> dict:
    from ncil.pipeline.config import parse_params
    from ncil.pipeline.hydra_conf import compose

    data = compose(TINY_OVERRIDES)
    return parse_params(data), data
