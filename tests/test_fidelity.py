"""Fidelity of the paper grids (issue 12, item 4): the reported runs train on the whole training set
(``dataset.val_fraction: 0``, as the paper did); validation images exist for tuning only
(scripts/tune_on_val.py carves them in memory, 0.1 of each class)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ncil import io, paths
from ncil.config import parse_params
from ncil.data import arrays
from ncil.data.prepare import prepare
from ncil.hydra_conf import compose
from tests import data_fixtures as fx
from tests.conftest import ROOT
from tests.test_datasets import TINY, fixture_overrides

spec = importlib.util.spec_from_file_location("tune_on_val", ROOT / "scripts/tune_on_val.py")
tune = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tune)

PAPER_EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf/experiment").glob("*.yaml")
                           if p.stem.split("_b")[0] in paths.GRID_NAMES)


def test_every_paper_experiment_is_found():
    # 4 CIFAR-100 (grid + 3 settings), 4 TinyImageNet, 4 ImageNet-Subset: a renamed file would drop out.
    assert len(PAPER_EXPERIMENTS) == 12


@pytest.mark.parametrize("name", paths.GRID_NAMES)
def test_reported_grids_train_on_the_whole_training_set(name):
    committed = io.read_yaml(ROOT / paths.grid_params(name))
    assert committed["dataset"]["val_fraction"] == 0.0
    assert compose([f"+experiment={name}"])["dataset"] == committed["dataset"]  # the file is the composition


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_every_paper_experiment_has_no_validation_carve_out(experiment):
    assert compose([f"+experiment={experiment}"])["dataset"]["val_fraction"] == 0.0


def test_the_default_digits_grid_and_the_tuning_path_keep_validation():
    assert io.read_yaml(ROOT / "params.yaml")["dataset"]["val_fraction"] == 0.1  # untouched
    assert tune.TUNING_VAL_FRACTION == 0.1
    # An explicit override after the experiment still wins (the documented way to prepare a val split).
    assert compose(["+experiment=cifar100", "dataset.val_fraction=0.1"])["dataset"]["val_fraction"] == 0.1


def _prepared(name: str, tmp_path: Path, val_fraction: float) -> tuple[dict, dict[str, arrays.Split]]:
    """Prepare fixture ``name`` with ``val_fraction`` into its own folder: (counts, split -> arrays)."""
    overrides = fixture_overrides(name, tmp_path / f"src{val_fraction}") + TINY + [f"dataset.val_fraction={val_fraction}"]
    cfg = parse_params(compose(overrides)).dataset
    out = tmp_path / f"val{val_fraction}"
    out.mkdir()
    counts = prepare(cfg, str(out))
    loaded = {s: arrays.Split(io.read_array(out / f"{s}_images.npy"), io.read_array(out / f"{s}_labels.npy"))
              for s in paths.DATA_SPLITS}
    return counts, loaded


def test_cifar100_with_val_fraction_0_gives_every_training_image_to_training(tmp_path):
    # The fixture: 6 classes x 8 training images (interleaved labels 0..5, 0..5, ...), 6 x 4 test.
    counts, parts = _prepared("cifar100", tmp_path, 0.0)
    assert counts == {"train": 48, "val": 0, "test": 24}
    raw = fx.write_cifar100(tmp_path / "again")  # the same seeded fixture, to read the raw rows back
    import pickle

    with open(raw / "train", "rb") as fh:
        data = pickle.load(fh, encoding="bytes")
    rows = data[b"data"].reshape(48, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    assert np.array_equal(parts["train"].images, rows)  # every raw training image, in the raw order
    assert parts["train"].labels.tolist() == data[b"fine_labels"]


def test_tinyimagenet_with_val_fraction_0_gives_every_training_image_to_training(tmp_path):
    counts0, _ = _prepared("tinyimagenet", tmp_path, 0.0)
    counts1, _ = _prepared("tinyimagenet", tmp_path, 0.1)
    assert counts0["val"] == 0 and counts1["val"] > 0
    assert counts0["train"] == counts1["train"] + counts1["val"]  # nothing lost, nothing held back
    assert counts0["test"] == counts1["test"]


def test_the_tuning_carve_is_what_a_val_fraction_0_1_prepare_sets_aside(tmp_path):
    """From the val_fraction 0 data, ``tuning_splits`` carves round(8 * 0.1) = 1 image of each of the 6
    classes: the same 6 images (and the same 42 left) as the prepare step with val_fraction 0.1."""
    _, full = _prepared("cifar100", tmp_path, 0.0)
    _, carved = _prepared("cifar100", tmp_path, 0.1)
    train, val = tune.tuning_splits(full["train"], full["val"], 0.1, split_seed=0)
    assert len(val.labels) == 6 and sorted(val.labels.tolist()) == [0, 1, 2, 3, 4, 5]
    assert len(train.labels) == 42
    assert np.array_equal(val.images, carved["val"].images) and np.array_equal(val.labels, carved["val"].labels)
    assert np.array_equal(train.images, carved["train"].images)


def test_a_prepared_validation_split_is_used_as_it_is(tmp_path):
    _, carved = _prepared("cifar100", tmp_path, 0.1)
    train, val = tune.tuning_splits(carved["train"], carved["val"], 0.5, split_seed=3)
    assert train is carved["train"] and val is carved["val"]


def test_the_carve_refuses_a_share_that_carves_nothing():
    empty = arrays.Split(np.zeros((0, 2, 2, 3), np.uint8), np.zeros(0, np.int64))
    full = arrays.Split(np.zeros((4, 2, 2, 3), np.uint8), np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="--val-fraction: expected a share in \\(0, 1\\)"):
        tune.tuning_splits(full, empty, 0.0, split_seed=0)
