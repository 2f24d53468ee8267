import copy

import pytest

from ncil import io
from ncil.config import ConfigError, parse_params
from ncil.hydra_conf import compose
from tests.conftest import ROOT, ncil


def test_params_yaml_equals_composed_defaults():
    assert io.read_yaml(ROOT / "params.yaml") == compose([])


def test_dvc_yaml_is_generated_from_params_yaml():
    ncil(["dvc-yaml", "--check"], ROOT)


def test_defaults_validate():
    p = parse_params(compose([]))
    assert p.dataset.name == "digits" and p.seeds == (1, 2, 3)
    assert set(p.method) >= {"finetune", "joint"}
    assert {s.initial_increment for s in p.scenario.values()} == {4, 5}


def _defaults():
    return copy.deepcopy(compose([]))


def test_unknown_key_is_named():
    data = _defaults()
    data["train"]["epoch"] = 3
    with pytest.raises(ConfigError, match=r"params.yaml: train.epoch: unknown key"):
        parse_params(data)


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("train", "epochs", -1, r"train.epochs: expected a positive value, got -1"),
        ("train", "epochs", "ten", r"train.epochs: expected an integer, got 'ten'"),
        ("train", "lr", True, r"train.lr: expected a number"),
        ("model", "patch_size", 3, r"model.patch_size: expected a divisor of img_size 8"),
        ("model", "img_size", 32, r"model.img_size: expected the data set's image_size 8"),
        ("runtime", "device", "tpu", r"runtime.device: expected auto, cpu, cuda"),
        ("dataset", "val_fraction", 1.5, r"dataset.val_fraction: expected a fraction"),
    ],
)
def test_invalid_values_are_named(section, key, value, message):
    data = _defaults()
    data[section][key] = value
    with pytest.raises(ConfigError, match=message):
        parse_params(data)


def test_invalid_scenario_and_method_are_named():
    data = _defaults()
    data["scenario"]["base4_inc2"]["initial_increment"] = 11
    with pytest.raises(ConfigError, match=r"scenario.base4_inc2.initial_increment: expected 1..10"):
        parse_params(data)
    data = _defaults()
    data["method"]["joint"]["train_on"] = "all"
    with pytest.raises(ConfigError, match=r"method.joint.train_on: expected one of"):
        parse_params(data)
    data = _defaults()
    del data["seeds"]
    with pytest.raises(ConfigError, match=r"seeds: missing required key"):
        parse_params(data)


def test_hydra_rejects_unknown_override_key():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="train.epoch"):
        compose(["train.epoch=3"])


def test_group_overrides_compose():
    data = compose(["model=vit_paper", "dataset.image_size=32", "method=[finetune]", "train.epochs=3"])
    assert data["model"]["embed_dim"] == 384 and list(data["method"]) == ["finetune"]
    assert data["train"]["epochs"] == 3


def test_params_cli_rejects_invalid_values(tmp_path):
    proc = ncil(["params", "train.epochs=0", "--out", str(tmp_path / "p.yaml"), "--dvc-yaml", str(tmp_path / "d.yaml")],
                ROOT, check=False)
    assert proc.returncode != 0
    assert "train.epochs: expected a positive value, got 0" in proc.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_default_grid_has_every_method_and_bounds_experiment_only_two():
    from ncil import grid

    data = compose([])
    parse_params(data)
    assert len(data["method"]) == 10 and data["train"]["batch_size"] == 16
    jobs = grid.train_jobs(data)
    # 3 base recipes (plain, rotation, rotation_resnet18) x 2 base sizes x 3 seeds shared task-0 jobs,
    # plus 10 methods x 3 seeds x (3 + 5) incremental tasks.
    assert sum(j.task == 0 for j in jobs) == 18 and len(jobs) == 18 + 10 * 3 * 8
    bounds = compose(["+experiment=digits_bounds"])
    assert sorted(bounds["method"]) == ["finetune", "joint"]
    assert len(grid.train_jobs(bounds)) == 6 + 2 * 3 * 8
