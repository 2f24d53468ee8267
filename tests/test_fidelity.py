"""Fidelity of the paper grids (issue 12, item 4): the reported runs train on the whole training set
(``dataset.val_fraction: 0``, as the paper did); validation images exist for tuning only
(scripts/tune_on_val.py carves them in memory, 0.1 of each class)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ncil.data import arrays
from ncil.data.preparation import prepare
from ncil.pipeline import io, paths
from ncil.pipeline.config import parse_params
from ncil.pipeline.hydra_conf import compose
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


# --- The training precision in every result (issue 12, item 4) -----------------------------------

from ncil.cli import main  # noqa: E402
from ncil.reports import metrics_json  # noqa: E402
from ncil.reports import paper_values, results_table  # noqa: E402


def test_training_precision_joins_the_checkpoints_values():
    bf16, fp32, old = {"runtime": {"precision": "bf16"}}, {"runtime": {"precision": "fp32"}}, {"runtime": {}}
    assert metrics_json.training_precision([bf16, bf16, bf16]) == "bf16"
    # Base task on a GPU in bf16, later tasks on a CPU (always fp32), one from before the key existed.
    assert metrics_json.training_precision([bf16, fp32, old, fp32]) == "bf16, fp32, unrecorded"


def _write_run(tmp_path: Path, precisions: list[str]) -> list[str]:
    """A 3-task digits run (4+3x2) with every test image predicted right: split, evaluations and
    checkpoints whose config snapshots say ``precisions``; returns the summarize command line."""
    split = tmp_path / "split.json"
    params = str(ROOT / "params.yaml")
    assert main(["split", "--params", params, "--initial", "4", "--increment", "3", "--out", str(split)]) == 0
    tasks = io.read_json(split)["tasks"]
    evals, ckpts = [], []
    for t, precision in enumerate(precisions):
        seen = [c for task in tasks[: t + 1] for c in task]
        owner = [k for k, task in enumerate(tasks[: t + 1]) for _ in task]
        columns = {"sample": list(range(len(seen))), "label": list(range(len(seen))), "original_label": seen,
                   "label_task": owner, "prediction": list(range(len(seen)))}
        evals.append(str(tmp_path / f"task_{t}.parquet"))
        io.write_predictions(evals[-1], columns, task=t)
        ckpts.append(str(tmp_path / f"model_{t}.pt"))
        io.save_checkpoint(ckpts[-1], {"task": t, "seen_classes": seen, "model": {},
                                       "config": {"runtime": {"threads": 1, "precision": precision}}})
    return ["summarize", "--params", params, "--split", str(split), "--evals", *evals, "--setting", "base4_inc3",
            "--method", "ours", "--seed", "1", "--out", str(tmp_path / "metrics.json"), "--checkpoints", *ckpts]


def test_summarize_records_the_precision_its_checkpoints_were_trained_in(tmp_path):
    # bf16 although this test runs on a CPU and params.yaml asks for `auto`: read from the checkpoints.
    assert main(_write_run(tmp_path, ["bf16", "bf16", "bf16"])) == 0
    m = io.read_json(tmp_path / "metrics.json")
    assert m["provenance"]["precision"] == "bf16"
    assert m["last_accuracy"] == 100.0 and m["test_counts"] == [4, 3, 3]
    assert metrics_json.layout_problem(m) is None


def test_summarize_refuses_a_checkpoint_list_that_is_not_one_per_task(tmp_path, capsys):
    argv = _write_run(tmp_path, ["fp32", "fp32", "fp32"])
    assert main(argv[:-1]) == 2  # two checkpoints for three evaluations
    assert "--checkpoints: expected one checkpoint per evaluation (3), found 2" in capsys.readouterr().err


def test_summarize_without_checkpoints_writes_no_precision(tmp_path):
    argv = _write_run(tmp_path, ["fp32", "fp32", "fp32"])
    assert main(argv[: argv.index("--checkpoints")]) == 0
    assert "precision" not in io.read_json(tmp_path / "metrics.json")["provenance"]


def _metrics(method: str, seed: int, precision: str | None, dataset: str = "digits") -> dict:
    m = {"run": {"dataset": dataset, "setting": "s", "label": "4+2x3", "method": method, "seed": seed},
         "provenance": {"preset": "paper", "metric_convention": "paper", "order_seed": 1993, "seed": seed},
         "avg_accuracy": 80.0, "last_accuracy": 70.0, "avg_forgetting": 5.0, "accuracy_per_step": [90.0, 70.0]}
    if precision is not None:
        m["provenance"]["precision"] = precision
    return m


def test_the_tables_say_which_precision_their_numbers_were_trained_in():
    ms = [_metrics("ours", 1, "bf16"), _metrics("ours", 2, "bf16"), _metrics("joint", 1, "fp32")]
    rows = results_table.aggregate(ms)
    assert [r["precision"] for r in rows] == ["bf16", "fp32"]
    md = results_table.to_markdown(rows, "digits", {"preset": "paper", "convention": "paper", "order_seed": 1993,
                                                    "seeds": [1, 2]})
    assert "Preset `paper`; training precision `bf16, fp32`; metric convention" in md
    only_bf16 = results_table.to_markdown(results_table.aggregate(ms[:2]), "digits", {"preset": "paper", "convention": "paper",
                                                                         "order_seed": 1993, "seeds": [1, 2]})
    assert "training precision `bf16`;" in only_bf16
    defaults = {"preset": "paper", "convention": "paper", "order_seed": 1993, "seeds": [1]}
    context = results_table.context_from(ms[:2], defaults)
    assert context["precision"] == "bf16"
    line = results_table.context_line(context)
    assert line.startswith("Preset `paper`; training precision `bf16`; metric convention `paper` (")
    assert results_table.parse_context_line(line, "x")["precision"] == "bf16"
    # Beside recorded ones, metrics written before the key count as "unrecorded"; when none records one
    # (or there are no metrics), no precision: the line reads as it did before (committed bytes stay).
    assert results_table.context_from([_metrics("ours", 1, None), ms[0]], defaults)["precision"] == "bf16, unrecorded"
    assert results_table.context_from([_metrics("ours", 1, None)], defaults)["precision"] is None
    assert results_table.context_from([], defaults)["precision"] is None
    assert results_table.context_line(results_table.context_from([], defaults)).startswith("Preset `paper`; metric convention")
    assert "training precision" not in results_table.to_markdown(results_table.aggregate([_metrics("ours", 1, None)]), "digits",
                                                                 defaults)


def test_context_lines_merge_their_precisions_and_old_lines_still_parse():
    defaults = {"preset": "paper", "convention": "paper", "order_seed": 1993, "seeds": [1]}
    a = results_table.parse_context_line(results_table.context_line(results_table.context_from([_metrics("ours", 1, "fp32")], defaults)), "a")
    b = results_table.parse_context_line(results_table.context_line(results_table.context_from([_metrics("ours", 2, "bf16")], defaults)), "b")
    assert results_table.merge_contexts([a, b])["precision"] == "bf16, fp32"
    old = ("Preset `paper`; metric convention `paper` (x); class-order seed 1993; mean ± std over seeds [1, 2, 3] "
           "(n per cell). Accuracies in %.")  # a section file written before the precision was recorded
    parsed = results_table.parse_context_line(old, "old.md")
    assert parsed == {"preset": "paper", "precision": None, "convention": "paper", "order_seed": "1993",
                      "seeds": [1, 2, 3]}
    assert results_table.merge_contexts([parsed, a])["precision"] == "fp32, unrecorded"
    assert results_table.merge_contexts([parsed, parsed])["precision"] is None


def test_the_summarize_step_reads_every_checkpoint_of_its_run():
    from ncil.pipeline import experiment_grid
    from ncil.pipeline.workflow import steps

    params = io.read_yaml(ROOT / "params.yaml")
    run = experiment_grid.find_run(params, "base4_inc2", "ours", 2)
    step = next(s for s in steps(params) if s.kind == "summarize" and run.metrics_file in s.outs.values())
    cmd = list(step.cmd)
    given = cmd[cmd.index("--checkpoints") + 1: cmd.index("--log")]
    assert given == [run.checkpoint(t) for t in range(run.n_tasks)] and len(given) == 4  # 4+2x3: 4 tasks
    assert given[0] == "runs/digits/base4/rotation/seed2/task_0/model.pt"  # the shared base task's
    assert set(given) <= set(step.deps.values())


# --- Table 4 and FCS's published numbers ---------------------------------------------------------


def test_table4_holds_the_papers_dytox_numbers():
    v = {(r["row"], r["setting"]): r for r in paper_values.reported() if r["table"] == "table4"}
    assert len(v) == 4
    assert (v[("DyTox", "10+10x9")]["avg_accuracy"], v[("DyTox", "10+10x9")]["last_accuracy"],
            v[("DyTox", "10+10x9")]["avg_forgetting"]) == (75.47, 62.10, 15.43)
    assert (v[("DyTox + ours (PKS)", "5+5x19")]["avg_accuracy"], v[("DyTox + ours (PKS)", "5+5x19")]
            ["last_accuracy"], v[("DyTox + ours (PKS)", "5+5x19")]["avg_forgetting"]) == (77.63, 63.90, 15.76)
    assert v[("DyTox", "5+5x19")]["avg_forgetting"] == 21.60 and v[("DyTox + ours (PKS)", "10+10x9")]["last_accuracy"] == 66.47
    assert "Table 4" in paper_values.TABLE4_SOURCE and "20 exemplars per class" in paper_values.TABLE4_SETTING


def test_table4_reads_not_run_beside_every_reported_value():
    md, csv_text = results_table.table4_texts([])
    lines = csv_text.splitlines()
    assert lines[0] == ",".join(results_table.CSV_FIELDS) and len(lines) == 1 + 2 * 2 * 3  # 2 rows x 2 settings x 3 metrics
    assert all(line.endswith(",not run") for line in lines[1:])
    assert "table4,cifar100,10+10x9,DyTox,dytox,avg_accuracy,75.4700,,,0,,,not run" in lines
    assert md.startswith("# Table 4: DyTox and DyTox + PKS (exemplar-based)")
    assert "| DyTox + ours (PKS) (`dytox_pks`) | 78.35 | not run |" in md and "PR" not in md.split("## ")[1]
    assert "| DyTox (`dytox`) | 75.47 | not run | - | 62.10 | not run | - | 15.43 | not run | - |" in md


def test_table4_shows_a_dytox_run_with_its_difference():
    m = _metrics("dytox", 1, "fp32", dataset="cifar100")
    m["run"].update(setting="b10", label="10+10x9")
    m["avg_accuracy"], m["last_accuracy"], m["avg_forgetting"] = 76.47, 60.10, 16.43
    grids = [("cifar100_dytox", "cifar100", results_table.aggregate([m]))]
    cells = {(c["row"], c["setting"], c["metric"]): c for c in results_table.table4_cells(grids)}
    ours = cells[("DyTox", "10+10x9", "avg_accuracy")]
    assert ours["status"] == "ok" and ours["diff"] == pytest.approx(1.0)  # 76.47 - 75.47
    assert cells[("DyTox", "10+10x9", "last_accuracy")]["diff"] == pytest.approx(-2.0)  # 60.10 - 62.10
    assert cells[("DyTox", "5+5x19", "avg_accuracy")]["status"] == "not run"


def test_table4s_ours_row_is_the_dytox_pks_method():
    """The paper's "Ours" row of Table 4 is DyTox + PKS (its text: KD replaced by PKS), filled by method dytox_pks."""
    m = _metrics("dytox_pks", 1, "fp32", dataset="cifar100")
    m["run"].update(setting="b5", label="5+5x19")
    m["avg_accuracy"], m["last_accuracy"], m["avg_forgetting"] = 77.0, 63.0, 16.0
    grids = [("cifar100_dytox", "cifar100", results_table.aggregate([m]))]
    cells = {(c["row"], c["setting"], c["metric"]): c for c in results_table.table4_cells(grids)}
    ours = cells[("DyTox + ours (PKS)", "5+5x19", "avg_accuracy")]
    assert ours["method"] == "dytox_pks" and ours["status"] == "ok" and ours["diff"] == pytest.approx(77.0 - 77.63)


def test_paper_tables_stage_writes_table4(tmp_path, monkeypatch):
    import shutil

    sections = paths.paper_sections("digits")
    for path in sections:  # the committed digits sections, as inputs only (Table 4 does not read them)
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert main(["paper-tables", "--params", "params.yaml", "--sections", *sections]) == 0
    md_path, csv_path = paths.paper_table_files("table4")
    assert (md_path, csv_path) == ("results/tables/table4.md", "results/tables/table4.csv")
    written = ((tmp_path / md_path).read_text(encoding="utf-8"), (tmp_path / csv_path).read_text(encoding="utf-8"))
    assert written == results_table.table4_texts([])
    assert written[1].count(",not run\n") == 12


def _digits_dytox_csv() -> str:
    """A digits Table 4 grid's results table: dytox with seeds 1 and 2 (Avg 80 and 84, Last 70 and 66,
    F 5 and 9), dytox_pks with seed 1 only, both in 4+2x3; nothing in 5+1x5 for dytox_pks."""
    ms = []
    for seed, (avg, last, forget) in ((1, (80.0, 70.0, 5.0)), (2, (84.0, 66.0, 9.0))):
        m = _metrics("dytox", seed, None)
        m["avg_accuracy"], m["last_accuracy"], m["avg_forgetting"] = avg, last, forget
        ms.append(m)
    pks = _metrics("dytox_pks", 1, None)
    pks["avg_accuracy"], pks["last_accuracy"], pks["avg_forgetting"] = 83.0, 75.5, 2.25
    other = _metrics("dytox", 1, None)
    other["run"].update(setting="t", label="5+1x5")
    return results_table.to_csv(results_table.aggregate([*ms, pks, other]))


def test_table4_has_a_section_of_ours_per_digits_grid_from_its_results_table():
    """The digits grid's results CSV (4 decimals) read back as rows: dytox 4+2x3 is the mean of seeds 1-2 (82, 68, 7)
    with std sqrt(8) = 2.83 for each metric; dytox_pks one seed (std 0); a setting without it reads "not run"."""
    rows = results_table.results_rows(_digits_dytox_csv(), "digits", "x.csv")
    md, csv_text = results_table.table4_texts([("digits_dytox", "digits", rows)])
    section = md.split("## digits_dytox\n", 1)[1].split("## ", 1)[0]
    assert "| method | 4+2x3 Avg | 4+2x3 Last | 4+2x3 Forgetting | 5+1x5 Avg | 5+1x5 Last | 5+1x5 Forgetting |" in section
    assert "| DyTox (`dytox`) | 82.00 ± 2.83 (2) | 68.00 ± 2.83 (2) | 7.00 ± 2.83 (2) | 80.00 ± 0.00 (1) |" in section
    assert "| DyTox + ours (PKS) (`dytox_pks`) | 83.00 ± 0.00 (1) | 75.50 ± 0.00 (1) | 2.25 ± 0.00 (1) | not run |" in section
    assert "from grid `digits_dytox` (digits; conf/experiment/digits_dytox.yaml" in md
    lines = csv_text.splitlines()
    assert len(lines) == 1 + 2 * 2 * 3 + 12  # the digits section (2 rows x 2 settings x 3 metrics), CIFAR-100's 12
    assert "table4,digits_dytox,4+2x3,DyTox,dytox,avg_accuracy,,82.0000,2.8284,2,1 2,,ok" in lines
    assert md.index("## digits_dytox") < md.index("## CIFAR-100")  # data sets the paper did not use first
    assert sum(line.endswith(",not run") for line in lines) == 12 + 3  # CIFAR-100 all, dytox_pks in 5+1x5


def test_table4_results_rows_refuse_a_file_that_is_not_a_results_table():
    good = _digits_dytox_csv()
    with pytest.raises(ValueError, match="x.csv: header .* is not a results table's"):
        results_table.results_rows(good.replace("avg_accuracy_mean", "avg_mean", 1), "digits", "x.csv")
    with pytest.raises(ValueError, match="x.csv: line 2: n is 3 but 2 seeds are listed"):
        results_table.results_rows(good.replace(",2,1 2,", ",3,1 2,", 1), "digits", "x.csv")
    with pytest.raises(ValueError, match="x.csv: line 2: .*expected integers n and seeds"):
        results_table.results_rows(good.replace("82.0000", "eighty", 1), "digits", "x.csv")


def test_paper_tables_fills_table4_from_the_named_grid_and_refuses_a_missing_one(tmp_path, monkeypatch):
    import shutil

    sections = paths.paper_sections("digits")
    for path in [*sections, "params.yaml", paths.grid_params("digits_dytox")]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    monkeypatch.chdir(tmp_path)
    args = ["paper-tables", "--params", "params.yaml", "--sections", *sections, "--table4-grids", "digits_dytox"]
    assert main(args) == 2  # no results table of the grid yet: refused, nothing written
    assert not (tmp_path / paths.paper_table_files("table4")[0]).exists()
    csv_file = tmp_path / paths.table_files("digits_dytox")[1]
    csv_file.write_text(_digits_dytox_csv(), encoding="utf-8")
    assert main(args) == 0
    rows = results_table.results_rows(_digits_dytox_csv(), "digits", "x")
    written = tuple((tmp_path / p).read_text(encoding="utf-8") for p in paths.paper_table_files("table4"))
    assert written == results_table.table4_texts([("digits_dytox", "digits", rows)])
    assert paths.table4_sources(str(tmp_path)) == [("digits_dytox", "grids/digits_dytox/params.yaml",
                                                     "results/tables/digits_dytox_results.csv")]


def test_fcs_published_numbers_come_with_their_source():
    fcs = {(r["dataset"], r["setting"]): r for r in paper_values.fcs_published()}
    assert len(fcs) == 7 and all("CVPR2024-FCS, files/results.txt" in r["source"] for r in fcs.values())
    c5 = fcs[("cifar100", "50+10x5")]
    assert c5["label"] == "CIFAR100-5stages" and len(c5["curve"]) == 6  # base + 5 stages
    assert c5["last_accuracy"] == 62.13
    # FCS's Last is above this paper's Ours Last on every CIFAR-100 setting (59.02, 57.90, 54.25).
    ours = {r["setting"]: r["last_accuracy"] for r in paper_values.reported()
            if r["table"] == "table1" and r["row"] == "Ours" and r["dataset"] == "cifar100"}
    assert all(fcs[("cifar100", s)]["last_accuracy"] > ours[s] for s in ours)
    # Avg: the mean of the printed curve, (65.6 + 55.95 + 54.56 + 51.4 + 48.43 + 46.04) / 6 = 321.98 / 6.
    assert fcs[("tinyimagenet", "100+20x5")]["avg_accuracy"] == pytest.approx(53.663333, abs=1e-5)
    # Every curve has one point per task of its setting (F + C x T: T + 1 points).
    for (dataset, setting), r in fcs.items():
        assert len(r["curve"]) == int(setting.rsplit("x", 1)[1]) + 1, setting
