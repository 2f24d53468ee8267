"""Seed aggregation, the paper's tables and Figure 3's data (pure functions; hand-computed numbers)."""

import csv
import io

import numpy as np
import pytest

from ncil.reports import paper_values, plots, results_table


def fake_metrics(dataset, setting, label, method, seed, curve, forgetting=10.0):
    return {
        "run": {"dataset": dataset, "setting": setting, "label": label, "method": method, "seed": seed},
        "provenance": {"preset": "paper", "metric_convention": "paper", "order_seed": 1993, "seed": seed},
        "avg_accuracy": float(np.mean(curve)), "last_accuracy": float(curve[-1]), "avg_forgetting": forgetting,
        "accuracy_per_step": list(map(float, curve)),
    }


CONTEXT = {"preset": "paper", "convention": "paper", "order_seed": 1993, "seeds": [1, 2]}


def test_aggregate_mean_std_n_per_dataset_setting_method():
    ms = [fake_metrics("digits", "s", "4+2x3", "ours", 2, [90, 64]),
          fake_metrics("digits", "s", "4+2x3", "ours", 1, [80, 60]),
          fake_metrics("cifar100", "s", "4+2x3", "ours", 1, [70, 50])]
    rows = results_table.aggregate(ms)
    assert [(r["dataset"], r["n"], r["seeds"]) for r in rows] == [("digits", 2, [1, 2]), ("cifar100", 1, [1])]
    assert rows[0]["last_accuracy_mean"] == 62.0
    assert rows[0]["last_accuracy_std"] == pytest.approx(2 * np.sqrt(2))  # sample std of 60, 64
    assert rows[0]["curve_mean"] == [85.0, 62.0]
    assert rows[1]["last_accuracy_std"] == 0.0  # one seed
    with pytest.raises(ValueError, match="seed listed twice"):
        results_table.aggregate(ms + [ms[0]])


def _csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_paper_table_places_ours_beside_the_paper_with_the_difference():
    ms = [fake_metrics("cifar100", "b50_inc10", "50+10x5", "ours", s, [70, v]) for s, v in ((1, 58.0), (2, 60.0))]
    out = results_table.paper_tables(results_table.aggregate(ms), {"cifar100": ["50+10x5"]}, CONTEXT)
    md, text = out["table3"]
    rows = _csv(text)
    full = next(r for r in rows if r["row"] == "Full" and r["setting"] == "50+10x5")
    assert (full["paper"], full["mean"], full["n"], full["diff"]) == ("59.0200", "59.0000", "2", "-0.0200")
    assert "| Full (`ours`) | 59.02 | 59.00 ± 1.41 (2) | -0.02 |" in md
    pks = next(r for r in rows if r["row"] == "+ PKS" and r["setting"] == "50+5x10")
    assert pks["status"] == "not run" and pks["mean"] == "" and pks["paper"] == "56.8200"
    # The table names the preset, the convention, the class-order seed and the seeds.
    assert "Preset `paper`" in md and "class-order seed 1993" in md and "[1, 2]" in md


def test_tables_work_with_no_results_and_our_dataset_shows_the_grid_settings():
    out = results_table.paper_tables([], {"digits": ["4+2x3", "5+1x5"]}, CONTEXT)
    md, text = out["table1"]
    rows = _csv(text)
    digits = [r for r in rows if r["dataset"] == "digits"]
    assert {r["setting"] for r in digits} == {"4+2x3", "5+1x5"}
    assert {r["status"] for r in digits} == {"not run"}
    assert "| Ours (`ours`) | not run | not run | not run | not run |" in md
    assert "| SSRE | 65.88 | - | - |" in md  # a paper row with no implementation here
    # Every paper value of Table 1 is in the CSV (12 rows x 7 columns x Avg/Last, minus 4 unreported).
    paper = [r for r in rows if r["dataset"] != "digits" and r["paper"]]
    assert len(paper) == 12 * 7 * 2 - 4
    assert set(out) == {"table1", "table2", "table3", "table5"}
    t5 = _csv(out["table5"][1])
    assert {r["method"] for r in t5} == {"ours_w_uniform", "ours_w_direct", "ours"}


def test_paper_values_match_method_spec_section_7():
    v = {(r["table"], r["row"], r["dataset"], r["setting"]): r for r in paper_values.reported()}
    assert v[("table1", "Ours", "cifar100", "50+5x10")]["avg_accuracy"] == 70.13
    assert v[("table1", "Ours", "imagenet_subset", "50+5x10")]["last_accuracy"] == 61.42
    assert v[("table2", "Ours", "imagenet_subset", "50+5x10")]["avg_forgetting"] == 18.39
    assert v[("table3", "+ PR", "cifar100", "40+3x20")]["last_accuracy"] == 51.51
    assert v[("table5", "W_i = 1 (uniform patch KD)", "cifar100", "50+10x5")]["last_accuracy"] == 56.18
    # Full (Table 3) = Eq. 2 row (Table 5) = Ours Last (Table 1): one model, three tables.
    for s in ("50+10x5", "50+5x10", "40+3x20"):
        assert (v[("table3", "Full", "cifar100", s)]["last_accuracy"] == v[("table5", "Eq. 2 (inverse distance, ours)",
                "cifar100", s)]["last_accuracy"] == v[("table1", "Ours", "cifar100", s)]["last_accuracy"])
    assert paper_values.canonical_dataset("ImageNet-100") == "imagenet_subset"
    assert paper_values.canonical_dataset("tiny-imagenet") == "tinyimagenet"


def test_curve_table_mean_is_avg_and_last_point_is_last():
    ms = [fake_metrics("digits", "s", "4+2x3", m, seed, c) for m, seed, c in
          (("joint", 1, [90, 80, 70]), ("joint", 2, [92, 82, 74]), ("ours", 1, [90, 50, 40]))]
    rows = results_table.aggregate(ms)
    table = plots.curve_table(rows, "digits", "s", ["ours", "joint", "lwf"])
    assert plots.curve_methods(table) == ["ours", "joint"]  # grid order; lwf has no results
    assert [r["task"] for r in table] == [1, 2, 3]
    joint = next(r for r in rows if r["method"] == "joint")
    assert np.mean([r["joint"] for r in table]) == pytest.approx(joint["avg_accuracy_mean"])
    assert table[-1]["joint"] == joint["last_accuracy_mean"] == 72.0
    assert table[0]["joint_std"] == pytest.approx(np.sqrt(2)) and table[0]["joint_n"] == 2
    # Every grid method has its columns (empty without results), so the CSV's shape follows the grid.
    assert plots.curve_methods(table, with_data=False) == ["ours", "joint", "lwf"]
    assert plots.table_to_csv(table).splitlines()[1] == "1,90.0000,0.0000,1,91.0000,1.4142,2,,,0"
    assert len(plots.curve_table([], "digits", "s", ["ours"], n_tasks=4)) == 4


def test_png_is_deterministic_and_carries_no_software_or_date():
    table = [{"task": 1, "ours": 90.0, "ours_std": 1.0, "ours_n": 3}, {"task": 2, "ours": 60.0, "ours_std": 2.0, "ours_n": 3}]
    a = plots.png_bytes(plots.draw_curves(table, "t"))
    b = plots.png_bytes(plots.draw_curves(table, "t"))
    assert a == b and a.startswith(b"\x89PNG")
    assert b"Software" not in a and b"matplotlib" not in a.lower()
    weights = {"uniform": np.ones((2, 16)), "after task 2": np.linspace(0.1, 1, 32).reshape(2, 16)}
    png = plots.png_bytes(plots.draw_weight_maps(np.zeros((2, 8, 8, 1), np.uint8), weights, "w"))
    assert png == plots.png_bytes(plots.draw_weight_maps(np.zeros((2, 8, 8, 1), np.uint8), weights, "w"))
    data = plots.weight_map_table(weights, [5, 9])
    assert len(data) == 2 * 2 * 16 and data[0] == {"map": "uniform", "sample": 5, "patch": 0, "weight": 1.0}


def test_figure3_names_and_dashes_the_official_presets_methods():
    table = [{"task": k, **{f"{m}{suffix}": v for m in ("ours", "fcs") for suffix, v in (("", 50.0 + k), ("_std", 1.0),
                                                                                         ("_n", 3))}} for k in (1, 2)]
    fig = plots.draw_curves(table, "t")
    lines = {line.get_label(): line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert lines == {"ours (n=3)": "-", "fcs (n=3, official preset)": "--"}


def test_cost_rows_sum_tasks_average_seeds_and_take_the_peak():
    from ncil.reports import cost_table

    bench = "s\th:m:s\tmax_rss\tmax_vms\n12.5\t0:00:12\t900.0\t2000\n"
    assert cost_table.read_benchmark(bench, "x.tsv") == {"s": 12.5, "max_rss": 900.0}
    with pytest.raises(ValueError, match="x.tsv"):
        cost_table.read_benchmark("a\tb\n1\t2\n", "x.tsv")
    recs = [{"label": "4+2x3", "method": "ours", "seed": s, "task": t, "s": v, "max_rss": m}
            for s, t, v, m in ((1, 0, 10.0, 500.0), (1, 1, 5.0, 700.0), (2, 0, 12.0, 400.0), (2, 1, 7.0, 650.0))]
    (row,) = cost_table.cost_rows(recs)
    assert row["train_s_per_run"] == 17.0 and row["slowest_task_s"] == 12.0 and row["peak_rss_mb"] == 700.0
    assert row["seeds"] == 2 and row["tasks"] == 4
    assert "| 4+2x3 | ours | 2 | 4 | 17.0 | 12.0 | 700 |" in cost_table.to_markdown([row], "digits")


# --- Item 8: a second grid adds its sections and rewrites nothing of the first --------------------

import copy  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from ncil.pipeline import experiment_grid, paths  # noqa: E402
from ncil.reports import report
from ncil.reports.recompute import readme_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _committed_params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _committed_metrics(params):
    return [json.loads((ROOT / run.metrics_file).read_text()) for run in experiment_grid.runs(params)]


def _committed(path):
    return (ROOT / path).read_text(encoding="utf-8")


def _folder_grid():
    """A second grid on a data set of one's own ("folder"): two settings, two methods, two seeds."""
    params = copy.deepcopy(_committed_params())
    params["dataset"]["name"] = "folder"
    params["scenario"] = {"base4_inc2": {"initial_increment": 4, "increment": 2},
                          "base2_inc4": {"initial_increment": 2, "increment": 4}}
    params["method"] = {m: params["method"][m] for m in ("finetune", "ours")}
    params["seeds"] = [1, 2]
    metrics = []
    for run in experiment_grid.runs(params):
        label = f"{run.initial}+{run.increment}x{run.n_tasks - 1}"
        curve = [90.0 - 10 * t - run.seed - (5 if run.method == "finetune" else 0) for t in range(run.n_tasks)]
        m = fake_metrics("folder", run.setting, label, run.method, run.seed, curve, forgetting=7.0 + run.seed)
        m["provenance"]["preset"] = "smoke"
        metrics.append(m)
    return params, metrics


def test_default_paper_tables_and_sections_are_the_committed_bytes():
    params = _committed_params()
    texts = report.table_texts(params, _committed_metrics(params))
    expected = {*(f for t in paths.PAPER_TABLES for f in paths.paper_table_files(t)), *paths.paper_sections("digits")}
    assert set(texts) == expected
    for path, text in texts.items():
        assert text == _committed(path), path
    # The committed tables are also exactly what the committed section files assemble to.
    sections = report.read_sections(str(ROOT))
    assert set(sections) == set(paths.paper_sections("digits"))
    assert report.assemble_texts(sections, report.default_context(params)) == {
        p: t for p, t in texts.items() if p.startswith(paths.TABLES_DIR + "/table")}


def test_a_second_dataset_adds_its_sections_and_every_digits_byte_stays():
    params = _committed_params()
    folder_params, folder_metrics = _folder_grid()
    # The folder grid runs with the committed digits sections on disk.
    texts = report.table_texts(folder_params, folder_metrics, report.read_sections(str(ROOT)))
    # It writes its own sections and the assembled tables, never a digits section.
    assert set(paths.paper_sections("folder")) <= set(texts)
    assert not set(paths.paper_sections("digits")) & set(texts)
    readme = _committed("README.md")
    for table in paths.PAPER_TABLES:
        md_path, csv_path = paths.paper_table_files(table)
        old_md, new_md = _committed(md_path), texts[md_path]
        digits_md = _committed(paths.paper_section_files("digits", table)[0])
        digits_section = digits_md[digits_md.index("## digits"):]
        assert digits_section in new_md  # the digits section, byte for byte
        headings = [line for line in new_md.splitlines() if line.startswith("## ")]
        assert headings == ["## digits", "## folder"] + [h for h in old_md.splitlines() if h.startswith("## ")][1:]
        assert readme_section(new_md, "digits") == readme_section(old_md, "digits")
        assert f"<!-- {table}:digits -->\n{readme_section(new_md, 'digits')}<!-- /{table}:digits -->" in readme \
            or f"<!-- {table}:digits -->" not in readme
        # CSV: the committed rows, in order, with the folder rows inserted after digits' rows.
        old_rows, new_rows = _committed(csv_path).splitlines(), texts[csv_path].splitlines()
        digits_rows = [r for r in old_rows if r.split(",")[1] == "digits"]
        folder_rows = [r for r in new_rows if r.split(",")[1] == "folder"]
        assert folder_rows and [r for r in new_rows if r.split(",")[1] != "folder"] == old_rows
        assert new_rows.index(folder_rows[0]) == new_rows.index(digits_rows[-1]) + 1
        # Both grids' settings are named; the header's context covers both (presets and seeds).
        assert {r.split(",")[2] for r in folder_rows} == {"4+2x3", "2+4x2"}
        assert "Preset `paper, smoke, official`" in new_md and "seeds [1, 2, 3]" in new_md
    t1 = _csv(texts[paths.paper_table_files("table1")[1]])
    ours = next(r for r in t1 if r["dataset"] == "folder" and r["method"] == "ours" and r["setting"] == "4+2x3"
                and r["metric"] == "last_accuracy")
    assert (ours["mean"], ours["n"], ours["seeds"]) == ("58.5000", "2", "1 2")  # task 3: 90 - 30 - seed
    # Its figures are its own files; the digits figures are not among them.
    digits_figures = {paths.curve_figure_files("digits", s)[0] for s in params["scenario"]}
    folder_figures = set(report.curve_tables(folder_params, folder_metrics))
    assert folder_figures == {paths.curve_figure_files("folder", s)[0] for s in folder_params["scenario"]}
    assert not folder_figures & digits_figures
    assert paths.weight_map_files("folder") != paths.weight_map_files("digits")
    # Rebuilding the digits grid afterwards, with the folder sections on disk, keeps them.
    folder_sections = {p: t for p, t in texts.items() if p in paths.paper_sections("folder")}
    again = report.table_texts(params, _committed_metrics(params), folder_sections)
    for table in paths.PAPER_TABLES:
        md_path, csv_path = paths.paper_table_files(table)
        assert again[md_path] == texts[md_path] and again[csv_path] == texts[csv_path]


def test_assembly_is_stable_and_incomplete_sections_are_refused():
    folder_params, folder_metrics = _folder_grid()
    sections = {**report.read_sections(str(ROOT)), **report.section_texts(folder_params, folder_metrics)}
    defaults = report.default_context(folder_params)
    forward = report.assemble_texts(sections, defaults)
    assert report.assemble_texts(dict(reversed(list(sections.items()))), defaults) == forward
    missing = paths.paper_section_files("folder", "table3")[1]
    with pytest.raises(ValueError, match=missing.replace("+", r"\+")):
        report.assemble_texts({p: t for p, t in sections.items() if p != missing}, defaults)
    with pytest.raises(ValueError, match="not a paper table section file"):
        report.assemble_texts({"results/tables/folder/table4.md": ""}, defaults)
    broken = dict(sections)
    t1, t2 = (paths.paper_section_files("folder", t)[0] for t in ("table1", "table2"))
    broken[t1] = sections[t2]
    with pytest.raises(ValueError, match="results/tables/folder/table1.md: not a section of table1"):
        report.assemble_texts(broken, defaults)


def test_context_line_round_trips_and_merging_equals_context_from_over_all_metrics():
    _, folder_metrics = _folder_grid()
    digits = [fake_metrics("digits", "s", "4+2x3", "ours", s, [80, 60]) for s in (1, 3)]
    defaults = {"preset": "paper", "convention": "paper", "order_seed": 1993, "seeds": [9]}
    parts = [results_table.context_from(ms, defaults) for ms in (digits, folder_metrics)]
    for c in parts:
        assert results_table.parse_context_line(results_table.context_line(c), "x") == {**c, "order_seed": str(c["order_seed"])}
    merged = results_table.merge_contexts([results_table.parse_context_line(results_table.context_line(c), "x") for c in parts])
    assert results_table.context_line(merged) == results_table.context_line(results_table.context_from(digits + folder_metrics, defaults))
    assert merged["seeds"] == [1, 2, 3] and merged["preset"] == "paper, smoke"
    with pytest.raises(ValueError, match="f.md: line 3 is not a table context line"):
        results_table.parse_context_line("Preset paper", "f.md")


def test_section_order_puts_own_datasets_sorted_before_the_papers():
    assert results_table.section_order(["imagenet_subset", "folder", "cifar100", "digits"]) == [
        "digits", "folder", "cifar100", "imagenet_subset"]


def test_readme_copy_of_digits_ignores_a_dataset_whose_name_starts_with_digits():
    other, metrics = _folder_grid()
    other["dataset"]["name"] = "digits_own"
    for m in metrics:
        m["run"]["dataset"] = "digits_own"
    texts = report.table_texts(other, metrics, report.read_sections(str(ROOT)))
    md = paths.paper_table_files("table1")[0]
    assert readme_section(texts[md], "digits") == readme_section(_committed(md), "digits")
