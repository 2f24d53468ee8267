"""The CLI verbs on a tiny configuration in a temporary folder (integration tier).

One run (4 + 2 x 3, finetune, seed 1, one epoch) is trained once per module, tasks 0 and 1 for the fast
tests and tasks 2 and 3 beside them for the slow ones; a test that changes files works on its own copy.
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from ncil.pipeline import io
from tests.conftest import copy_project, ncil

BASE = "runs/digits/base4/plain/seed1/task_0"
SPLIT0, SPLIT = "results/digits/base4/split.json", "results/digits/base4_inc2/split.json"


def task_dir(task: int) -> str:
    return BASE if task == 0 else f"runs/digits/base4_inc2/finetune/seed1/task_{task}"


INC = task_dir(1)


def _train(project, task, method="finetune", check=True, seed=1, prev=None, out=None, extra=()):
    """Train ``task`` of the 4+2x3 run (task 0: the base4 split); ``prev``/``out``: other task folders."""
    prev, out = prev or task_dir(task - 1), out or task_dir(task)
    args = ["train", "--seed", str(seed), "--task", str(task), "--log", f"logs/t{task}.log"]
    if task == 0:
        args += ["--split", SPLIT0, "--method", "plain"]
    else:
        args += ["--split", SPLIT, "--method", method,
                 "--prev-checkpoint", f"{prev}/model.pt", "--prev-centers", f"{prev}/centers.parquet"]
    args += ["--checkpoint", f"{out}/model.pt", "--centers", f"{out}/centers.parquet", *extra]
    return ncil(args, project, check=check)


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """Tasks 0 and 1: what every refusal below needs (read-only; tests work on a copy, `trained`)."""
    p = copy_project(tmp_path_factory.mktemp("trained") / "project")
    ncil(["prepare"], p)
    ncil(["split", "--initial", "4", "--out", SPLIT0], p)
    ncil(["split", "--initial", "4", "--increment", "2", "--out", SPLIT], p)
    for task in range(2):
        _train(p, task)
    return p


@pytest.fixture(scope="module")
def trained_all_once(trained_once, tmp_path_factory):
    """All 4 tasks of the run (tasks 2 and 3 trained on a copy of ``trained_once``), for the slow tests only."""
    p = shutil.copytree(trained_once, tmp_path_factory.mktemp("trained_all") / "project", symlinks=True)
    for task in range(2, 4):
        _train(p, task)
    return p


@pytest.fixture
def trained(trained_once, tmp_path):
    return shutil.copytree(trained_once, tmp_path / "project", symlinks=True)


@pytest.fixture
def trained_all(trained_all_once, tmp_path):
    return shutil.copytree(trained_all_once, tmp_path / "project", symlinks=True)


def _hashes(project) -> dict:
    return {str(f.relative_to(project)): io.sha256_file(f) for f in sorted((project / "runs").rglob("*")) if f.is_file()}


def test_prepare_writes_a_checksummed_stratified_split(trained_once):
    tiny_project = trained_once
    manifest = io.verify_manifest(tiny_project / "data/digits/manifest.json")
    # per class: test = round(0.2 n), val = round(0.1 (n - test)) (Python rounding), e.g. class 0: 36 and 14
    assert manifest["counts"] == {"train": 1295, "val": 143, "test": 359}
    assert sum(manifest["counts"].values()) == 1797
    labels = io.read_array(tiny_project / "data/digits/test_labels.npy")
    assert np.bincount(labels).min() >= 35  # every class is in the test split


def test_split_file_has_the_legacy_order(trained):
    tiny_project = trained
    ncil(["split", "--initial", "4", "--increment", "2", "--out", "s.json"], tiny_project)
    split = json.loads((tiny_project / "s.json").read_text())
    order = [int(c) for c in np.random.RandomState(1993).permutation(10)]
    assert split["class_order"] == order
    assert split["tasks"] == [order[:4], order[4:6], order[6:8], order[8:]]


@pytest.mark.slow
def test_train_evaluate_summarize_chain(trained_all):
    p = trained_all
    ckpt = torch.load(p / INC / "model.pt", weights_only=True)
    assert ckpt["task"] == 1 and ckpt["n_outputs"] == 6 and ckpt["head_layout"] == "plain"
    assert ckpt["model"]["head.weight"].shape == (6, 16)
    assert ckpt["config"]["method"] == "finetune" and ckpt["config"]["seed"] == 1
    base = io.load_checkpoint(p / BASE / "model.pt")
    assert base["model"]["head.weight"].shape == (4, 16)

    c0, c1 = io.read_centers(p / BASE / "centers.parquet"), io.read_centers(p / INC / "centers.parquet")
    assert c0["class_id"].tolist() == [0, 1, 2, 3] and c0["task"].tolist() == [0, 0, 0, 0]
    assert c1["class_id"].tolist() == [0, 1, 2, 3, 4, 5] and c1["task"].tolist() == [0, 0, 0, 0, 1, 1]
    assert np.array_equal(c1["center"][:4], c0["center"])  # task t keeps task t-1's rows
    order = ckpt["class_order"]
    assert c1["original_class"].tolist() == order[:6]
    assert c1["n_samples"].sum() == len([x for x in io.read_array(p / "data/digits/train_labels.npy") if x in order[:6]])

    log = (p / "logs/t1.log").read_text()
    assert "epoch 1/1 loss" in log and "images/s" in log

    checkpoints = [f"{task_dir(t)}/model.pt" for t in range(4)]
    evals = [f"e{t}.parquet" for t in range(4)]
    ncil(["evaluate", "--split", SPLIT, "--checkpoints", *checkpoints, "--out", *evals], p)
    e1 = io.read_predictions(p / "e1.parquet")
    assert e1["task"] == 1 and set(e1["label"]) == set(range(6))
    assert set(e1["label_task"]) == {0, 1}
    ncil(["evaluate", "--split", SPLIT, "--data-split", "val",
          "--checkpoints", f"{BASE}/model.pt", f"{INC}/model.pt", "--out", "v0.parquet", "v1.parquet"], p)
    v1 = io.read_predictions(p / "v1.parquet")
    val_labels = io.read_array(p / "data/digits/val_labels.npy")
    assert len(v1["label"]) == int(np.isin(val_labels, order[:6]).sum()) != len(e1["label"])
    ncil(["summarize", "--split", SPLIT, "--evals", *evals,
          "--setting", "base4_inc2", "--method", "finetune", "--seed", "1", "--out", "m.json"], p)
    m = json.loads((p / "m.json").read_text())
    assert m["run"]["label"] == "4+2x3" and m["provenance"]["metric_convention"] == "paper"
    assert m["acc_matrix"][0][1] is None and len(m["acc_matrix"]) == 4
    e3 = io.read_predictions(p / "e3.parquet")
    assert m["last_accuracy"] == pytest.approx(100.0 * np.mean(e3["prediction"] == e3["label"]))


def test_corrupt_previous_checkpoint_fails_naming_it(trained):
    path = trained / BASE / "model.pt"
    path.write_bytes(path.read_bytes()[:1000])
    proc = _train(trained, 1, check=False)
    assert proc.returncode == 2
    assert f"{BASE}/model.pt: corrupt or truncated checkpoint" in proc.stderr


def test_corrupt_data_fails_naming_the_file(trained):
    path = trained / "data/digits/train_images.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    proc = _train(trained, 1, check=False)
    assert proc.returncode == 2
    assert "data/digits/train_images.npy: checksum mismatch" in proc.stderr


def test_unknown_method_fails_clearly(trained):
    proc = _train(trained, 1, method="ours", check=False)
    assert proc.returncode != 0 and "--method ours: not in params.yaml" in proc.stderr


@pytest.mark.slow
def test_rotation_method_chain(tiny_project):
    """`ours` (rotation head, PKS, PR) through train -> evaluate with the tiny ViT."""
    p = tiny_project
    ncil(["params", "method=[ours]"], p)
    ncil(["prepare"], p)
    ncil(["split", "--initial", "4", "--out", "results/digits/base4/split.json"], p)
    ncil(["split", "--initial", "4", "--increment", "2", "--out", "results/digits/base4_inc2/split.json"], p)
    base, inc = "runs/digits/base4/rotation/seed1/task_0", "runs/digits/base4_inc2/ours/seed1/task_1"
    ncil(["train", "--split", "results/digits/base4/split.json", "--task", "0", "--seed", "1", "--method", "rotation",
          "--checkpoint", f"{base}/model.pt", "--centers", f"{base}/centers.parquet"], p)
    ncil(["train", "--split", "results/digits/base4_inc2/split.json", "--task", "1", "--seed", "1", "--method", "ours",
          "--prev-checkpoint", f"{base}/model.pt", "--prev-centers", f"{base}/centers.parquet",
          "--checkpoint", f"{inc}/model.pt", "--centers", f"{inc}/centers.parquet", "--log", "ours.log"], p)
    ckpt = io.load_checkpoint(p / inc / "model.pt")
    assert ckpt["rotations"] == 4 and ckpt["model"]["head.weight"].shape == (24, 16)
    assert ckpt["config"]["method_config"]["pks"] == 10.0 and ckpt["config"]["method_config"]["pr"] == 10.0
    base_ckpt = io.load_checkpoint(p / base / "model.pt")
    # task 0 records its preset and the base-recipe fields that differ from the defaults (backbone vit is one)
    assert base_ckpt["config"]["method_config"] == {"base_recipe": "rotation", "preset": "paper", "rotation": True,
                                                   "ce_temperature": 0.1}
    # Old head rows (4 classes x 4 rotations) are task 0's rows until training moves them: same shape kept.
    centers = io.read_centers(p / inc / "centers.parquet")
    assert (centers["spread"] > 0).all() and len(centers["spread"]) == 6
    ncil(["evaluate", "--split", "results/digits/base4_inc2/split.json",
          "--checkpoints", f"{base}/model.pt", f"{inc}/model.pt", "--out", "e0.parquet", "e1.parquet"], p)
    e1 = io.read_predictions(p / "e1.parquet")
    assert set(e1["prediction"]) <= set(range(6))


# --- The CLI cannot destroy or mix up artifacts (issue 10, item 6) -------------------------------


def _refused(proc, *names):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for name in names:
        assert name in lines[-1], (name, lines[-1])
    return lines[-1]


def test_train_refuses_to_overwrite_its_previous_checkpoint(trained):
    """Before: `--checkpoint P --prev-checkpoint P` overwrote the shared task-0 checkpoint."""
    before = _hashes(trained)
    proc = ncil(["train", "--split", SPLIT, "--task", "1", "--seed", "1", "--method", "finetune",
                 "--prev-checkpoint", f"{BASE}/model.pt", "--prev-centers", f"{BASE}/centers.parquet",
                 "--checkpoint", f"{BASE}/model.pt", "--centers", "c.parquet"], trained, check=False)
    _refused(proc, f"--checkpoint {BASE}/model.pt", f"--prev-checkpoint {BASE}/model.pt")
    assert _hashes(trained) == before


def test_train_refuses_an_output_that_is_a_symlink_to_an_input(trained):
    link = trained / "elsewhere" / "centers.parquet"
    link.parent.mkdir()
    os.symlink(trained / BASE / "centers.parquet", link)
    before = _hashes(trained)
    proc = ncil(["train", "--split", SPLIT, "--task", "1", "--seed", "1", "--method", "finetune",
                 "--prev-checkpoint", f"{BASE}/model.pt", "--prev-centers", f"{BASE}/centers.parquet",
                 "--checkpoint", "new/model.pt", "--centers", "elsewhere/centers.parquet"], trained, check=False)
    _refused(proc, "--centers elsewhere/centers.parquet", f"--prev-centers {BASE}/centers.parquet")
    assert _hashes(trained) == before and not (trained / "new").exists()


@pytest.mark.slow
def test_train_refuses_a_previous_checkpoint_of_another_task_or_seed(trained):
    before = _hashes(trained)
    # task 2 from task 0's checkpoint (a skipped task)
    line = _refused(_train(trained, 2, prev=BASE, out="x2", check=False), f"--prev-checkpoint {BASE}/model.pt", SPLIT)
    assert "task: expected 1" in line and "found 0" in line
    # seed 2 continuing seed 1's base model
    line = _refused(_train(trained, 1, seed=2, out="x1", check=False), f"{BASE}/model.pt", SPLIT)
    assert "config.seed: expected 2" in line and "found 1" in line
    # another method's previous task (lwf is not in params.yaml: joint is, with the same base recipe)
    line = _refused(_train(trained, 2, method="joint", prev=INC, out="x3", check=False), f"{INC}/model.pt")
    assert "config.method: expected 'joint'" in line and "found 'finetune'" in line
    assert _hashes(trained) == before and not any((trained / d).exists() for d in ("x1", "x2", "x3"))


def test_train_refuses_a_previous_checkpoint_of_another_class_order(trained):
    """A split of another setting (4 + 3): task 1's seen classes differ from the checkpoint's."""
    ncil(["split", "--initial", "4", "--increment", "3", "--out", "other/split.json"], trained)
    proc = ncil(["train", "--split", "other/split.json", "--task", "2", "--seed", "1", "--method", "finetune",
                 "--prev-checkpoint", f"{INC}/model.pt", "--prev-centers", f"{INC}/centers.parquet",
                 "--checkpoint", "x/model.pt", "--centers", "x/centers.parquet"], trained, check=False)
    line = _refused(proc, f"--prev-checkpoint {INC}/model.pt", "other/split.json")
    assert "seen_classes: expected" in line


def test_check_previous_names_each_field(tiny_params):
    from ncil.learning.training import make_job
    from ncil.pipeline.io import ArtifactError
    from ncil.stages.train import check_previous

    p, _ = tiny_params
    split = {"class_order": list(range(10)), "tasks": [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]}
    job = make_job(p, split, 2, 1, "finetune", p.method["finetune"], "s/split.json")
    from ncil.pipeline.config import to_dict

    good = {"task": 1, "class_order": list(range(10)), "seen_classes": [0, 1, 2, 3, 4, 5],
            "config": {"dataset": {"name": "digits"}, "seed": 1, "method": "finetune", "model": to_dict(p.model)}}
    check_previous(good, job, p, "finetune", "prev.pt", "s/split.json")
    bad = {
        "task": {**good, "task": 0},
        "class_order": {**good, "class_order": list(reversed(range(10)))},
        "seen_classes": {**good, "seen_classes": [0, 1, 2, 3]},
        "config.seed": {**good, "config": {**good["config"], "seed": 3}},
        "config.method": {**good, "config": {**good["config"], "method": "joint"}},
        "config.dataset.name": {**good, "config": {**good["config"], "dataset": {"name": "cifar100"}}},
        "config.model": {**good, "config": {**good["config"], "model": {**to_dict(p.model), "depth": 99}}},
    }
    for field, previous in bad.items():
        with pytest.raises(ArtifactError) as err:
            check_previous(previous, job, p, "finetune", "prev.pt", "s/split.json")
        assert str(err.value).startswith(f"--prev-checkpoint prev.pt: {field}: expected"), str(err.value)
        assert "s/split.json" in str(err.value)


@pytest.mark.slow
def test_evaluate_refuses_checkpoints_that_are_not_the_splits_tasks(trained):
    # the tasks out of order
    proc = ncil(["evaluate", "--split", SPLIT, "--checkpoints", f"{INC}/model.pt", f"{BASE}/model.pt",
                 "--out", "e0.parquet", "e1.parquet"], trained, check=False)
    line = _refused(proc, f"{INC}/model.pt", SPLIT)
    assert "task: expected 0" in line
    # the right task index, another setting's split (4 + 3: task 1 has 7 seen classes)
    ncil(["split", "--initial", "4", "--increment", "3", "--out", "other/split.json"], trained)
    proc = ncil(["evaluate", "--split", "other/split.json", "--checkpoints", f"{BASE}/model.pt", f"{INC}/model.pt",
                 "--out", "e0.parquet", "e1.parquet"], trained, check=False)
    line = _refused(proc, f"{INC}/model.pt", "other/split.json")
    assert "seen_classes: expected" in line
    assert not (trained / "e0.parquet").exists()  # nothing written: every checkpoint is checked first
    # an output that is an input
    proc = ncil(["evaluate", "--split", SPLIT, "--checkpoints", f"{BASE}/model.pt", "--out", f"{BASE}/model.pt"],
                trained, check=False)
    _refused(proc, f"--out[0] {BASE}/model.pt", f"--checkpoints[0] {BASE}/model.pt")
    proc = ncil(["evaluate", "--split", SPLIT, "--checkpoints", f"{BASE}/model.pt", "--out", "a", "b"],
                trained, check=False)
    _refused(proc, "--checkpoints (1 paths) and --out (2 paths)")


@pytest.mark.slow
def test_summarize_needs_one_evaluation_per_task_in_order(trained_all):
    trained = trained_all
    checkpoints = [f"{task_dir(t)}/model.pt" for t in range(4)]
    evals = [f"e{t}.parquet" for t in range(4)]
    ncil(["evaluate", "--split", SPLIT, "--checkpoints", *checkpoints, "--out", *evals], trained)
    base = ["summarize", "--split", SPLIT, "--setting", "base4_inc2", "--method", "finetune", "--seed", "1",
            "--out", "m.json"]
    line = _refused(ncil([*base, "--evals", *evals[:2]], trained, check=False), SPLIT, "e0.parquet, e1.parquet")
    assert "has 4 tasks" in line and "found 2" in line
    line = _refused(ncil([*base, "--evals", evals[1], evals[0], *evals[2:]], trained, check=False), "e1.parquet", SPLIT)
    assert "ncil.task: expected 0" in line
    assert not (trained / "m.json").exists()


def test_train_fails_in_one_line_before_loading_data_when_the_output_cannot_be_written(trained):
    (trained / "afile").write_text("not a folder")  # a folder that cannot be created, even by root
    proc = _train(trained, 1, out="afile/task_1", check=False)
    _refused(proc, "afile/task_1/model.pt", "cannot write (")
    assert "epoch" not in proc.stderr  # failed before training


def test_prepare_fails_in_one_line_when_its_folder_cannot_be_written(tiny_project):
    (tiny_project / "data").write_text("not a folder")
    proc = ncil(["prepare"], tiny_project, check=False)
    _refused(proc, "data/digits/manifest.json", "cannot write (")
