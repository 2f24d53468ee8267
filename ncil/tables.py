"""Results tables: seed aggregation and the paper's Tables 1, 2, 3 and 5 (pure: dicts in, text out).

* ``aggregate``: mean, standard deviation (ddof=1; 0 for one seed) and number of seeds of every
  metric per (data set, setting, method), from the contents of ``metrics.json`` files.
* ``paper_tables``: each table as Markdown shaped like the paper (one section per data set, methods as
  rows, settings as columns) and as a tidy CSV (one row per table cell). Data sets of the paper
  (``ncil.paper_values``) show the paper's value, ours and the difference (ours - paper); other data
  sets (digits) show ours only. A (data set, setting, method) without results reads "not run".
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from ncil import paper_values
from ncil.metrics import CONVENTION_TEXT

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
}
TABLE_METRICS = {"table1": ("avg_accuracy", "last_accuracy"), "table2": ("avg_forgetting",),
                 "table3": ("last_accuracy",), "table5": ("last_accuracy",)}
CSV_FIELDS = ["table", "dataset", "setting", "row", "method", "metric", "paper", "mean", "std", "n", "seeds",
              "diff", "status"]


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over seeds; the std of a single seed is 0."""
    values = np.asarray(values, float)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else 0.0)


def aggregate(metrics: list[dict]) -> list[dict]:
    """Group metrics.json contents by (data set, setting, method): mean, std and n of each metric
    (``<metric>_mean`` / ``<metric>_std``), of the Acc_k curve (``curve_mean`` / ``curve_std``) and the seeds.
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
               "seeds": seeds, "n": len(members)}
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


def context_line(context: dict) -> str:
    return (f"Preset `{context['preset']}`; metric convention `{context['convention']}` ({CONVENTION_TEXT}); "
            f"class-order seed {context['order_seed']}; mean ± std over seeds {context['seeds']} "
            "(n per cell). Accuracies in %.")


def to_markdown(rows: list[dict], dataset: str, context: dict) -> str:
    """The per-data-set overview: every (setting, method) of the grid with Avg, Last, forgetting."""
    lines = [
        f"# Results on {dataset}",
        "",
        f"Preset `{context['preset']}`; metric convention `{context['convention']}` (sample-weighted Acc_k, "
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


def table_cells(table: str, rows: list[dict], grid_settings: dict[str, list[str]]) -> list[dict]:
    """Every cell of one paper table as a record (the CSV rows), in display order.

    ``rows``: ``aggregate`` output. ``grid_settings``: data set -> setting labels of the grid (the
    columns of a data set the paper did not use). Sections: the grid's own data sets first (ours only),
    then the paper's data sets that report this table (paper, ours, difference).
    """
    by_key = {(paper_values.canonical_dataset(r["dataset"]), r["label"], r["method"]): r for r in rows}
    reported = {(v["dataset"], v["setting"], v["row"]): v for v in paper_values.reported() if v["table"] == table}
    metrics = TABLE_METRICS[table]
    cells = []

    def cell(dataset, setting, label, method, metric, paper):
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

    own = [d for d in grid_settings if paper_values.canonical_dataset(d) not in paper_values.DATASETS]
    for dataset in own:
        row_specs = [(label, m) for label, m in paper_values.TABLE_ROWS[table] if m]
        if table in ("table1", "table2"):
            row_specs = paper_values.EXTRA_METHODS + row_specs
            known = {m for _, m in row_specs}
            row_specs += [(m, m) for m in sorted({r["method"] for r in rows if r["dataset"] == dataset}) if m not in known]
        for label, method in row_specs:
            for setting in grid_settings[dataset]:
                for metric in metrics:
                    cell(dataset, setting, label, method, metric, None)
    for dataset, (_, settings) in paper_values.DATASETS.items():
        if not any(d == dataset for d, _, _ in reported):
            continue
        settings = [s for s in settings if any((dataset, s, lab) in reported for lab, _ in paper_values.TABLE_ROWS[table])]
        for label, method in paper_values.TABLE_ROWS[table]:
            for setting in settings:
                v = reported.get((dataset, setting, label), {})
                for metric in metrics:
                    cell(dataset, setting, label, method, metric, v.get(metric))
    return cells


def cells_to_csv(cells: list[dict]) -> str:
    """Tidy CSV: one row per table cell; numbers with 4 decimals, empty where there is none."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for c in cells:
        writer.writerow({**c, "paper": _fmt4(c["paper"]), "mean": _fmt4(c["mean"]), "std": _fmt4(c["std"]),
                         "diff": _fmt4(c["diff"])})
    return buf.getvalue()


def _fmt4(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _ours(c: dict) -> str:
    if c["status"] != "ok":
        return NOT_RUN if c["status"] == "not run" else NOT_REPORTED
    return "n/a" if math.isnan(c["mean"]) else f"{c['mean']:.2f} ± {c['std']:.2f} ({c['n']})"


def _diff(c: dict) -> str:
    return NOT_REPORTED if c["diff"] is None else f"{c['diff']:+.2f}"


def cells_to_markdown(table: str, cells: list[dict], context: dict) -> str:
    """The table shaped like the paper's: per data set, methods as rows, settings x metrics as columns."""
    lines = [f"# {TABLE_TITLES[table]}", "", context_line(context),
             "Paper data sets: the paper's value, ours (mean ± std (n seeds)) and the difference ours - paper; "
             "\"not run\": no result of that method in this grid yet; \"-\": not reported / no such method here.", ""]
    for dataset in dict.fromkeys(c["dataset"] for c in cells):
        part = [c for c in cells if c["dataset"] == dataset]
        name = paper_values.DATASETS.get(dataset, (dataset,))[0]
        with_paper = dataset in paper_values.DATASETS
        settings = list(dict.fromkeys(c["setting"] for c in part))
        metrics = list(dict.fromkeys(c["metric"] for c in part))
        header = ["method"]
        for s in settings:
            for m in metrics:
                header += [f"{s} {HEADERS[m]} paper", "ours", "diff"] if with_paper else [f"{s} {HEADERS[m]}"]
        lines += [f"## {name}" + ("" if name == dataset else f" (`{dataset}`)"), "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label in dict.fromkeys(c["row"] for c in part):
            by = {(c["setting"], c["metric"]): c for c in part if c["row"] == label}
            method = next(iter(by.values()))["method"]
            out = [f"{label} (`{method}`)" if method and method != label else label]
            for s in settings:
                for m in metrics:
                    c = by[(s, m)]
                    out += [_num(c["paper"]) or NOT_REPORTED, _ours(c), _diff(c)] if with_paper else [_ours(c)]
            lines.append("| " + " | ".join(out) + " |")
        lines.append("")
    return "\n".join(lines)


def paper_tables(rows: list[dict], grid_settings: dict[str, list[str]], context: dict) -> dict[str, tuple[str, str]]:
    """table name -> (Markdown, CSV) for Tables 1, 2, 3 and 5."""
    out = {}
    for table in TABLE_NAMES:
        cells = table_cells(table, rows, grid_settings)
        out[table] = (cells_to_markdown(table, cells, context), cells_to_csv(cells))
    return out


def context_from(metrics: list[dict], defaults: dict) -> dict:
    """Preset, convention, class-order seed and seeds named by the results themselves (``defaults``, from
    params.yaml, where there are none); several values are listed joined by ", "."""
    def values(get, default):
        found = sorted({str(get(m)) for m in metrics}, key=lambda v: (len(v), v))
        return ", ".join(found) if found else str(default)

    return {
        "preset": values(lambda m: m["provenance"]["preset"], defaults["preset"]),
        "convention": values(lambda m: m["provenance"]["metric_convention"], defaults["convention"]),
        "order_seed": values(lambda m: m["provenance"]["order_seed"], defaults["order_seed"]),
        "seeds": sorted({m["run"]["seed"] for m in metrics}) or list(defaults["seeds"]),
    }
