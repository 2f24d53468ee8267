"""`python -m ncil verify` on a copy of the committed digits results: passes untouched, and names the
first mismatch (file, row, column, expected, found) after any reported number is tampered with."""

import csv
import shutil

import pytest
import yaml

from ncil.pipeline import io, paths
from ncil.reports import recompute
from tests.conftest import ROOT, ncil


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """The committed digits metrics and evaluations, with tables and figures regenerated from them."""
    root = tmp_path_factory.mktemp("reported")
    shutil.copytree(ROOT / "results" / "digits", root / "results" / "digits")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    shutil.copytree(ROOT / "ncil", root / "ncil", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    from ncil.pipeline import experiment_grid

    metrics = [r.metrics_file for r in experiment_grid.runs(params) if (root / r.metrics_file).is_file()]
    assert metrics, "no committed digits results to verify"
    ncil(["tables", "--metrics", *metrics, "--markdown", paths.table_files("digits")[0],
          "--csv", paths.table_files("digits")[1]], root)
    ncil(["paper-sections", "--metrics", *metrics], root)
    ncil(["paper-tables", "--sections", *paths.paper_sections("digits")], root)
    ncil(["figures", "--metrics", *metrics], root)
    table1 = (root / "results/tables/table1.md").read_text()
    block = recompute.readme_section(table1, "digits")
    (root / "README.md").write_text(f"# x\n\n<!-- table1:digits -->\n{block}<!-- /table1:digits -->\n")
    return root, params


@pytest.fixture
def copy(reported, tmp_path):
    root, params = reported
    shutil.copytree(root, tmp_path / "p")
    return tmp_path / "p", params


def test_untouched_results_verify_and_cli_exits_zero(copy):
    root, params = copy
    checked = recompute.verify(root, params, log=lambda *_: None)
    assert checked["metrics"] >= 1 and checked["tables"] == 22 and checked["figures"] >= 1 and checked["readme"] == 1
    proc = ncil(["verify"], root)
    assert "every reported number matches" in proc.stdout


def _first_ok_row(path):
    rows = list(csv.DictReader(open(path)))
    return next(i for i, r in enumerate(rows, start=1) if r["status"] == "ok"), rows


def test_tampered_table_cell_is_named_and_cli_exits_nonzero(copy):
    root, _ = copy
    path = root / "results/tables/table1.csv"
    n, rows = _first_ok_row(path)
    old = rows[n - 1]["mean"]
    text = path.read_text().splitlines()
    text[n] = text[n].replace(f",{old},", ",12.3456,", 1)
    path.write_text("\n".join(text) + "\n")
    proc = ncil(["verify"], root, check=False)
    assert proc.returncode == 1
    msg = proc.stderr
    assert "results/tables/table1.csv" in msg and f"row {n} " in msg and "column mean" in msg
    assert f"expected '{old}'" in msg and "found '12.3456'" in msg


def test_tampered_markdown_cell_is_named(copy):
    root, params = copy
    path = root / "results/tables/table1.md"
    text = path.read_text()
    i = text.index("| Fine-tuning (lower bound) (`finetune`) | ") + len("| Fine-tuning (lower bound) (`finetune`) | ")
    path.write_text(text[:i] + "99.99" + text[i + 5:])
    with pytest.raises(recompute.Mismatch) as err:
        recompute.verify(root, params, log=lambda *_: None)
    e = err.value
    assert e.file.endswith("table1.md") and "Fine-tuning" in e.row and e.column.endswith("Avg") and e.found.startswith("99.99")


@pytest.mark.parametrize("name, old, new, column", [
    ("efcil_benchmark.md", "| FeCAM (`fecam`) | 70.90 [1] |", "| FeCAM (`fecam`) | 71.90 [1] |", "Avg paper"),
    ("efcil_benchmark.csv", "sample-weighted,70.9000,", "sample-weighted,70.8000,", "paper"),
    ("efcil_benchmark.md", "| LDC (`ldc`) | - | not run |", "| LDC (`ldc`) | - | 50.00 ± 0.00 (1) |",
     "Avg ours, sample-weighted"),
])
def test_an_edited_efcil_benchmark_cell_is_named(copy, name, old, new, column):
    root, params = copy
    path = root / "results/tables" / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(recompute.Mismatch) as err:
        recompute.verify(root, params, log=lambda *_: None)
    assert err.value.file.endswith(name) and err.value.column == column


def test_tampered_metrics_json_is_named(copy):
    root, params = copy
    path = next((root / "results/digits").glob("*/*/seed*/metrics.json"))
    data = io.read_json(path)
    expected = data["last_accuracy"]
    data["last_accuracy"] = expected + 0.01
    io.write_json(path, data)
    with pytest.raises(recompute.Mismatch) as err:
        recompute.verify(root, params, log=lambda *_: None)
    e = err.value
    assert e.file.endswith("metrics.json") and e.column == "last_accuracy"
    assert e.expected == pytest.approx(expected) and e.found == pytest.approx(expected + 0.01)


def test_tampered_evaluation_changes_the_recomputed_matrix(copy):
    root, params = copy
    path = next((root / "results/digits").glob("*/*/seed*/eval/task_1.parquet"))
    ev = io.read_predictions(path)
    columns = {k: ev[k] for k in ("sample", "label", "original_label", "label_task", "prediction")}
    columns["prediction"] = columns["label"].copy()  # every prediction right
    io.write_predictions(path, columns, task=1)
    with pytest.raises(recompute.Mismatch) as err:
        recompute.verify(root, params, log=lambda *_: None)
    assert err.value.row.startswith("acc_matrix[1]") and err.value.expected == 100.0


def test_tampered_figure_data_is_caught(copy):
    root, params = copy
    fig = sorted((root / "results/figures").glob("fig3_*.csv"))[0]
    lines = fig.read_text().splitlines()
    cells = lines[2].split(",")
    cells[1] = "1.0000"
    lines[2] = ",".join(cells)
    fig.write_text("\n".join(lines) + "\n")
    with pytest.raises(recompute.Mismatch) as err:
        recompute.verify(root, params, log=lambda *_: None)
    assert err.value.file == f"results/figures/{fig.name}" and err.value.row.startswith("2 (2")


def test_tampered_readme_copy_is_caught(copy):
    root, params = copy
    readme = root / "README.md"
    text = readme.read_text()
    assert "| Joint training (upper bound) (`joint`) | 9" in text
    readme.write_text(text.replace("| Joint training (upper bound) (`joint`) | 9", "| Joint training (upper bound) (`joint`) | 8", 1))
    with pytest.raises(recompute.Mismatch) as err:
        recompute.verify(root, params, log=lambda *_: None)
    assert "README.md" in err.value.file and "Joint" in err.value.row


def test_figure4_weight_maps_from_a_checkpoint(tiny_project, tiny_params, monkeypatch, capsys):
    """In-process (no training): a freshly initialised tiny ViT checkpoint is enough for the maps' contract."""
    from dataclasses import asdict

    import torch

    from ncil.cli import main
    from ncil.models.network import build_network

    p, raw = tiny_params
    monkeypatch.chdir(tiny_project)
    assert main(["prepare"]) == 0
    assert main(["split", "--initial", "4", "--increment", "2", "--out", "split.json"]) == 0
    torch.manual_seed(0)
    net = build_network(p.model, p.dataset.channels, n_outputs=6)
    io.save_checkpoint("t1.pt", {"task": 1, "seen_classes": [0, 1, 2, 3, 4, 5], "model": net.state_dict(),
                                 "config": {"model": asdict(p.model)}, "backbone": "vit"})
    args = ["figure4", "--split", "split.json", "--checkpoints", "t1.pt", "--images", "2",
            "--out-png", "f4.png", "--out-csv", "f4.csv"]
    assert main(args) == 0
    rows = list(csv.DictReader(open("f4.csv")))
    assert {r["map"] for r in rows} == {"uniform", "after task 2"}
    uniform = [float(r["weight"]) for r in rows if r["map"] == "uniform"]
    assert set(uniform) == {1.0} and len(uniform) == 2 * 16  # 2 images x (8/2)^2 patches
    for sample in {r["sample"] for r in rows}:
        w = [float(r["weight"]) for r in rows if r["map"] == "after task 2" and r["sample"] == sample]
        assert max(w) == 1.0 and min(w) > 0  # Eq. 2, max-normalised
    png = open("f4.png", "rb").read()
    assert main(args) == 0
    assert open("f4.png", "rb").read() == png  # byte-identical rerun


def test_tampered_png_is_caught(copy):
    root, params = copy
    png = sorted((root / "results/figures").glob("fig3_*.png"))[0]
    data = bytearray(png.read_bytes())
    data[-20] ^= 0xFF
    png.write_bytes(bytes(data))
    with pytest.raises(recompute.Mismatch) as err:
        recompute.verify(root, params, log=lambda *_: None)
    assert err.value.file == f"results/figures/{png.name}" and "image bytes" in err.value.column


def test_variants_in_metrics_json_are_checked(copy):
    from ncil.pipeline import experiment_grid
    from ncil.reports import metrics

    root, params = copy
    run = next(r for r in experiment_grid.runs(params) if (root / r.metrics_file).is_file())
    evals = [io.read_predictions(root / run.eval_file(t)) for t in range(run.n_tasks)]
    stored = io.read_json(root / run.metrics_file)
    acc, counts = metrics.accuracy_matrix(evals)
    stored["variants"] = metrics.variants(acc, counts, [1] * run.n_tasks)
    identity = {"dataset": run.dataset, "setting": run.setting, "method": run.method, "seed": run.seed}
    recompute.check_metrics("m.json", stored, evals, identity, stored["run"]["label"], [1] * run.n_tasks)
    stored["variants"]["clipped_forgetting"] += 1.0
    with pytest.raises(recompute.Mismatch) as err:
        recompute.check_metrics("m.json", stored, evals, identity, stored["run"]["label"], [1] * run.n_tasks)
    assert (err.value.row, err.value.column) == ("variants", "clipped_forgetting")


# --- 0. stale results: dvc.lock's params against the params file (issue 22, item 2) ---------------
LOCKED = {"train_a": {"params": {"params.yaml": {"train.epochs": 20, "runtime.threads": 1, "dataset": {"name": "digits"}},
                                 "fingerprints.yaml": {"train": "abc"}}},
          "gone": {"params": {"params.yaml": {"train.epochs": 7}}}}
CURRENT = {"train": {"epochs": 20}, "runtime": {"threads": 1}, "dataset": {"name": "digits"}}


def test_results_made_with_the_params_now_are_not_stale():
    # "gone" is in dvc.lock but no longer a stage of dvc.yaml: DVC ignores it, and so does verify
    assert recompute.check_locked_params(["train_a", "new_stage"], LOCKED, CURRENT, "params.yaml") == 1


def test_an_edited_param_makes_verify_name_the_stage_the_key_and_both_values():
    current = {**CURRENT, "train": {"epochs": 5}}
    with pytest.raises(recompute.StaleParams) as err:
        recompute.check_locked_params(["train_a"], LOCKED, current, "params.yaml")
    assert str(err.value).startswith("dvc.lock: stage train_a ran with params.yaml: train.epochs = 20, "
                                     "and params.yaml has 5 now: the results are stale")


@pytest.mark.parametrize("current, key", [
    ({**CURRENT, "runtime": {}}, "runtime.threads"),  # a key removed
    ({**CURRENT, "runtime": {"threads": True}}, "runtime.threads"),  # YAML's true is not 1
    ({**CURRENT, "dataset": {"name": "digits", "root": "x"}}, "dataset.root"),  # a key added to a section
])
def test_a_removed_key_a_bool_for_an_int_and_an_added_subkey_are_differences(current, key):
    with pytest.raises(recompute.StaleParams) as err:
        recompute.check_locked_params(["train_a"], LOCKED, current, "params.yaml")
    assert err.value.column == key


def test_another_params_file_is_not_compared_with_params_yaml_lock_entries():
    assert recompute.check_locked_params(["train_a"], LOCKED, {}, "grids/cifar100/params.yaml") == 0


def test_verify_fails_on_the_committed_grid_after_a_params_edit(tmp_path):
    for name in ("params.yaml", "dvc.yaml", "dvc.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert recompute.locked_params_checked(tmp_path, params, "params.yaml") > 400  # every stage of the default grid
    params["train"]["epochs"] += 1
    with pytest.raises(recompute.StaleParams, match=r"train\.epochs"):
        recompute.locked_params_checked(tmp_path, params, "params.yaml")
