"""scripts/refresh_code_provenance.py: new fingerprints recorded on unchanged results, in DVC's layout."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("refresh_code_provenance", ROOT / "scripts" / "refresh_code_provenance.py")
refresh = importlib.util.module_from_spec(spec)
spec.loader.exec_module(refresh)

LOCK = """\
schema: '2.0'
stages:
  summarize_a:
    cmd: python -m ncil summarize --out results/a/metrics.json
    deps:
    - path: results/a/eval
      hash: md5
      md5: 1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f.dir
      size: 10
      nfiles: 2
    params:
      fingerprints.yaml:
        summarize: 0a0a0a0a0a0a0a0a
      params.yaml:
        order_seed: 1993
    outs:
    - path: results/a/metrics.json
      hash: md5
      md5: 2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e
      size: 20
  tables:
    cmd: python -m ncil tables
    deps:
    - path: results/a/metrics.json
      hash: md5
      md5: 2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e
      size: 20
    - path: results/b/metrics.json
      hash: md5
      md5: 3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d
      size: 30
    params:
      fingerprints.yaml:
        tables: 1b1b1b1b1b1b1b1b
"""


def test_the_lock_gets_the_new_fingerprints_and_the_new_hashes_of_rewritten_files_only():
    values = {"summarize": "aaaaaaaaaaaaaaaa", "tables": "bbbbbbbbbbbbbbbb"}
    files = {"results/a/metrics.json": ("4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c", 21)}
    new = refresh.refreshed_lock(LOCK, values, files)
    changed = [(a, b) for a, b in zip(LOCK.splitlines(), new.splitlines()) if a != b]
    assert changed == [
        ("        summarize: 0a0a0a0a0a0a0a0a", "        summarize: aaaaaaaaaaaaaaaa"),
        ("      md5: 2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e", "      md5: 4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c"),
        ("      size: 20", "      size: 21"),
        ("      md5: 2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e", "      md5: 4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c"),
        ("      size: 20", "      size: 21"),
        ("        tables: 1b1b1b1b1b1b1b1b", "        tables: bbbbbbbbbbbbbbbb"),
    ]
    assert yaml.safe_load(new) == refresh.expected_lock(yaml.safe_load(LOCK), values, files)


def test_a_fingerprint_of_a_verb_that_no_longer_exists_stops_it():
    with pytest.raises(SystemExit, match="'summarize' is not a verb"):
        refresh.refreshed_lock(LOCK, {"tables": "b" * 16}, {})


def test_only_the_code_fingerprints_of_a_metrics_file_change():
    text = json.dumps({"avg": 0.5, "provenance": {"seed": 1, "code_fingerprints": {"train": "old"}}})
    new = json.loads(refresh.refreshed_metrics(text, {"train": "new"}))
    assert new == {"avg": 0.5, "provenance": {"seed": 1, "code_fingerprints": {"train": "new"}}}


@pytest.mark.slow  # ~10 s: every verb's fingerprint and dvc.lock (1.3 MB) read twice
def test_the_committed_results_record_the_fingerprints_of_the_code_now(capsys):
    """What CI's clean-tree check needs after every code edit: metrics.json and dvc.lock up to date."""
    assert refresh.main(["--check"]) == 0, capsys.readouterr().out
