"""scripts/check_reproduction.py: the seed subset CI reruns, and the dvc.lock hash check."""

import hashlib
import importlib.util

import yaml

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("check_reproduction", ROOT / "scripts/check_reproduction.py")
check_reproduction = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_reproduction)


def test_targets_are_one_seed_of_every_setting_and_method():
    targets = check_reproduction.targets(ROOT / "params.yaml", 1)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert len(targets) == len(params["scenario"]) * len(params["method"]) == 20
    assert "results/digits/base5_inc1/ours/seed1/metrics.json" in targets
    assert all("/seed1/" in t for t in targets)


def _lock(tmp_path, md5):
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"s": {"outs": [
        {"path": "a.bin", "md5": md5}, {"path": "missing.bin", "md5": "0" * 32}, {"path": "d", "md5": "x.dir"}]}}}))
    return tmp_path / "dvc.lock"


def test_lock_check_passes_on_equal_hashes_and_names_a_changed_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"checkpoint")
    good = hashlib.md5(b"checkpoint").hexdigest()
    assert check_reproduction.check_lock(_lock(tmp_path, good)) == 0
    assert "1 outputs on disk hash to" in capsys.readouterr().out
    assert check_reproduction.check_lock(_lock(tmp_path, "f" * 32)) == 1
    assert f"a.bin: dvc.lock records md5 {'f' * 32}, the rerun wrote {good}" in capsys.readouterr().out
    (tmp_path / "a.bin").unlink()
    assert check_reproduction.check_lock(_lock(tmp_path, good)) == 2  # nothing on disk: not a pass
