"""Drift compensation as methods of the pipeline (issue 25; docs/efcil.md, "LDC, SDC, ADC in the pipeline"): the NCM
classifier on stored prototypes and each drift mode's prototype update worked by hand, the configuration's refusals,
and a tiny chain of tasks 0-2 on the digits for ldc, sdc and adc whose old prototypes are checked against the cores
of ``ncil.methods.drift``, rerun to the same bytes and shown to read no image of an earlier task."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ncil.data import arrays
from ncil.learning import drift_training, prediction, training
from ncil.methods import drift
from ncil.methods.prototypes import class_centers
from ncil.models.network import load_network
from ncil.pipeline import experiment_grid, io, paths, workflow
from ncil.pipeline.config import ConfigError, MethodConfig, parse_params
from ncil.pipeline.hydra_conf import compose
from tests.conftest import ROOT, _copy, ncil

# The three methods on the tiny grid's setting (4 + 2 x 3), seed 1, one epoch per task (the tiny project's train:
# smoke), in the grid's own folder (grid: digits_efcil); ADC attacks 20 samples per old class instead of 100 (time).
DRIFT_TINY = ["+experiment=digits_efcil", "scenario=[base4_inc2]", "seeds=[1]", "method=[ldc,sdc,adc]",
              "method.adc.adc_samples=20"]
METHODS = ("ldc", "sdc", "adc")
FOLDER = "digits_efcil"
SETTING_SPLIT = f"results/{FOLDER}/base4_inc2/split.json"


def quiet() -> logging.Logger:
    log = logging.getLogger("test_drift_pipeline")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


def t(values):
    return torch.tensor(values, dtype=torch.float64)


# --- NCM, by hand ----------------------------------------------------------------------------------------------
# Prototypes (2, 0), (0, 3), (1, 1); L2-normalised (the released evaluation): (1, 0), (0, 1), (1, 1)/sqrt(2). On unit
# vectors the squared distance is 2 - 2 cos:
#   (3, 1):   cos 3/sqrt(10), 1/sqrt(10), 4/sqrt(20)  -> class 0 (raw squared distances 2, 13, 4: class 0 too)
#   (5, 5):   cos 1/sqrt(2), 1/sqrt(2), 1             -> class 2 (raw: 34, 29, 32: class 1)
#   (1, 4):   cos 1/sqrt(17), 4/sqrt(17), 5/sqrt(34)  -> class 1 (raw: 17, 2, 9: class 1)
#   (0.5, 2): raw 6.25, 1.25, 1.25: a tie of 1 and 2, the lower row: class 1
PROTOTYPES = [[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]
FEATURES = [[3.0, 1.0], [5.0, 5.0], [1.0, 4.0]]


def _cosines(x, y):
    n = math.hypot(x, y)
    return [x / n, y / n, (x + y) / (n * math.sqrt(2))]


def test_ncm_by_hand():
    expected = [[2 - 2 * c for c in _cosines(*f)] for f in FEATURES]
    np.testing.assert_allclose(drift.ncm_distances(t(FEATURES), t(PROTOTYPES)).numpy(), expected, atol=1e-8)  # eps 1e-8
    assert drift.ncm_predict(t(FEATURES), t(PROTOTYPES)).tolist() == [0, 2, 1]
    np.testing.assert_allclose(drift.ncm_distances(t(FEATURES), t(PROTOTYPES), normalize=False).numpy(),
                               [[2, 13, 4], [34, 29, 32], [17, 2, 9]])
    assert drift.ncm_predict(t([*FEATURES, [0.5, 2.0]]), t(PROTOTYPES), normalize=False).tolist() == [0, 1, 1, 1]


class PixelsAsFeatures(torch.nn.Module):
    """A stand-in network whose [CLS] feature is the flattened image: the evaluation path's NCM on known features."""

    def __init__(self):
        super().__init__()
        self.backbone = lambda x: (x.flatten(1), None)


def test_evaluation_predicts_the_nearest_normalised_prototype():
    # Images 1 x 2 pixels, one channel, pixel values = the features above: mean 0 and std 1/255 undo to_tensor's /255.
    images = np.asarray(FEATURES, dtype=np.uint8).reshape(3, 1, 2, 1)  # (N, H, W, C)
    predicted = prediction.predict_ncm(PixelsAsFeatures(), images, (0.0,), (1 / 255,), 2, torch.device("cpu"),
                                       torch.tensor(PROTOTYPES), n_classes=3)
    assert predicted.tolist() == [0, 2, 1]  # (5, 5) goes to class 2: the raw nearest prototype would be class 1
    with pytest.raises(ValueError, match=r"prototypes: expected one row per seen class \(4\)"):
        prediction.predict_ncm(PixelsAsFeatures(), images, (0.0,), (1 / 255,), 2, torch.device("cpu"),
                               torch.tensor(PROTOTYPES), n_classes=4)


def test_the_step_trains_only_the_new_classes_columns():
    """Tasks t >= 1 of an ncm method: cross-entropy over the current task's head columns (targets y - K_old), as
    the released LwF base learner, plus feature distillation; no other term."""
    import copy

    import torch.nn.functional as F

    from ncil.methods.baseline import feature_distillation
    from ncil.methods.objective import OldKnowledge, step_loss
    from ncil.models.network import build_network
    from ncil.pipeline.config import ModelConfig

    tiny = ModelConfig("vit", img_size=8, patch_size=2, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0,
                       drop_path=0.0)
    torch.manual_seed(0)
    net = build_network(tiny, 1, 4, "vit")
    teacher = copy.deepcopy(net).eval().requires_grad_(False)
    with torch.no_grad():  # the student moves away from the teacher, so the distillation is not 0
        for param in net.parameters():
            param.add_(0.05 * torch.randn_like(param))
    old = OldKnowledge(teacher=teacher, centers=torch.zeros(2, 16), radius=0.0)
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([2, 3, 2, 3, 3, 2])
    m = replace(method(drift="sdc", sdc_sigma=0.3), backbone="vit")
    loss, terms, logits, targets = step_loss(net, x, y, m, old, None, torch.Generator().manual_seed(0))
    assert set(terms) == {"ce", "fkd"} and torch.equal(targets, y)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits[:, 2:], y - 2).item(), rel=1e-6)
    assert abs(terms["ce"].item() - F.cross_entropy(logits, y).item()) > 1e-3  # the whole head would differ
    with torch.no_grad():
        fkd = 10.0 * feature_distillation(net.backbone(x)[0], teacher.backbone(x)[0])
    assert terms["fkd"].item() == pytest.approx(fkd.item(), rel=1e-5) and fkd.item() > 0
    assert loss.item() == pytest.approx(terms["ce"].item() + terms["fkd"].item(), rel=1e-6)


# --- each drift mode's update, by hand (docs/efcil.md's worked examples, through drift_training.compensate) -----


def method(**options) -> MethodConfig:
    return MethodConfig(base_recipe="ncm_resnet18", backbone="resnet18", classifier="ncm", feature_kd=10.0, **options)


def test_sdc_moves_a_prototype_by_the_kernel_weighted_displacement():
    # Old features (0, 0), (1, 0), (1, 1) with displacements (1, 0), (0, 2), (4, 4); sigma^2 = 1 / (2 ln 2) makes the
    # weights for the prototype (0, 0) exp(-d^2 ln 2) = 1, 1/2, 1/4: drift (1 + 0 + 1, 0 + 1 + 1) / (7/4) = (8/7, 8/7).
    # For the prototype (1, 1): distances^2 2, 1, 0 -> weights 1/4, 1/2, 1: ((1/4 + 4), (1 + 4)) / (7/4) = (17/7, 20/7).
    old = t([[0, 0], [1, 0], [1, 1]])
    new = old + t([[1, 0], [0, 2], [4, 4]])
    sdc = method(drift="sdc", sdc_sigma=math.sqrt(1 / (2 * math.log(2))))
    moved = drift_training.compensate(sdc, t([[0, 0], [1, 1]]), old, new)
    np.testing.assert_allclose(moved.numpy(), [[8 / 7, 8 / 7], [1 + 17 / 7, 1 + 20 / 7]], atol=1e-4)  # eps 1e-5
    # More prototypes than one chunk (SDC_CHUNK): each row is the core's on all prototypes at once.
    g = torch.Generator().manual_seed(0)
    many = torch.rand(2 * drift_training.SDC_CHUNK + 3, 2, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(drift_training.compensate(sdc, many, old, new).numpy(),
                               drift.sdc_compensate(old, new, many, sigma=sdc.sdc_sigma).numpy(), rtol=1e-12)


def test_ldc_moves_a_prototype_through_the_fitted_projector():
    # Z_old (1, 0), (0, 1), (1, 1) and Z_new = Z_old [[2, 1], [0, 1]]^T: (2, 0), (1, 1), (3, 1). The projector that
    # maps one onto the other is [[2, 1], [0, 1]], which moves (1, 2) to (4, 2). Adam from the nn.Linear start gets
    # there given enough epochs (the released 20 would not: docs/efcil.md).
    old = t([[1, 0], [0, 1], [1, 1]])
    new = t([[2, 0], [1, 1], [3, 1]])
    ldc = method(drift="ldc", ldc_epochs=600, ldc_lr=0.05)
    runs = [drift_training.compensate(ldc, t([[1, 2]]), old, new, generator=torch.Generator().manual_seed(5))
            for _ in range(2)]
    np.testing.assert_allclose(runs[0].numpy(), [[4, 2]], atol=1e-3)
    assert torch.equal(runs[0], runs[1])  # the generator is the only randomness


def test_adc_moves_a_prototype_by_the_displacement_of_its_adversarial_samples():
    # Samples (0, 1), (6, 8), target prototype (3, 4), identity old network: MSE gradient (x - mu) / 1 per entry
    # (2 / (N D) times it; the batch norm divides it out); residuals (-3, -3), (3, 4), batch norm sqrt(43): with
    # alpha = sqrt(43) / 2 each step halves... the first step moves each sample by half its residual, to (1.5, 2.5) and
    # (4.5, 6), the second (the batch norm now sqrt(43) / 2) onto (3, 4). The new network 2x + (1, -1) maps (3, 4) to
    # (7, 7): the displacement (4, 3) moves the prototype to (7, 7). The second prototype (100, 100) is far away: both
    # samples stay nearest to (3, 4), so they count as successes for it.
    images = t([[0, 1], [6, 8]])
    adc = method(drift="adc", adc_alpha=math.sqrt(43) / 2, adc_steps=2, adc_samples=100)
    moved = drift_training.compensate(adc, t([[3, 4], [100, 100]]), images, images, old_model=lambda x: x,
                                      new_model=lambda x: 2 * x + t([1, -1]), images=images)
    np.testing.assert_allclose(moved[0].numpy(), [7, 7], atol=1e-9)
    assert drift_training.compensate(method(), t([[3, 4]]), images, images).tolist() == [[3, 4]]  # drift none


# --- configuration ------------------------------------------------------------------------------------------------

def test_the_three_methods_compose_with_the_released_constants_and_share_task_0():
    p = parse_params(compose(["+experiment=digits_efcil"]))
    ldc, sdc, adc = (p.method[m] for m in METHODS)
    for m in (ldc, sdc, adc):
        assert (m.base_recipe, m.backbone, m.classifier, m.feature_kd, m.rotation, m.proto_aug) == (
            "ncm_resnet18", "resnet18", "ncm", 10.0, False, 0.0)
    assert (sdc.drift, sdc.sdc_sigma, sdc.adc_alpha, sdc.ldc_epochs) == ("sdc", 0.3, 0.0, 0)
    assert (adc.drift, adc.adc_alpha, adc.adc_steps, adc.adc_samples, adc.sdc_sigma) == ("adc", 25.0, 3, 100, 0.0)
    assert (ldc.drift, ldc.ldc_epochs, ldc.ldc_lr, ldc.adc_samples) == ("ldc", 20, 1e-3, 0)
    assert all(m.drift == "none" for m in parse_params(compose([])).method.values())
    committed = yaml.safe_load((ROOT / paths.grid_params(FOLDER)).read_text())
    assert committed == compose(["+experiment=digits_efcil"]) and set(METHODS) <= set(committed["method"])
    runs = [r for r in experiment_grid.runs(committed) if r.method in METHODS]
    assert {r.base_recipe for r in runs} == {"ncm_resnet18"} and not any(r.fecam or r.rehearsal for r in runs)


@pytest.mark.parametrize(("name", "key", "value", "message"), [
    ("sdc", "drift", "xdc", "method.sdc.drift: expected one of ['none', 'sdc', 'adc', 'ldc'], got 'xdc'"),
    ("sdc", "ldc_epochs", 20, "method.sdc.ldc_epochs: only drift ldc uses it: expected 0 with drift sdc, got 20"),
    ("adc", "sdc_sigma", 0.3, "method.adc.sdc_sigma: only drift sdc uses it: expected 0.0 with drift adc, got 0.3"),
    ("ldc", "drift", "none", "method.ldc.ldc_epochs: only drift ldc uses it: expected 0 with drift none, got 20"),
    ("sdc", "sdc_sigma", 0.0, "method.sdc.sdc_sigma: drift sdc needs it: expected a value > 0, got 0.0"),
    ("adc", "adc_steps", 0, "method.adc.adc_steps: drift adc needs it: expected a value > 0, got 0"),
    ("sdc", "proto_aug", 10.0, "method.sdc.proto_aug: classifier ncm trains the current classes' cross-entropy and "
                               "feature distillation only: expected 0.0, got 10.0"),
    ("ldc", "classifier", "head", "method.ldc.drift: only the NCM classifier's prototypes are moved: expected "
                                  "'none' with classifier head, got 'ldc'"),
])
def test_drift_options_are_checked_naming_the_file_and_field(name, key, value, message):
    data = compose(DRIFT_TINY)
    data["method"][name][key] = value
    with pytest.raises(ConfigError, match=f"^params.yaml: {re.escape(message)}"):
        parse_params(data)


def test_a_drift_key_on_another_method_is_refused():
    data = compose([])
    data["method"]["finetune"]["sdc_sigma"] = 0.3
    with pytest.raises(ConfigError, match=r"^params.yaml: method.finetune.sdc_sigma: only drift sdc uses it: "
                                          r"expected 0.0 with drift none, got 0.3"):
        parse_params(data)


def test_an_ncm_checkpoint_without_its_prototypes_is_refused_by_evaluation():
    from ncil.stages.evaluate import check_prototypes

    config = {"method_config": {"classifier": "ncm"}}
    check_prototypes({"config": config, "seen_classes": [3, 1], "prototypes": torch.zeros(2, 5)}, "m.pt")
    check_prototypes({"config": {"method_config": {}}, "seen_classes": [3, 1]}, "m.pt")  # the head's: none needed
    with pytest.raises(io.ArtifactError, match=r"^m.pt: prototypes: classifier ncm predicts with one prototype per "
                                               r"seen class: expected \(2, D\), found None"):
        check_prototypes({"config": config, "seen_classes": [3, 1]}, "m.pt")


# --- non-exemplar: no memory, no old image ------------------------------------------------------------------------

def test_no_step_of_a_drift_method_names_an_exemplar_memory_and_the_train_verb_refuses_one():
    from ncil.stages import train

    params = compose(["+experiment=digits_efcil"])
    methods = {s.name: s for s in workflow.steps(params)}
    named = [s for s in methods.values() if any(f"/{m}/" in str(o) for m in (*METHODS, "ncm_resnet18")
                                                for o in s.outs.values())]
    assert len(named) >= 3 * 2 * 2  # train and evaluate steps of every method and setting
    for step in named:
        for x in (*step.deps.values(), *step.outs.values(), *step.cmd):
            assert not str(x).endswith(paths.MEMORY_NAME) and x not in ("--memory", "--prev-memory"), step.name
    p = parse_params(params)
    args = train.Args(params="params.yaml", log=None, split="s.json", task=1, seed=1, method="sdc",
                      prev_checkpoint="a.pt", prev_centers="a.parquet", checkpoint="m.pt", centers="c.parquet",
                      prev_memory=f"a/{paths.MEMORY_NAME}")
    with pytest.raises(train.cli.UsageError, match="^--prev-memory: --method sdc keeps no exemplars"):
        train.check_memory_flags(args, p.method["sdc"], "params.yaml")


# --- a tiny chain: tasks 0, 1, 2 of each method ------------------------------------------------------------------

def _steps(project: Path) -> dict:
    params = yaml.safe_load((project / "params.yaml").read_text())
    return {(s.values("--method")[0], int(s.values("--task")[0])): s for s in workflow.steps(params) if s.kind == "train"}


def _bytes(project: Path, step) -> dict:
    return {name: (project / path).read_bytes() for name, path in step.outs.items()}


@pytest.fixture(scope="module")
def drift_run(tiny_prepared_template, tmp_path_factory):
    """Task 0 (ncm_resnet18) and sdc's task 1 through the train verb with the grid's commands (task 1 twice, to the
    same paths); then tasks 1 and 2 of ldc and adc, and task 2 of sdc, in this process (``ncm_task``).
    Returns (project, steps, task 1 of sdc's first bytes, {(method, task): (payload, centers rows)})."""
    project = _copy(tiny_prepared_template, tmp_path_factory.mktemp("drift") / "project")
    ncil(["params", *DRIFT_TINY], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for step in workflow.steps(params):
        if step.kind == "split":
            ncil(list(step.cmd), project)
    steps = _steps(project)
    ncil(list(steps["ncm_resnet18", 0].cmd), project)
    ncil(list(steps["sdc", 1].cmd), project)
    first = _bytes(project, steps["sdc", 1])
    ncil(list(steps["sdc", 1].cmd), project)  # again: the same bytes (test below)
    p, split, train = _loaded(project)
    zero = _task_files(project, steps["ncm_resnet18", 0])
    results = {("sdc", 1): _task_files(project, steps["sdc", 1])}
    for name in METHODS:
        for task in (1, 2):
            if (name, task) not in results:
                previous = zero if task == 1 else results[name, 1]
                job = training.make_job(p, split, task, 1, name, p.method[name], SETTING_SPLIT)
                results[name, task] = drift_training.ncm_task(p, job, train, *previous, quiet())
    return project, steps, first, {**results, **{(m, 0): zero for m in METHODS}}


def _loaded(project: Path):
    p = parse_params(yaml.safe_load((project / "params.yaml").read_text()))
    split = yaml.safe_load((project / SETTING_SPLIT).read_text())
    return p, split, arrays.load_split("digits", "train", root=str(project))


def _task_files(project: Path, step) -> tuple[dict, dict]:
    return (io.load_checkpoint(project / step.outs["checkpoint"], project / step.outs["centers"]),
            io.read_centers(project / step.outs["centers"]))


@pytest.mark.slow
def test_the_train_verb_writes_checkpoint_and_centers_and_a_rerun_gives_the_same_bytes(drift_run):
    project, steps, first, results = drift_run
    step = steps["sdc", 1]
    assert set(step.outs) == {"checkpoint", "centers"}  # no statistics, no memory
    assert _bytes(project, step) == first
    for key in (("sdc", 0), ("sdc", 1)):
        payload, rows = results[key]
        assert payload["backbone"] == "resnet18" and payload["config"]["method_config"]["classifier"] == "ncm"
        assert torch.equal(payload["prototypes"], torch.from_numpy(rows["center"]))  # one array, two artifacts
        assert payload["prototypes"].shape == (4 + 2 * key[1], 512)
    assert results["sdc", 1][0]["config"]["method_config"]["drift"] == "sdc"


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_old_prototypes_move_by_the_cores_drift_and_new_ones_are_the_new_models_means(drift_run, name):
    """Tasks 1 and 2: the old rows are task t-1's prototypes moved by ``ncil.methods.drift``'s estimate on the
    task's features recomputed here from the two checkpoints (task 2 moves task 1's moved rows); the new rows are the
    new classes' mean features under the new network."""
    project, _, _, results = drift_run
    p, split, train = _loaded(project)
    m = p.method[name]
    expected_options = {"sdc": (0.3, 0, 0), "adc": (0.0, 20, 0), "ldc": (0.0, 0, 20)}
    assert (m.sdc_sigma, m.adc_samples, m.ldc_epochs) == expected_options[name]
    for task in (1, 2):
        (previous, previous_rows), (payload, rows) = results[name, task - 1], results[name, task]
        job = training.make_job(p, split, task, 1, name, m, SETTING_SPLIT)
        x = drift_training.current_images(p, job, train)
        nets = [load_network(p.model, p.dataset.channels, c["model"], "resnet18").eval() for c in (previous, payload)]
        old_f, new_f = (training.extract_features(n, x, 64, torch.device("cpu"), p.dataset.mean, p.dataset.std)
                        for n in nets)
        old = torch.from_numpy(previous_rows["center"])  # (K_old, D)
        if name == "sdc":
            expected = drift.sdc_compensate(old_f, new_f, old, sigma=0.3)
        elif name == "ldc":
            g = torch.Generator().manual_seed(drift_training.ldc_seed(1, task))
            expected = drift.apply_projector(drift.fit_projector_adam(old_f, new_f, epochs=20, lr=1e-3,
                                                                      batch_size=p.train.batch_size, generator=g), old)
        else:
            images = arrays.to_tensor(_task_split(train, split, task)[1], p.dataset.mean, p.dataset.std)
            with torch.no_grad():
                expected = drift.adc_compensate(lambda z: nets[0].backbone(z)[0], lambda z: nets[1].backbone(z)[0],
                                                images, old, alpha=25.0, steps=3, k=20, x_min=images.min().item(),
                                                x_max=images.max().item())
        n_old = len(old)
        assert n_old == 4 + 2 * (task - 1)
        np.testing.assert_allclose(rows["center"][:n_old], expected.numpy(), rtol=1e-4, atol=1e-4)
        assert torch.linalg.vector_norm(expected - old, dim=1).min() > 1e-2  # a kept prototype would fail above
        _, centers = class_centers(new_f, torch.from_numpy(_task_split(train, split, task)[2]))
        np.testing.assert_allclose(rows["center"][n_old:], centers.numpy(), rtol=1e-5, atol=1e-5)
        assert rows["task"].tolist() == [0] * 4 + [s for s in range(1, task + 1) for _ in range(2)]


def _task_split(train: arrays.Split, split: dict, task: int):
    """(rows, uint8 images (N, H, W, C), incremental labels) of task ``task``'s classes, as the pipeline selects them."""
    from ncil.data.scenario import remap_labels

    return arrays.select_classes(train, list(split["tasks"][task]), remap_labels(split["class_order"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_a_task_reads_no_image_of_an_earlier_task_and_repeats_its_bytes(drift_run, name):
    """Task 1 trained again on a training split whose earlier classes' images are noise gives the same checkpoint and
    centers: nothing of task 0's images is read (no memory is kept, none is taken), and the same config gives the same
    bytes."""
    project, _, _, results = drift_run
    p, split, train = _loaded(project)
    old = np.isin(train.labels, split["tasks"][0])
    noise = train.images.copy()
    noise[old] = np.random.default_rng(0).integers(0, 256, noise[old].shape, dtype=np.uint8)
    job = training.make_job(p, split, 1, 1, name, p.method[name], SETTING_SPLIT)
    payload, rows = drift_training.ncm_task(p, job, arrays.Split(noise, train.labels), *results[name, 0], quiet())
    reference = {k: v for k, v in results[name, 1][0].items() if k not in ("format_version", "centers_sha256")}
    assert io.content_digest(payload) == io.content_digest(reference)
    for column in rows:
        np.testing.assert_array_equal(rows[column], results[name, 1][1][column])


@pytest.mark.slow
def test_the_chain_evaluates_with_the_nearest_moved_prototype(drift_run):
    project, steps, _, _ = drift_run
    checkpoints = [steps["ncm_resnet18", 0].outs["checkpoint"], steps["sdc", 1].outs["checkpoint"]]
    evals = [f"evals/task_{t}.parquet" for t in (0, 1)]
    ncil(["evaluate", "--split", SETTING_SPLIT, "--checkpoints", *checkpoints, "--out", *evals], project)
    split = yaml.safe_load((project / SETTING_SPLIT).read_text())
    for t, path in enumerate(evals):
        predictions = io.read_predictions(project / path, split["tasks"])
        assert set(np.unique(predictions["prediction"]).tolist()) <= set(range(4 + 2 * t))
        assert (predictions["prediction"] == predictions["label"]).mean() > 0.4  # chance: 1 / (4 + 2t)


# --- resume: a task stopped at every step boundary ends in the uninterrupted bytes, drift step included -----------

@pytest.mark.parametrize("name", METHODS)
def test_an_ncm_task_stopped_at_every_step_boundary_ends_in_the_uninterrupted_bytes(tmp_path, name):
    """Task 1 (2 epochs of 2 steps on 20 synthetic images, the tiny ViT) resumed from its saved state after a stop at
    each step boundary in turn writes the uninterrupted run's checkpoint (prototypes included) and centers."""
    from ncil.learning import resume
    from tests.test_resume import TASKS, StopAfter, _same_outputs, _split

    overrides = ["+experiment=digits_efcil", "model=vit_digits_tiny", "train=smoke", "train.epochs=2",
                 "train.batch_size=16", "runtime.device=cpu", f"method=[{name}]", f"method.{name}.backbone=vit"]
    p = parse_params(compose([*overrides, *(["method.adc.adc_samples=5"] if name == "adc" else [])]))
    data, log = _split(), quiet()
    job0 = training.TaskJob(0, 1, list(range(10)), TASKS, "ncm_resnet18", p.method[name], {})
    job1 = training.TaskJob(1, 1, list(range(10)), TASKS, name, p.method[name], {})
    clean0 = drift_training.ncm_task(p, job0, data, None, None, log)
    clean1 = drift_training.ncm_task(p, job1, data, *clean0, log)
    assert not np.array_equal(clean1[1]["center"][:4], clean0[1]["center"])  # the drift step moved them
    state_file, ident, state, positions = tmp_path / "t1.pt", {"task": 1}, None, []
    while True:
        plan = resume.Plan(path=state_file, state=state, save=lambda g: resume.save(state_file, ident, g), every=1,
                           stop_requested=StopAfter(2))  # the first ask is before the first step
        try:
            resumed = drift_training.ncm_task(p, job1, data, *clean0, log, plan)
        except resume.Preempted as stop:
            positions.append((stop.epoch, stop.step))
            state = resume.load(state_file, ident)
            continue
        break
    assert positions == [(0, 1), (1, 0), (1, 1), (2, 0)]
    assert _same_outputs(resumed, clean1)
