"""The CLI verbs on a tiny configuration in a temporary folder (integration tier)."""

import json

import numpy as np
import pytest
import torch

from ncil import io
from tests.conftest import ncil

BASE = "runs/digits/base4/plain/seed1/task_0"
INC = "runs/digits/base4_inc2/finetune/seed1/task_1"


def _train(project, task, method="finetune", check=True):
    args = ["train", "--seed", "1", "--task", str(task), "--log", f"logs/t{task}.log"]
    if task == 0:
        args += ["--split", "results/digits/base4/split.json", "--method", "plain",
                 "--checkpoint", f"{BASE}/model.pt", "--centers", f"{BASE}/centers.parquet"]
    else:
        args += ["--split", "results/digits/base4_inc2/split.json", "--method", method,
                 "--prev-checkpoint", f"{BASE}/model.pt", "--prev-centers", f"{BASE}/centers.parquet",
                 "--checkpoint", f"{INC}/model.pt", "--centers", f"{INC}/centers.parquet"]
    return ncil(args, project, check=check)


@pytest.fixture
def trained(tiny_project):
    p = tiny_project
    ncil(["prepare"], p)
    ncil(["split", "--initial", "4", "--out", "results/digits/base4/split.json"], p)
    ncil(["split", "--initial", "4", "--increment", "2", "--out", "results/digits/base4_inc2/split.json"], p)
    _train(p, 0)
    _train(p, 1)
    return p


def test_prepare_writes_a_checksummed_stratified_split(tiny_project):
    ncil(["prepare"], tiny_project)
    manifest = io.verify_manifest(tiny_project / "data/digits/manifest.json")
    # per class: test = round(0.2 n), val = round(0.1 (n - test)) (Python rounding), e.g. class 0: 36 and 14
    assert manifest["counts"] == {"train": 1295, "val": 143, "test": 359}
    assert sum(manifest["counts"].values()) == 1797
    labels = io.read_array(tiny_project / "data/digits/test_labels.npy")
    assert np.bincount(labels).min() >= 35  # every class is in the test split


def test_split_file_has_the_legacy_order(tiny_project):
    ncil(["split", "--initial", "4", "--increment", "2", "--out", "s.json"], tiny_project)
    split = json.loads((tiny_project / "s.json").read_text())
    order = [int(c) for c in np.random.RandomState(1993).permutation(10)]
    assert split["class_order"] == order
    assert split["tasks"] == [order[:4], order[4:6], order[6:8], order[8:]]


def test_train_evaluate_summarize_chain(trained):
    p = trained
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

    ncil(["evaluate", "--split", "results/digits/base4_inc2/split.json",
          "--checkpoints", f"{BASE}/model.pt", f"{INC}/model.pt", "--out", "e0.parquet", "e1.parquet"], p)
    e1 = io.read_predictions(p / "e1.parquet")
    assert e1["task"] == 1 and set(e1["label"]) == set(range(6))
    assert set(e1["label_task"]) == {0, 1}
    ncil(["evaluate", "--split", "results/digits/base4_inc2/split.json", "--data-split", "val",
          "--checkpoints", f"{BASE}/model.pt", f"{INC}/model.pt", "--out", "v0.parquet", "v1.parquet"], p)
    v1 = io.read_predictions(p / "v1.parquet")
    val_labels = io.read_array(p / "data/digits/val_labels.npy")
    assert len(v1["label"]) == int(np.isin(val_labels, order[:6]).sum()) != len(e1["label"])
    ncil(["summarize", "--split", "results/digits/base4_inc2/split.json", "--evals", "e0.parquet", "e1.parquet",
          "--setting", "base4_inc2", "--method", "finetune", "--seed", "1", "--out", "m.json"], p)
    m = json.loads((p / "m.json").read_text())
    assert m["run"]["label"] == "4+2x3" and m["provenance"]["metric_convention"] == "paper"
    assert m["acc_matrix"][0][1] is None and len(m["acc_matrix"]) == 2
    acc1 = 100.0 * np.mean(e1["prediction"] == e1["label"])
    assert m["last_accuracy"] == pytest.approx(acc1)


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
    assert base_ckpt["config"]["method_config"] == {"base_recipe": "rotation", "backbone": "vit", "rotation": True,
                                                   "ce_temperature": 0.1}
    # Old head rows (4 classes x 4 rotations) are task 0's rows until training moves them: same shape kept.
    centers = io.read_centers(p / inc / "centers.parquet")
    assert (centers["spread"] > 0).all() and len(centers["spread"]) == 6
    ncil(["evaluate", "--split", "results/digits/base4_inc2/split.json",
          "--checkpoints", f"{base}/model.pt", f"{inc}/model.pt", "--out", "e0.parquet", "e1.parquet"], p)
    e1 = io.read_predictions(p / "e1.parquet")
    assert set(e1["prediction"]) <= set(range(6))
