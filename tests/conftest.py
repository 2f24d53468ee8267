"""Shared fixtures: a throw-away copy of the project with a tiny grid, and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ["ncil", "conf", "rules", "profiles", "envs", "Snakefile", ".dvcignore", "pyproject.toml"]
# A grid that runs in seconds: one setting (4 + 2 x 3), both methods, one seed, one epoch, tiny ViT.
TINY_OVERRIDES = ["model=vit_digits_tiny", "train=smoke", "scenario=[base4_inc2]", "seeds=[1]"]
TINY_CONFIG = """\
defaults:
  - dataset: digits
  - model: vit_digits_tiny
  - train: smoke
  - runtime: cpu
  - scenario: [base4_inc2]
  - method: [finetune, joint]
  - _self_
preset: paper
order_seed: 1993
seeds: [1]
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
    ncil(["params"], dest)
    return dest


@pytest.fixture
def tiny_project(tmp_path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.fixture(scope="session")
def tiny_params() -> dict:
    from ncil.config import parse_params
    from ncil.hydra_conf import compose

    data = compose(TINY_OVERRIDES)
    return parse_params(data), data
