"""scripts/check_reproduction.py: the seed subset CI reruns, and the dvc.lock hash check."""

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("check_reproduction", ROOT / "scripts/check_reproduction.py")
check_reproduction = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_reproduction)


def test_targets_are_one_seed_of_every_setting_and_method():
    targets = check_reproduction.targets(ROOT / "params.yaml", 1)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert len(targets) == len(params["scenario"]) * len(params["method"]) == 24
    assert "results/digits/base5_inc1/ours/seed1/metrics.json" in targets
    assert all("/seed1/" in t for t in targets)


def test_covering_pairs_run_every_method_in_the_shortest_setting_and_every_setting_once():
    # b has the fewest tasks: every method there, the first method once in each other setting
    pairs = check_reproduction.covering_pairs(["a", "b", "c"], ["m1", "m2", "m3"], {"a": 4, "b": 3, "c": 6})
    assert pairs == [("a", "m1"), ("b", "m1"), ("b", "m2"), ("b", "m3"), ("c", "m1")]
    # a tie goes to the first setting in params.yaml's order; one setting: every method there
    assert check_reproduction.covering_pairs(["a", "b"], ["m1", "m2"], {"a": 4, "b": 4}) == [("a", "m1"), ("a", "m2"), ("b", "m1")]
    assert check_reproduction.covering_pairs(["a"], ["m1", "m2"], {"a": 2}) == [("a", "m1"), ("a", "m2")]


def test_ci_subset_covers_every_method_and_setting_of_the_default_grid_at_least_cost():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    targets = check_reproduction.targets(ROOT / "params.yaml", 1, cover=True)
    runs = [t.split("/")[2:4] for t in targets]  # results/digits/<setting>/<method>/seed1/metrics.json
    assert sorted(m for s, m in runs if s == "base4_inc2") == sorted(params["method"])  # 4 tasks, against 6 in 5+1x5
    assert runs.count(["base5_inc1", "finetune"]) == 1 and len(runs) == 13
    assert set(targets) <= set(check_reproduction.targets(ROOT / "params.yaml", 1))


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


AMD = {"machine": "x86_64", "cpu_vendor": "AuthenticAMD", "cpu_family": "25", "cpu_model": "1",
       "cpu_name": "AMD EPYC", "torch": "2.14.1+cu130", "torch_cpu_capability": "AVX2"}
INTEL = {**AMD, "cpu_vendor": "GenuineIntel", "cpu_family": "6", "cpu_model": "143", "cpu_name": "Xeon",
         "torch_cpu_capability": "AVX512"}


def test_a_difference_fails_on_the_recorded_platform_and_is_reported_on_another(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"checkpoint")
    lock, record = _lock(tmp_path, "f" * 32), tmp_path / "platform.json"
    # No record of who produced the lock: a difference cannot be excused.
    assert check_reproduction.check_lock(lock, record, here=AMD) == 1
    assert "does not say which platform produced" in capsys.readouterr().out
    record.write_text(json.dumps(AMD))
    # Same CPU type and torch build (the name and flags do not matter): must be bit-identical.
    assert check_reproduction.check_lock(lock, record, here={**AMD, "cpu_name": "other name", "cpu_flags": []}) == 1
    assert "not reproduced on the platform that produced it" in capsys.readouterr().out
    # Another CPU type: reported, with exit code 3, never 0.
    assert check_reproduction.check_lock(lock, record, here=INTEL) == 3
    out = capsys.readouterr().out
    assert "1 of 1 outputs differ" in out and "NOT COMPARABLE BYTE FOR BYTE" in out and "AVX512 kernels" in out
    # Equal hashes pass whatever the machine.
    good = hashlib.md5(b"checkpoint").hexdigest()
    assert check_reproduction.check_lock(_lock(tmp_path, good), record, here=INTEL) == 0


def test_platform_record_is_written_whole_and_describes_this_machine(tmp_path):
    import json

    path = tmp_path / "platform.json"
    check_reproduction.write_platform(path)
    record = json.loads(path.read_text())
    assert set(check_reproduction.PLATFORM_KEYS) <= set(record)
    assert check_reproduction.same_platform(record, check_reproduction.current_platform())
    assert not check_reproduction.same_platform(record, {**record, "torch_cpu_capability": "NONE"})
    assert not (tmp_path / "platform.json.tmp").exists()


AMD_26 = {**AMD, "cpu_family": "26", "cpu_model": "2", "torch_cpu_capability": "AVX512"}


def test_a_portable_grid_must_be_bit_identical_on_every_confirmed_cpu_type():
    confirmed = [AMD_26, INTEL]
    native, portable = AMD_26, {**AMD_26, "numerics": "portable"}
    # Native numerics: the producer's CPU type only, whatever is confirmed.
    assert check_reproduction.byte_comparable(native, {**AMD_26, "cpu_name": "x"}, confirmed)
    assert not check_reproduction.byte_comparable(native, INTEL, confirmed)
    # Portable: every confirmed type (the producer is one), not a type that has not confirmed.
    assert check_reproduction.byte_comparable(portable, INTEL, confirmed)
    assert check_reproduction.byte_comparable(portable, AMD_26, confirmed)
    assert not check_reproduction.byte_comparable(portable, AMD, confirmed)  # 25/1: not in this list
    assert not check_reproduction.byte_comparable(portable, INTEL, [INTEL])  # the producer never confirmed
    # Another torch build is another platform, confirmed or not; so is a GPU.
    assert not check_reproduction.byte_comparable(portable, {**INTEL, "torch": "2.15.0"}, confirmed)
    assert not check_reproduction.byte_comparable({**portable, "cuda_device": "NVIDIA H200"}, INTEL, confirmed)


def test_the_lock_check_fails_on_a_confirmed_type_of_a_portable_grid(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"checkpoint")
    lock, record = _lock(tmp_path, "f" * 32), tmp_path / "platform.json"
    record.write_text(json.dumps({**AMD_26, "numerics": "portable"}))
    assert check_reproduction.check_lock(lock, record, here=INTEL, confirmed=[AMD_26, INTEL]) == 1
    out = capsys.readouterr().out
    assert "not reproduced on" in out and "has confirmed the portable numerics" in out
    assert check_reproduction.check_lock(lock, record, here=AMD, confirmed=[AMD_26, INTEL]) == 3
    assert "a CPU type that has not confirmed" in capsys.readouterr().out
    record.write_text(json.dumps(AMD_26))  # the same grid made in native numerics: another type only reports
    assert check_reproduction.check_lock(lock, record, here=INTEL, confirmed=[AMD_26, INTEL]) == 3


def test_the_platform_record_names_the_portable_mode_of_the_grid(tmp_path):
    import json

    params = tmp_path / "params.yaml"
    for mode, recorded in (("portable", "portable"), ("native", None)):
        params.write_text(yaml.safe_dump({"runtime": {"numerics": mode}}))
        check_reproduction.write_platform(tmp_path / "platform.json", params)
        assert json.loads((tmp_path / "platform.json").read_text()).get("numerics") == recorded


# --- results/<dataset>/platforms.json: which platform made each checkpoint --------------------------------

ZEN3 = {"cpu_vendor": "AuthenticAMD", "cpu_family": "25", "cpu_model": "1", "torch_cpu_capability": "AVX2"}
XEON = {"cpu_vendor": "GenuineIntel", "cpu_family": "6", "cpu_model": "167", "torch_cpu_capability": "AVX512"}


def _grid_with_checkpoints(tmp_path, monkeypatch, platforms):
    """A dvc.lock with one checkpoint per entry of ``platforms`` (its sidecar beside it), in tmp_path."""
    monkeypatch.chdir(tmp_path)
    outs = []
    for i, platform in enumerate(platforms):
        checkpoint = tmp_path / f"runs/digits/base4/plain/seed1/task_{i}/model.pt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(bytes([i]) * 100)
        sidecar = {"platform": platform, "checkpoint": "model.pt",
                   "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
        (checkpoint.parent / "platform.json").write_text(json.dumps(sidecar))
        outs.append({"path": checkpoint.relative_to(tmp_path).as_posix(),
                     "md5": hashlib.md5(checkpoint.read_bytes()).hexdigest(), "size": 100})
        outs.append({"path": checkpoint.with_name("centers.parquet").relative_to(tmp_path).as_posix(), "md5": "0" * 32})
    stages = {f"train_{i}": {"cmd": "x", "outs": outs[2 * i:2 * i + 2]} for i in range(len(platforms))}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"dataset": {"name": "digits"}}))
    return outs


def test_the_platform_record_keeps_each_platform_once_and_each_checkpoint_with_its_lock_md5():
    sidecars = {"a/model.pt": {"platform": ZEN3}, "b/model.pt": {"platform": XEON},
                "c/model.pt": {"platform": ZEN3, "resumed_from_platforms": [XEON]}}
    record = check_reproduction.platforms_record(sidecars, {"a/model.pt": "1" * 32, "b/model.pt": "2" * 32,
                                                            "c/model.pt": "3" * 32})
    assert record["platforms"] == [ZEN3, XEON]
    assert record["checkpoints"] == {"a/model.pt": {"md5": "1" * 32, "platform": 0},
                                     "b/model.pt": {"md5": "2" * 32, "platform": 1},
                                     "c/model.pt": {"md5": "3" * 32, "platform": 0, "resumed_from_platforms": [1]}}
    assert check_reproduction.check_platforms_record(record, {p: e["md5"] for p, e in record["checkpoints"].items()},
                                                     "r") == []


def test_the_platform_record_check_names_each_disagreement_with_dvc_lock():
    record = {"format": 1, "platforms": [ZEN3],
              "checkpoints": {"a/model.pt": {"md5": "1" * 32, "platform": 0},
                              "b/model.pt": {"md5": "2" * 32, "platform": 3},
                              "gone/model.pt": {"md5": "4" * 32, "platform": 0}}}
    problems = check_reproduction.check_platforms_record(
        record, {"a/model.pt": "9" * 32, "b/model.pt": "2" * 32, "c/model.pt": "3" * 32}, "rec.json")
    assert problems == [
        f"rec.json: checkpoints: a/model.pt: md5 {'1' * 32}, dvc.lock records {'9' * 32}",
        "rec.json: checkpoints: b/model.pt: platform index 3, expected 0..0",
        "rec.json: checkpoints: c/model.pt is missing (dvc.lock has it): rerun `make lock`",
        "rec.json: checkpoints: gone/model.pt is not a checkpoint of dvc.lock"]
    assert check_reproduction.check_platforms_record({"platforms": []}, {}, "rec.json")[0].startswith(
        "rec.json: expected format 1")


def test_platforms_are_written_from_the_sidecars_checked_and_looked_up(tmp_path, monkeypatch, capsys):
    outs = _grid_with_checkpoints(tmp_path, monkeypatch, [ZEN3, XEON, ZEN3])
    assert check_reproduction.main(["platforms"]) == 1  # a lock with checkpoints and no record
    assert check_reproduction.main(["platforms", "--write"]) == 0
    record = yaml.safe_load((tmp_path / "results/digits/platforms.json").read_text())
    assert record["platforms"] == [ZEN3, XEON] and len(record["checkpoints"]) == 3  # centers are not checkpoints
    assert check_reproduction.main(["platforms"]) == 0
    capsys.readouterr()
    assert check_reproduction.main(["platforms", "--which", outs[2]["path"]]) == 0
    assert "GenuineIntel family 6 model 167" in capsys.readouterr().out
    # the lock moves on (a rerun recorded) and the record does not: the check fails naming the checkpoint
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    lock["stages"]["train_1"]["outs"][0]["md5"] = "f" * 32
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert check_reproduction.main(["platforms"]) == 1
    assert f"{outs[2]['path']}: md5 {outs[2]['md5']}, dvc.lock records {'f' * 32}" in capsys.readouterr().out


def test_platforms_are_not_written_from_a_sidecar_that_does_not_describe_its_checkpoint(tmp_path, monkeypatch):
    outs = _grid_with_checkpoints(tmp_path, monkeypatch, [ZEN3, XEON])
    checkpoint, sidecar = Path(outs[2]["path"]), Path(outs[2]["path"]).with_name("platform.json")
    flipped = bytearray(checkpoint.read_bytes())
    flipped[7] ^= 1
    checkpoint.write_bytes(bytes(flipped))  # bit-flipped after training: its sidecar's SHA-256 no longer holds
    with pytest.raises(SystemExit, match=f"{sidecar}: checkpoint_sha256 is .* the sidecar does not describe"):
        check_reproduction.main(["platforms", "--write"])
    sidecar.write_text('{"platform": {"cpu_vendor": ')  # truncated
    with pytest.raises(RuntimeError, match=f"{sidecar}: corrupt or truncated platform sidecar"):
        check_reproduction.main(["platforms", "--write"])
    sidecar.unlink()
    with pytest.raises(SystemExit, match=f"{sidecar}: missing"):
        check_reproduction.main(["platforms", "--write"])
    assert not (tmp_path / "results/digits/platforms.json").exists()


def test_only_a_type_that_reproduced_every_reference_output_compares_a_portable_grid(tmp_path):
    reference = {"hashes": {"t0": "1" * 32, "r0": "2" * 32},
                 "confirmed_on": [{**AMD_26, "files": ["r0", "t0"]}, {**INTEL, "files": ["t0"]}]}
    (tmp_path / "ref.json").write_text(json.dumps(reference))
    confirmed = check_reproduction.confirmed_types(tmp_path / "ref.json")
    assert confirmed == [reference["confirmed_on"][0]]
    portable = {**AMD_26, "numerics": "portable"}
    assert not check_reproduction.byte_comparable(portable, INTEL, confirmed)  # it saw the ViT outputs only
    assert check_reproduction.confirmed_types(tmp_path / "absent.json") == []


def test_a_grid_trained_on_two_cpu_types_compares_bytes_only_where_both_are_comparable(tmp_path, monkeypatch, capsys):
    """A regeneration resumed on another machine: results/platform.json names the machine of `make lock`,
    and the platforms record names both trainers; a rerun on either type alone cannot be held to the bytes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"checkpoint")
    lock, record = _lock(tmp_path, "f" * 32), tmp_path / "platform.json"
    record.write_text(json.dumps(AMD))
    assert check_reproduction.check_lock(lock, record, here=AMD, producers=[AMD]) == 1  # one trainer: must match
    capsys.readouterr()
    assert check_reproduction.check_lock(lock, record, here=AMD, producers=[AMD, INTEL]) == 3
    out = capsys.readouterr().out
    assert "some checkpoints of" in out and "trained on Xeon (GenuineIntel family 6 model 143" in out
    # portable grids on two types that both reproduced every reference output: compared on either
    portable = [{**AMD, "numerics": "portable"}, {**INTEL, "numerics": "portable"}]
    record.write_text(json.dumps(portable[0]))
    assert check_reproduction.check_lock(lock, record, here=INTEL, confirmed=[AMD, INTEL], producers=portable) == 1
    assert check_reproduction.check_lock(lock, record, here=INTEL, confirmed=[AMD], producers=portable) == 3


# --- Per backbone: a type that reproduced the ViT's reference outputs only still compares the ViT methods ----------

PARAMS = {"dataset": {"name": "digits", "n_classes": 10}, "seeds": [1],
          "scenario": {"base4_inc2": {"initial_increment": 4, "increment": 2}},
          "method": {"ours": {"base_recipe": "rotation"},
                     "pass_resnet18": {"base_recipe": "rotation_resnet18", "backbone": "resnet18"}}}
REFERENCE = {"hashes": {"runs/t0/model.pt": "1" * 32, "runs/t1/model.pt": "2" * 32, "runs/r0/model.pt": "3" * 32},
             "confirmed_on": [{**AMD_26, "files": ["runs/r0/model.pt", "runs/t0/model.pt", "runs/t1/model.pt"]},
                              {**INTEL, "files": ["runs/t0/model.pt", "runs/t1/model.pt"]}]}


def _two_backbone_lock():
    """A grid's lock in miniature: data, then one checkpoint and metrics file per backbone, then a table of both."""
    from ncil.pipeline import experiment_grid

    ours, resnet = (experiment_grid.find_run(PARAMS, "base4_inc2", m, 1) for m in ("ours", "pass_resnet18"))
    files = {"data": "data/digits/train.npz", "ours": ours.checkpoint(1), "ours_metrics": ours.metrics_file,
             "resnet": resnet.checkpoint(1), "resnet_metrics": resnet.metrics_file, "table": "results/tables/table1.md"}
    stages = {"prepare": ([], ["data"]), "train_ours": (["data"], ["ours"]), "train_resnet": (["data"], ["resnet"]),
              "summarize_ours": (["ours"], ["ours_metrics"]), "summarize_resnet": (["resnet"], ["resnet_metrics"]),
              "tables": (["ours_metrics", "resnet_metrics"], ["table"])}
    lock = {"schema": "2.0", "stages": {name: {"deps": [{"path": files[d]} for d in deps],
                                               "outs": [{"path": files[o], "md5": hashlib.md5(o.encode()).hexdigest()}
                                                        for o in outs]}
                                        for name, (deps, outs) in stages.items()}}
    return lock, files


def test_each_output_carries_the_backbones_that_went_into_it():
    lock, files = _two_backbone_lock()
    made = check_reproduction.output_backbones(lock, PARAMS)
    assert made.get(files["data"], frozenset()) == frozenset()  # data and splits: no backbone
    assert made[files["ours"]] == made[files["ours_metrics"]] == {"vit"}
    assert made[files["resnet"]] == made[files["resnet_metrics"]] == {"resnet18"}
    assert made[files["table"]] == {"vit", "resnet18"}  # a table of both methods needs both
    assert check_reproduction.confirmed_backbones(REFERENCE["confirmed_on"][1], REFERENCE) == {"vit"}
    assert check_reproduction.confirmed_backbones(REFERENCE["confirmed_on"][0], REFERENCE) == {"vit", "resnet18"}
    assert check_reproduction.comparable_backbones([INTEL, {**AMD_26, "numerics": "portable"}], REFERENCE) == {"vit"}
    assert check_reproduction.comparable_backbones([AMD, AMD_26], REFERENCE) == frozenset()  # 25/1 is not listed
    assert check_reproduction.comparable_backbones([{**INTEL, "cuda_device": "H200"}], REFERENCE) == frozenset()


def test_a_type_that_confirmed_the_vit_only_holds_the_vit_methods_of_a_portable_grid_to_their_bytes(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lock, files = _two_backbone_lock()
    for key, path in files.items():  # the rerun wrote every file as locked, except the ResNet's and the table
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(key.encode() if key not in ("resnet", "table") else b"other bits")
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    record = tmp_path / "platform.json"
    record.write_text(json.dumps({**AMD_26, "numerics": "portable"}))
    confirmed = [REFERENCE["confirmed_on"][0]]  # confirmed_types: only AMD_26 reproduced every output

    def check(here):
        return check_reproduction.check_lock(tmp_path / "dvc.lock", record, here=here, confirmed=confirmed,
                                             reference=REFERENCE, params=PARAMS)

    assert check(INTEL) == 3  # the ViT's outputs and the data match; the ResNet's cannot be held here
    out = capsys.readouterr().out
    assert "3 outputs made with backbone(s) vit only (and the data) were compared byte for byte" in out
    assert "3 outputs involve other backbones" in out and "(2 of them differ)" in out
    Path(files["ours"]).write_bytes(b"a ViT checkpoint with other bits")
    assert check(INTEL) == 1  # a ViT output that differs fails on a type that confirmed the ViT
    out = capsys.readouterr().out
    assert f"{files['ours']}: dvc.lock records md5" in out and "backbone(s) vit" in out
    assert files["resnet"] not in out.split("differ from")[1]  # only the compared outputs are listed
    assert check(AMD) == 3  # a type not in confirmed_on compares nothing, as before
    assert "a CPU type that has not confirmed" in capsys.readouterr().out
    assert check(AMD_26) == 1  # the producer's own type, which confirmed every backbone: every output counts
