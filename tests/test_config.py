import copy
import re
import shutil

import pytest

from ncil.pipeline import io
from ncil.pipeline.config import ConfigError, parse_params
from ncil.pipeline.hydra_conf import compose
from ncil.pipeline.io import ArtifactError
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


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()  # a table value: remove the key


def _edited(edits: dict, base: list[str] | None = None) -> dict:
    """The composed defaults (or ``base`` overrides) with ``{dotted.key: value}`` applied; a key
    ``a.b->c`` renames mapping entry ``a.b`` to ``a.c``."""
    data = copy.deepcopy(compose(base or []))
    for dotted, value in edits.items():
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        if "->" in leaf:
            old, new = leaf.split("->")
            node[new] = node.pop(old)
        elif value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return data


CIFAR = ["+experiment=cifar100_b50_inc10"]
TINYIMAGENET = ["+experiment=tinyimagenet_b100_inc10"]
IMAGENET = ["+experiment=imagenet_subset_b50_inc10"]

# (edit of the default grid's params, expected message after "params.yaml: "); "new" marks the
# refusals this table was written for (each accepted, or refused elsewhere or differently, before).
BAD_EDITS = [
    # seeds
    ({"seeds": []}, "seeds: expected at least one seed"),
    ({"seeds": [1, 1]}, "seeds: expected distinct seeds, got [1, 1]"),
    ({"seeds": [-1]}, "seeds[0]: expected a seed >= 0, got -1"),  # new: ended in "Nothing to be done"
    ({"seeds": [1, -3]}, "seeds[1]: expected a seed >= 0, got -3"),  # new
    ({"seeds": 3}, "seeds: expected a list, got 3"),
    ({"order_seed": -1}, "order_seed: expected a seed in 0..4294967295"),  # new
    ({"order_seed": 2**32}, "order_seed: expected a seed in 0..4294967295"),  # new: NumPy's RandomState refuses it
    ({"dataset.split_seed": -1}, "dataset.split_seed: expected a seed >= 0, got -1"),  # new
    # types and ranges
    ({"train.epochs": -2}, "train.epochs: expected a positive value, got -2"),
    ({"train.epochs": "two"}, "train.epochs: expected an integer, got 'two'"),
    ({"train.epochs": 2.5}, "train.epochs: expected an integer, got 2.5"),
    ({"train.lr": "1e-3"}, "train.lr: expected a number, got the text '1e-3' (YAML reads"),  # new hint
    ({"train.lr": float("nan")}, "train.lr: expected a finite number, got nan"),  # new
    ({"model.drop_path": float("inf")}, "model.drop_path: expected a finite number, got inf"),  # new
    ({"train.lr_gamma": 0.0}, "train.lr_gamma: expected a decay factor in (0, 1], got 0.0"),  # new
    ({"train.lr_gamma": 1.5}, "train.lr_gamma: expected a decay factor in (0, 1], got 1.5"),  # new
    ({"train.lr_gamma": -0.1}, "train.lr_gamma: expected a decay factor in (0, 1], got -0.1"),  # new
    ({"train.weight_decay": -1.0}, "train.weight_decay: expected a value >= 0, got -1.0"),  # new: named the section only
    ({"train.lr_step": -1}, "train.lr_step: expected a step in epochs (0 = constant) >= 0, got -1"),  # new
    ({"runtime.gpus_per_job": -1}, "runtime.gpus_per_job: expected a GPU count >= 0, got -1"),  # new
    # unknown and missing keys, in every section
    ({"seed": [1]}, "seed: unknown key (expected one of: class_order, dataset, grid, method, model, order_seed, preset"),
    ({"dataset.nme": "digits"}, "dataset.nme: unknown key"),
    ({"model.depht": 2}, "model.depht: unknown key"),
    ({"train.epoch": 3}, "train.epoch: unknown key"),
    ({"runtime.thread": 2}, "runtime.thread: unknown key"),
    ({"scenario.base4_inc2.incremnt": 2}, "scenario.base4_inc2.incremnt: unknown key"),
    ({"method.ours.pks_weight": 1.0}, "method.ours.pks_weight: unknown key (expected one of: base_recipe,"),
    ({"method.ours.base_recipe": DELETE}, "method.ours.base_recipe: missing required key"),
    ({"train.epochs": DELETE}, "train.epochs: missing required key"),
    ({"method.joint.train_on": "all"}, "method.joint.train_on: expected one of ['current', 'seen'], got 'all'"),
    ({"method.finetune.train_on": "al"}, "method.finetune.train_on: expected one of"),
    ({"method.finetune->jiont": None}, "method.jiont: unknown method (expected one of the methods of conf/method/: adagauss, adagauss_digits, adc, baseline,"),  # new
    ({"method": {}}, "method: expected a non-empty mapping of named methods"),
    # names that become folders and wildcards
    ({"method.finetune->fine tune": None}, "method.fine tune: expected a name of letters, digits, _ and -"),  # new
    ({"method.lwf.base_recipe": "plain/x"}, "method.lwf.base_recipe: expected a name of letters"),  # new
    ({"scenario.base4_inc2->base4": None}, "scenario.base4: 'base4' is the folder of the task-0 runs shared"),  # new
    # the data set
    ({"dataset.name": "mnist"}, "dataset.name: expected one of ['digits', 'cifar100', 'tinyimagenet'"),  # new
    ({"dataset.n_classes": 12}, "dataset.n_classes: expected 10, the classes of digits, got 12"),  # new
    ({"dataset.n_classes": 4, "dataset.max_classes": 4},
     "dataset.max_classes: expected 0: digits is always prepared whole"),  # new
    ({"dataset.test_fraction": 0.99, "dataset.val_fraction": 0.99},
     "dataset.test_fraction/val_fraction: leaves no training image in a class of 174 images (the smallest "
     "class of digits): 172 go to test and 2 to val"),  # new
    # scenarios that leave a task without classes
    ({"scenario.base4_inc2.initial_increment": 11}, "scenario.base4_inc2.initial_increment: expected 1..9 (fewer"),
    ({"scenario.base4_inc2.initial_increment": 10}, "scenario.base4_inc2.initial_increment: expected 1..9"),  # new
    ({"scenario.base4_inc2.initial_increment": 0}, "scenario.base4_inc2.initial_increment: expected 1..9"),
    ({"scenario.base4_inc2.increment": 0}, "scenario.base4_inc2.increment: expected a positive integer, got 0"),
    ({"scenario.base4_inc2.increment": 4},  # new: labelled 4+4x2 for tasks [4, 4, 2]
     "scenario.base4_inc2.increment: expected a divisor of the 6 classes after the base task (1, 2, 3, 6), got 4: "
     "its tasks would have [4, 4, 2] classes"),
    ({"scenario.base5_inc1.increment": 3}, "scenario.base5_inc1.increment: expected a divisor of the 5 classes"),  # new
]

# The same for the paper's data sets, whose class counts are known before their files are read.
BAD_GRID_EDITS = [
    (CIFAR, {"dataset.n_classes": 6},  # new: failed at prepare time only
     "dataset.n_classes: expected 100, the classes of cifar100 (to keep only the first N, set dataset.max_classes=N"),
    (CIFAR, {"dataset.n_classes": 150, "dataset.max_classes": 150},
     "dataset.max_classes: expected at most the 100 classes of cifar100, got 150"),  # new
    (TINYIMAGENET, {"dataset.n_classes": 100}, "dataset.n_classes: expected 200, the classes of tinyimagenet"),  # new
    (IMAGENET, {"dataset.n_classes": 50}, "dataset.n_classes: expected 100, the classes of imagenet_subset"),  # new
    (CIFAR, {"dataset.max_train_per_class": 1, "dataset.val_fraction": 0.9},  # new: failed at prepare time only
     "dataset.val_fraction: leaves no training image in a class of 1 images (dataset.max_train_per_class): "
     "0 go to test and 1 to val"),
    (CIFAR, {"dataset.val_fraction": 0.999}, "dataset.val_fraction: leaves no training image in a class of 500"),  # new
    (CIFAR, {"scenario.base50_inc10.increment": 15}, "scenario.base50_inc10.increment: expected a divisor of the 50"),
]


@pytest.mark.parametrize("edits, message", BAD_EDITS, ids=[str(e) for e, _ in BAD_EDITS])
def test_bad_edit_is_refused_naming_key_value_and_expectation(edits, message):
    with pytest.raises(ConfigError) as err:
        parse_params(_edited(edits))
    assert str(err.value).startswith(f"params.yaml: {message}"), str(err.value)


@pytest.mark.parametrize("base, edits, message", BAD_GRID_EDITS, ids=[f"{b[0]}-{e}" for b, e, _ in BAD_GRID_EDITS])
def test_bad_edit_of_a_paper_grid_is_refused(base, edits, message):
    parse_params(_edited({}, base))  # the grid itself is valid
    with pytest.raises(ConfigError) as err:
        parse_params(_edited(edits, base))
    assert str(err.value).startswith(f"params.yaml: {message}"), str(err.value)


def test_smoke_cut_of_a_paper_grid_is_accepted():
    """n_classes below the data set's count is fine with max_classes (the +smoke=cpu override)."""
    p = parse_params(compose([*CIFAR, "+smoke=cpu"]))
    assert (p.dataset.n_classes, p.dataset.max_classes) == (10, 10)


@pytest.mark.parametrize("text, replacement, message", [
    ("epochs: 20", "epochs: -2", "train.epochs: expected a positive value, got -2"),
    ("epochs: 20", "epochs: two", "train.epochs: expected an integer, got 'two'"),
    ("seeds: [1, 2, 3]", "seeds: []", "seeds: expected at least one seed"),
    ("seeds: [1, 2, 3]", "seeds: [-1]", "seeds[0]: expected a seed >= 0, got -1"),
    ("lr_gamma: 0.1", "lr_gamma: 2.0", "train.lr_gamma: expected a decay factor in (0, 1], got 2.0"),
    ("lr: 0.001", "lr: 1e-3", "train.lr: expected a number, got the text '1e-3'"),
    ("order_seed: 1993", "order_seed: 1993\nseed: 1", "seed: unknown key"),
])
def test_hand_edited_params_file_is_refused_naming_the_file(tmp_path, text, replacement, message):
    from ncil.pipeline.config import load_params

    path = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    assert text in original
    path.write_text(original.replace(text, replacement, 1))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


# A key given twice: PyYAML (and Snakemake's configfile:) keep the last value silently, DVC refuses the file.
REPEATED_KEYS = [
    ("epochs: 20,", "epochs: 2, epochs: 50,", "train.epochs: the key is given twice, at line 21, columns 9 and 20"),
    ("seeds: [1, 2, 3]", "seeds: [1, 2, 3]\nseeds: [4]", "seeds: the key is given twice, at lines 84 and 85"),
    ("dataset:\n  name: digits", "dataset:\n  name: digits\n  name: cifar100",
     "dataset.name: the key is given twice, at lines 3 and 4"),
]


@pytest.mark.parametrize("text, replacement, message", REPEATED_KEYS)
def test_a_key_given_twice_is_refused_naming_the_file_the_key_and_both_lines(tmp_path, text, replacement, message):
    from ncil.pipeline.config import load_params

    path = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    assert original.count(text) == 1
    path.write_text(original.replace(text, replacement))
    with pytest.raises(ArtifactError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: {message}") and "\n" not in str(err.value), str(err.value)
    # A job's one parse (ncil/__main__.py, before torch) refuses it too, with the same line, before any work.
    proc = ncil(["train", "--params", str(path), "--split", str(tmp_path / "split.json"), "--task", "0", "--seed", "1",
                 "--method", "finetune", "--checkpoint", str(tmp_path / "m.pt"), "--centers", str(tmp_path / "c.parquet")],
                ROOT, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {path}: {message}"), proc.stderr
    proc = ncil(["dvc-yaml", "--params", str(path), "--out", str(tmp_path / "dvc.yaml")], ROOT, check=False)
    assert proc.returncode == 2 and proc.stderr == f"error: {path}: {message} (expected each key once; only the " \
        "last would count)\n", proc.stderr
    assert not (tmp_path / "dvc.yaml").exists()


def test_yaml_reader_keeps_distinct_keys_and_merge_keys(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text('base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n1: int\n"1": text\nlist: [{k: 1}, {k: 2}]\n')
    assert io.read_yaml(path) == {"base": {"x": 1, "y": 2}, "c": {"x": 3, "y": 2}, 1: "int", "1": "text",
                                  "list": [{"k": 1}, {"k": 2}]}
    path.write_text('list:\n  - {k: 1}\n  - {k: 1, "k": 2}\n')  # a quoted key is the same key
    with pytest.raises(ArtifactError, match=r"a.yaml: list.1.k: the key is given twice, at line 3, columns 6 and 12"):
        io.read_yaml(path)


def test_hydra_composition_refuses_a_key_given_twice_in_one_line(tmp_path):
    """Hydra's own loader refuses it too, with a multi-line YAML traceback: ours names the key and lines."""
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    train = conf / "train" / "digits.yaml"
    lines = train.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("epochs:")) + 1
    train.write_text(train.read_text() + "epochs: 3\n")
    with pytest.raises(ArtifactError) as err:
        compose([], conf)
    assert str(err.value).startswith(f"{train}: epochs: the key is given twice, at lines {first} and "
                                     f"{len(lines) + 1} ") and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("device", ["cuda:-1", "cuda:abc", "cuda:", "cuda: 1", "cuda:1.5"])
def test_a_malformed_cuda_device_is_refused_when_composing(device):
    with pytest.raises(ConfigError, match=r"runtime.device: expected auto, cpu, cuda or cuda:N \(N a device index "
                                          rf"0, 1, ...\), got '{re.escape(device)}'$"):
        parse_params(compose([f"runtime.device='{device}'"]))
    assert parse_params(compose(["runtime.device=cuda:0"])).runtime.device == "cuda:0"
    assert parse_params(compose(["runtime.device='cuda:12'"])).runtime.device == "cuda:12"


def test_plain_conf_reader_refuses_a_key_given_twice(tmp_path):
    from ncil.pipeline import plainconf

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    train = conf / "train" / "paper.yaml"
    train.write_text(train.read_text() + "epochs: 1\n")
    with pytest.raises(ArtifactError, match=r"paper.yaml: epochs: the key is given twice, at lines \d+ and \d+"):
        plainconf.group_option("train", "paper", conf)


@pytest.mark.parametrize("override, message", [
    ("trian.epochs=3", "override 'trian.epochs=3': no key trian in conf/ (did you mean train?)"),
    ("train.epoch=3", "override 'train.epoch=3': no key train.epoch in conf/ (did you mean train.epochs?)"),
    ("trian=smoke", "override 'trian=smoke': no key trian in conf/ (did you mean train?)"),
    ("model.foo.bar=1", "override 'model.foo.bar=1': no key model.foo in conf/ (keys of model: name, img_size,"),
    ("method=[finetune,jiont]", "override 'method=[finetune,jiont]': no option 'jiont' in conf/method/ "
                                "(did you mean joint?)"),
    ("method=[fooo]", "override 'method=[fooo]': no option 'fooo' in conf/method/ (options: adagauss, adagauss_digits, adc, baseline, dytox, dytox_pks, efc, efc_pp, fcs,"),
    ("dataset=cifar", "override 'dataset=cifar': no option 'cifar' in conf/dataset/ (did you mean cifar100?)"),
    ("+experiment=cifar", "override '+experiment=cifar': no option 'cifar' in conf/experiment/ (did you mean"),
    ("train.epochs==3", "override 'train.epochs==3': expected key=value in Hydra's override grammar (extraneous"),
    ("train.epochs", "override 'train.epochs': expected key=value in Hydra's override grammar (missing EQUAL"),
    ("dataset.root=raw", "override 'dataset.root=raw': dataset.root is not set in this "
                         "composition of conf/; add it with +dataset.root=raw"),
])
def test_hydra_override_typo_is_one_line_naming_the_override(override, message):
    with pytest.raises(ConfigError) as err:
        compose(["model=vit_digits_tiny", override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("override, message", [
    ("trian.epochs=3", "error: override 'trian.epochs=3': no key trian in conf/ (did you mean train?)"),
    ("train.epochs=-2", "error: conf/ with overrides ['train.epochs=-2']: train.epochs: expected a positive value"),
])
def test_params_cli_reports_a_bad_override_in_one_line(tmp_path, override, message):
    out = tmp_path / "p.yaml"
    proc = ncil(["params", override, "--out", str(out), "--dvc-yaml", str(tmp_path / "d.yaml")], ROOT, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def test_params_out_elsewhere_leaves_the_pipeline_alone(tmp_path):
    """`params --out other.yaml` writes that file only: the dvc.yaml beside it (the repository's
    pipeline) is generated for params.yaml alone, unless --dvc-yaml names one for the other file."""
    from tests.conftest import copy_project

    project = copy_project(tmp_path / "project")
    ncil(["params", "--out", "params.yaml"], project)  # the copy's own params.yaml and dvc.yaml
    pipeline = (project / "dvc.yaml").read_bytes()
    ncil(["params", "method=[ours]", "--out", "other.yaml"], project)
    assert list(io.read_yaml(project / "other.yaml")["method"]) == ["ours"]
    assert (project / "dvc.yaml").read_bytes() == pipeline
    ncil(["params", "method=[ours]", "--out", "other.yaml", "--dvc-yaml", "other_dvc.yaml"], project)
    assert "--params other.yaml" in (project / "other_dvc.yaml").read_text()
    assert (project / "dvc.yaml").read_bytes() == pipeline and b"--params params.yaml" in pipeline


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
    from ncil.pipeline import experiment_grid

    data = compose([])
    parse_params(data)
    assert len(data["method"]) == 12 and data["train"]["batch_size"] == 16
    jobs = experiment_grid.train_jobs(data)
    # 4 base recipes (plain, rotation, rotation_resnet18, official) x 2 base sizes x 3 seeds shared task-0
    # jobs, plus 12 methods x 3 seeds x (3 + 5) incremental tasks.
    assert sum(j.task == 0 for j in jobs) == 24 and len(jobs) == 24 + 12 * 3 * 8
    bounds = compose(["+experiment=digits_bounds"])
    assert sorted(bounds["method"]) == ["finetune", "joint"]
    assert len(experiment_grid.train_jobs(bounds)) == 6 + 2 * 3 * 8


# --- facts the checks rely on ------------------------------------------------------------------

def test_dataset_catalog_matches_prepare_and_the_digits_source():
    import numpy as np

    from ncil.data import catalog, preparation

    assert {n for n, f in catalog.DATASETS.items() if not f.raw} == set(preparation.SOURCES)
    assert {n for n, f in catalog.DATASETS.items() if f.raw} == set(preparation.RAW_DATASETS)
    for name, facts in catalog.DATASETS.items():  # every conf/dataset file agrees with the catalog
        conf = io.read_yaml(ROOT / "conf" / "dataset" / f"{name}.yaml")
        assert conf["name"] == name and conf["n_classes"] == (facts.n_classes or conf["n_classes"])
    images, labels = preparation.load_digits_images()
    counts = np.bincount(labels)
    assert len(counts) == catalog.DATASETS["digits"].n_classes
    assert counts.min() == catalog.DATASETS["digits"].smallest_class


def test_class_split_counts_are_the_counts_of_the_stratified_split():
    import numpy as np

    from ncil.data.catalog import class_split_counts
    from ncil.data.preparation import stratified_split

    labels = np.repeat(np.arange(4), [7, 10, 174, 1])
    for test_fraction, val_fraction in ((0.2, 0.1), (0.0, 0.5), (0.5, 0.5), (0.99, 0.99)):
        parts = stratified_split(labels, test_fraction, val_fraction, seed=0)
        for cls, n in enumerate([7, 10, 174, 1]):
            got = tuple(int((labels[parts[s]] == cls).sum()) for s in ("train", "val", "test"))
            assert got == class_split_counts(n, test_fraction, val_fraction), (cls, test_fraction, val_fraction)
    assert class_split_counts(174, 0.99, 0.99) == (0, 2, 172)


def test_folder_class_count_is_checked_at_prepare_time(tmp_path):
    """`folder` has no known class count: prepare compares n_classes with the class folders, before writing."""
    from ncil.data.preparation import prepare
    from tests import data_fixtures as fx

    root = fx.write_folder(tmp_path / "raw", ["cat", "dog", "eel"], train_per_class=2, test_per_class=1, size=8)
    base = ["dataset=folder", f"dataset.root={root}", "dataset.image_size=8", "dataset.train_resize=8",
            "dataset.test_resize=8", "model.img_size=8", "scenario=[base4_inc2]",
            "scenario.base4_inc2.initial_increment=1", "scenario.base4_inc2.increment=1"]
    p = parse_params(compose([*base, "dataset.n_classes=4"]))  # cannot be known before the folder is read
    with pytest.raises(ConfigError, match=rf"^dataset.n_classes: {root} has 3 classes, config says 4"):
        prepare(p.dataset, out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert prepare(parse_params(compose([*base, "dataset.n_classes=3"])).dataset, out_dir=str(tmp_path / "out")) \
        == {"train": 6, "val": 0, "test": 3}


def test_every_composed_setting_is_labelled_with_its_real_task_sizes():
    """Increments divide the classes after the base task, so F + C x T names the tasks exactly; the
    default grid keeps its labels."""
    from ncil.data.scenario import task_sizes
    from ncil.pipeline.provenance import setting_label

    experiments = sorted(f.stem for f in (ROOT / "conf/experiment").glob("*.yaml"))
    for overrides in ([], *([f"+experiment={e}"] for e in experiments)):
        p = parse_params(compose(overrides))
        for sc in p.scenario.values():
            sizes = task_sizes(p.dataset.n_classes, sc.initial_increment, sc.increment)
            assert sizes == [sc.initial_increment] + [sc.increment] * (len(sizes) - 1)
            label = setting_label(sc.initial_increment, sc.increment, len(sizes))
            assert label == f"{sizes[0]}+{sizes[1]}x{len(sizes) - 1}" and sum(sizes) == p.dataset.n_classes
    p = parse_params(compose([]))
    assert {name: setting_label(s.initial_increment, s.increment, len(task_sizes(10, s.initial_increment, s.increment)))
            for name, s in p.scenario.items()} == {"base4_inc2": "4+2x3", "base5_inc1": "5+1x5"}


# --- class_order: an explicit class order (DyTox's CIFAR-100 protocol), optional ------------------------------

@pytest.mark.parametrize("order, message", [
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 8], "repeated [8]; missing [9]"),
    (list(range(9)), "got 9 ids: missing [9]"),
    ([*range(9), 10], "missing [9]; out of range [10]"),
    ("0,1,2", "class_order: expected a list, got '0,1,2'"),
    ([*range(9), "9"], "class_order[9]: expected an integer, got '9'"),
])
def test_a_class_order_that_is_not_a_permutation_of_the_classes_is_refused(order, message):
    with pytest.raises(ConfigError) as err:
        parse_params(_edited({"class_order": order}))
    assert str(err.value).startswith("params.yaml: class_order") and message in str(err.value), str(err.value)


def test_an_explicit_class_order_cuts_the_tasks_and_enters_only_its_grids_stage_parameters():
    from ncil.data.splits import build_split
    from ncil.pipeline.workflow import param_keys

    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    p = parse_params(_edited({"class_order": order}))
    assert p.class_order == tuple(order) and parse_params(_defaults()).class_order is None
    split = build_split("digits", 10, 1993, 4, 2, p.class_order)
    assert split["class_order"] == order and split["tasks"] == [[3, 1, 4, 0], [5, 9], [2, 6], [8, 7]]
    assert split["order_seed"] == 1993  # still recorded: the grid's key, unused by this order
    assert build_split("digits", 10, 1993, 4, 2)["class_order"] == [4, 2, 7, 6, 0, 3, 5, 8, 9, 1]  # as committed: results/digits/base4_inc2/split.json
    with pytest.raises(ValueError, match="class_order: expected a permutation of 0..9"):
        build_split("digits", 10, 1993, 4, 2, order[:-1])
    defaults, explicit = _defaults(), _edited({"class_order": order})
    assert param_keys("split", defaults) == ("dataset.n_classes", "order_seed")  # every committed stage: as before
    assert param_keys("split", explicit) == ("dataset.n_classes", "order_seed", "class_order")
    assert "class_order" in param_keys("train", explicit, "ours") and "class_order" not in param_keys("train", defaults, "ours")
    assert param_keys("summarize", explicit) == ("preset", "order_seed", "class_order")


def test_the_cifar100_dytox_grid_is_table_4s_protocol():
    """Table 4's CIFAR-100 grid (conf/experiment/cifar100_dytox.yaml): B0 in 10 and 20 tasks, DyTox's class order
    (options/data/cifar100_order1.yaml of the released code), the released AdamW schedule, its own folder."""
    from ncil.data.scenario import task_sizes
    from ncil.pipeline.experiment_grid import grid_folder

    data = compose(["+experiment=cifar100_dytox"])
    p = parse_params(data)
    assert grid_folder(data) == "cifar100_dytox" and p.dataset.name == "cifar100"
    assert p.class_order[:10] == (87, 0, 52, 58, 44, 91, 68, 97, 51, 15) and p.class_order[-3:] == (26, 35, 39)
    assert {name: len(task_sizes(100, s.initial_increment, s.increment)) for name, s in p.scenario.items()} == {
        "base10_inc10": 10, "base5_inc5": 20}
    assert (p.train.epochs, p.train.batch_size, p.train.lr, p.train.weight_decay) == (500, 256, 2.5e-4, 1e-6)
    for name in ("dytox", "dytox_pks"):
        m = p.method[name]
        assert (m.dytox_optimizer, m.warmup_epochs, m.warmup_lr, m.min_lr) == ("adamw", 5, 1e-6, 1e-5)
        assert (m.exemplars_per_class, m.finetune_epochs, m.finetune_lr) == (20, 20, 2.5e-5)
        assert m.repeated_aug  # DeiT's sampler, main.py's default --repeated-aug
    assert p.runtime.precision == "fp32"  # the released no_amp: true
    assert p.method["dytox"].dytox_distillation == "kd" and p.method["dytox_pks"].dytox_distillation == "pks"
    assert io.read_yaml(ROOT / "grids/cifar100_dytox/params.yaml") == data  # the committed grid is the composition
