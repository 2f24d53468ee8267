"""FeCAM as a method of the pipeline (issue 25; docs/efcil.md, "Integration plan"): the per-class statistics
artifact (written by every task, read by evaluation, a swapped or truncated one refused naming the file), the
Mahalanobis classifier on stored statistics worked by hand, the frozen backbone, and a tiny deterministic run."""

from __future__ import annotations

import logging
import math
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ncil.data import arrays
from ncil.learning import fecam_training, prediction, training
from ncil.methods import fecam
from ncil.pipeline import experiment_grid, io, paths, workflow
from ncil.pipeline.config import ConfigError, parse_params
from ncil.pipeline.hydra_conf import compose
from tests.conftest import ROOT, _copy, copy_project, ncil, run

# FeCAM alone on the tiny grid's setting (4 + 2 x 3), seed 1, one epoch of task 0 (train: smoke), in the grid's own
# folder (grid: digits_efcil: runs/digits_efcil/, results/digits_efcil/).
FECAM_TINY = ["+experiment=digits_efcil", "scenario=[base4_inc2]", "seeds=[1]", "method=[fecam]"]
FOLDER = "digits_efcil"
SETTING_SPLIT = f"results/{FOLDER}/base4_inc2/split.json"


def quiet() -> logging.Logger:
    log = logging.getLogger("test_fecam_pipeline")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


# --- the statistics, by hand ------------------------------------------------------------------------------------
# Two classes of 2-d raw (ReLU) features, chosen so that their Tukey transform (lambda 0.5: square roots) is whole:
#   class 0: raw (1, 0), (9, 0)          -> sqrt (1, 0), (3, 0): mean raw (5, 0); covariance [[2, 0], [0, 0]]
#            (unbiased: ((1-2)^2 + (3-2)^2) / 1 = 2).
#   class 1: raw (0, 1), (1, 0), (4, 4)  -> sqrt (0, 1), (1, 0), (2, 2): mean raw (5/3, 5/3); deviations from
#            (1, 1): (-1, 0), (0, -1), (1, 1): sums of squares 2, 2, cross products 0 + 0 + 1 = 1, over N - 1 = 2:
#            covariance [[1, 0.5], [0.5, 1]].
# Classifier matrices (two shrinkages, gamma1 = gamma2 = 1, V2 over the non-zero off-diagonal entries, then the
# correlation normalisation):
#   class 0: V1 = 1, V2 = 0 (no non-zero entry): [[3, 0], [0, 1]]; V1 = 2: [[5, 0], [0, 3]]; normalised: I.
#   class 1: V1 = 1, V2 = 0.5: [[2, 1], [1, 2]]; V1 = 2, V2 = 1: [[4, 2], [2, 4]]; normalised: R = [[1, .5], [.5, 1]],
#            R^-1 = 4/3 [[1, -.5], [-.5, 1]].
# Test feature x = (49, 9): x/|x|, sqrt, L2-normalised: u = (7, 3)/sqrt(58); the prototypes: sqrt(5, 0) -> p0 = (1, 0),
# sqrt(5/3, 5/3) -> p1 = (1, 1)/sqrt(2).
#   D(x, 0) = |u - p0|^2 = 2 - 14/sqrt(58) = 0.161710
#   D(x, 1) = 4/3 (|u - p1|^2 - d_x d_y) with |u - p1|^2 = 2 - 20/sqrt(116) = 0.143046 and
#             d_x d_y = (7/sqrt(58) - 1/sqrt(2)) (3/sqrt(58) - 1/sqrt(2)) = 21/58 - 10/sqrt(116) + 1/2 = -0.066407:
#             4/3 (1.5 - 21/58 - 10/sqrt(116)) = 0.279272.
# So FeCAM predicts class 0, where the nearest prototype (Euclidean, 0.161710 > 0.143046) says class 1: the
# correlation of class 1 makes the direction u - p1 (across it) cost more.
RAW = torch.tensor([[1.0, 0.0], [9.0, 0.0], [0.0, 1.0], [1.0, 0.0], [4.0, 4.0]], dtype=torch.float64)
LABELS = np.array([0, 0, 1, 1, 1])
LABEL_MAP = {7: 0, 3: 1}  # original class -> incremental label
D0 = 2 - 14 / math.sqrt(58)
D1 = 4 / 3 * (1.5 - 21 / 58 - 10 / math.sqrt(116))
EUCLID1 = 2 - 20 / math.sqrt(116)


def _rows() -> dict:
    return fecam_training.class_statistics_rows(RAW, LABELS, LABEL_MAP, task=0, lam=0.5)


def test_class_statistics_rows_by_hand():
    rows = _rows()
    assert rows["class_id"].tolist() == [0, 1] and rows["original_class"].tolist() == [7, 3]
    assert rows["task"].tolist() == [0, 0] and rows["n_samples"].tolist() == [2, 3]
    np.testing.assert_allclose(rows["mean"], [[5, 0], [5 / 3, 5 / 3]], rtol=1e-6)
    np.testing.assert_allclose(rows["covariance"], [[[2, 0], [0, 0]], [[1, 0.5], [0.5, 1]]], atol=1e-6)


def test_the_statistics_file_round_trips_and_gives_the_hand_worked_prediction(tmp_path):
    path = tmp_path / paths.STATISTICS_NAME
    io.write_statistics(path, _rows(), task=0, feature_dim=2)
    back = io.read_statistics(path)
    assert back["producing_task"] == 0 and back["feature_dim"] == 2
    for name in io.STATISTICS_COLUMNS:
        np.testing.assert_array_equal(back[name], np.asarray(_rows()[name], dtype=back[name].dtype), err_msg=name)
    matrices = prediction.classifier_matrices(torch.from_numpy(back["covariance"]).double(), shrink_times=2)
    np.testing.assert_allclose(matrices.numpy(), [[[1, 0], [0, 1]], [[1, 0.5], [0.5, 1]]], atol=1e-6)
    x = torch.tensor([[49.0, 9.0]], dtype=torch.float64)
    prototypes = torch.from_numpy(back["mean"]).double()
    distances = fecam.fecam_distances(x, prototypes, matrices, lam=0.5)
    np.testing.assert_allclose(distances.numpy(), [[D0, D1]], rtol=1e-5)
    assert fecam.fecam_predict(x, prototypes, matrices, lam=0.5).tolist() == [0]
    identity = torch.eye(2, dtype=torch.float64).expand(2, 2, 2)  # nearest prototype: the other class
    np.testing.assert_allclose(fecam.fecam_distances(x, prototypes, identity, lam=0.5).numpy(), [[D0, EUCLID1]],
                               rtol=1e-5)


def test_stored_statistics_give_the_core_classifier_on_raw_features():
    """Statistics stored by a task, then shrunk and normalised by evaluation, are the matrices ``fecam_statistics``
    builds from the raw features in one go (float32 storage: close, not equal)."""
    g = torch.Generator().manual_seed(0)
    features = torch.rand(40, 6, generator=g, dtype=torch.float64) ** 2  # non-negative, as ReLU features
    labels = np.repeat([0, 1, 2, 3], 10)
    rows = fecam_training.class_statistics_rows(features, labels, {10 + c: c for c in range(4)}, task=2, lam=0.5)
    means, covs = fecam.fecam_statistics(features, torch.from_numpy(labels), range(4), lam=0.5, shrink_times=2)
    np.testing.assert_allclose(rows["mean"], means.numpy(), rtol=1e-6)
    stored = prediction.classifier_matrices(torch.from_numpy(rows["covariance"]).double(), 2)
    np.testing.assert_allclose(stored.numpy(), covs.numpy(), atol=1e-5)
    assert not np.allclose(covs.numpy(), np.eye(6))  # correlations the test can see


# --- the file refused ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("column", "value", "problem"), [
    ("n_samples", [2, 1], "n_samples: expected at least two samples per class"),
    ("task", [0, 1], "task: expected every row of the producing task 0"),
    ("original_class", [7, 7], "original_class: expected distinct non-negative values"),
])
def test_an_inconsistent_statistics_file_is_refused_naming_the_file_and_column(tmp_path, column, value, problem):
    path = tmp_path / paths.STATISTICS_NAME
    io.write_statistics(path, {**_rows(), column: np.array(value)}, task=0, feature_dim=2)
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(path))}: {re.escape(problem)}"):
        io.read_statistics(path)


def test_an_asymmetric_covariance_is_refused(tmp_path):
    rows = _rows()
    rows["covariance"] = rows["covariance"].copy()
    rows["covariance"][1, 0, 1] = 0.25
    path = tmp_path / paths.STATISTICS_NAME
    io.write_statistics(path, rows, task=0, feature_dim=2)
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(path))}: covariance: expected symmetric"):
        io.read_statistics(path)


def _checkpoint_with_statistics(tmp_path) -> tuple[Path, Path]:
    stats = tmp_path / "task_0" / paths.STATISTICS_NAME
    io.write_statistics(stats, _rows(), task=0, feature_dim=2)
    checkpoint = tmp_path / "task_0" / "model.pt"
    io.save_checkpoint(checkpoint, {"task": 0, "seen_classes": [7, 3], "config": {}, "model": {}},
                       statistics_file=stats)
    return checkpoint, stats


def test_a_truncated_statistics_file_is_refused_naming_the_file(tmp_path):
    checkpoint, stats = _checkpoint_with_statistics(tmp_path)
    assert io.load_checkpoint(checkpoint, statistics_file=stats)["statistics_sha256"] == io.sha256_file(stats)
    stats.write_bytes(stats.read_bytes()[: stats.stat().st_size // 2])
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(stats))}: does not belong to {re.escape(str(checkpoint))}"):
        io.load_checkpoint(checkpoint, statistics_file=stats)
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(stats))}: corrupt or truncated class statistics"):
        io.read_statistics(stats)


def test_a_swapped_statistics_file_is_refused_naming_the_file(tmp_path):
    """Another task's (or run's) statistics, a valid file on its own, do not belong to the checkpoint."""
    checkpoint, _ = _checkpoint_with_statistics(tmp_path)
    other = tmp_path / "task_1" / paths.STATISTICS_NAME
    io.write_statistics(other, {**_rows(), "task": np.array([1, 1])}, task=1, feature_dim=2)
    io.read_statistics(other)  # readable: only the checkpoint's record tells it is not task 0's
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(other))}: does not belong to {re.escape(str(checkpoint))}"):
        io.load_checkpoint(checkpoint, statistics_file=other)
    plain = tmp_path / "plain.pt"
    io.save_checkpoint(plain, {"task": 0, "seen_classes": [7, 3], "config": {}, "model": {}})
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(other))}: {re.escape(str(plain))} records no class "
                                               "statistics"):
        io.load_checkpoint(plain, statistics_file=other)


# --- configuration and the grid ---------------------------------------------------------------------------------

def test_fecam_composes_and_stays_out_of_the_default_grid():
    p = parse_params(compose(["+experiment=digits_efcil"]))
    m = p.method["fecam"]
    assert (m.backbone, m.classifier, m.fecam_tukey, m.fecam_shrink_times, m.rotation) == ("resnet18", "fecam", 0.5, 2,
                                                                                          False)
    assert m.base_recipe != p.method["pass_resnet18"].base_recipe  # FeCAM's task 0 also writes statistics
    assert all(m.classifier == "head" for m in parse_params(compose([])).method.values())
    committed = yaml.safe_load((ROOT / paths.grid_params("digits_efcil")).read_text())
    assert committed == compose(["+experiment=digits_efcil"])  # `python -m ncil grid --check` says the same
    assert committed["grid"] == FOLDER  # its own runs/ and results/ folders, not the default grid's digits/
    assert (set(committed["scenario"]), committed["seeds"]) == ({"base4_inc2"}, [1, 2, 3])  # 5+1x5: CPU time


@pytest.mark.parametrize(("key", "value", "message"), [
    ("backbone", "vit", "method.fecam.backbone: classifier fecam needs non-negative (ReLU) features"),
    ("feature_kd", 10.0, "method.fecam.feature_kd: FeCAM trains nothing after task 0"),
    ("fecam_tukey", -1.0, "method.fecam.fecam_tukey: expected a Tukey lambda >= 0"),
    ("classifier", "knn", "method.fecam.classifier: expected one of ['head', 'fecam', 'ncm', 'bayes']"),
])
def test_fecam_options_are_checked(key, value, message):
    data = compose(FECAM_TINY)
    data["method"]["fecam"][key] = value
    with pytest.raises(ConfigError, match=f"^params.yaml: {re.escape(message)}"):
        parse_params(data)


def test_fecam_options_are_refused_on_another_classifier():
    data = compose([])
    data["method"]["finetune"]["fecam_shrink_times"] = 1
    with pytest.raises(ConfigError, match="^params.yaml: method.finetune.fecam_shrink_times: only the FeCAM classifier"):
        parse_params(data)


def test_a_fecam_grid_writes_statistics_every_task_and_evaluates_with_them():
    params = compose(["+experiment=digits_efcil"])
    steps = workflow.steps(params)
    train = {s.outs["checkpoint"]: s for s in steps if s.kind == "train"}
    evaluate = {s.name: s for s in steps if s.kind == "evaluate"}
    runs = experiment_grid.runs(params)
    assert {r.method for r in runs if r.fecam} == {"fecam"}
    for r in runs:
        assert r.folder == FOLDER and r.checkpoint(1).startswith(f"runs/{FOLDER}/")
        step = evaluate[workflow.stage_name("evaluate", FOLDER, r.run_id)]
        if not r.fecam:
            assert "--statistics" not in step.cmd and not any(paths.STATISTICS_NAME in o for o in train[r.checkpoint(1)].outs.values())
            continue
        assert step.values("--statistics") == [r.statistics(t) for t in range(r.n_tasks)]
        assert [step.deps[f"statistics{t}"] for t in range(r.n_tasks)] == step.values("--statistics")
        for t in range(r.n_tasks):
            assert train[r.checkpoint(t)].outs["statistics"] == r.statistics(t) == train[r.checkpoint(t)].values("--statistics")[0]
            assert "prev_statistics" not in train[r.checkpoint(t)].deps  # a task reads no earlier statistics
    assert paths.statistics(FOLDER, "base4/fecam_resnet18/seed1", 0) in {s.outs.get("statistics") for s in train.values()}


def test_no_step_of_the_default_grid_names_statistics():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for step in workflow.steps(params):
        assert not any(paths.STATISTICS_NAME in str(x) or x == "--statistics"
                       for x in [*step.deps.values(), *step.outs.values(), *step.cmd]), step.name
    assert paths.STATISTICS_NAME not in (ROOT / "dvc.yaml").read_text()


def test_the_rules_spell_the_statistics_path_of_the_path_owner():
    text = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    for template in (paths.statistics("{grid}", "{setting}/{method}/seed{seed}", "{task}"),
                     paths.statistics("{grid}", "base{initial}/{recipe}/seed{seed}", 0)):
        assert f'"{template}"' in text, template


def test_train_task_refuses_to_train_a_fecam_task_after_the_first():
    p = parse_params(compose(FECAM_TINY))
    job = training.TaskJob(1, 1, list(range(10)), [[0, 1, 2, 3], [4, 5]], "fecam", p.method["fecam"], {})
    with pytest.raises(ValueError, match="method fecam: FeCAM trains nothing after task 0"):
        training.train_task(p, job, None, None, None, quiet())


def test_the_train_verb_refuses_a_missing_or_stray_statistics_flag():
    """Every task of a FeCAM method names its statistics file; no other method's task may name one (the train
    verb checks this before any data loads)."""
    from ncil.stages import train

    p = parse_params(compose([*FECAM_TINY, "method=[fecam,finetune]"]))
    args = train.Args(params="params.yaml", log=None, split="s.json", task=0, seed=1, method="fecam_resnet18",
                      prev_checkpoint=None, prev_centers=None, checkpoint="m.pt", centers="c.parquet")
    with pytest.raises(train.cli.UsageError, match="^--statistics: --method fecam_resnet18 classifies with class "
                                                   "statistics"):
        train.check_statistics_flag(args, train.resolve_method(p, args, "params.yaml"), "params.yaml")
    train.check_statistics_flag(replace(args, statistics="s.parquet"), p.method["fecam"], "params.yaml")
    plain = replace(args, method="plain", statistics="s.parquet")
    with pytest.raises(train.cli.UsageError, match="^--statistics: --method plain has classifier head"):
        train.check_statistics_flag(plain, train.resolve_method(p, plain, "params.yaml"), "params.yaml")


def test_evaluation_refuses_a_fecam_run_whose_tasks_disagree_on_its_options():
    """Task 0 is not retrained when only a method option changes: checkpoints of one run with two Tukey lambdas
    (task 0 with the default 0.5, task 1 with 0.25) are refused, naming task 1's file and the field."""
    from ncil.stages.evaluate import check_fecam_agreement

    def checkpoint(**options):
        return {"config": {"method_config": {"classifier": "fecam", "backbone": "resnet18", **options}}}

    files = ["t0/model.pt", "t1/model.pt"]
    check_fecam_agreement([checkpoint(), checkpoint(fecam_tukey=0.5)], files)  # recorded or default: the same
    with pytest.raises(io.ArtifactError, match=r"^t1/model.pt: config.method_config.fecam_tukey: expected 0.5 as "
                                               r"t0/model.pt \(one FeCAM run\), found 0.25"):
        check_fecam_agreement([checkpoint(), checkpoint(fecam_tukey=0.25)], files)
    with pytest.raises(io.ArtifactError, match="fecam_shrink_times: expected 2 "):
        check_fecam_agreement([checkpoint(), checkpoint(fecam_shrink_times=1)], files)


# --- a tiny run: CLI ---------------------------------------------------------------------------------------------

def _train_steps(project: Path) -> dict:
    params = yaml.safe_load((project / "params.yaml").read_text())
    return {int(s.values("--task")[0]): s for s in workflow.steps(params) if s.kind == "train"}


def _outputs(project: Path, step) -> dict:
    return {name: (project / path).read_bytes() for name, path in step.outs.items()}


@pytest.fixture(scope="module")
def fecam_run(tiny_prepared_template, tmp_path_factory):
    """Tasks 0 and 1 of FeCAM (task 0: one epoch) through the train verb with the grid's commands, task 1 twice to
    the same paths: (project, steps, first outputs). Task 0 is trained once (its loop is every method's task 0; the
    test recomputes its statistics from its checkpoint instead)."""
    project = _copy(tiny_prepared_template, tmp_path_factory.mktemp("fecam") / "project")
    ncil(["params", *FECAM_TINY], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for step in workflow.steps(params):  # the grid's own splits (results/digits_efcil/...; the data is shared)
        if step.kind == "split":
            ncil(list(step.cmd), project)
    steps = _train_steps(project)
    assert steps[1].values("--split") == [SETTING_SPLIT]
    first = {}
    for t in (0, 1):
        ncil(list(steps[t].cmd), project)
        first[t] = _outputs(project, steps[t])
    ncil(list(steps[1].cmd), project)  # again
    return project, steps, first


@pytest.mark.slow
@pytest.mark.parametrize("task", [0, 1])  # task 1 was written twice: its bytes are the rerun's
def test_a_fecam_task_writes_checkpoint_centers_statistics_and_a_rerun_gives_the_same_bytes(fecam_run, task):
    project, steps, first = fecam_run
    step = steps[task]
    assert set(step.outs) == {"checkpoint", "centers", "statistics"}
    assert _outputs(project, step) == first[task]
    payload = io.load_checkpoint(project / step.outs["checkpoint"], project / step.outs["centers"],
                                 statistics_file=project / step.outs["statistics"])
    assert payload["backbone"] == "resnet18" and payload["config"]["method_config"]["classifier"] == "fecam"
    stats = io.read_statistics(project / step.outs["statistics"])
    split = yaml.safe_load((project / SETTING_SPLIT).read_text())
    assert stats["producing_task"] == task and stats["feature_dim"] == 512
    assert sorted(stats["original_class"].tolist()) == sorted(split["tasks"][task])  # its own classes only
    centers = io.read_centers(project / step.outs["centers"])
    # The same mean features (the centers' float32 sum, the statistics' float64 one): close, not equal.
    np.testing.assert_allclose(centers["center"][-len(stats["mean"]):], stats["mean"], rtol=1e-5, atol=1e-6)
    assert (np.diagonal(stats["covariance"], axis1=1, axis2=2) >= 0).all()
    if task == 0:  # the statistics are a function of the checkpoint: recomputed, the same values
        p, _, job = _frozen_job(project, 0)
        job = replace(job, method_name="fecam_resnet18")
        again = fecam_training.task_statistics(p, job, arrays.load_split("digits", "train", root=str(project)), payload)
        for name in io.STATISTICS_COLUMNS:
            np.testing.assert_array_equal(again[name], stats[name].astype(again[name].dtype), err_msg=name)


def _frozen_job(project: Path, task: int):
    p = parse_params(yaml.safe_load((project / "params.yaml").read_text()))
    split = yaml.safe_load((project / SETTING_SPLIT).read_text())
    return p, split, training.make_job(p, split, task, 1, "fecam", p.method["fecam"], SETTING_SPLIT)


@pytest.mark.slow
def test_the_backbone_is_bit_identical_after_task_0(fecam_run):
    """Task 1's checkpoint (the train verb) and task 2's (``frozen_task`` on task 1's) hold task 0's tensors."""
    project, steps, _ = fecam_run
    one = io.load_checkpoint(project / steps[1].outs["checkpoint"])
    p, _, job = _frozen_job(project, 2)
    two, _, stats = fecam_training.frozen_task(p, job, arrays.load_split("digits", "train", root=str(project)), one,
                                               io.read_centers(project / steps[1].outs["centers"]), quiet())
    models = [io.load_checkpoint(project / steps[0].outs["checkpoint"])["model"], one["model"], two["model"]]
    assert models[0].keys() == models[1].keys() == models[2].keys()
    for name, tensor in models[0].items():  # BatchNorm's running statistics included: nothing ran in train mode
        assert torch.equal(tensor, models[1][name]) and torch.equal(tensor, models[2][name]), name
    assert one["history"] == [] and two["task"] == 2 and stats["task"].tolist() == [2, 2]  # no epoch


@pytest.mark.slow
def test_the_fecam_run_evaluates_with_its_statistics(fecam_run):
    project, steps, _ = fecam_run
    checkpoints = [steps[t].outs["checkpoint"] for t in (0, 1)]
    statistics = [steps[t].outs["statistics"] for t in (0, 1)]
    evals = [f"evals/task_{t}.parquet" for t in (0, 1)]
    ncil(["evaluate", "--split", SETTING_SPLIT, "--checkpoints", *checkpoints, "--statistics", *statistics,
          "--out", *evals], project)
    split = yaml.safe_load((project / SETTING_SPLIT).read_text())
    for t, path in enumerate(evals):
        predictions = io.read_predictions(project / path, split["tasks"])
        assert set(np.unique(predictions["prediction"]).tolist()) <= set(range(4 + 2 * t))
        assert (predictions["prediction"] == predictions["label"]).mean() > 0.5  # far above chance (1 / (4 + 2t))
    # Without the statistics, or with task 1's given as task 0's, evaluation stops before writing, naming the file.
    evals = [f"refused/task_{t}.parquet" for t in (0, 1)]
    proc = ncil(["evaluate", "--split", SETTING_SPLIT, "--checkpoints", *checkpoints, "--out", *evals], project,
                check=False)
    assert proc.returncode == 2 and f"{checkpoints[0]}: config.method_config.classifier: fecam predicts" in proc.stderr
    swapped = [statistics[1], statistics[0]]
    proc = ncil(["evaluate", "--split", SETTING_SPLIT, "--checkpoints", *checkpoints, "--statistics", *swapped,
                 "--out", *evals], project, check=False)
    assert proc.returncode == 2 and f"{statistics[1]}: does not belong to {checkpoints[0]}" in proc.stderr, proc.stderr
    assert not any((project / e).exists() for e in evals)


@pytest.mark.slow
def test_a_frozen_task_reads_no_image_of_an_earlier_task(fecam_run):
    """Task 1 given a training split without any image of task 0's classes (and one whose task-0 images are
    noise) writes the same checkpoint, centers and statistics as with the whole split."""
    project, steps, _ = fecam_run
    p, split, job = _frozen_job(project, 1)
    previous = io.load_checkpoint(project / steps[0].outs["checkpoint"])
    previous_centers = io.read_centers(project / steps[0].outs["centers"])
    full = arrays.load_split("digits", "train", root=str(project))
    old = np.isin(full.labels, split["tasks"][0])
    noise = full.images.copy()
    noise[old] = np.random.default_rng(0).integers(0, 256, noise[old].shape, dtype=np.uint8)
    results = [fecam_training.frozen_task(p, job, data, previous, previous_centers, quiet())
               for data in (full, arrays.Split(full.images[~old], full.labels[~old]), arrays.Split(noise, full.labels))]
    for payload, centers, stats in results[1:]:
        assert io.content_digest(payload) == io.content_digest(results[0][0])
        for name in centers:
            np.testing.assert_array_equal(centers[name], results[0][1][name])
        for name in stats:
            np.testing.assert_array_equal(stats[name], results[0][2][name])
    assert sorted(results[0][2]["original_class"].tolist()) == sorted(split["tasks"][1])


@pytest.mark.slow
def test_snakemake_and_dvc_run_the_same_fecam_commands(tmp_path):
    """On a FeCAM grid the two engines agree: every training job is a statistics rule with the statistics among
    its outputs, the evaluation reads them all, exactly the deps and outs of the dvc.yaml stages."""
    from ncil.pipeline.dvcgen import CHECK_STAGE
    from tests.test_commands_agree import dry_run_jobs, normalise, path_of

    project = copy_project(tmp_path / "p")
    ncil(["params", *FECAM_TINY], project)
    proc = run([sys.executable, "-m", "snakemake", "--dry-run", "--printshellcmds", "--forceall", "--cores", "1"],
               project)
    jobs = dry_run_jobs(proc.stdout)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    by_cmd = {normalise(stage["cmd"]): stage for name, stage in stages.items() if name != CHECK_STAGE}
    fecam_jobs = [job for job in jobs if job["rule"].startswith(("train", "evaluate"))]
    assert sorted(job["rule"] for job in fecam_jobs) == ["evaluate_statistics", "train_base_statistics"] + \
        ["train_statistics"] * 3
    for job in fecam_jobs:
        stage = by_cmd[job["shell"]]
        deps = [d for d in stage["deps"] if d != paths.PARAMS_CHECK_STAMP]
        inputs = [i for i in job["input"] if not i.startswith(("fingerprints/", paths.PARAMS_STAMP_ROOT + "/"))]
        assert sorted(inputs) == sorted(deps), job["shell"]
        assert sorted(job["output"]) == sorted(path_of(o) for o in stage["outs"]), job["shell"]
    commands = [job["shell"] for job in jobs if job["shell"] and job["rule"] != "costs"]
    assert sorted(commands) == sorted(normalise(s["cmd"]) for n, s in stages.items() if n != CHECK_STAGE)
