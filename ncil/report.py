"""What the report steps write, as data: output path -> file content, from loaded metrics (pure).

The ``paper-tables`` and ``figures`` verbs write these; ``verify`` recomputes them from the
metrics files and compares them with what is on disk, so both go through the same definitions.
"""

from __future__ import annotations

from ncil import figures, grid, paths, tables
from ncil.metrics import CONVENTION
from ncil.provenance import setting_label


def grid_settings(params: dict) -> dict[str, list[str]]:
    """Data set -> setting labels (``F+CxT``) of the grid, in params.yaml order."""
    out: dict[str, list[str]] = {}
    for run in grid.runs(params):
        label = setting_label(run.initial, run.increment, run.n_tasks)
        out.setdefault(run.dataset, [])
        if label not in out[run.dataset]:
            out[run.dataset].append(label)
    return out


def grid_curves(params: dict) -> list[tuple[str, str, str]]:
    """(data set, setting id, label) of every Figure 3 panel of the grid."""
    seen = {}
    for run in grid.runs(params):
        seen.setdefault((run.dataset, run.setting), setting_label(run.initial, run.increment, run.n_tasks))
    return [(d, s, label) for (d, s), label in seen.items()]


def default_context(params: dict) -> dict:
    return {"preset": params["preset"], "convention": CONVENTION, "order_seed": params["order_seed"],
            "seeds": list(params["seeds"])}


def table_texts(params: dict, metrics: list[dict]) -> dict[str, str]:
    """Path -> text of the paper's Tables 1, 2, 3 and 5 (Markdown and CSV)."""
    rows = tables.aggregate(metrics)
    context = tables.context_from(metrics, default_context(params))
    out = {}
    for name, (markdown, csv_text) in tables.paper_tables(rows, grid_settings(params), context).items():
        md_path, csv_path = paths.paper_table_files(name)
        out[md_path], out[csv_path] = markdown, csv_text
    return out


def curve_tables(params: dict, metrics: list[dict]) -> dict[str, tuple[str, list[dict]]]:
    """PNG path -> (title, Figure 3 data) of every setting of the grid."""
    rows = tables.aggregate(metrics)
    methods = list(params["method"])
    out = {}
    n_tasks = {(r.dataset, r.setting): r.n_tasks for r in grid.runs(params)}
    for dataset, setting, label in grid_curves(params):
        png, _ = paths.curve_figure_files(dataset, setting)
        table = figures.curve_table(rows, dataset, setting, methods, n_tasks[(dataset, setting)])
        out[png] = (f"{dataset} {label}: accuracy after each task", table)
    return out


def curve_csv_texts(params: dict, metrics: list[dict]) -> dict[str, str]:
    """CSV path -> text of every Figure 3 panel's data."""
    return {png[: -len(".png")] + ".csv": figures.table_to_csv(table)
            for png, (_, table) in curve_tables(params, metrics).items()}
