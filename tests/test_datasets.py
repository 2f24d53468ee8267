"""The paper's data sets on tiny fixtures in their real on-disk formats (tests/data_fixtures.py).

Each format goes through prepare -> split -> one epoch of two tasks -> evaluate -> summarize on
CPU, through the CLI (in-process: ``python -m ncil``'s ``main``), as the workflow runs it. Then the
error paths: a missing data set, a corrupt raw or prepared file, a bad configuration value.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from ncil.cli import main
from ncil.pipeline import io
from ncil.pipeline.config import ConfigError, parse_params
from ncil.pipeline.hydra_conf import compose
from tests import data_fixtures as fx
from tests.conftest import ROOT, copy_project, run

WNIDS = [f"n0{k}{k}00{k}{k}{k}" for k in range(1, 9)]  # 8 classes in the ImageNet-style tree, 6 listed
TINY = ["model=vit_digits_tiny", "train=smoke", "scenario=[base4_inc2]", "method=[finetune]", "seeds=[1]",
        "dataset.n_classes=6", "dataset.max_classes=6"]  # the paper sets' class counts are known: cut to 6


def fixture_overrides(name: str, tmp_path: Path) -> list[str]:
    """Write data set ``name`` in its real format under tmp_path/raw; the params overrides to read it."""
    raw = tmp_path / "raw"
    if name == "cifar100":
        root = fx.write_cifar100(raw)
        return ["dataset=cifar100", f"dataset.root={root}", "model.img_size=32", "model.patch_size=8"]
    if name == "tinyimagenet":
        root = fx.write_tinyimagenet(raw)
        return ["dataset=tinyimagenet", f"dataset.root={root}", "model.img_size=64", "model.patch_size=16"]
    if name == "imagenet_subset":
        root = fx.write_imagenet(raw, WNIDS)
        listing = tmp_path / "subset.txt"
        listing.write_text("# six of the eight classes\n" + "\n".join(WNIDS[2:]) + "\n")
        return ["dataset=imagenet_subset", f"dataset.root={root}", f"dataset.class_list={listing}",
                "dataset.image_size=16", "dataset.train_resize=16", "dataset.test_resize=18",
                "model.img_size=16", "model.patch_size=4"]
    root = fx.write_folder(raw, ["cat", "dog", "eel", "fox", "gnu", "hen"])
    return ["dataset=folder", f"dataset.root={root}", "dataset.image_size=16", "dataset.train_resize=16",
            "dataset.test_resize=16", "model.img_size=16", "model.patch_size=4"]


def cli(*args: str) -> None:
    code = main(list(args))
    assert code == 0, f"python -m ncil {' '.join(args)} exited with {code}"


def cli_error(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 2
    return capsys.readouterr().err


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def write_params(overrides: list[str]) -> None:
    cli("params", *TINY, *overrides, "--dvc-yaml", "")


@pytest.mark.parametrize("name, shape, n_test", [("cifar100", (32, 32, 3), 24), ("tinyimagenet", (64, 64, 3), 18),
                                                 ("imagenet_subset", (16, 16, 3), 18), ("folder", (16, 16, 3), 18)])
def test_format_runs_prepare_split_two_tasks_evaluate_summarize(name, shape, n_test, project, tmp_path):
    write_params(fixture_overrides(name, tmp_path))
    cli("prepare")
    manifest = io.verify_manifest(f"data/{name}/manifest.json")
    # 8 training images per class: round(0.1 * 8) = 1 to val; the source's own test set is the test split
    assert manifest["counts"] == {"train": 42, "val": 6, "test": n_test}
    assert manifest["image_shape"] == list(shape) and manifest["test_set"] == "the data set's own test set"
    assert str(tmp_path) not in json.dumps(manifest)  # no machine-specific path: moving the data changes nothing
    train = io.read_array(f"data/{name}/train_images.npy")
    assert train.dtype == np.uint8 and train.shape == (42, *shape)
    assert np.bincount(io.read_array(f"data/{name}/train_labels.npy")).tolist() == [7] * 6
    assert sorted(np.unique(io.read_array(f"data/{name}/test_labels.npy")).tolist()) == list(range(6))
    if name == "imagenet_subset":
        assert manifest["classes"] == sorted(WNIDS[2:])  # the listed classes only, sorted

    base, inc = "runs/x/base4/plain/seed1/task_0", "runs/x/base4_inc2/finetune/seed1/task_1"
    cli("split", "--initial", "4", "--out", "base4.json")
    cli("split", "--initial", "4", "--increment", "2", "--out", "setting.json")
    order = [int(c) for c in np.random.RandomState(1993).permutation(6)]
    assert json.loads(Path("setting.json").read_text())["tasks"] == [order[:4], order[4:]]
    cli("train", "--split", "base4.json", "--task", "0", "--seed", "1", "--method", "plain",
        "--checkpoint", f"{base}/model.pt", "--centers", f"{base}/centers.parquet")
    cli("train", "--split", "setting.json", "--task", "1", "--seed", "1", "--method", "finetune",
        "--prev-checkpoint", f"{base}/model.pt", "--prev-centers", f"{base}/centers.parquet",
        "--checkpoint", f"{inc}/model.pt", "--centers", f"{inc}/centers.parquet")
    ckpt = io.load_checkpoint(f"{inc}/model.pt")
    assert ckpt["config"]["dataset"]["name"] == name and ckpt["seen_classes"] == order
    assert io.read_centers(f"{inc}/centers.parquet")["n_samples"].tolist() == [7] * 6
    cli("evaluate", "--split", "setting.json", "--checkpoints", f"{base}/model.pt", f"{inc}/model.pt",
        "--out", "e0.parquet", "e1.parquet")
    cli("summarize", "--split", "setting.json", "--evals", "e0.parquet", "e1.parquet", "--setting", "base4_inc2",
        "--method", "finetune", "--seed", "1", "--out", "metrics.json")
    metrics = json.loads(Path("metrics.json").read_text())
    per_class = n_test // 6
    assert metrics["test_counts"] == [4 * per_class, 2 * per_class]  # test images per task
    assert metrics["run"]["dataset"] == name and metrics["run"]["label"] == "4+2x1"
    e1 = io.read_predictions("e1.parquet")
    assert metrics["last_accuracy"] == pytest.approx(100.0 * np.mean(e1["prediction"] == e1["label"]))


def test_cifar_pixels_and_labels_follow_the_official_layout(project, tmp_path):
    """Row r of b'data' is 1024 red, 1024 green, 1024 blue values: pixel (y, x, c) = row[c*1024 + 32y + x]."""
    write_params(fixture_overrides("cifar100", tmp_path) + ["dataset.val_fraction=0.0"])
    cli("prepare")
    with open(tmp_path / "raw/cifar-100-python/test", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    images = io.read_array("data/cifar100/test_images.npy")
    assert np.array_equal(io.read_array("data/cifar100/test_labels.npy"), raw[b"fine_labels"])
    row = raw[b"data"][5]
    assert images[5, 2, 7, 1] == row[1 * 1024 + 32 * 2 + 7] and images[5, 31, 0, 2] == row[2 * 1024 + 32 * 31]
    assert io.read_array("data/cifar100/val_images.npy").shape == (0, 32, 32, 3)
    assert io.read_json("data/cifar100/manifest.json")["classes"][:2] == ["class00", "class01"]


def test_prepare_is_deterministic_and_val_follows_the_split_seed(project, tmp_path):
    write_params(fixture_overrides("folder", tmp_path))
    cli("prepare")
    first = {p.name: p.read_bytes() for p in Path("data/folder").iterdir()}
    cli("prepare")
    assert first == {p.name: p.read_bytes() for p in Path("data/folder").iterdir()}
    val = io.read_array("data/folder/val_images.npy")
    write_params(fixture_overrides("folder", tmp_path / "again") + ["dataset.split_seed=1"])
    cli("prepare")
    assert not np.array_equal(val, io.read_array("data/folder/val_images.npy"))


def test_a_wrong_image_size_fails_before_the_prepared_data_is_touched(project, tmp_path, capsys):
    """The size is checked on one image of each set before the old manifest is removed."""
    overrides = fixture_overrides("cifar100", tmp_path)
    write_params(overrides)
    cli("prepare")
    before = {p.name: p.read_bytes() for p in Path("data/cifar100").iterdir()}
    write_params(overrides + ["dataset.image_size=16", "model.img_size=16", "model.patch_size=4"])
    err = cli_error(capsys, "prepare")
    assert "dataset.image_size/channels: " in err and "(32, 32, 3) for data/cifar100/train_images.npy" in err
    assert {p.name: p.read_bytes() for p in Path("data/cifar100").iterdir()} == before


def test_prepared_files_have_the_mode_of_a_new_file(project, tmp_path):
    import os
    import stat

    write_params(fixture_overrides("folder", tmp_path))
    previous = os.umask(0o022)
    try:
        cli("prepare")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in Path("data/folder").iterdir()}
    assert len(modes) == 7 and set(modes.values()) == {0o644}


@pytest.mark.parametrize("name, expected", [
    ("cifar100", ["CIFAR-100 not found", "cifar-100-python/", "tar xzf", "dataset.download=true"]),
    ("tinyimagenet", ["TinyImageNet not found", "val/val_annotations.txt", "tiny-imagenet-200.zip"]),
    ("imagenet_subset", ["ImageNet not found", "/train/<wnid>/*.JPEG", "image-net.org"]),
    ("folder", ["image folder not found", "/train/<class>/", "dataset.root=PATH"]),
])
def test_missing_data_set_says_where_to_put_it(name, expected, project, capsys):
    write_params([f"dataset={name}", "dataset.root=nowhere/at/all", "dataset.image_size=8"])
    err = cli_error(capsys, "prepare")
    assert "nowhere/at/all" in err
    for text in expected:
        assert text in err


def test_cifar_download_goes_through_torchvision_only_when_allowed(project, tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    calls = []

    class FakeCIFAR100:  # what torchvision.datasets.CIFAR100(root, download=True) leaves on disk
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            fx.write_cifar100(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    root = tmp_path / "downloads" / "cifar-100-python"
    write_params(["dataset=cifar100", f"dataset.root={root}", "model.img_size=32", "model.patch_size=8"])
    assert "dataset.download=true" in cli_error(capsys, "prepare") and calls == []
    write_params(["dataset=cifar100", f"dataset.root={root}", "dataset.download=true", "model.img_size=32",
                  "model.patch_size=8"])
    cli("prepare")
    assert calls == [(str(root.parent), True)]
    assert io.verify_manifest("data/cifar100/manifest.json")["counts"]["test"] == 24


def test_corrupt_raw_and_prepared_files_are_named(project, tmp_path, capsys):
    write_params(fixture_overrides("cifar100", tmp_path))
    train_pickle = tmp_path / "raw/cifar-100-python/train"
    good = train_pickle.read_bytes()
    train_pickle.write_bytes(good[: len(good) // 2])
    err = cli_error(capsys, "prepare")
    assert f"{train_pickle}: corrupt or truncated CIFAR-100 pickle" in err
    train_pickle.write_bytes(good)
    cli("prepare")
    cli("split", "--initial", "4", "--out", "base4.json")
    images = Path("data/cifar100/train_images.npy")
    data = bytearray(images.read_bytes())
    data[-7] ^= 0x55
    images.write_bytes(bytes(data))
    err = cli_error(capsys, "train", "--split", "base4.json", "--task", "0", "--seed", "1", "--method", "plain",
                    "--checkpoint", "m.pt", "--centers", "c.parquet")
    assert "data/cifar100/train_images.npy: checksum mismatch" in err and "rerun the prepare step" in err


def test_broken_image_and_bad_annotation_are_named(project, tmp_path, capsys):
    write_params(fixture_overrides("tinyimagenet", tmp_path))
    root = tmp_path / "raw/tiny-imagenet-200"
    annotations = root / "val/val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_x.JPEG\tn99999999\t0\t0\t1\t1\n")
    assert f"{annotations}: line 19: expected <file>" in cli_error(capsys, "prepare")
    annotations.write_text("\n".join(annotations.read_text().splitlines()[:-1]) + "\n")
    broken = sorted((root / "train").rglob("*.JPEG"))[3]
    broken.write_bytes(b"not a jpeg")
    assert f"{broken}: cannot decode the image" in cli_error(capsys, "prepare")


def test_class_list_and_class_count_are_checked(project, tmp_path, capsys):
    overrides = fixture_overrides("imagenet_subset", tmp_path)
    write_params(overrides + ["dataset.class_list=''"])  # no list: the tree must hold exactly n_classes
    assert "has 8 class folders instead of the subset's 6" in cli_error(capsys, "prepare")
    write_params(overrides + ["dataset.n_classes=100", "dataset.max_classes=0"])  # the subset's count; 6 listed
    assert "dataset.n_classes: " in cli_error(capsys, "prepare")
    write_params(overrides + ["dataset.n_classes=4", "dataset.max_classes=4", "scenario.base4_inc2.initial_increment=2"])
    cli("prepare")
    assert io.read_json("data/imagenet_subset/manifest.json")["classes"] == sorted(WNIDS[2:])[:4]


@pytest.mark.parametrize("override, key", [
    ("dataset.jitter_brightness=-0.5", "dataset.jitter_brightness"),
    ("dataset.max_classes=10", "dataset.n_classes"),
    ("dataset.train_resize=-1", "dataset.train_resize"),
    ("dataset.root=''", "dataset.root"),
    ("train.base_optimizer=rmsprop", "train.base_optimizer"),
    ("train.base_milestones=[120,80]", "train.base_milestones"),
    ("train.base_momentum=1.5", "train.base_momentum"),
    ("dataset.crop_padding=4", "dataset.crop_padding"),  # imagenet_subset uses random_resized_crop
])
def test_bad_values_name_the_key(override, key):
    data = compose(["+experiment=imagenet_subset", override])
    with pytest.raises(ConfigError, match=rf"^params.yaml: {key}: "):
        parse_params(data)


def test_paper_schedules_and_the_sgd_base_task():
    from ncil.learning.optim import build_optimizer, task_recipe

    cifar = parse_params(compose(["+experiment=cifar100_b50_inc10"]))
    assert list(cifar.scenario) == ["base50_inc10"] and cifar.dataset.mean == (0.5071, 0.4867, 0.4408)
    assert (cifar.train.epochs, cifar.train.lr, cifar.train.weight_decay, cifar.train.lr_step, cifar.train.batch_size) \
        == (400, 0.001, 0.0002, 180, 64)
    assert task_recipe(cifar.train, 0) == task_recipe(cifar.train, 3)
    imagenet = parse_params(compose(["+experiment=imagenet_subset_b50_inc5"]))
    base, later = task_recipe(imagenet.train, 0), task_recipe(imagenet.train, 1)
    assert (base.optimizer, base.epochs, base.lr, base.weight_decay, base.milestones) == ("sgd", 160, 0.1, 5e-4,
                                                                                          (80, 120, 150))
    assert (later.optimizer, later.epochs, later.lr, later.weight_decay, later.step) == ("adam", 400, 1e-3, 2e-4, 180)

    import torch

    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer, scheduler = build_optimizer([weight], base)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0.9
    lrs = []
    for _ in range(160):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[79] == pytest.approx(0.1) and lrs[80] == pytest.approx(0.01) and lrs[150] == pytest.approx(1e-4)
    optimizer, scheduler = build_optimizer([weight], later)
    assert isinstance(optimizer, torch.optim.Adam) and scheduler.step_size == 180


def test_the_seven_paper_settings_are_experiments():
    expected = {"cifar100_b50_inc10": 6, "cifar100_b50_inc5": 11, "cifar100_b40_inc3": 21,
                "tinyimagenet_b100_inc20": 6, "tinyimagenet_b100_inc10": 11, "tinyimagenet_b100_inc5": 21,
                "imagenet_subset_b50_inc5": 11, "imagenet_subset_b50_inc10": 6, "imagenet_subset_b40_inc3": 21}
    from ncil.pipeline import experiment_grid

    for experiment, n_tasks in expected.items():
        data = compose([f"+experiment={experiment}"])
        p = parse_params(data)
        assert p.model.img_size == p.dataset.image_size
        assert {run.n_tasks for run in experiment_grid.runs(data)} == {n_tasks}, experiment


def test_grid_files_are_up_to_date():
    """grids/<name>/params.yaml equal the composition of conf/experiment/<name>.yaml; no grid's dvc.yaml
    is committed before the grid is used (untargeted DVC commands would see its missing outputs)."""
    assert main(["grid", "--check"]) == 0
    root = Path(__file__).resolve().parent.parent
    for name in ("cifar100", "tinyimagenet", "imagenet_subset"):
        assert (root / "grids" / name / "params.yaml").is_file()
    tracked = run(["git", "ls-files", "grids"], root).stdout.split()
    assert not [f for f in tracked if f.endswith("dvc.yaml")], tracked


def test_grid_verb_writes_a_dvc_pipeline_that_runs_from_the_root(tmp_path, monkeypatch):
    from ncil.pipeline import hydra_conf

    data, params_text, dvc_text = hydra_conf.render_grid("cifar100", ["seeds=[1]"])
    import yaml

    stages = yaml.safe_load(dvc_text)["stages"]
    assert all(stage["wdir"] == "../.." for stage in stages.values())
    deps = stages["prepare_cifar100"]["deps"]  # the raw folder; the code is a fingerprint (ncil/pipeline/fingerprints.py)
    assert deps == ["data/raw/cifar-100-python"]
    assert stages["prepare_cifar100"]["params"] == [{"grids/cifar100/params.yaml": ["dataset"]},
                                                    {"fingerprints.yaml": ["prepare"]}]
    assert "--params grids/cifar100/params.yaml" in stages["prepare_cifar100"]["cmd"]
    assert yaml.safe_load(params_text) == data and data["seeds"] == [1]


def test_moving_the_raw_data_reruns_prepare_only():
    """Training and evaluation do not read dataset.root / dataset.download (only prepare does)."""
    from ncil.pipeline.workflow import steps

    by_kind = {}
    for step in steps(compose(["+experiment=tinyimagenet_b100_inc20"]), "grids/tinyimagenet/params.yaml"):
        by_kind.setdefault(step.kind, step)
    assert by_kind["prepare"].params == ("dataset",)
    for kind in ("train", "evaluate"):
        assert "dataset.root" not in by_kind[kind].params and "dataset.mean" in by_kind[kind].params
    digits_train = next(s for s in steps(compose([])) if s.kind == "train")
    assert "dataset" in digits_train.params  # the default grid's stages are unchanged


def test_default_grid_is_still_digits_only():
    data = io.read_yaml(Path(__file__).resolve().parent.parent / "params.yaml")
    assert data["dataset"]["name"] == "digits" and "root" not in data["dataset"]


@pytest.mark.slow
def test_named_target_runs_a_smoke_grid_with_snakemake(tmp_path):
    """`python -m ncil grid tinyimagenet +smoke=cpu ...` then `snakemake tinyimagenet` (real jobs)."""
    project = copy_project(tmp_path / "p")
    run([sys.executable, "-m", "ncil", "grid", "tinyimagenet", "+smoke=cpu", "dataset.n_classes=6",
         "dataset.max_classes=6", "dataset.max_train_per_class=6", "dataset.max_test_per_class=2",
         "model.patch_size=16"], project)
    dvc_yaml = (project / "grids/tinyimagenet/dvc.yaml").read_text()
    assert "    - data/raw/tiny-imagenet-200\n" in dvc_yaml  # the raw folder is a dependency of prepare
    missing = run([sys.executable, "-m", "snakemake", "--cores", "2", "-n", "tinyimagenet"], project, check=False)
    assert missing.returncode != 0 and "data/raw/tiny-imagenet-200: TinyImageNet not found" in missing.stdout + missing.stderr
    fx.write_tinyimagenet(project / "data/raw")
    proc = run([sys.executable, "-m", "snakemake", "--cores", "2", "tinyimagenet"], project)
    table = project / "results/tables/tinyimagenet_results.md"
    assert table.is_file(), proc.stdout[-2000:]
    metrics = json.loads((project / "results/tinyimagenet/base4_inc2/ours/seed1/metrics.json").read_text())
    assert metrics["test_counts"] == [8, 4] and metrics["run"]["dataset"] == "tinyimagenet"
    assert not (project / "data/digits").exists()  # the default grid was not touched
    import yaml

    stages = yaml.safe_load(dvc_yaml)["stages"]  # DVC's stages name exactly the files Snakemake made
    outputs = [next(iter(o)) if isinstance(o, dict) else o for st in stages.values()
               for o in st.get("outs", []) + st.get("metrics", [])]
    # data, splits, 2 tasks x (model, centers), eval, metrics, table, its sections of the paper tables
    # (4 x md, csv), Figure 3 (png, csv), Figure 4 (png, csv)
    assert len(outputs) == 7 + 2 + 2 * 2 + 1 + 1 + 2 + 8 + 2 + 2
    assert all((project / o).exists() for o in outputs), [o for o in outputs if not (project / o).exists()]


@pytest.mark.parametrize("size, resize, shape", [(16, 18, (20, 28)), (16, 18, (28, 20)), (16, 0, (20, 28)),
                                                 (24, 0, (20, 28)), (16, 16, (16, 16))])
def test_prepare_geometry_equals_torchvision_resize_then_center_crop(size, resize, shape):
    """fit_image = torchvision Resize(resize) (PIL bilinear, shorter side) + CenterCrop(size), padding included."""
    from PIL import Image
    from torchvision import transforms

    from ncil.data.images import fit_image

    img = Image.fromarray(fx.class_image(np.random.default_rng(5), 3, *shape))
    steps = ([transforms.Resize(resize)] if resize else []) + [transforms.CenterCrop(size)]
    expected = np.asarray(transforms.Compose(steps)(img))
    assert np.array_equal(fit_image(img, size, resize), expected)


def test_shipped_imagenet_subset_class_list_has_100_distinct_wnids():
    from ncil.data.imagefolder import read_class_list

    names = read_class_list(ROOT / "conf/data/imagenet_subset_classes.txt")
    assert len(names) == 100 and len(set(names)) == 100 and names == sorted(names)
    assert all(len(n) == 9 and n[0] == "n" and n[1:].isdigit() for n in names)
    assert {"n01558993", "n02123159", "n12998815"} <= set(names)  # first entries / the one n12 synset


# --- Images are read as they are, or refused (issue 20 item 5) -----------------------------------


def test_a_16_bit_grey_image_is_scaled_to_8_bits_not_clipped(tmp_path):
    """16-bit grey (mode I;16) keeps its high byte, v >> 8; 32-bit integer and float pixels are refused."""
    from PIL import Image

    from ncil.data.images import read_image

    values = np.array([[0, 128, 20000, 65535]] * 4, dtype=np.uint16)  # (4, 4)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode == "I;16"  # what Pillow makes of a 16-bit grey PNG
    grey = read_image(tmp_path / "deep.png", 4, 1, 0)  # (4, 4, 1)
    assert grey[0, :, 0].tolist() == [0, 0, 78, 255]  # 20000 >> 8 = 78 (convert("L") clipped it to 255)
    assert read_image(tmp_path / "deep.png", 4, 3, 0)[0].tolist() == [[0] * 3, [0] * 3, [78] * 3, [255] * 3]
    for name, array in (("wide.tif", values.astype(np.int32)), ("float.tif", values.astype(np.float32))):
        Image.fromarray(array).save(tmp_path / name)
        with pytest.raises(io.ArtifactError, match=rf"^{tmp_path / name}: pixels of mode [IF] \(32-bit integer"):
            read_image(tmp_path / name, 4, 1, 0)


def _bomb(path: Path) -> None:
    """A small PNG whose header says 30000 x 30000 pixels: past Pillow's decompression-bomb limit."""
    import struct
    import zlib

    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", 30000, 30000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def _broken(kind: str, folder: Path) -> Path:
    """A file of ``kind`` that does not decode, last in its class folder (after the good images)."""
    from PIL import Image

    good = fx.class_image(np.random.default_rng(0), 0, 16, 16)
    if kind == "text named .png":
        path = folder / "zzz.png"
        path.write_text("not an image\n")
    elif kind == "truncated png":
        path = folder / "zzz.png"
        Image.fromarray(good).save(path)
        path.write_bytes(path.read_bytes()[:-40])
    elif kind == "truncated jpeg":
        path = folder / "zzz.jpg"
        Image.fromarray(good).save(path, quality=95)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path = folder / "zzz.png"
        _bomb(path)
    return path


@pytest.mark.parametrize("kind, said", [("text named .png", "cannot decode the image (UnidentifiedImageError"),
                                        ("truncated png", "cannot decode the image (OSError"),
                                        ("truncated jpeg", "cannot decode the image (OSError"),
                                        ("decompression bomb", "refused as a possible decompression bomb (Image size")])
def test_a_broken_image_is_refused_in_one_line_before_the_prepared_data_is_touched(kind, said, project, tmp_path,
                                                                                    capsys):
    """The last image of the test set is broken: found before the old manifest and arrays are touched."""
    write_params(fixture_overrides("folder", tmp_path))
    cli("prepare")
    before = {p.name: p.read_bytes() for p in Path("data/folder").iterdir()}
    broken = _broken(kind, tmp_path / "raw/my_images/test/hen")
    err = cli_error(capsys, "prepare")
    assert err.startswith(f"error: {broken}: {said}") and err.count("\n") == 1, err  # one line, naming the file
    assert {p.name: p.read_bytes() for p in Path("data/folder").iterdir()} == before
    io.verify_manifest("data/folder/manifest.json")  # the old data is whole
