"""The `official` preset's configuration (method-spec Sections 0, 4.8 and 8): its options, its methods
(fcs, ours_official), the per-setting contrastive weight, the grid preset and the Hydra composition."""

import copy
import dataclasses
import functools

import pytest
import yaml

from ncil.pipeline import config, plainconf
from ncil.pipeline.config import BASE_RECIPE_FIELDS, ConfigError, MethodConfig, method_for_split, non_default_fields, parse_params
from ncil.pipeline.hydra_conf import compose, write_params
from tests.conftest import ROOT

OFFICIAL_CIFAR = ["+experiment=cifar100", "preset=official", "method=[fcs,ours_official]"]


@pytest.fixture(autouse=True)
def hybrid_backbone(monkeypatch):
    """The hybrid backbone's name is added to METHOD_BACKBONES by the model side of issue 12; these
    tests check the configuration with or without it."""
    monkeypatch.setattr(config, "METHOD_BACKBONES", tuple(dict.fromkeys((*config.METHOD_BACKBONES, "hybrid"))))


@functools.cache
def _composed(*overrides: str) -> dict:
    return compose(list(overrides))


def composed(*overrides: str) -> dict:
    """Hydra's composition of ``overrides`` (a private copy: Hydra is slow on this machine)."""
    return copy.deepcopy(_composed(*overrides))


# --- the released code's options: paper defaults, refusals ---------------------------------------------

def test_new_options_default_to_the_paper():
    """With every new option at its default a method is what it was before: no mixup, no contrastive loss,
    no transfer layer, the paper's PKS/PR/protoAug forms, validation images held out."""
    m = MethodConfig(base_recipe="plain")
    assert (m.mixup_rounds, m.contrastive, m.contrastive_temperature, m.contrastive_by_scenario, m.transfer) == \
        (0, 0.0, 0.07, (), 0.0)
    assert (m.pks_form, m.pr_form, m.proto_aug_form, m.train_images) == ("paper", "paper", "paper", "train")


def test_paper_methods_snapshot_as_before():
    """Checkpoints list the options that differ from the defaults: for the paper's methods exactly the
    keys of their method files, so the new options add nothing to their bytes."""
    p = parse_params(composed("preset=paper"))
    for name, m in p.method.items():
        assert set(non_default_fields(m)) <= set(composed("preset=paper")["method"][name]), name
        assert method_for_split(p, m, "base4_inc2") is m and method_for_split(p, m, "base5") is m


BAD_METHOD_EDITS = [
    ("pks_form", "code", "method.ours.pks_form: expected one of ['paper', 'official'], got 'code'"),
    ("pr_form", "joint", "method.ours.pr_form: expected one of ['paper', 'official'], got 'joint'"),
    ("proto_aug_form", "Official", "method.ours.proto_aug_form: expected one of ['paper', 'official'], got 'Official'"),
    ("train_images", "all", "method.ours.train_images: expected one of ['train', 'train_val'], got 'all'"),
    ("preset", "code", "method.ours.preset: expected one of ['paper', 'official'], got 'code'"),
    ("mixup_rounds", -1, "method.ours.mixup_rounds: expected a number of rounds (0 = off) >= 0, got -1"),
    ("mixup_rounds", 1.5, "method.ours.mixup_rounds: expected an integer, got 1.5"),
    ("contrastive", -0.1, "method.ours.contrastive: expected a weight >= 0, got -0.1"),
    ("transfer", -1.0, "method.ours.transfer: expected a weight >= 0, got -1.0"),
    ("contrastive_temperature", 0.0, "method.ours.contrastive_temperature: expected a positive value, got 0.0"),
    ("contrastive_by_scenario", 0.03, "method.ours.contrastive_by_scenario: expected a mapping of scenario names "
                                      "to weights, got 0.03"),
    ("contrastive_by_scenario", {"base4_inc2": -0.03},
     "method.ours.contrastive_by_scenario.base4_inc2: expected a weight >= 0, got -0.03"),
    ("contrastive_by_scenario", {"base4_inc2": "0.03"},
     "method.ours.contrastive_by_scenario.base4_inc2: expected a number, got the text '0.03'"),
    ("contrastive_by_scenario", {"base40_inc30": 0.03},
     "method.ours.contrastive_by_scenario.base40_inc30: unknown scenario (expected one of the scenarios of "
     "conf/scenario/ or of this grid: base100_inc10,"),
    ("contrastive_by_scenario", [["base4_inc2", 0.1], ["base4_inc2", 0.2]],
     "method.ours.contrastive_by_scenario: expected each scenario once, got ['base4_inc2', 'base4_inc2']"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_METHOD_EDITS, ids=[f"{k}={v}" for k, v, _ in BAD_METHOD_EDITS])
def test_bad_method_options_are_refused(key, value, message):
    data = composed("method=[ours]")
    data["method"]["ours"][key] = value
    with pytest.raises(ConfigError) as err:
        parse_params(data)
    assert str(err.value).startswith(f"params.yaml: {message}")


# --- fcs and ours_official: every field against the spec's 4.8 table -------------------------------------

# Method-spec 4.8 [code], the released configs: temp 0.1; lambda_fkd / lambda_proto / lambda_transfer
# 10 / 10 / 1; lambda_con 0.1 (0.03 for 40+3x20), tau_c 0.07; mixup 4 rounds; PKS and PR weights 1 in
# their code forms (4.6: L1, no CLS term; 4.7: L_off + 0.1 L_rest); rotation SSL; the hybrid (3.1).
FCS = {
    "base_recipe": "official", "preset": "official", "train_on": "current", "backbone": "hybrid",
    "rotation": True, "ce_temperature": 0.1, "feature_kd": 10.0, "proto_aug": 10.0,
    "pks": 0.0, "pks_weighting": "inverse", "pks_p": 1, "pks_detach": False,
    "pr": 0.0, "pr_centers": "task_start",
    "mixup_rounds": 4, "contrastive": 0.1, "contrastive_temperature": 0.07,
    "contrastive_by_scenario": (("base40_inc3", 0.03),), "transfer": 1.0,
    "pks_form": "official", "pr_form": "official", "proto_aug_form": "official", "train_images": "train_val",
    # DyTox's options (backbone dytox only), off: no exemplar memory, no divergence head, no fine-tuning
    "exemplars_per_class": 0, "exemplar_rule": "icarl", "dytox_distillation": "kd", "pks_cls_pairing": "same_token",
    "divergence": 0.0, "finetune_epochs": 0, "finetune_lr": 0.0,
    "dytox_optimizer": "adam", "warmup_epochs": 0, "warmup_lr": 0.0, "min_lr": 0.0, "repeated_aug": False,
    # FeCAM's options (classifier fecam only), off: the head classifies
    "classifier": "head", "fecam_tukey": 0.5, "fecam_shrink_times": 2,
    # EFC's options (efc true only), off
    "efc": False, "efc_old_classes": "rebalance", "efc_lambda": 10.0, "efc_damping": 0.1, "efc_sigma": 0.2,
    "efc_rebalance_epochs": 50, "efc_lr": 0.0,
    # drift compensation's options (classifier ncm only), off: no prototype is moved
    "drift": "none", "sdc_sigma": 0.0, "adc_alpha": 0.0, "adc_steps": 0, "adc_samples": 0, "ldc_epochs": 0,
    "ldc_lr": 0.0,
    # AdaGauss's options (adagauss true only), off: their released defaults, unread
    "adagauss": False, "adagauss_latent": 64, "adagauss_lambda": 10.0, "adagauss_alpha": 1.0, "adagauss_beta": 1.0,
    "adagauss_samples": 10000, "adagauss_adapter_lr": 0.01,
}
OURS_OFFICIAL = {**FCS, "pks": 1.0, "pr": 1.0}


def test_official_methods_compose_to_the_released_configuration():
    p = parse_params(composed("preset=official"))
    assert list(p.method) == ["fcs", "ours_official"] and p.preset == "official"
    assert dataclasses.asdict(p.method["fcs"]) == FCS
    assert dataclasses.asdict(p.method["ours_official"]) == OURS_OFFICIAL
    assert set(FCS) == {f.name for f in dataclasses.fields(MethodConfig)}  # every field is pinned above


def test_official_methods_share_task_0():
    """fcs and ours_official differ only in the terms of tasks t >= 1 (PKS, PR): one base recipe."""
    p = parse_params(composed(*OFFICIAL_CIFAR))
    fcs, ours = p.method["fcs"], p.method["ours_official"]
    assert fcs.base_recipe == ours.base_recipe == "official"
    for split in ("base50", "base40"):
        a, b = method_for_split(p, fcs, split), method_for_split(p, ours, split)
        assert [getattr(a, f) for f in BASE_RECIPE_FIELDS] == [getattr(b, f) for f in BASE_RECIPE_FIELDS]
    assert [f.name for f in dataclasses.fields(fcs) if getattr(fcs, f.name) != getattr(ours, f.name)] == ["pks", "pr"]


@pytest.mark.parametrize(("key", "value", "differ"), [
    ("mixup_rounds", 2, "mixup_rounds"), ("train_images", "train", "train_images"),
    ("contrastive_temperature", 0.1, "contrastive_temperature"),
    ("contrastive_by_scenario", {"base4_inc2": 0.05}, "contrastive"),
])
def test_a_task_0_mismatch_between_official_methods_is_refused(key, value, differ):
    data = composed("preset=official")
    data["method"]["ours_official"][key] = value
    with pytest.raises(ConfigError) as err:
        parse_params(data)
    assert str(err.value).startswith(
        f"params.yaml: method.ours_official.base_recipe: 'official' is shared with method 'fcs', which differs in "
        f"{differ} for task 0 of base4 (methods of one base_recipe must agree on preset, backbone, rotation, "
        f"ce_temperature, mixup_rounds, contrastive, contrastive_temperature, train_images, exemplars_per_class, "
        f"exemplar_rule, dytox_optimizer, warmup_epochs, warmup_lr, min_lr, repeated_aug, classifier, fecam_tukey, "
        f"fecam_shrink_times, efc, adagauss, adagauss_latent, adagauss_alpha, adagauss_beta): give one of them another "
        f"base_recipe name")


def test_the_shared_values_live_in_one_file():
    """Editing the preset's method file changes both official methods (Hydra's defaults list)."""
    hydra = composed("preset=official")
    assert {k: v for k, v in hydra["method"]["ours_official"].items() if k not in ("pks", "pr")} == \
        hydra["method"]["fcs"]
    assert plainconf.read_yaml(ROOT / "conf/preset/method/official.yaml") == hydra["method"]["fcs"]


# --- the contrastive weight per setting (method-spec 4.8: 0.03 for 40+3x20) --------------------------------

def test_contrastive_weight_per_setting():
    """The released configs: 0.1 for 50+10x5 and 50+5x10, 0.03 for 40+3x20, task 0 included."""
    p = parse_params(composed(*OFFICIAL_CIFAR))
    expected = {"base50_inc10": 0.1, "base50_inc5": 0.1, "base40_inc3": 0.03, "base50": 0.1, "base40": 0.03}
    for name in ("fcs", "ours_official"):
        resolved = {split: method_for_split(p, p.method[name], split) for split in expected}
        assert {split: m.contrastive for split, m in resolved.items()} == expected
        # The resolved method names its weight and nothing else differs: what a checkpoint records.
        for m in resolved.values():
            assert m.contrastive_by_scenario == ()
            assert dataclasses.replace(m, contrastive=0.1) == dataclasses.replace(p.method[name],
                                                                                  contrastive_by_scenario=())
        assert non_default_fields(resolved["base40"], BASE_RECIPE_FIELDS)["contrastive"] == 0.03


def test_method_for_split_refuses_a_split_outside_the_grid():
    p = parse_params(composed("preset=official"))
    with pytest.raises(ValueError, match=r"split 'base40_inc3': expected a scenario of the grid \(base4_inc2, "
                                         r"base5_inc1\) or the base split of one \(base4, base5\)"):
        method_for_split(p, p.method["fcs"], "base40_inc3")


def test_scenarios_sharing_task_0_must_agree_on_the_contrastive_weight():
    """base4_inc2 and base4_inc3 share task 0 (base4): one weight for both, else refused."""
    data = composed("preset=official")
    data["scenario"]["base4_inc3"] = {"initial_increment": 4, "increment": 3}
    data["method"]["fcs"]["contrastive_by_scenario"] = {"base4_inc2": 0.03}
    data["method"]["ours_official"]["contrastive_by_scenario"] = {"base4_inc2": 0.03}
    with pytest.raises(ConfigError, match=r"^params.yaml: method.fcs.contrastive_by_scenario: scenarios 'base4_inc2' "
                                          r"and 'base4_inc3' share task 0 \(base4\) but give contrastive weights "
                                          r"0.03 and 0.1"):
        parse_params(data)
    for name in ("fcs", "ours_official"):
        data["method"][name]["contrastive_by_scenario"] = {"base4_inc2": 0.03, "base4_inc3": 0.03}
    p = parse_params(data)
    assert method_for_split(p, p.method["fcs"], "base4").contrastive == 0.03
    assert method_for_split(p, p.method["fcs"], "base5_inc1").contrastive == 0.1


def test_contrastive_by_scenario_reads_a_mapping_or_its_pairs():
    """YAML writes a mapping; ``to_dict`` writes sorted pairs; both read back as the same value."""
    data = composed("preset=official", "method=[fcs]")
    data["method"]["fcs"]["contrastive_by_scenario"] = {"base5_inc1": 0, "base4_inc2": 0.5}
    m = parse_params(data).method["fcs"]
    assert m.contrastive_by_scenario == (("base4_inc2", 0.5), ("base5_inc1", 0.0))
    data["method"]["fcs"]["contrastive_by_scenario"] = config.to_dict(m)["contrastive_by_scenario"]
    assert parse_params(data).method["fcs"] == m
    hash(m)  # frozen configs stay hashable


# --- the grid's preset and its composition -----------------------------------------------------------------

def test_default_params_yaml_is_unchanged_byte_for_byte(tmp_path):
    out = tmp_path / "params.yaml"
    write_params([], str(out), dvc_path=None)
    assert out.read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_preset_official_composes_the_official_methods():
    default, official, paper = composed(), composed("preset=official"), composed("preset=paper")
    assert official["preset"] == "official" and list(official["method"]) == ["fcs", "ours_official"]
    assert paper["preset"] == "paper" and "fcs" not in paper["method"] and "ours" in paper["method"]
    assert list(official) == list(default) == list(paper)  # same keys in the same order
    for key in ("dataset", "model", "train", "runtime", "scenario", "order_seed", "seeds"):
        assert official[key] == default[key] == paper[key], key
    assert default["preset"] == "mixed"  # the default digits grid runs both presets' methods


def test_preset_mixed_lists_both_presets_methods():
    assert list(composed("preset=mixed")["method"]) == [*composed("preset=paper")["method"], "fcs", "ours_official"]
    assert composed("preset=mixed") == composed()  # the default
    # under mixed any method list composes (`method=[ours]`, `dvc exp run -S 'method=[fcs]'`): either preset
    assert parse_params(composed("method=[ours]")).preset == "mixed"
    assert parse_params(composed("method=[fcs]")).preset == "mixed"
    p = parse_params(composed("preset=mixed", "method=[ours,ours_official]"))
    assert p.preset == "mixed" and [m.preset for m in p.method.values()] == ["paper", "official"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["preset=paper", "method=[ours,ours_official]"],
     "preset: expected 'mixed', the preset of the grid's methods ours (paper), ours_official (official); got 'paper' "
     "(compose with preset=mixed, conf/preset/mixed.yaml, or list methods of the paper preset: method=[...])"),
    (["+experiment=tinyimagenet_b100_inc5", "preset=official"],
     "preset: expected 'paper', the preset of the grid's methods ours (paper); got 'official' (compose with "
     "preset=paper, conf/preset/paper.yaml, or list methods of the official preset: method=[...])"),
    (["preset=paper", "method=[fcs]"], "preset: expected 'official', the preset of the grid's methods fcs (official); "
                                       "got 'paper' (compose with preset=official, conf/preset/official.yaml, or list "
                                       "methods of the paper preset: method=[...])"),
])
def test_the_grid_preset_must_name_its_methods_presets(overrides, message):
    with pytest.raises(ConfigError) as err:
        parse_params(composed(*overrides))
    assert str(err.value) == f"params.yaml: {message}"


def test_an_unknown_preset_is_named():
    with pytest.raises(ConfigError, match=r"^override 'preset=offical': no option 'offical' in conf/preset/ "
                                          r"\(did you mean official\?\)"):
        compose(["preset=offical"])
    data = composed()
    data["preset"] = "code"
    with pytest.raises(ConfigError, match=r"^params.yaml: preset: expected one of \['paper', 'official', 'mixed'\], "
                                          r"got 'code'"):
        parse_params(data)


def test_official_cifar_grid_and_digits_hybrid_width():
    """The paper CIFAR grid's model (vit_paper: the ConViT branch of 3.1) keeps the released ResNet width
    64; the digits model (vit_digits) narrows it to 16, and an override changes it."""
    cifar = parse_params(composed(*OFFICIAL_CIFAR))
    assert (cifar.model.embed_dim, cifar.model.depth, cifar.model.num_heads, cifar.model.resnet_width) == (384, 5, 12, 64)
    assert list(cifar.scenario) == ["base50_inc10", "base50_inc5", "base40_inc3"]
    assert parse_params(composed()).model.resnet_width == 16
    digits = parse_params(composed("preset=official", "model.resnet_width=8"))
    assert digits.model.resnet_width == 8 and digits.preset == "official"
    data = composed("preset=official")
    data["model"]["resnet_width"] = 0
    with pytest.raises(ConfigError, match=r"^params.yaml: model.resnet_width: expected a positive value, got 0"):
        parse_params(data)


def test_plain_reader_merges_the_official_methods_and_refuses_other_defaults_lists(tmp_path):
    """ncil.pipeline.plainconf reads one Hydra defaults list, the official methods' ``[/preset/method/official@<name>,
    _self_]`` (the preset's options under the method's own, as Hydra merges them: scripts/gpu_check.py times
    ours_official), and refuses any other instead of returning half of a method; the one-method grid's preset
    is the method's own."""
    fcs = plainconf.group_option("method", "fcs")
    assert fcs["preset"] == "official" and fcs["backbone"] == "hybrid" and fcs["mixup_rounds"] == 4
    assert plainconf.compose_params("digits", "vit_digits", "digits", "fcs")["preset"] == "official"
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "odd.yaml").write_text("defaults:\n  - /method/ours@odd\n  - _self_\nodd: {pks: 1.0}\n")
    with pytest.raises(ValueError, match=r"method/odd.yaml: composes other files \(a defaults list\), which only "
                                         r"Hydra reads"):
        plainconf.group_option("method", "odd", tmp_path)
    assert plainconf.compose_params("digits", "vit_digits", "digits", "ours")["preset"] == "paper"


@pytest.mark.parametrize("option, value", [("mixup_rounds", 4), ("contrastive", 0.1), ("transfer", 1.0),
                                           ("pks_form", "official"), ("pr_form", "official"),
                                           ("proto_aug_form", "official")])
def test_paper_method_refuses_options_only_the_official_step_reads(option, value):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["method"]["ours"][option] = value
    with pytest.raises(ConfigError, match=rf"method\.ours\.{option}: only the official preset's step uses it"):
        parse_params(data)


def test_official_method_refuses_a_paper_form_it_cannot_train():
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["method"]["ours"] = {"base_recipe": "official", "preset": "official", "rotation": True, "pr": 1.0,
                              "pr_form": "paper"}
    data["preset"] = "mixed"
    with pytest.raises(ConfigError, match=r"method\.ours\.pr_form: the official preset's step implements pr "
                                          r"in the official form only"):
        parse_params(data)


def test_scenario_weights_of_other_grids_parse_without_conf(monkeypatch, tmp_path):
    """An installed copy of the package has no conf/ beside it: the default grid's fcs still parses
    (its 40+3x20 weight names a CIFAR scenario), while a malformed scenario name is still refused."""
    monkeypatch.setattr(config, "SCENARIO_CONF_DIR", tmp_path / "no-conf" / "scenario")
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert dict(parse_params(data).method["fcs"].contrastive_by_scenario) == {"base40_inc3": 0.03}
    data["method"]["fcs"]["contrastive_by_scenario"] = {"cifar40_3": 0.03}
    with pytest.raises(ConfigError, match=r"method\.fcs\.contrastive_by_scenario\.cifar40_3: unknown scenario"):
        parse_params(data)
