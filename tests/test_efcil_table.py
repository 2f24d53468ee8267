"""The exemplar-free (EFCIL) benchmark table (issue 25): ours from hand-made metrics in both accuracy
conventions, "not run" without a run, the quoted paper values with their sources, and the committed file."""

import math

import pytest

from ncil.pipeline import paths
from ncil.reports import paper_values, results_table
from tests.conftest import ROOT


def _metrics(method, setting, seed, avg, last, ta_avg, ta_last, dataset="cifar100"):
    """A metrics.json's contents as far as the table reads them (sample-weighted fields and their
    task-averaged variants)."""
    return {"run": {"dataset": dataset, "setting": setting, "method": method, "seed": seed, "label": "x"},
            "avg_accuracy": avg, "last_accuracy": last,
            "variants": {"task_averaged_avg_accuracy": ta_avg, "task_averaged_last_accuracy": ta_last}}


# Two FeCAM seeds on 50+10x5: sample-weighted Avg 70, 72 (mean 71, std sqrt(2) = 1.41), Last 60, 64 (62, 2.83);
# task-averaged Avg 75, 79 (77, 2.83), Last 65, 66 (65.5, 0.71). A digits run and a 50+5x10 run of another
# data set must not reach the CIFAR-100 cells.
RUNS = [_metrics("fecam", "base50_inc10", 2, 72.0, 64.0, 79.0, 66.0),
        _metrics("fecam", "base50_inc10", 1, 70.0, 60.0, 75.0, 65.0),
        _metrics("fecam", "base50_inc5", 1, 11.0, 11.0, 11.0, 11.0, dataset="digits")]


def _cells(metrics):
    """The CIFAR-100 cells by (method, setting, metric, convention)."""
    return {(c["method"], c["setting"], c["metric"], c["convention"]): c for c in results_table.efcil_cells(metrics)
            if c["dataset"] == "cifar100"}


def test_a_fecam_run_fills_its_cells_with_mean_and_std_in_both_conventions():
    cells = _cells(RUNS)
    sw, ta = paper_values.SAMPLE_WEIGHTED, paper_values.TASK_AVERAGED
    expected = {("avg_accuracy", sw): (71.0, math.sqrt(2)), ("last_accuracy", sw): (62.0, math.sqrt(8)),
                ("avg_accuracy", ta): (77.0, math.sqrt(8)), ("last_accuracy", ta): (65.5, math.sqrt(0.5))}
    for (metric, conv), (mean, std) in expected.items():
        c = cells[("fecam", "base50_inc10", metric, conv)]
        assert (c["status"], c["n"], c["seeds"]) == ("ok", 2, "1 2")
        assert c["mean"] == pytest.approx(mean) and c["std"] == pytest.approx(std)
    assert cells[("fecam", "base50_inc5", "avg_accuracy", sw)]["status"] == "not run"  # the digits run is not CIFAR-100
    md, csv_text = results_table.efcil_texts(RUNS)
    assert "| FeCAM (`fecam`) | 70.90 [1] | 71.00 ± 1.41 (2) | 77.00 ± 2.83 (2) | 62.10 [1] | 62.00 ± 2.83 (2) " \
           "| 65.50 ± 0.71 (2) |" in md
    assert ("efcil_benchmark,cifar100,base50_inc10,50+10x5,FeCAM,fecam,last_accuracy,task-averaged,62.1000,"
            "not checked,") in csv_text
    assert csv_text.splitlines()[4].endswith(",65.5000,0.7071,2,1 2,ok")


def test_absent_methods_and_settings_read_not_run_and_unquoted_values_read_dash():
    md, _ = results_table.efcil_texts(RUNS)
    for label, method in paper_values.EFCIL_ROWS[1:]:
        assert f"| {label} (`{method}`) | - | not run | not run | - | not run | not run |" in md
    assert all(c["status"] == "not run" and c["mean"] is None for c in results_table.efcil_cells(RUNS)
               if (c["dataset"], c["method"], c["setting"]) != ("cifar100", "fecam", "base50_inc10"))
    settings = paper_values.EFCIL_SETTINGS
    assert list(settings["cifar100"]) == ["base50_inc10", "base50_inc5", "base40_inc3", "base10_inc10", "base5_inc5"]
    assert all((ROOT / "conf/scenario" / f"{s}.yaml").is_file() for d in settings.values() for s in d)


def test_a_setting_label_is_the_split_of_its_data_set():
    """F + C x T with T = (classes - F) / C of that data set: 10+10x9 on CIFAR-100's 100 classes, 10+10x19 on
    TinyImageNet's 200; cold start is F = C, warm start F > C."""
    from ncil.data.scenario import task_sizes
    from ncil.pipeline.hydra_conf import compose

    for dataset, settings in paper_values.EFCIL_SETTINGS.items():
        n_classes = compose([f"dataset={dataset}"])["dataset"]["n_classes"]
        scenarios = compose([f"dataset={dataset}", f"scenario=[{','.join(settings)}]"])["scenario"]
        for setting, (label, start) in settings.items():
            sizes = task_sizes(n_classes, scenarios[setting]["initial_increment"], scenarios[setting]["increment"])
            assert label == f"{sizes[0]}+{sizes[1]}x{len(sizes) - 1}", (dataset, setting)
            assert start == ("cold start" if sizes[0] == sizes[1] else "warm start"), (dataset, setting)
    assert paper_values.EFCIL_SETTINGS["tinyimagenet"]["base10_inc10"][0] == "10+10x19"


def test_every_quoted_value_carries_its_source_and_convention():
    quoted = {(v["method"], v["dataset"], v["setting"]): v for v in paper_values.efcil_reported()}
    fecam = quoted[("fecam", "cifar100", "base50_inc10")]
    assert (fecam["label"], fecam["avg_accuracy"], fecam["last_accuracy"]) == ("50+10x5", 70.9, 62.1)
    assert "FeCAM, NeurIPS 2023" in fecam["source"] and "issue 25" in fecam["source"]
    assert fecam["convention"] == paper_values.CONVENTION_NOT_CHECKED
    # AdaGauss's Table 1 (own) and EFC's values as AdaGauss quotes them: cold start, T = 10 and 20 equal tasks.
    ada = quoted[("adagauss", "tinyimagenet", "base20_inc20")]
    assert (ada["label"], ada["avg_accuracy"], ada["last_accuracy"]) == ("20+20x9", 50.6, 36.5)
    assert "AdaGauss, NeurIPS 2024, Table 1" in ada["source"]
    efc = quoted[("efc", "imagenet_subset", "base5_inc5")]
    assert (efc["label"], efc["avg_accuracy"], efc["last_accuracy"]) == ("5+5x19", 49.9, 35.8)
    assert "EFC, ICLR 2024, Table 1" in efc["source"] and "AdaGauss" in efc["source"]
    assert {k[0] for k in quoted} == {"fecam", "adagauss", "efc"} and len(quoted) == 13
    assert all(v["avg_accuracy"] > v["last_accuracy"] for v in quoted.values())  # Avg averages the earlier steps in
    cells = [c for c in results_table.efcil_cells([]) if c["paper"] is not None]
    assert {(c["method"], c["dataset"], c["setting"]) for c in cells} == set(quoted)
    assert all(c["paper_source"] == quoted[(c["method"], c["dataset"], c["setting"])]["source"] for c in cells)
    md, _ = results_table.efcil_texts([])
    assert f"1. {fecam['source']} (accuracy convention: not checked)." in md
    assert "## TinyImageNet 20+20x9 (`base20_inc20`, cold start)" in md
    assert "| AdaGauss (`adagauss`) | 50.60 [3] | not run | not run | 36.50 [3] | not run | not run |" in md


def test_a_run_fills_the_cells_of_its_own_data_set_only():
    """The same scenario id on two data sets (10+10x9 and 10+10x19) are two settings."""
    runs = [_metrics("adagauss", "base10_inc10", 1, 40.0, 30.0, 41.0, 31.0, dataset="tinyimagenet")]
    cells = {(c["dataset"], c["setting"], c["method"], c["metric"], c["convention"]): c
             for c in results_table.efcil_cells(runs)}
    sw = paper_values.SAMPLE_WEIGHTED
    assert cells[("tinyimagenet", "base10_inc10", "adagauss", "avg_accuracy", sw)]["mean"] == 40.0
    assert cells[("cifar100", "base10_inc10", "adagauss", "avg_accuracy", sw)]["status"] == "not run"
    assert cells[("imagenet_subset", "base10_inc10", "adagauss", "avg_accuracy", sw)]["status"] == "not run"


def test_metrics_without_the_task_averaged_variant_are_refused_by_name():
    old = {"run": {"dataset": "cifar100", "setting": "base50_inc10", "method": "fecam", "seed": 1},
           "avg_accuracy": 70.0, "last_accuracy": 60.0}
    with pytest.raises(ValueError, match="cifar100/base50_inc10/fecam: .*task-averaged avg_accuracy"):
        results_table.efcil_cells([old])


def test_the_committed_table_is_what_paper_tables_writes():
    md_path, csv_path = paths.paper_table_files(results_table.EFCIL)
    md, csv_text = results_table.efcil_texts([])
    assert (ROOT / md_path).read_text(encoding="utf-8") == md
    assert (ROOT / csv_path).read_text(encoding="utf-8") == csv_text
