"""Code fingerprints per step kind (issue 22, item 1): what counts, what does not, and the check that
the committed fingerprints.yaml follows the code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ncil.pipeline import fingerprints
from ncil.pipeline.workflow import REPO_ROOT, code_deps


def test_docstrings_comments_and_layout_do_not_count(tmp_path):
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text('"""Module doc."""\n\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    b.write_text('"""Another doc."""\n# a comment\ndef f(x):  # here too\n    """Other doc."""\n\n    return (x\n            + 1)\n')
    c.write_text('def f(x):\n    return x + 2\n')
    assert fingerprints.normalised_source(a) == fingerprints.normalised_source(b)
    assert fingerprints.normalised_source(a) != fingerprints.normalised_source(c)


def test_a_function_with_only_a_docstring_stays_valid(tmp_path):
    a = tmp_path / "a.py"
    a.write_text('def f():\n    """Only a doc."""\n')
    assert "Pass" in fingerprints.normalised_source(a)


def test_launch_only_code_is_in_the_closure_but_not_in_the_fingerprint():
    assert "ncil/pipeline/devices.py" in code_deps("train")  # the train step imports it (claims a GPU)
    with_devices = fingerprints.fingerprint_of(code_deps("train"), REPO_ROOT)
    without = fingerprints.fingerprint_of([f for f in code_deps("train") if f != "ncil/pipeline/devices.py"], REPO_ROOT)
    assert with_devices == without


def test_the_committed_fingerprints_follow_the_code():
    assert fingerprints.problem(REPO_ROOT) is None  # else: python -m ncil dvc-yaml


def test_the_report_and_training_code_have_their_own_fingerprints():
    assert "ncil/reports/results_table.py" not in code_deps("train")
    assert "ncil/learning/training.py" not in code_deps("tables")


@pytest.fixture
def package_copy(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "ncil", root / "ncil", ignore=shutil.ignore_patterns("__pycache__"))
    from ncil.pipeline import workflow
    monkeypatch.setattr(workflow, "REPO_ROOT", root)
    workflow.code_deps.cache_clear()
    yield root
    workflow.code_deps.cache_clear()


def test_an_edit_without_refresh_is_named_with_the_command_that_refreshes(package_copy):
    fingerprints.write(package_copy)
    assert fingerprints.problem(package_copy) is None
    with open(package_copy / "ncil" / "learning" / "training.py", "a") as fh:
        fh.write("\n_EDITED = 1\n")
    message = fingerprints.problem(package_copy)
    assert message is not None and "fingerprints.yaml: out of date with the code of" in message
    assert "train" in message.split("(")[0] and "tables" not in message.split("(")[0]
    assert "python -m ncil dvc-yaml" in message
    written = fingerprints.write(package_copy)
    assert "fingerprints.yaml" in written and "fingerprints/train.txt" in written
    assert "fingerprints/tables.txt" not in written and "fingerprints/evaluate.txt" not in written
    assert fingerprints.problem(package_copy) is None and fingerprints.write(package_copy) == []
