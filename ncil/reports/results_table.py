"""Results tables: seed aggregation and the paper's Tables 1, 2, 3 and 5 (pure: dicts in, text out).

* ``aggregate``: mean, standard deviation (ddof=1; 0 for one seed) and number of seeds of every
  metric per (data set, setting, method), from the contents of ``metrics.json`` files.
* ``paper_tables``: each table as Markdown shaped like the paper (one section per data set, methods as
  rows, settings as columns) and as a tidy CSV (one row per table cell). Data sets of the paper
  (``ncil.reports.paper_values``) show the paper's value, ours and the difference (ours - paper); other data
  sets (digits) show ours only. A (data set, setting, method) without results reads "not run".
* ``section_cells`` / ``section_lines``: one data set's section; ``assemble``: a table from the sections
  of several data sets (each written by its own grid), their context lines merged (``merge_contexts``),
  byte-equal to ``cells_to_markdown`` / ``cells_to_csv`` over all their cells.
"""

from __future__ import annotations

import csv
import io
import math
import re

import numpy as np

from ncil.reports import paper_values
from ncil.reports.metrics import CONVENTION_TEXT
from ncil.reports.metrics_json import UNRECORDED_PRECISION, join_values  # the metrics layout's owner

COLUMNS = ("avg_accuracy", "last_accuracy", "avg_forgetting")
HEADERS = {"avg_accuracy": "Avg", "last_accuracy": "Last", "avg_forgetting": "Forgetting"}
NOT_RUN = "not run"
NOT_REPORTED = "-"
TABLE_NAMES = ("table1", "table2", "table3", "table5")
TABLE_TITLES = {
    "table1": "Table 1: average (Avg) and last (Last) top-1 accuracy",
    "table2": "Table 2: average forgetting F_T (lower is better)",
    "table3": "Table 3: ablation, Last top-1 accuracy",
    "table5": "Table 5: choice of W_i in PKS, Last top-1 accuracy",
    "table4": "Table 4: DyTox and DyTox + PKS (exemplar-based), Avg, Last and forgetting",
    "efcil_benchmark": "Exemplar-free (EFCIL) benchmark: Avg and Last top-1 accuracy on CIFAR-100, TinyImageNet and "
                       "ImageNet-Subset, both conventions",
}
TABLE_METRICS = {"table1": ("avg_accuracy", "last_accuracy"), "table2": ("avg_forgetting",),
                 "table3": ("last_accuracy",), "table5": ("last_accuracy",),
                 "table4": ("avg_accuracy", "last_accuracy", "avg_forgetting")}
EFCIL = "efcil_benchmark"  # issue 25's comparison table (``efcil_texts``): not a paper table, no sections
TABLE4 = "table4"  # not in TABLE_NAMES: made from the Table 4 grids' results tables (``table4_texts``)
CSV_FIELDS = ["table", "dataset", "setting", "row", "method", "metric", "paper", "mean", "std", "n", "seeds",
              "diff", "status"]


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over seeds; the std of a single seed is 0."""
    values = np.asarray(values, float)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else 0.0)


def precision_of(m: dict) -> str | None:
    """The training precision a metrics.json records (``provenance.precision``), None if it has none."""
    value = m.get("provenance", {}).get("precision")
    return None if value is None else str(value)


def joined_precision(values) -> str | None:
    """Several results' training precisions as one (``join_values``): None when none records one (the
    tables then print no precision, as before it was recorded), "unrecorded" for those that do not
    beside those that do."""
    values = list(values)
    if all(v is None for v in values):
        return None
    return join_values(UNRECORDED_PRECISION if v is None else v for v in values)


def aggregate(metrics: list[dict]) -> list[dict]:
    """Group metrics.json contents by (data set, setting, method): mean, std and n of each metric
    (``<metric>_mean`` / ``<metric>_std``), of the Acc_k curve (``curve_mean`` / ``curve_std``), the seeds
    and the training precision of the seeds' runs (``precision``: ``joined_precision`` of theirs).
    Rows come in first-seen order of (data set, setting, method); seeds sorted."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for m in metrics:
        run = m["run"]
        groups.setdefault((run.get("dataset", ""), run["setting"], run["method"]), []).append(m)
    rows = []
    for (dataset, setting, method), members in groups.items():
        members = sorted(members, key=lambda m: m["run"]["seed"])
        seeds = [m["run"]["seed"] for m in members]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{dataset}/{setting}/{method}: seed listed twice in {seeds}")
        row = {"dataset": dataset, "setting": setting, "label": members[0]["run"]["label"], "method": method,
               "seeds": seeds, "n": len(members), "precision": joined_precision(precision_of(m) for m in members)}
        for col in COLUMNS:
            row[f"{col}_mean"], row[f"{col}_std"] = mean_std([m[col] for m in members])
        curves = [m["accuracy_per_step"] for m in members if "accuracy_per_step" in m]
        if len(curves) == len(members) and len({len(c) for c in curves}) == 1:
            curves = np.asarray(curves, float)  # (n_seeds, T)
            row["curve_mean"] = curves.mean(axis=0).tolist()
            row["curve_std"] = (curves.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(curves.shape[1])).tolist()
        rows.append(row)
    return rows


def _pm(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}"


def _num(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _precision_part(precision: str | None) -> str:
    return "" if precision is None else f"training precision `{precision}`; "


def context_line(context: dict) -> str:
    """The line under a paper table's title: preset, training precision (``context["precision"]``; no
    such part when it is None or absent: results from before it was recorded), metric convention,
    class-order seed, seeds."""
    return (f"Preset `{context['preset']}`; {_precision_part(context.get('precision'))}"
            f"metric convention `{context['convention']}` ({CONVENTION_TEXT}); "
            f"class-order seed {context['order_seed']}; mean ± std over seeds {context['seeds']} "
            "(n per cell). Accuracies in %.")


def to_markdown(rows: list[dict], dataset: str, context: dict) -> str:
    """The per-data-set overview: every (setting, method) of the grid with Avg, Last, forgetting. The
    training precision is the rows' own (``aggregate``), so the table says what its numbers came from."""
    precision = joined_precision(r.get("precision") for r in rows) if rows else None
    lines = [
        f"# Results on {dataset}",
        "",
        f"Preset `{context['preset']}`; {_precision_part(precision)}"
        f"metric convention `{context['convention']}` (sample-weighted Acc_k, "
        "base task included in Avg, forgetting with the max over earlier steps); class-order seed "
        f"{context['order_seed']}; mean ± std over seeds {context['seeds']} (n per row). Accuracies in %.",
        "",
        "| setting | method | Avg | Last | Forgetting | n |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['method']} | {_pm(r['avg_accuracy_mean'], r['avg_accuracy_std'])} | "
            f"{_pm(r['last_accuracy_mean'], r['last_accuracy_std'])} | "
            f"{_pm(r['avg_forgetting_mean'], r['avg_forgetting_std'])} | {r['n']} |"
        )
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    fields = ["setting", "label", "method", "n", "seeds"] + [f"{c}_{s}" for c in COLUMNS for s in ("mean", "std")]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**{k: r[k] for k in fields if k != "seeds"}, "seeds": " ".join(map(str, r["seeds"])),
                         **{f"{c}_{s}": f"{r[f'{c}_{s}']:.4f}" for c in COLUMNS for s in ("mean", "std")}})
    return buf.getvalue()


# --- The paper's tables --------------------------------------------------------------------------


def section_cells(table: str, dataset: str, rows: list[dict], settings: list[str]) -> list[dict]:
    """Every cell of one data set's section of one paper table (its CSV rows), in display order.

    ``rows``: ``aggregate`` output (other data sets' rows are ignored). A data set of the paper
    (``paper_values.DATASETS``) shows the paper's rows and settings with its value, ours and the
    difference (no cells where the paper does not report the table); another data set shows the rows
    that have a method here (plus our baselines and its other methods in Tables 1 and 2), over
    ``settings`` (its grid's setting labels), ours only. Tables 1-3 end with the official preset's rows
    (``paper_values.OFFICIAL_ROWS``), which have no paper value.
    """
    by_key = {(paper_values.canonical_dataset(r["dataset"]), r["label"], r["method"]): r for r in rows}
    reported = {(v["dataset"], v["setting"], v["row"]): v for v in paper_values.reported() if v["table"] == table}
    metrics = TABLE_METRICS[table]
    cells = []

    def cell(setting, label, method, metric, paper):
        r = by_key.get((dataset, setting, method)) if method else None
        rec = {"table": table, "dataset": dataset, "setting": setting, "row": label, "method": method or "",
               "metric": metric, "paper": paper, "mean": None, "std": None, "n": 0, "seeds": "", "diff": None}
        if r is not None:
            rec.update(mean=r[f"{metric}_mean"], std=r[f"{metric}_std"], n=r["n"],
                       seeds=" ".join(map(str, r["seeds"])))
            if paper is not None and not math.isnan(rec["mean"]):
                rec["diff"] = rec["mean"] - paper
        rec["status"] = "ok" if r is not None else ("not run" if method else "not implemented")
        cells.append(rec)

    official_rows = paper_values.OFFICIAL_ROWS if table in paper_values.OFFICIAL_ROW_TABLES else []
    if dataset not in paper_values.DATASETS:
        row_specs = [(label, m) for label, m in paper_values.TABLE_ROWS[table] if m] + official_rows
        if table in ("table1", "table2"):
            row_specs = paper_values.EXTRA_METHODS + row_specs
            known = {m for _, m in row_specs}
            others = sorted({r["method"] for r in rows if r["dataset"] == dataset} - known)
            row_specs += [(m, m) for m in others]
        for label, method in row_specs:
            for setting in settings:
                for metric in metrics:
                    cell(setting, label, method, metric, None)
        return cells
    if not any(d == dataset for d, _, _ in reported):
        return cells
    paper_settings = [s for s in paper_values.DATASETS[dataset][1]
                      if any((dataset, s, lab) in reported for lab, _ in paper_values.TABLE_ROWS[table])]
    for label, method in paper_values.TABLE_ROWS[table] + official_rows:
        for setting in paper_settings:
            v = reported.get((dataset, setting, label), {})
            for metric in metrics:
                cell(setting, label, method, metric, v.get(metric))
    return cells


def section_order(datasets) -> list[str]:
    """Sections of a paper table: data sets the paper did not use first (sorted by name), then the
    paper's data sets in the paper's order, each once (stable whatever order they are given in)."""
    names = set(datasets)
    return sorted(names - set(paper_values.DATASETS)) + [d for d in paper_values.DATASETS if d in names]


def table_cells(table: str, rows: list[dict], grid_settings: dict[str, list[str]]) -> list[dict]:
    """Every cell of one paper table (one grid's view): the grid's own data sets first (ours only, in
    ``grid_settings`` order), then every paper data set that reports this table (paper, ours, difference).

    ``rows``: ``aggregate`` output. ``grid_settings``: data set -> setting labels of the grid.
    """
    own = [d for d in grid_settings if paper_values.canonical_dataset(d) not in paper_values.DATASETS]
    cells = []
    for dataset in own:
        cells += section_cells(table, dataset, rows, grid_settings[dataset])
    for dataset in paper_values.DATASETS:
        cells += section_cells(table, dataset, rows, [])
    return cells


def cells_to_csv(cells: list[dict]) -> str:
    """Tidy CSV: one row per table cell; numbers with 4 decimals, empty where there is none."""
    return tidy_csv(cells, CSV_FIELDS, ("paper", "mean", "std", "diff"))


def tidy_csv(cells: list[dict], fields, numbers: tuple[str, ...]) -> str:
    """One CSV row per cell, the columns ``fields``; the columns ``numbers`` with 4 decimals, empty where None."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for c in cells:
        writer.writerow({**c, **{k: _fmt4(c[k]) for k in numbers}})
    return buf.getvalue()


def _fmt4(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _ours(c: dict) -> str:
    if c["status"] != "ok":
        return NOT_RUN if c["status"] == "not run" else NOT_REPORTED
    return "n/a" if math.isnan(c["mean"]) else f"{c['mean']:.2f} ± {c['std']:.2f} ({c['n']})"


def _diff(c: dict) -> str:
    return NOT_REPORTED if c["diff"] is None else f"{c['diff']:+.2f}"


EXPLANATION = ("Paper data sets: the paper's value, ours (mean ± std (n seeds)) and the difference ours - paper; "
               "\"not run\": no result of that method in this grid yet; \"-\": not reported / no such method here.")


def header_lines(table: str, context: dict) -> list[str]:
    """Title, context line and legend of a paper table (before its first section)."""
    return [f"# {TABLE_TITLES[table]}", "", context_line(context), EXPLANATION, ""]


def section_heading(dataset: str) -> str:
    """The Markdown heading of a data set's section (the one place that spells it)."""
    name = paper_values.DATASETS.get(dataset, (dataset,))[0]
    return f"## {name}" + ("" if name == dataset else f" (`{dataset}`)")


def section_lines(dataset: str, part: list[dict]) -> list[str]:
    """One data set's section: heading, table shaped like the paper's, a blank line."""
    with_paper = dataset in paper_values.DATASETS
    settings = list(dict.fromkeys(c["setting"] for c in part))
    metrics = list(dict.fromkeys(c["metric"] for c in part))
    header = ["method"]
    for s in settings:
        for m in metrics:
            header += [f"{s} {HEADERS[m]} paper", "ours", "diff"] if with_paper else [f"{s} {HEADERS[m]}"]
    lines = [section_heading(dataset), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in dict.fromkeys(c["row"] for c in part):
        by = {(c["setting"], c["metric"]): c for c in part if c["row"] == label}
        method = next(iter(by.values()))["method"]
        out = [f"{label} (`{method}`)" if method and method != label else label]
        for s in settings:
            for m in metrics:
                c = by[(s, m)]
                out += [_num(c["paper"]) or NOT_REPORTED, _ours(c), _diff(c)] if with_paper else [_ours(c)]
        lines.append("| " + " | ".join(out) + " |")
    return lines + [""]


def cells_to_markdown(table: str, cells: list[dict], context: dict) -> str:
    """The table shaped like the paper's: per data set, methods as rows, settings x metrics as columns."""
    lines = header_lines(table, context)
    for dataset in dict.fromkeys(c["dataset"] for c in cells):
        lines += section_lines(dataset, [c for c in cells if c["dataset"] == dataset])
    return "\n".join(lines)


# --- Assembling a paper table from every data set's section --------------------------------------

_CONTEXT_LINE = re.compile(
    r"Preset `(?P<preset>[^`]*)`; (?:training precision `(?P<precision>[^`]*)`; )?"  # absent: written before it
    r"metric convention `(?P<convention>[^`]*)` \(.*\); class-order seed "
    r"(?P<order_seed>.*); mean ± std over seeds \[(?P<seeds>[0-9, ]*)\] \(n per cell\)\. Accuracies in %\.")


def parse_context_line(line: str, source: str) -> dict:
    """The context (preset, precision, convention, class-order seed, seeds) that ``context_line`` wrote
    (a section written before the precision was recorded: precision None)."""
    match = _CONTEXT_LINE.fullmatch(line)
    if match is None:
        raise ValueError(f"{source}: line 3 is not a table context line (expected \"Preset `...`; training "
                         f"precision `...`; metric convention ...; mean ± std over seeds [...] ...\"), found {line!r}")
    seeds = match["seeds"].strip()
    return {"preset": match["preset"], "precision": match["precision"],
            "convention": match["convention"],
            "order_seed": match["order_seed"], "seeds": [int(s) for s in seeds.split(", ")] if seeds else []}


def merge_contexts(contexts: list[dict]) -> dict:
    """One context for several data sets: each field's distinct values joined by ", " (ordered as
    ``context_from`` orders them), the seeds' union; equal to ``context_from`` over all their metrics."""
    def join(key):
        return join_values(c[key] for c in contexts)

    return {"preset": join("preset"), "precision": joined_precision(c.get("precision") for c in contexts),
            "convention": join("convention"),
            "order_seed": join("order_seed"), "seeds": sorted({s for c in contexts for s in c["seeds"]})}


def split_section(table: str, markdown: str, source: str) -> tuple[dict, list[str]]:
    """A section file's context and its section lines (from its ``## `` heading on; none if empty)."""
    lines = markdown.split("\n")
    if lines[:1] != [f"# {TABLE_TITLES[table]}"] or len(lines) < 5:
        raise ValueError(f"{source}: not a section of {table} (expected first line {'# ' + TABLE_TITLES[table]!r}, "
                         f"found {lines[0]!r})")
    start = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    return parse_context_line(lines[2], source), lines[start:]


def section_rows(table: str, csv_text: str, source: str) -> list[str]:
    """The data lines of a section's CSV (after checking its header and that every row is of ``table``)."""
    header = ",".join(CSV_FIELDS)
    lines = csv_text.splitlines()
    if lines[:1] != [header]:
        raise ValueError(f"{source}: first line {lines[:1]} is not the paper table header {header!r}")
    wrong = {line.split(",", 1)[0] for line in lines[1:]} - {table}
    if wrong:
        raise ValueError(f"{source}: rows of table {sorted(wrong)}, expected only {table!r}")
    return lines[1:]


def assemble(table: str, sections: list[tuple[list[str], list[str]]], context: dict) -> tuple[str, str]:
    """(Markdown, CSV) of a paper table from its sections in display order, each as (Markdown lines from
    its heading on: ``split_section`` / ``section_lines``, CSV data lines: ``section_rows``), under a
    header naming ``context``. Equal to ``cells_to_markdown`` / ``cells_to_csv`` of all their cells."""
    lines = header_lines(table, context)
    rows = [",".join(CSV_FIELDS)]
    for part, csv_rows in sections:
        lines += part
        rows += csv_rows
    return "\n".join(lines), "\n".join(rows) + "\n"


def paper_tables(rows: list[dict], grid_settings: dict[str, list[str]], context: dict) -> dict[str, tuple[str, str]]:
    """table name -> (Markdown, CSV) for Tables 1, 2, 3 and 5."""
    out = {}
    for table in TABLE_NAMES:
        cells = table_cells(table, rows, grid_settings)
        out[table] = (cells_to_markdown(table, cells, context), cells_to_csv(cells))
    return out


# --- Table 4: DyTox and DyTox + PKS (docs/dytox.md) ---------------------------------------------


def results_rows(csv_text: str, dataset: str, source: str) -> list[dict]:
    """The rows of a grid's results table CSV (``to_csv``) in ``aggregate``'s shape, of data set ``dataset``:
    what Table 4 is made from (each grid's results table is recomputed from its metrics by its own verify)."""
    fields = ["setting", "label", "method", "n", "seeds"] + [f"{c}_{s}" for c in COLUMNS for s in ("mean", "std")]
    reader = csv.DictReader(io.StringIO(csv_text))
    if reader.fieldnames != fields:
        raise ValueError(f"{source}: header {reader.fieldnames} is not a results table's ({','.join(fields)}); "
                         "written by that grid's `python -m ncil tables` step")
    rows = []
    for i, rec in enumerate(reader, start=2):
        try:
            row = {"dataset": dataset, "setting": rec["setting"], "label": rec["label"], "method": rec["method"],
                   "n": int(rec["n"]), "seeds": [int(s) for s in rec["seeds"].split()],
                   **{f"{c}_{s}": float(rec[f"{c}_{s}"]) for c in COLUMNS for s in ("mean", "std")}}
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: line {i}: {err} (expected integers n and seeds, numbers in the "
                             "mean and std columns)") from None
        if row["n"] != len(row["seeds"]):
            raise ValueError(f"{source}: line {i}: n is {row['n']} but {len(row['seeds'])} seeds are listed")
        rows.append(row)
    return rows


def _table4_cell(dataset, setting, label, method, metric, paper, r) -> dict:
    rec = {"table": TABLE4, "dataset": dataset, "setting": setting, "row": label, "method": method,
           "metric": metric, "paper": paper, "mean": None, "std": None, "n": 0, "seeds": "", "diff": None,
           "status": "not run"}
    if r is not None:
        rec.update(mean=r[f"{metric}_mean"], std=r[f"{metric}_std"], n=r["n"],
                   seeds=" ".join(map(str, r["seeds"])), status="ok")
        if paper is not None and not math.isnan(rec["mean"]):
            rec["diff"] = rec["mean"] - paper
    return rec


def table4_cells(grids: list[tuple[str, str, list[dict]]]) -> list[dict]:
    """Every cell of Table 4. ``grids``: (grid, data set, rows: ``results_rows``) of each Table 4 grid that has
    run (``paths.table4_sources``). A grid on a data set the paper did not use has a section of its own (first,
    by grid name): Table 4's rows over its settings, ours only. The CIFAR-100 section (``paper_values`` table4)
    is always there: the paper's values, ours beside where a grid on CIFAR-100 has that setting, else "not run"."""
    cells = []
    rows_of = {}
    for grid, dataset, rows in grids:
        rows_of.setdefault(paper_values.canonical_dataset(dataset), []).extend(rows)
    table_rows = paper_values.TABLE_ROWS[TABLE4]
    for grid, dataset, rows in sorted(grids):
        if paper_values.canonical_dataset(dataset) in paper_values.DATASETS:
            continue
        by_key = {(r["label"], r["method"]): r for r in rows}
        for label, method in table_rows:
            for setting in dict.fromkeys(r["label"] for r in rows):
                for metric in TABLE_METRICS[TABLE4]:
                    cells.append(_table4_cell(grid, setting, label, method, metric, None, by_key.get((setting, method))))
    for v in paper_values.reported():
        if v["table"] != TABLE4:
            continue
        by_key = {(r["label"], r["method"]): r for r in rows_of.get(v["dataset"], [])}
        for metric in TABLE_METRICS[TABLE4]:
            cells.append(_table4_cell(v["dataset"], v["setting"], v["row"], v["method"], metric, v[metric],
                                      by_key.get((v["setting"], v["method"]))))
    return cells


def table4_texts(grids: list[tuple[str, str, list[dict]]]) -> tuple[str, str]:
    """(Markdown, CSV) of Table 4 (``table4_cells``): the paper's DyTox rows with ours beside, and a section of
    ours per Table 4 grid on another data set."""
    cells = table4_cells(grids)
    ran = {paper_values.canonical_dataset(d) for _, d, _ in grids}
    cifar = ("ours reads \"not run\" until a CIFAR-100 DyTox grid (cifar100_dytox) has run" if "cifar100" not in ran
             else "ours from grid cifar100_dytox")
    others = [f"`{g}` ({d}; conf/experiment/{g}.yaml, results/tables/{g}_results.csv)"
              for g, d, _ in sorted(grids) if paper_values.canonical_dataset(d) not in paper_values.DATASETS]
    grid_note = (" Sections of data sets the paper did not use show ours only, from grid "
                 + ", ".join(others) + ": the same two methods and schedule rules on that data set's settings."
                 if others else "")
    lines = [f"# {TABLE_TITLES[TABLE4]}", "", f"{paper_values.TABLE4_SETTING}. Source: {paper_values.TABLE4_SOURCE}. "
             "N=10 is 10+10x9, N=20 is 5+5x19. \"Ours\" is DyTox + PKS: the paper's text replaces DyTox's "
             "distillation with PKS (docs/dytox.md, section 3). Both methods are implemented (conf/method/dytox.yaml, "
             f"dytox_pks.yaml); {cifar}.{grid_note}", EXPLANATION, ""]
    for dataset in dict.fromkeys(c["dataset"] for c in cells):
        lines += section_lines(dataset, [c for c in cells if c["dataset"] == dataset])
    return "\n".join(lines), cells_to_csv(cells)


# --- The exemplar-free (EFCIL) benchmark table (issue 25; docs/efcil.md) -------------------------

# Our two accuracy conventions (docs/metrics.md): the sample-weighted value is the metrics.json field of the
# paper's convention, the task-averaged one its ``variants`` field.
EFCIL_METRICS = ("avg_accuracy", "last_accuracy")
EFCIL_CONVENTIONS = {paper_values.SAMPLE_WEIGHTED: lambda m, metric: m[metric],
                     paper_values.TASK_AVERAGED: lambda m, metric: m["variants"][f"task_averaged_{metric}"]}
EFCIL_CSV_FIELDS = ["table", "dataset", "setting", "label", "row", "method", "metric", "convention", "paper",
                    "paper_convention", "paper_source", "mean", "std", "n", "seeds", "status"]


def _efcil_value(m: dict, metric: str, convention: str, source: str) -> float:
    try:
        return float(EFCIL_CONVENTIONS[convention](m, metric))
    except KeyError:
        raise ValueError(f"{source}: metrics of {m['run']} have no {convention} {metric} (the task-averaged "
                         "values are metrics.json's variants.task_averaged_avg_accuracy / _last_accuracy; "
                         "rerun `python -m ncil summarize`)") from None


def efcil_cells(metrics: list[dict]) -> list[dict]:
    """Every cell of the EFCIL benchmark table: per method row (``paper_values.EFCIL_ROWS``), data set and setting
    (``EFCIL_SETTINGS``), metric (Avg, Last) and our convention (sample-weighted, task-averaged), the paper's value
    with its convention and source (``paper_values.efcil_reported``; ``None`` where none is quoted) and ours: mean ±
    std (ddof=1) over the seeds of ``metrics`` (metrics.json contents) of that method, data set and setting, status
    "not run" where there are none. Other data sets (digits), settings and methods in ``metrics`` are ignored."""
    quoted = {(v["method"], v["dataset"], v["setting"]): v for v in paper_values.efcil_reported()}
    runs: dict[tuple[str, str, str], list[dict]] = {}
    for m in metrics:
        run = m["run"]
        runs.setdefault((run["method"], paper_values.canonical_dataset(run.get("dataset", "")), run["setting"]),
                        []).append(m)
    cells = []
    for dataset, settings in paper_values.EFCIL_SETTINGS.items():
        for label, method in paper_values.EFCIL_ROWS:
            for setting, (setting_label, _) in settings.items():
                members = sorted(runs.get((method, dataset, setting), []), key=lambda m: m["run"]["seed"])
                seeds = [m["run"]["seed"] for m in members]
                if len(set(seeds)) != len(seeds):
                    raise ValueError(f"{dataset}/{setting}/{method}: seed listed twice in {seeds}")
                v = quoted.get((method, dataset, setting), {})
                for metric in EFCIL_METRICS:
                    for convention in EFCIL_CONVENTIONS:
                        rec = {"table": EFCIL, "dataset": dataset, "setting": setting, "label": setting_label,
                               "row": label, "method": method, "metric": metric, "convention": convention,
                               "paper": v.get(metric), "paper_convention": v.get("convention", ""),
                               "paper_source": v.get("source", ""), "mean": None, "std": None, "n": len(members),
                               "seeds": " ".join(map(str, seeds)), "status": "ok" if members else "not run"}
                        if members:
                            rec["mean"], rec["std"] = mean_std(
                                [_efcil_value(m, metric, convention, f"{dataset}/{setting}/{method}")
                                 for m in members])
                        cells.append(rec)
    return cells


def efcil_cells_to_csv(cells: list[dict]) -> str:
    """Tidy CSV of the EFCIL table: one row per cell; numbers with 4 decimals, empty where there is none."""
    return tidy_csv(cells, EFCIL_CSV_FIELDS, ("paper", "mean", "std"))


def _efcil_ours(c: dict) -> str:
    if c["status"] != "ok":
        return NOT_RUN
    return "n/a" if math.isnan(c["mean"]) else f"{c['mean']:.2f} ± {c['std']:.2f} ({c['n']})"


def efcil_texts(metrics: list[dict]) -> tuple[str, str]:
    """(Markdown, CSV) of the EFCIL benchmark table (``efcil_cells``): one Markdown table per setting, the
    paper's value (with a note number naming its source and convention; "-" where none is quoted) beside
    ours in both conventions ("not run" without a run)."""
    cells = efcil_cells(metrics)
    sources = list(dict.fromkeys((c["paper_source"], c["paper_convention"]) for c in cells if c["paper"] is not None))
    note = {s: i + 1 for i, s in enumerate(sources)}
    convs = list(EFCIL_CONVENTIONS)
    lines = [f"# {TABLE_TITLES[EFCIL]}", "",
             "Exemplar-free class-incremental methods of issue 25 (docs/efcil.md). Ours: mean ± std (n seeds) of "
             "Avg and Last in both accuracy conventions (docs/metrics.md): sample-weighted (all test images of "
             "the seen classes, this project's convention; metrics.json `avg_accuracy` / `last_accuracy`) and "
             "task-averaged (the unweighted mean of the per-task accuracies; metrics.json "
             "`variants.task_averaged_avg_accuracy` / `_last_accuracy`). Paper: the value quoted, [n] naming "
             "its source and convention; \"-\": no value quoted here yet; \"not run\": no result of that method "
             "and setting yet (every row is a pipeline method, conf/method/<key>.yaml; the grids cifar100_efcil, "
             "tinyimagenet_efcil and imagenet_subset_efcil run them and need a GPU; the digits grid digits_efcil "
             "has run: results/tables/digits_efcil_results.md). Accuracies in %.", ""]
    for dataset, setting, (setting_label, start) in ((d, s, v) for d, settings in paper_values.EFCIL_SETTINGS.items()
                                                     for s, v in settings.items()):
        part = [c for c in cells if c["dataset"] == dataset and c["setting"] == setting]
        header = ["method"]
        for metric in EFCIL_METRICS:
            header += [f"{HEADERS[metric]} paper"] + [f"{HEADERS[metric]} ours, {conv}" for conv in convs]
        lines += [f"## {paper_values.DATASETS[dataset][0]} {setting_label} (`{setting}`, {start})", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label, method in paper_values.EFCIL_ROWS:
            by = {(c["metric"], c["convention"]): c for c in part if c["method"] == method}
            out = [f"{label} (`{method}`)"]
            for metric in EFCIL_METRICS:
                first = by[(metric, convs[0])]
                paper = (NOT_REPORTED if first["paper"] is None else
                         f"{first['paper']:.2f} [{note[(first['paper_source'], first['paper_convention'])]}]")
                out += [paper] + [_efcil_ours(by[(metric, conv)]) for conv in convs]
            lines.append("| " + " | ".join(out) + " |")
        lines.append("")
    if note:
        lines += ["Sources:", ""]
        lines += [f"{n}. {source} (accuracy convention: {conv})." for (source, conv), n in note.items()]
        lines.append("")
    return "\n".join(lines), efcil_cells_to_csv(cells)


def context_from(metrics: list[dict], defaults: dict) -> dict:
    """Preset, training precision, convention, class-order seed and seeds named by the results themselves
    (``defaults``, from params.yaml, where there are none); several values are listed joined by ", "."""
    def values(get, default):
        found = sorted({str(get(m)) for m in metrics}, key=lambda v: (len(v), v))
        return ", ".join(found) if found else str(default)

    return {
        "preset": values(lambda m: m["provenance"]["preset"], defaults["preset"]),
        "precision": joined_precision(precision_of(m) for m in metrics) if metrics else defaults.get("precision"),
        "convention": values(lambda m: m["provenance"]["metric_convention"], defaults["convention"]),
        "order_seed": values(lambda m: m["provenance"]["order_seed"], defaults["order_seed"]),
        "seeds": sorted({m["run"]["seed"] for m in metrics}) or list(defaults["seeds"]),
    }
