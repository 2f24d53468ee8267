"""EFC++ (and EFC) as methods of the pipeline (issue 25; docs/efcil.md, "EFC++ in the pipeline"): what each task
stores for the next (E, the class covariances, the prototypes moved by exactly the core's drift), the re-balancing
data worked by hand, config refusals, resume inside a task to the same bytes, no earlier task's image read, and a
tiny deterministic run through the train and evaluate verbs."""

from __future__ import annotations

import logging
import re
from io import BytesIO

import numpy as np
import pytest
import torch
import yaml

from ncil.data import arrays
from ncil.learning import efc_training, resume, training
from ncil.methods import efc
from ncil.models.network import load_network
from ncil.pipeline import experiment_grid, io, paths, workflow
from ncil.pipeline.config import ConfigError, parse_params
from ncil.pipeline.hydra_conf import compose
from tests.conftest import ROOT, _copy, ncil

# In-process runs: ResNet-18 on a random 8x8 split of 6 classes x 10 images, tasks [0..3] and [4, 5]; 2 epochs of
# batch 16 (task 0: 40 images, 3 steps; task 1: 20 images, 2 steps), 3 re-balancing epochs.
TINY = ["+experiment=digits_efcil", "train=smoke", "train.epochs=2", "train.batch_size=16", "runtime.device=cpu",
        "scenario=[base4_inc2]", "seeds=[1]", "method=[efc_pp,efc]", "method.efc_pp.efc_rebalance_epochs=3"]
TASKS = [[0, 1, 2, 3], [4, 5]]
# Through the CLI: the digits, the grid's own folder, one epoch per task (train: smoke of the tests' tiny project).
CLI_TINY = ["+experiment=digits_efcil", "scenario=[base4_inc2]", "seeds=[1]", "method=[efc_pp]",
            "method.efc_pp.efc_rebalance_epochs=5"]
SETTING_SPLIT = "results/digits_efcil/base4_inc2/split.json"


def quiet() -> logging.Logger:
    log = logging.getLogger("test_efc_pipeline")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


def _split() -> arrays.Split:
    rng = np.random.RandomState(0)
    return arrays.Split(rng.randint(0, 256, (60, 8, 8, 1)).astype(np.uint8), np.repeat(np.arange(6), 10))


def _job(p, task: int, method: str = "efc_pp") -> training.TaskJob:
    return training.TaskJob(task, 1, list(range(10)), TASKS, "efc_resnet18" if task == 0 else method,
                            p.method[method], {"task": task})


def _checkpoint_bytes(payload: dict) -> bytes:
    buffer = BytesIO()
    torch.save({"format_version": io.CHECKPOINT_FORMAT, **payload}, buffer)
    return buffer.getvalue()


def _same(a: tuple[dict, dict], b: tuple[dict, dict]) -> bool:
    return _checkpoint_bytes(a[0]) == _checkpoint_bytes(b[0]) and all(
        a[1][k].dtype == b[1][k].dtype and np.array_equal(a[1][k], b[1][k]) for k in a[1])


@pytest.fixture(scope="module")
def tiny():
    p = parse_params(compose(TINY))
    data = _split()
    zero = efc_training.train_efc_task(p, _job(p, 0), data, None, None, quiet())
    one = efc_training.train_efc_task(p, _job(p, 1), data, *zero, quiet())
    return p, data, zero, one


# --- pure parts, by hand ---------------------------------------------------------------------------------------

def test_the_rotation_head_keeps_its_class_columns():
    """Rows 4c of a rotation head are class c's unrotated scores (ncil.learning.prediction.predict reads
    logits[:, ::4]): a 2-class rotation head of rows 0..7 keeps rows 0 and 4."""
    state = {"head.weight": torch.arange(16.0).reshape(8, 2), "head.bias": torch.arange(8.0), "x": torch.ones(1)}
    plain = efc_training.plain_head_state(state, 4)
    assert plain["head.weight"].tolist() == [[0.0, 1.0], [8.0, 9.0]] and plain["head.bias"].tolist() == [0.0, 4.0]
    assert plain["x"] is state["x"] and efc_training.plain_head_state(state, 1)["head.weight"] is state["head.weight"]


def test_the_rebalancing_set_is_the_current_features_then_as_many_gaussians_as_each_old_class_had_images():
    """Two old classes that had 3 and 5 training images, around (10, 0) and (0, -10) with zero covariance (so only
    the 1e-5 jitter spreads them: std 0.0032), and 4 current features of classes 2 and 3: 4 + 3 + 5 = 12 rows, labels
    [2, 3, 3, 2] then 0 x 3 and 1 x 5, every sample within 0.02 of its mean."""
    current = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    means = torch.tensor([[10.0, 0.0], [0.0, -10.0]])
    covs = torch.zeros(2, 2, 2)
    feats, labels = efc_training.rebalance_data(current, torch.tensor([2, 3, 3, 2]), means, covs, np.array([3, 5]),
                                                torch.Generator().manual_seed(0))
    assert feats.shape == (12, 2) and feats.dtype == torch.float32
    assert labels.tolist() == [2, 3, 3, 2, 0, 0, 0, 1, 1, 1, 1, 1]
    assert torch.equal(feats[:4], current)
    assert (feats[4:7] - means[0]).abs().max() < 0.02 and (feats[7:] - means[1]).abs().max() < 0.02
    assert torch.bincount(labels).tolist() == [3, 5, 2, 2]


def test_rebalancing_trains_the_heads_alone_towards_the_gaussians():
    """A head that calls everything class 1 learns, on the re-balancing set alone, to separate two Gaussians."""
    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 5.0]))
    g = torch.Generator().manual_seed(0)
    feats, labels = efc_training.rebalance_data(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long),
                                                torch.tensor([[3.0, 0.0], [-3.0, 0.0]]), torch.eye(2).expand(2, 2, 2),
                                                [200, 200], g)
    losses = efc_training.rebalance_heads(head, feats, labels, 30, g, lr=0.1)
    assert len(losses) == 30 and losses[-1] < losses[0] / 5
    assert (head(feats).argmax(1) == labels).float().mean() > 0.95


# --- configuration ---------------------------------------------------------------------------------------------

def test_efc_composes_into_the_digits_efcil_grid_with_its_own_task_0():
    p = parse_params(compose(["+experiment=digits_efcil"]))
    pp, e = p.method["efc_pp"], p.method["efc"]
    assert (pp.efc, pp.efc_old_classes, pp.efc_lambda, pp.efc_damping, pp.efc_sigma, pp.efc_rebalance_epochs) == \
        (True, "rebalance", 10.0, 0.1, 0.2, 50)
    assert (e.efc, e.efc_old_classes, e.efc_rebalance_epochs) == (True, "pr_ace", 50)
    assert pp.efc_lr == e.efc_lr == 1e-4 and p.train.lr == 1e-3  # tasks t >= 1 at the released 1e-4, task 0 at train.lr
    assert (pp.backbone, pp.rotation, pp.classifier) == ("resnet18", True, "head")
    assert pp.base_recipe == e.base_recipe == "efc_resnet18" != p.method["pass_resnet18"].base_recipe
    committed = yaml.safe_load((ROOT / paths.grid_params("digits_efcil")).read_text())
    assert committed == compose(["+experiment=digits_efcil"]) and {"efc_pp", "efc"} <= set(committed["method"])
    assert not any(m.efc for m in parse_params(compose([])).method.values())  # not in the default grid
    runs = experiment_grid.runs(compose(["+experiment=digits_efcil"]))
    assert not any(r.fecam for r in runs if r.method in ("efc_pp", "efc"))  # no statistics file: all in the checkpoint


@pytest.mark.parametrize(("method", "key", "value", "message"), [
    ("pass_resnet18", "efc_lambda", 5.0, "method.pass_resnet18.efc_lambda: only EFC uses it: expected 10.0 without "
                                         "efc, got 5.0 (or set method.pass_resnet18.efc: true)"),
    ("pass_resnet18", "efc_old_classes", "pr_ace", "method.pass_resnet18.efc_old_classes: only EFC uses it: expected "
                                                   "'rebalance' without efc"),
    ("efc_pp", "efc_old_classes", "replay", "method.efc_pp.efc_old_classes: expected one of ['rebalance', 'pr_ace'], "
                                            "got 'replay'"),
    ("efc", "efc_rebalance_epochs", 5, "method.efc.efc_rebalance_epochs: only EFC++'s re-balancing (efc_old_classes "
                                       "rebalance) uses it: expected 50, got 5"),
    ("efc_pp", "efc_rebalance_epochs", 0, "method.efc_pp.efc_rebalance_epochs: expected a positive value, got 0"),
    ("efc_pp", "efc_lambda", -1.0, "method.efc_pp.efc_lambda: expected a weight >= 0, got -1.0"),
    ("pass_resnet18", "efc_lr", 1e-4, "method.pass_resnet18.efc_lr: only EFC uses it: expected 0.0 without efc, got "
                                      "0.0001"),
    ("efc_pp", "efc_lr", -1.0, "method.efc_pp.efc_lr: expected a learning rate >= 0 (0 = train.lr), got -1.0"),
    ("efc_pp", "efc_sigma", 0.0, "method.efc_pp.efc_sigma: expected a positive value, got 0.0"),
    ("efc_pp", "feature_kd", 10.0, "method.efc_pp.feature_kd: EFC's step is cross-entropy + L_EFM (efc true): "
                                   "expected 0.0, got 10.0"),
    ("efc_pp", "backbone", "hybrid", "method.efc_pp.backbone: expected one of ['resnet18', 'vit'], got 'hybrid'"),
])
def test_efc_options_are_checked_naming_the_file_and_field(method, key, value, message):
    data = compose(["+experiment=digits_efcil"])
    data["method"][method][key] = value
    with pytest.raises(ConfigError, match=f"^params.yaml: {re.escape(message)}"):
        parse_params(data)


def test_a_method_sharing_efcs_task_0_must_have_efc():
    data = compose(["+experiment=digits_efcil"])
    data["method"]["pass_resnet18"]["base_recipe"] = "efc_resnet18"
    data["method"]["pass_resnet18"]["ce_temperature"] = 1.0
    with pytest.raises(ConfigError, match=r"^params.yaml: method.efc_pp.base_recipe: 'efc_resnet18' is shared with method 'pass_resnet18', "
                                          r"which differs in efc for "
                                          r"task 0"):
        parse_params(data)


def test_the_train_verb_gives_an_efc_task_no_exemplar_memory():
    """EFC keeps no exemplars: --prev-memory / --memory are refused before any data loads."""
    from ncil.stages import train

    p = parse_params(compose(TINY))
    args = train.Args(params="params.yaml", log=None, split="s.json", task=1, seed=1, method="efc_pp",
                      prev_checkpoint="m0.pt", prev_centers="c0.parquet", checkpoint="m.pt", centers="c.parquet",
                      prev_memory="memory.parquet")
    with pytest.raises(train.cli.UsageError, match="^--prev-memory: --method efc_pp keeps no exemplars"):
        train.check_memory_flags(args, p.method["efc_pp"], "params.yaml")


def test_train_task_refuses_an_efc_task_after_the_first():
    p = parse_params(compose(TINY))
    with pytest.raises(ValueError, match="method efc_pp: EFC's tasks t >= 1 are ncil.learning.efc_training"):
        training.train_task(p, _job(p, 1), None, None, None, quiet())


def test_a_previous_checkpoint_without_the_efc_state_is_refused(tiny):
    p, data, zero, _ = tiny
    bare = {k: v for k, v in zero[0].items() if k != "efc"}
    with pytest.raises(ValueError, match="previous checkpoint: efc: missing"):
        efc_training.train_efc_task(p, _job(p, 1), data, bare, zero[1], quiet())


# --- what each task stores -------------------------------------------------------------------------------------

def _features(p, task: int, data, state: dict, rotations: int) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    net = load_network(p.model, 1, efc_training.plain_head_state(state, rotations), "resnet18")
    f, labels = efc_training._task_features(p, _job(p, task), data, net, torch.device("cpu"))
    return f, labels, net


def test_task_0_stores_e_and_the_covariances_of_its_classes(tiny):
    p, data, (payload, centers), _ = tiny
    assert payload["rotations"] == 4 and payload["model"]["head.weight"].shape[0] == 16  # PASS's rotation head
    f, labels, net = _features(p, 0, data, payload["model"], 4)
    assert labels.tolist() == np.repeat([0, 1, 2, 3], 10).tolist()  # task 0's own images only
    e = efc.empirical_feature_matrix(f.double(), net.head.weight.double(), net.head.bias.double())
    stored = payload["efc"]
    assert stored["efm"].shape == (512, 512) and torch.equal(stored["efm"], stored["efm"].T)
    torch.testing.assert_close(stored["efm"].double(), e, rtol=1e-4, atol=1e-7)
    assert torch.linalg.eigvalsh(e).min() > -1e-8 and e.trace() > 0  # positive semi-definite, not zero
    covs = stored["covariance"]
    assert covs.shape == (4, 512, 512)
    for c in range(4):
        torch.testing.assert_close(covs[c].double(), torch.from_numpy(np.cov(f[labels == c].double().numpy().T)),
                                   rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(centers["center"], torch.stack([f[labels == c].mean(0) for c in range(4)]).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_task_1_moves_the_old_prototypes_by_exactly_the_cores_drift(tiny):
    """Centers of task 1 = task 0's + efc.efm_drift(f_0(x), f_1(x), centers_0, E_0) over task 1's images; the
    new classes' means and covariances follow; E_1 is the final heads' (plain, 6 classes) over f_1(x)."""
    p, data, (payload0, centers0), (payload1, centers1) = tiny
    f_old, labels, _ = _features(p, 1, data, payload0["model"], 4)
    f_new, _, net = _features(p, 1, data, payload1["model"], 1)
    assert labels.tolist() == [4] * 10 + [5] * 10
    drift = efc.efm_drift(f_old.double(), f_new.double(), torch.from_numpy(centers0["center"]).double(),
                          payload0["efc"]["efm"].double(), sigma=0.2)
    assert drift.abs().max() > 1e-3  # the prototypes do move
    np.testing.assert_allclose(centers1["center"][:4], centers0["center"] + drift.numpy(), rtol=1e-5, atol=1e-5)
    for k in ("class_id", "original_class", "task", "n_samples", "spread"):  # old rows otherwise as they were
        np.testing.assert_array_equal(centers1[k][:4], centers0[k])
    assert centers1["task"].tolist() == [0, 0, 0, 0, 1, 1] and centers1["n_samples"].tolist() == [10] * 6
    np.testing.assert_allclose(centers1["center"][4:], [f_new[labels == c].mean(0).numpy() for c in (4, 5)],
                               rtol=1e-5, atol=1e-6)
    covs = payload1["efc"]["covariance"]
    assert torch.equal(covs[:4], payload0["efc"]["covariance"])  # the old covariances are not moved
    torch.testing.assert_close(covs[4].double(), torch.from_numpy(np.cov(f_new[labels == 4].double().numpy().T)),
                               rtol=1e-4, atol=1e-7)
    assert (payload1["rotations"], payload1["head_layout"], payload1["n_outputs"]) == (1, "plain", 6)
    e = efc.empirical_feature_matrix(f_new.double(), net.head.weight.double(), net.head.bias.double())
    torch.testing.assert_close(payload1["efc"]["efm"].double(), e, rtol=1e-4, atol=1e-7)
    assert len(payload1["rebalance_history"]) == 3 and len(payload1["history"]) == 2
    assert [h["lr"] for h in payload1["history"]] == [1e-4, 1e-4]  # efc_lr, not train.lr (1e-3)


def test_efc_pp_keeps_the_old_heads_until_the_rebalancing_and_efc_trains_them(tiny, monkeypatch):
    """EFC++ trains only the backbone and the new head during the task: without the re-balancing the old rows are
    task 0's class rows bit for bit, with it they move; EFC (PR-ACE) trains them during the task (no re-balancing)."""
    p, data, zero, one = tiny
    old_weight, old_bias = zero[0]["model"]["head.weight"][::4], zero[0]["model"]["head.bias"][::4]
    assert not torch.equal(one[0]["model"]["head.weight"][:4], old_weight)  # the re-balancing moved them
    ace = efc_training.train_efc_task(p, _job(p, 1, "efc"), data, *zero, quiet())
    assert "rebalance_history" not in ace[0] and not torch.equal(ace[0]["model"]["head.weight"][:4], old_weight)
    seen = {}

    def record(head, features, labels, epochs, generator, **kwargs):  # a re-balancing that only records its input
        seen.update(features=features, labels=labels, epochs=epochs)
        return [0.0]

    monkeypatch.setattr(efc_training, "rebalance_heads", record)
    kept = efc_training.train_efc_task(p, _job(p, 1), data, *zero, quiet())
    # Every class had 10 training images: the 20 current features (classes 4, 5) then 10 Gaussian samples of each of
    # the 4 old classes, around the moved prototypes (task 1's centers rows 0..3).
    assert seen["epochs"] == 3 and seen["features"].shape == (60, 512)
    assert seen["labels"].tolist() == [4] * 10 + [5] * 10 + [c for c in range(4) for _ in range(10)]
    assert torch.bincount(seen["labels"]).tolist() == [10] * 6
    f_new, _, _ = _features(p, 1, data, kept[0]["model"], 1)
    assert torch.equal(seen["features"][:20], f_new)  # the current features, as computed from the checkpoint
    assert torch.equal(kept[0]["model"]["head.weight"][:4], old_weight)
    assert torch.equal(kept[0]["model"]["head.bias"][:4], old_bias)
    assert not torch.equal(kept[0]["model"]["head.weight"][4:], one[0]["model"]["head.weight"][4:])  # new rows differ


# --- resume, determinism, exemplar-free ------------------------------------------------------------------------

from tests.test_resume import StopAfter  # noqa: E402  (the stop request at the n-th step boundary)


@pytest.mark.parametrize("method", ["efc_pp", "efc"])
def test_a_task_stopped_at_every_step_boundary_ends_in_the_uninterrupted_bytes(tiny, tmp_path, method):
    p, data, zero, one = tiny
    clean = one if method == "efc_pp" else efc_training.train_efc_task(p, _job(p, 1, method), data, *zero, quiet())
    state_file, ident, state, positions = tmp_path / "r.pt", {"task": 1}, None, []
    while True:
        plan = resume.Plan(path=state_file, state=state, save=lambda g: resume.save(state_file, ident, g), every=1,
                           stop_requested=StopAfter(2))
        try:
            out = efc_training.train_efc_task(p, _job(p, 1, method), data, *zero, quiet(), plan)
            break
        except resume.Preempted as stop:
            positions.append((stop.epoch, stop.step))
            state = resume.load(state_file, ident)
    assert positions == [(0, 1), (1, 0), (1, 1), (2, 0)]  # 20 images: 2 steps per epoch, 2 epochs
    assert _same(out, clean)
    again = efc_training.train_efc_task(p, _job(p, 1, method), data, *zero, quiet())
    assert _same(again, clean)  # same config twice: the same bytes
    other = parse_params(compose([*TINY, f"method.{method}.efc_lambda=1.0"]))
    assert not _same(efc_training.train_efc_task(other, _job(other, 1, method), data, *zero, quiet()), clean)


def test_task_1_reads_no_image_of_an_earlier_task(tiny):
    """Task 1 given the split without task 0's images, or with them replaced by noise, gives the same bytes."""
    p, data, zero, one = tiny
    old = np.isin(data.labels, TASKS[0])
    noise = data.images.copy()
    noise[old] = np.random.default_rng(1).integers(0, 256, noise[old].shape, dtype=np.uint8)
    for other in (arrays.Split(data.images[~old], data.labels[~old]), arrays.Split(noise, data.labels)):
        assert _same(efc_training.train_efc_task(p, _job(p, 1), other, *zero, quiet()), one)


# --- a tiny run through the verbs --------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_tiny_efc_pp_run_through_train_and_evaluate(tiny_prepared_template, tmp_path):
    """Task 0 (efc_resnet18) and task 1 (efc_pp) with the grid's commands (a rerun's bytes are compared in process,
    above); the checkpoint records its centers and evaluation predicts with the heads over the 6 seen classes."""
    project = _copy(tiny_prepared_template, tmp_path / "project")
    ncil(["params", *CLI_TINY], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for step in workflow.steps(params):
        if step.kind == "split":
            ncil(list(step.cmd), project)
    steps = {int(s.values("--task")[0]): s for s in workflow.steps(params) if s.kind == "train"}
    assert steps[0].values("--method") == ["efc_resnet18"] and set(steps[1].outs) == {"checkpoint", "centers"}
    for t in (0, 1):
        ncil(list(steps[t].cmd), project)
    one = io.load_checkpoint(project / steps[1].outs["checkpoint"], project / steps[1].outs["centers"])
    assert one["config"]["method_config"]["efc"] is True and one["efc"]["covariance"].shape == (6, 512, 512)
    checkpoints = [steps[t].outs["checkpoint"] for t in (0, 1)]
    evals = ["evals/task_0.parquet", "evals/task_1.parquet"]
    ncil(["evaluate", "--split", SETTING_SPLIT, "--checkpoints", *checkpoints, "--out", *evals], project)
    split = yaml.safe_load((project / SETTING_SPLIT).read_text())
    predictions = io.read_predictions(project / evals[1], split["tasks"])
    assert set(np.unique(predictions["prediction"]).tolist()) <= set(range(6))
    assert len(np.unique(predictions["prediction"])) >= 2  # not one class for everything


def test_efc_runs_on_the_vit_backbone_too():
    """EFC is model-agnostic: on the tiny ViT (D = 16, no BatchNorm, no rotation) tasks 0 and 1 store E and the
    covariances at its width, and the head grows from 4 to 6 plain rows."""
    p = parse_params(compose([*TINY, "method=[efc_pp]", "method.efc_pp.backbone=vit", "method.efc_pp.rotation=false",
                              "model=vit_digits_tiny"]))
    zero = efc_training.train_efc_task(p, _job(p, 0), _split(), None, None, quiet())
    one = efc_training.train_efc_task(p, _job(p, 1), _split(), *zero, quiet())
    assert zero[0]["rotations"] == 1 and zero[0]["efc"]["covariance"].shape == (4, 16, 16)
    assert one[0]["efc"]["efm"].shape == (16, 16) and one[0]["efc"]["covariance"].shape == (6, 16, 16)
    assert one[0]["model"]["head.weight"].shape == (6, 16) and one[1]["center"].shape == (6, 16)
    assert all(torch.isfinite(t).all() for t in one[0]["efc"].values())
