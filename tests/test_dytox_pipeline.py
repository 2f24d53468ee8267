"""DyTox and DyTox + PKS as methods of the pipeline (issue 24; docs/dytox.md section 9): the exemplar memory as a
task's artifact (task t writes it, task t+1 reads it, a damaged one is refused naming the file), the guard that
keeps it from every non-exemplar method, and tiny end-to-end runs that are deterministic."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ncil.data import arrays
from ncil.learning import training
from ncil.pipeline import experiment_grid, io, paths, workflow
from ncil.pipeline.config import ConfigError, parse_params
from ncil.pipeline.dvcgen import CHECK_STAGE
from ncil.pipeline.hydra_conf import compose
from tests.conftest import BASE_SPLIT, ROOT, SETTING_SPLIT, _copy, copy_project, ncil, run
from tests.test_commands_agree import dry_run_jobs, normalise, path_of

# DyTox and DyTox + PKS on the tiny grid's model and setting (4 + 2 x 3), seed 1, one epoch a task, one of
# fine-tuning, 5 exemplars per class. On top of the tests' tiny conf/config.yaml (tests/conftest.py).
DYTOX_TINY = ["+experiment=digits_dytox", "scenario=[base4_inc2]", "seeds=[1]",
              *[f"method.{m}.{k}={v}" for m in ("dytox", "dytox_pks")
                for k, v in (("exemplars_per_class", 5), ("finetune_epochs", 1))]]
NON_EXEMPLAR = ["finetune", "joint", "lwf", "baseline", "pks", "pr", "ours", "ours_w_uniform", "ours_w_direct",
                "pass_resnet18", "fcs", "ours_official"]


def quiet() -> logging.Logger:
    log = logging.getLogger("test_dytox_pipeline")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


# --- the memory file ------------------------------------------------------------------------------------------

def _memory_rows() -> dict:
    """Two classes of task 0 (3 exemplars each) and one of task 1 (2): rows grouped by class, in herding rank."""
    return {"index": np.array([17, 4, 9, 30, 2, 28, 41, 40]), "class_id": np.array([0, 0, 0, 1, 1, 1, 2, 2]),
            "original_class": np.array([7, 7, 7, 3, 3, 3, 5, 5]), "task": np.array([0, 0, 0, 0, 0, 0, 1, 1]),
            "rank": np.array([0, 1, 2, 0, 1, 2, 0, 1])}


def test_memory_roundtrip(tmp_path):
    path = tmp_path / "memory.parquet"
    io.write_memory(path, _memory_rows(), task=1, per_class=3)
    back = io.read_memory(path)
    for name, values in _memory_rows().items():
        assert back[name].tolist() == values.tolist(), name
    assert back["producing_task"] == 1 and back["per_class"] == 3


@pytest.mark.parametrize(("column", "values", "problem"), [
    ("index", [17, 4, 9, 30, 2, 28, 41, 17], "index: expected distinct training rows"),
    ("rank", [0, 2, 1, 0, 1, 2, 0, 1], "rank: expected ranks 0, 1, ... within each class"),
    ("class_id", [0, 0, 1, 0, 1, 1, 2, 2], "class_id: expected one original_class per class_id and back"),
    ("task", [0, 0, 0, 0, 0, 0, 2, 2], "task: expected non-decreasing tasks up to the producing task 1"),
])
def test_an_inconsistent_memory_is_refused_naming_the_file_and_column(tmp_path, column, values, problem):
    path = tmp_path / "memory.parquet"
    io.write_memory(path, {**_memory_rows(), column: np.array(values)}, task=1, per_class=3)
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(path))}: {re.escape(problem)}"):
        io.read_memory(path)


def test_a_truncated_memory_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "memory.parquet"
    io.write_memory(path, _memory_rows(), task=1, per_class=3)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(path))}: corrupt or truncated exemplar memory"):
        io.read_memory(path)


def test_every_flipped_byte_of_a_memory_is_refused_naming_the_file(tmp_path):
    """The checkpoint of the task that wrote the memory records its SHA-256: loading task t-1's checkpoint with
    its memory (what task t's train step does) refuses every single inverted byte, naming the memory file, and
    never gives a traceback; ``read_memory`` alone refuses most of them itself."""
    memory = tmp_path / "memory.parquet"
    io.write_memory(memory, _memory_rows(), task=1, per_class=3)
    checkpoint = tmp_path / "model.pt"
    io.save_checkpoint(checkpoint, {"task": 1, "seen_classes": [7, 3, 5], "config": {}, "model": {}},
                       memory_file=memory)
    assert io.load_checkpoint(checkpoint, memory_file=memory)["memory_sha256"] == io.sha256_file(memory)
    good = memory.read_bytes()
    damaged = tmp_path / "damaged.parquet"
    alone = {"refused": 0, "passed": 0}
    for i in range(len(good)):
        damaged.write_bytes(good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1:])
        with pytest.raises(io.ArtifactError) as err:
            io.load_checkpoint(checkpoint, memory_file=damaged)
        assert str(err.value).startswith(f"{damaged}: does not belong to {checkpoint}") and "\n" not in str(err.value)
        try:
            io.read_memory(damaged)
            alone["passed"] += 1
        except io.ArtifactError as read_err:
            assert str(read_err).startswith(f"{damaged}: ") and "\n" not in str(read_err)
            alone["refused"] += 1
    assert alone["refused"] > alone["passed"], alone


def test_a_checkpoint_without_a_memory_refuses_one(tmp_path):
    memory = tmp_path / "memory.parquet"
    io.write_memory(memory, _memory_rows(), task=1, per_class=3)
    checkpoint = tmp_path / "model.pt"
    io.save_checkpoint(checkpoint, {"task": 1, "seen_classes": [7, 3, 5], "config": {}, "model": {}})
    assert "memory_sha256" not in io.load_checkpoint(checkpoint)  # no key where no memory was written
    with pytest.raises(io.ArtifactError, match=f"^{re.escape(str(memory))}: {re.escape(str(checkpoint))} records no "
                                               "exemplar memory"):
        io.load_checkpoint(checkpoint, memory_file=memory)


# --- configuration --------------------------------------------------------------------------------------------

def test_the_dytox_methods_compose_and_stay_out_of_the_default_grid():
    p = parse_params(compose(["+experiment=digits_dytox"]))
    dytox, pks = p.method["dytox"], p.method["dytox_pks"]
    assert (dytox.backbone, dytox.exemplars_per_class, dytox.dytox_distillation, dytox.pks) == ("dytox", 20, "kd", 0.0)
    assert (pks.dytox_distillation, pks.pks, pks.divergence) == ("pks", 10.0, 0.1)
    # DyTox + PKS is DyTox with the distillation replaced, nothing else changed (AAAI text; docs/dytox.md 3).
    differ = [f for f in type(dytox).__dataclass_fields__ if getattr(dytox, f) != getattr(pks, f)]
    assert differ == ["pks", "dytox_distillation"]
    default = parse_params(compose([]))
    assert list(default.method) == NON_EXEMPLAR
    assert all(m.exemplars_per_class == 0 and m.backbone != "dytox" for m in default.method.values())
    committed = yaml.safe_load((ROOT / paths.grid_params("digits_dytox")).read_text())
    assert committed == compose(["+experiment=digits_dytox"])  # `python -m ncil grid --check` says the same


@pytest.mark.parametrize(("method", "key", "value", "message"), [
    ("finetune", "exemplars_per_class", 20, "method.finetune.exemplars_per_class: only DyTox's loop uses it"),
    ("joint", "exemplars_per_class", 20, "method.joint.exemplars_per_class: only DyTox's loop uses it"),
    ("ours", "divergence", 0.1, "method.ours.divergence: only DyTox's loop uses it"),
    ("dytox", "feature_kd", 10.0, "method.dytox.feature_kd: DyTox's loop (backbone dytox) does not use it"),
    ("dytox", "train_on", "seen", "method.dytox.train_on: DyTox's loop (backbone dytox) does not use it"),
    ("dytox", "pks", 10.0, "method.dytox.pks: dytox_distillation kd trains no PKS term"),
    ("dytox_pks", "pks", 0.0, "method.dytox_pks.pks: dytox_distillation pks needs lambda_pks > 0"),
    ("dytox", "finetune_lr", 0.0, "method.dytox.finetune_lr: expected a learning rate > 0"),
])
def test_dytox_options_are_refused_where_nothing_would_read_them(method, key, value, message):
    data = compose(["+experiment=digits_dytox", "method=[finetune,joint,ours,dytox,dytox_pks]", "preset=paper"])
    data["method"][method][key] = value
    with pytest.raises(ConfigError, match=f"^params.yaml: {re.escape(message)}"):
        parse_params(data)


# --- a grid's own folder (top-level `grid`) -------------------------------------------------------------------

def _outs(params: dict) -> set[str]:
    return {path for step in workflow.steps(params) for path in step.outs.values()}


def test_the_default_grids_paths_are_the_data_sets_folder():
    """No `grid` key: the folder is the data set's name, so every path (and dvc.lock's entries) is as before."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert "grid" not in params and experiment_grid.grid_folder(params) == "digits"
    assert not experiment_grid.own_folder(params)
    run = experiment_grid.find_run(params, "base4_inc2", "ours", 1)
    assert run.folder == "digits"
    assert run.checkpoint(1) == "runs/digits/base4_inc2/ours/seed1/task_1/model.pt"
    assert run.metrics_file == "results/digits/base4_inc2/ours/seed1/metrics.json"
    assert run.split_file == "results/digits/base4_inc2/split.json"
    assert experiment_grid.TrainJob(run, 1).name == "digits/base4_inc2/ours/seed1/task_1"
    outs = _outs(params)
    assert {"results/tables/digits_results.md", "results/tables/digits/table1.md", "results/tables/table1.md",
            "results/figures/fig3_digits_base4_inc2.png"} <= outs
    assert "  train_digits_base4_inc2_ours_seed1_task1:\n" in (ROOT / "dvc.yaml").read_text()


def test_the_dytox_grid_writes_only_under_its_own_folder():
    """grid: digits_dytox: runs/, results/, its table, figures and logs in its folder; data/digits/ shared; no
    paper section or table (the default grid's); no output in common with the default grid but the data."""
    params = compose(["+experiment=digits_dytox"])
    assert experiment_grid.grid_folder(params) == "digits_dytox" and experiment_grid.own_folder(params)
    run = experiment_grid.find_run(params, "base4_inc2", "dytox_pks", 2)
    assert run.dataset == "digits" and run.folder == "digits_dytox"
    assert run.checkpoint(0) == "runs/digits_dytox/base4/dytox/seed2/task_0/model.pt"
    assert run.memory(2) == "runs/digits_dytox/base4_inc2/dytox_pks/seed2/task_2/memory.parquet"
    assert run.eval_file(1) == "results/digits_dytox/base4_inc2/dytox_pks/seed2/eval/task_1.parquet"
    assert run.base_split_file == "results/digits_dytox/base4/split.json"
    steps = workflow.steps(params)
    assert not {"paper_sections", "paper_tables"} & {s.kind for s in steps}
    data = set(paths.data_files("digits"))
    for step in steps:
        for path in step.outs.values():
            assert path in data or path.startswith(("runs/digits_dytox/", "results/digits_dytox/",
                                                    "results/tables/digits_dytox_results.",
                                                    "results/figures/fig3_digits_dytox_")), (step.name, path)
        assert step.log.startswith(("logs/prepare/digits.log", "logs/split/digits_dytox/", "logs/train/digits_dytox/",
                                    "logs/evaluate/digits_dytox/", "logs/summarize/digits_dytox/",
                                    "logs/tables/digits_dytox.log", "logs/figures/digits_dytox.log")), step.log
        if "manifest" in step.deps:
            assert step.deps["manifest"] == "data/digits/manifest.json"
    assert _outs(params) & _outs(compose([])) == data


def test_grid_folders_that_collide_are_named():
    assert experiment_grid.folder_collisions({"a": "x", "b": "y", "c": "x", "d": "y", "e": "z"}) == [
        ("x", "a", "c"), ("y", "b", "d")]
    assert experiment_grid.folder_collisions({"a": "x", "b": "xy"}) == []


@pytest.mark.parametrize(("override", "other"), [
    ("grid=null", "the default grid (conf/config.yaml, params.yaml)"),
    ("grid=digits", "the default grid (conf/config.yaml, params.yaml)"),
    ("grid=cifar100", "grid cifar100 (conf/experiment/cifar100.yaml)"),
])
def test_the_grid_verb_refuses_a_grid_in_another_grids_folder(override, other):
    from ncil.pipeline.hydra_conf import render_grid

    folder = override.split("=")[1].replace("null", "digits")
    with pytest.raises(ConfigError, match=re.escape(
            f"conf/experiment/digits_dytox.yaml with overrides ['{override}']: grid: folder '{folder}' "
            f"(runs/{folder}/, results/{folder}/) is also the folder of {other}; expected a folder of its own")):
        render_grid("digits_dytox", [override])


def test_a_grid_folder_must_be_a_name():
    data = compose(["+experiment=digits_dytox"])
    data["grid"] = "../digits"
    with pytest.raises(ConfigError, match=r"^params.yaml: grid: expected a name of letters, digits, _ and -"):
        parse_params(data)
    assert parse_params(compose(["+experiment=digits_dytox"])).grid == "digits_dytox"
    assert parse_params(compose([])).grid is None


# --- the non-exemplar methods cannot read a memory -----------------------------------------------------------

def test_no_step_of_a_non_exemplar_method_declares_a_memory():
    """The default grid's steps (dvc.yaml's and Snakemake's commands: tests/test_commands_agree.py) name no
    memory file, as input, output or flag, and the committed dvc.yaml holds none."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert not any(run.rehearsal for run in experiment_grid.runs(params))
    for step in workflow.steps(params):
        named = [*step.deps.values(), *step.outs.values(), *step.cmd]
        assert not any(str(x).endswith(paths.MEMORY_NAME) or x in ("--memory", "--prev-memory") for x in named), step.name
    assert paths.MEMORY_NAME not in (ROOT / "dvc.yaml").read_text()
    run = experiment_grid.runs(params)[0]
    with pytest.raises(ValueError, match="keeps no exemplars"):
        run.memory(1)


def test_a_rehearsal_grid_chains_the_memory_from_task_to_task():
    params = compose(["+experiment=digits_dytox"])
    steps = {s.name: s for s in workflow.steps(params) if s.kind == "train"}
    for run in experiment_grid.runs(params):
        assert run.rehearsal
        for t in range(run.n_tasks):
            (step,) = [s for s in steps.values() if s.outs["checkpoint"] == run.checkpoint(t)]
            assert step.outs["memory"] == run.memory(t) and step.values("--memory") == [run.memory(t)]
            if t:
                assert step.deps["prev_memory"] == run.memory(t - 1) == step.values("--prev-memory")[0]
            else:
                assert "prev_memory" not in step.deps and "--prev-memory" not in step.cmd
    # The two methods share task 0 (base recipe dytox), hence its memory.
    assert paths.memory("digits_dytox", "base4/dytox/seed1", 0) in {s.outs["memory"] for s in steps.values()}


def _job(p, method: str, task: int) -> training.TaskJob:
    m = p.method[method]
    return training.TaskJob(task, 1, list(range(10)), [[0, 1, 2, 3], [4, 5]], m.base_recipe if task == 0 else method,
                            m, {})


@pytest.mark.parametrize("method", ["finetune", "ours", "fcs"])
@pytest.mark.parametrize("task", [0, 1])
def test_train_task_refuses_a_memory_handed_to_a_method_without_exemplars(method, task):
    p = parse_params(compose([]))
    memory = {k: v for k, v in _memory_rows().items()}
    with pytest.raises(ValueError, match=f"method {p.method[method].base_recipe if task == 0 else method}: keeps no "
                                         "exemplars"):  # before anything is built or trained
        training.train_task(p, _job(p, method, task), None, None, None, quiet(), previous_memory=memory)
    assert training.training_classes(_job(p, method, task)) == [[0, 1, 2, 3], [4, 5]][task]


def test_train_task_refuses_a_rehearsal_task_without_its_memory():
    p = parse_params(compose(["+experiment=digits_dytox"]))
    with pytest.raises(ValueError, match="method dytox: task 1 trains on task 0's exemplar memory"):
        training.train_task(p, _job(p, "dytox", 1), None, None, None, quiet())


def test_the_train_verb_refuses_memory_flags_for_a_method_without_exemplars(tiny_prepared):
    """A non-exemplar method's job cannot be handed a memory from the command line either (exit 2)."""
    base = ["train", "--seed", "1", "--log", "logs/t.log", "--checkpoint", "out/model.pt", "--centers", "out/c.parquet"]
    cases = [
        ["--split", BASE_SPLIT, "--task", "0", "--method", "plain", "--memory", "out/memory.parquet"],
        ["--split", SETTING_SPLIT, "--task", "1", "--method", "finetune", "--prev-checkpoint", "a/model.pt",
         "--prev-centers", "a/centers.parquet", "--prev-memory", "a/memory.parquet"],
    ]
    for case in cases:
        proc = ncil([*base, *case], tiny_prepared, check=False)
        assert proc.returncode == 2 and "keeps no exemplars (exemplars_per_class 0" in proc.stderr, proc.stderr
    assert not (tiny_prepared / "out").exists()


# --- tiny end-to-end runs: CLI, Snakemake and DVC -------------------------------------------------------------

def _train_steps(project: Path) -> dict:
    """(method or recipe, task) -> the train step of the project's params.yaml (dvc.yaml's command)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    out = {}
    for step in workflow.steps(params):
        if step.kind == "train":
            out[(step.values("--method")[0], int(step.values("--task")[0]))] = step
    return out


def _outputs(project: Path, step) -> dict:
    return {name: (project / path).read_bytes() for name, path in step.outs.items()}


@pytest.fixture(scope="module")
def dytox_run(tiny_prepared_template, tmp_path_factory):
    """Tasks 0 and 1 of DyTox and DyTox + PKS (2 tasks, 1 epoch each, tiny model) through the train verb, with
    the commands of the grid's steps, each trained twice to the same paths: (project, steps, first outputs)."""
    project = _copy(tiny_prepared_template, tmp_path_factory.mktemp("dytox") / "project")
    ncil(["params", *DYTOX_TINY], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for step in workflow.steps(params):  # the grid's own splits (results/digits_dytox/...; the data is shared)
        if step.kind == "split":
            ncil(list(step.cmd), project)
    steps = _train_steps(project)
    wanted = [("dytox", 0), ("dytox", 1), ("dytox_pks", 1)]
    first = {}
    for key in wanted:
        ncil(list(steps[key].cmd), project)
        first[key] = _outputs(project, steps[key])
    for key in wanted:  # again, to the same paths (task 1 reads task 0's second outputs, equal to its first)
        ncil(list(steps[key].cmd), project)
    return project, steps, first


@pytest.mark.slow
@pytest.mark.parametrize("key", [("dytox", 0), ("dytox", 1), ("dytox_pks", 1)])
def test_a_dytox_task_writes_checkpoint_centers_memory_and_a_rerun_gives_the_same_bytes(dytox_run, key):
    project, steps, first = dytox_run
    step = steps[key]
    assert set(step.outs) == {"checkpoint", "centers", "memory"}
    assert _outputs(project, step) == first[key]
    payload = io.load_checkpoint(project / step.outs["checkpoint"], project / step.outs["centers"],
                                 project / step.outs["memory"])
    assert payload["backbone"] == "dytox" and payload["head_layout"] == "dytox"
    assert payload["classes_per_task"] == [4, 2][: key[1] + 1]
    memory = io.read_memory(project / step.outs["memory"])
    assert memory["producing_task"] == key[1] and memory["per_class"] == 5
    assert np.bincount(memory["class_id"]).tolist() == [5] * (4 + 2 * key[1])  # 5 exemplars of each seen class
    phases = [h["phase"] for h in payload["history"]]
    assert phases == (["base"] if key[1] == 0 else ["task", "finetune"])
    config = payload["config"]["method_config"]
    assert config["backbone"] == "dytox" and config["exemplars_per_class"] == 5


@pytest.mark.slow
def test_task_1_keeps_task_0s_memory_and_adds_its_classes(dytox_run):
    """The memory flows: task 1's file is task 0's rows (the memory it read) followed by its new classes'
    exemplars; each row's image in the training split is of the class the memory names."""
    project, steps, _ = dytox_run
    m0 = io.read_memory(project / steps[("dytox", 0)].outs["memory"])
    train = arrays.load_split("digits", "train", root=str(project))
    for method in ("dytox", "dytox_pks"):
        m1 = io.read_memory(project / steps[(method, 1)].outs["memory"])
        n0 = len(m0["index"])
        for name in io.MEMORY_COLUMNS:
            assert m1[name][:n0].tolist() == m0[name].tolist(), name
        assert set(m1["task"][n0:].tolist()) == {1}
        assert train.labels[m1["index"]].tolist() == m1["original_class"].tolist()
        assert steps[(method, 1)].values("--prev-memory") == [steps[("dytox", 0)].outs["memory"]]


@pytest.mark.slow
def test_dytox_and_dytox_pks_differ_only_after_task_0(dytox_run):
    project, steps, first = dytox_run
    a = io.load_checkpoint(project / steps[("dytox", 1)].outs["checkpoint"])
    b = io.load_checkpoint(project / steps[("dytox_pks", 1)].outs["checkpoint"])
    # A checkpoint records the options that differ from their defaults: DyTox's kd is the default.
    assert "dytox_distillation" not in a["config"]["method_config"] and "pks" not in a["config"]["method_config"]
    assert b["config"]["method_config"]["dytox_distillation"] == "pks" and b["config"]["method_config"]["pks"] == 10.0
    assert a["model"].keys() == b["model"].keys()
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # one shared task 0, then apart


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip", "truncate", "missing_flag"])
def test_task_1_refuses_a_damaged_memory_naming_the_file(dytox_run, damage, tmp_path):
    project, steps, _ = dytox_run
    step = steps[("dytox", 1)]
    memory = project / steps[("dytox", 0)].outs["memory"]
    good = memory.read_bytes()
    cmd = list(step.cmd)
    out = {k: str(tmp_path / Path(v).name) for k, v in step.outs.items()}  # never the fixture's outputs
    for flag, name in (("--checkpoint", "checkpoint"), ("--centers", "centers"), ("--memory", "memory")):
        cmd[cmd.index(flag) + 1] = out[name]
    try:
        if damage == "flip":
            memory.write_bytes(good[: len(good) // 2] + bytes([good[len(good) // 2] ^ 0x01]) + good[len(good) // 2 + 1:])
            expected = f"{steps[('dytox', 0)].outs['memory']}: does not belong to"
        elif damage == "truncate":
            memory.write_bytes(good[: len(good) // 3])
            expected = f"{steps[('dytox', 0)].outs['memory']}: does not belong to"
        else:
            at = cmd.index("--prev-memory")
            del cmd[at: at + 2]
            expected = "--prev-memory: task 1 of --method dytox trains on task 0's exemplar memory"
        proc = ncil(cmd, project, check=False)
    finally:
        memory.write_bytes(good)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert not any(Path(v).exists() for v in out.values())


@pytest.mark.slow
def test_the_dytox_checkpoints_evaluate(dytox_run):
    project, steps, _ = dytox_run
    for method in ("dytox", "dytox_pks"):
        checkpoints = [steps[("dytox", 0)].outs["checkpoint"], steps[(method, 1)].outs["checkpoint"]]
        evals = [f"evals/{method}/task_0.parquet", f"evals/{method}/task_1.parquet"]
        ncil(["evaluate", "--split", SETTING_SPLIT, "--checkpoints", *checkpoints, "--out", *evals], project)
        split = yaml.safe_load((project / SETTING_SPLIT).read_text())
        for t, path in enumerate(evals):
            predictions = io.read_predictions(project / path, split["tasks"])
            assert predictions["task"] == t and predictions["prediction"].max() < 4 + 2 * t


@pytest.mark.slow
def test_snakemake_and_dvc_run_the_same_dytox_commands(tmp_path):
    """On a DyTox grid the two engines agree as on the default grid (tests/test_commands_agree.py): every
    training job of DyTox is a memory rule with the memory among its outputs (and task t-1's among its inputs),
    exactly the deps and outs of its dvc.yaml stage."""
    project = copy_project(tmp_path / "p")
    ncil(["params", *DYTOX_TINY], project)
    proc = run([sys.executable, "-m", "snakemake", "--dry-run", "--printshellcmds", "--forceall", "--cores", "1"],
               project)
    jobs = dry_run_jobs(proc.stdout)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    by_cmd = {normalise(stage["cmd"]): stage for name, stage in stages.items() if name != CHECK_STAGE}
    train_jobs = [job for job in jobs if job["rule"].startswith("train")]
    assert sorted(job["rule"] for job in train_jobs) == ["train_base_memory"] + ["train_memory"] * 6
    for job in train_jobs:
        stage = by_cmd[job["shell"]]
        deps = [d for d in stage["deps"] if d != paths.PARAMS_CHECK_STAMP]
        inputs = [i for i in job["input"] if not i.startswith(("fingerprints/", paths.PARAMS_STAMP_ROOT + "/"))]
        assert sorted(inputs) == sorted(deps), job["shell"]
        assert sorted(job["output"]) == sorted(path_of(o) for o in stage["outs"]), job["shell"]
        assert any(o.endswith(paths.MEMORY_NAME) for o in job["output"])
        assert ("--prev-memory" in job["shell"]) == (job["rule"] == "train_memory")
    commands = [job["shell"] for job in jobs if job["shell"] and job["rule"] != "costs"]
    assert sorted(commands) == sorted(normalise(s["cmd"]) for n, s in stages.items() if n != CHECK_STAGE)


def test_the_rules_spell_the_memory_path_of_the_path_owner():
    text = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    for template in (paths.memory("{grid}", "{setting}/{method}/seed{seed}", "{task}"),
                     paths.memory("{grid}", "base{initial}/{recipe}/seed{seed}", 0)):
        assert f'"{template}"' in text, template
