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
    return {(c["method"], c["setting"], c["metric"], c["convention"]): c for c in results_table.efcil_cells(metrics)}


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
    assert all(c["status"] == "not run" and c["mean"] is None
               for c in results_table.efcil_cells(RUNS) if c["method"] != "fecam" or c["setting"] != "base50_inc10")
    assert [s for s in paper_values.EFCIL_SETTINGS] == ["base50_inc10", "base50_inc5", "base40_inc3", "base10_inc10",
                                                        "base5_inc5"]
    assert all((ROOT / "conf/scenario" / f"{s}.yaml").is_file() for s in paper_values.EFCIL_SETTINGS)


def test_the_quoted_fecam_values_carry_their_source_and_convention():
    (v,) = paper_values.efcil_reported()
    assert (v["method"], v["setting"], v["label"], v["avg_accuracy"], v["last_accuracy"]) == \
        ("fecam", "base50_inc10", "50+10x5", 70.9, 62.1)
    assert "FeCAM, NeurIPS 2023" in v["source"] and "issue 25" in v["source"]
    assert v["convention"] == paper_values.CONVENTION_NOT_CHECKED
    quoted = [c for c in results_table.efcil_cells([]) if c["paper"] is not None]
    assert {(c["method"], c["setting"]) for c in quoted} == {("fecam", "base50_inc10")}
    assert all(c["paper_source"] == v["source"] for c in quoted)
    md, _ = results_table.efcil_texts([])
    assert f"1. {v['source']} (accuracy convention: not checked)." in md


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
