"""What the report steps write, as data: output path -> file content, from loaded metrics (pure).

The paper's tables are kept per data set: each grid's ``paper-sections`` step writes its own data
set's sections (``paths.paper_section_files``: results/tables/<dataset>/table1.md, ...), and
``paper-tables`` assembles results/tables/table1.md, ... from every data set's sections present, so a
grid on another data set adds its sections and never rewrites another's. The ``paper-sections``,
``paper-tables`` and ``figures`` verbs write these; ``verify`` recomputes them from the metrics files
(and the other data sets' section files) and compares them with what is on disk, so both go through
the same definitions.
"""

from __future__ import annotations

from ncil.pipeline import experiment_grid, paths
from ncil.pipeline.provenance import setting_label
from ncil.reports import paper_values, plots, results_table
from ncil.reports.metrics import CONVENTION


def grid_settings(params: dict) -> dict[str, list[str]]:
    """Grid folder (``experiment_grid.grid_folder``: the data set's name by default) -> setting labels
    (``F+CxT``) of the grid, in params.yaml order."""
    out: dict[str, list[str]] = {}
    for run in experiment_grid.runs(params):
        label = setting_label(run.initial, run.increment, run.n_tasks)
        out.setdefault(run.folder, [])
        if label not in out[run.folder]:
            out[run.folder].append(label)
    return out


def grid_curves(params: dict) -> list[tuple[str, str, str]]:
    """(grid folder, setting id, label) of every Figure 3 panel of the grid."""
    seen = {}
    for run in experiment_grid.runs(params):
        seen.setdefault((run.folder, run.setting), setting_label(run.initial, run.increment, run.n_tasks))
    return [(d, s, label) for (d, s), label in seen.items()]


def default_context(params: dict) -> dict:
    return {"preset": params["preset"], "convention": CONVENTION, "order_seed": params["order_seed"],
            "seeds": list(params["seeds"])}


def section_datasets(params: dict) -> dict[str, list[str]]:
    """The grid's data sets as the paper tables name them (``paper_values.canonical_dataset``) -> their
    setting labels: each has its own section files (``paths.paper_section_files``). None for an extra grid
    with its own folder (``experiment_grid.own_folder``): its runs are in no paper table."""
    out: dict[str, list[str]] = {}
    if experiment_grid.own_folder(params):
        return out
    for dataset, settings in grid_settings(params).items():
        out.setdefault(paper_values.canonical_dataset(dataset), []).extend(settings)
    return out


def section_texts(params: dict, metrics: list[dict]) -> dict[str, str]:
    """Path -> text of this grid's data sets' sections of Tables 1, 2, 3 and 5 (what the grid's
    ``paper-sections`` step writes; nothing of another data set)."""
    rows = results_table.aggregate(metrics)
    out = {}
    for dataset, settings in section_datasets(params).items():
        own = [m for m in metrics if paper_values.canonical_dataset(m["run"].get("dataset", "")) == dataset]
        context = results_table.context_from(own, default_context(params))
        for table in results_table.TABLE_NAMES:
            cells = results_table.section_cells(table, dataset, rows, settings)
            md_path, csv_path = paths.paper_section_files(dataset, table)
            out[md_path], out[csv_path] = results_table.cells_to_markdown(table, cells, context), results_table.cells_to_csv(cells)
    return out


def assemble_texts(sections: dict[str, str], defaults: dict) -> dict[str, str]:
    """Path -> text of Tables 1, 2, 3 and 5 from every data set's section files in ``sections`` (path ->
    text): sections in ``results_table.section_order``; a paper data set without section files shows the paper's
    values with ours "not run". ``defaults``: the context when no data set has sections."""
    datasets = {}
    for path in sections:
        dataset, table = _section_key(path)
        datasets.setdefault(dataset, set()).add(table)
    for dataset in datasets:
        missing = [f for f in paths.paper_sections(dataset) if f not in sections]
        if missing:
            raise ValueError(f"{missing[0]}: missing; a data set's sections are written together "
                             f"({', '.join(paths.paper_sections(dataset))})")
    out = {}
    for table in results_table.TABLE_NAMES:
        parts, contexts = [], []
        for dataset in results_table.section_order([*datasets, *paper_values.DATASETS]):
            md_path, csv_path = paths.paper_section_files(dataset, table)
            if dataset in datasets:
                context, lines = results_table.split_section(table, sections[md_path], md_path)
                contexts.append(context)
                parts.append((lines, results_table.section_rows(table, sections[csv_path], csv_path)))
            else:
                cells = results_table.section_cells(table, dataset, [], [])
                parts.append((results_table.section_lines(dataset, cells) if cells else [],
                              results_table.cells_to_csv(cells).splitlines()[1:]))
        context = results_table.merge_contexts(contexts) if contexts else defaults
        out_md, out_csv = paths.paper_table_files(table)
        out[out_md], out[out_csv] = results_table.assemble(table, parts, context)
    return out


def _section_key(path: str) -> tuple[str, str]:
    """(data set, table) of a section file path (``paths.paper_section_files``), or a clear error."""
    parts = path.replace("\\", "/").rsplit("/", 2)
    if len(parts) == 3:
        dataset, name = parts[1], parts[2]
        table = name.rsplit(".", 1)[0]
        if table in results_table.TABLE_NAMES and path in paths.paper_section_files(dataset, table):
            return dataset, table
    expected = paths.paper_section_files("<dataset>", "table1")[0]
    raise ValueError(f"{path}: not a paper table section file (expected {expected} "
                     f"or .csv, tables {', '.join(results_table.TABLE_NAMES)})")


def read_sections(root: str, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Path -> text of the section files under ``root`` of every data set not in ``exclude`` (the other
    grids' sections, which a grid's tables include as they are)."""
    from pathlib import Path

    out = {}
    for dataset in paths.paper_section_datasets(root):
        if dataset in exclude:
            continue
        for path in paths.paper_sections(dataset):
            file = Path(root) / path
            if not file.is_file():
                raise ValueError(f"{file}: missing; a data set's sections are written together")
            out[path] = file.read_text(encoding="utf-8")
    return out


def table_texts(params: dict, metrics: list[dict], other_sections: dict[str, str] | None = None) -> dict[str, str]:
    """Path -> text of this grid's section files and of Tables 1, 2, 3 and 5 (Markdown and CSV) assembled
    from them and ``other_sections`` (other data sets' section files, path -> text: ``read_sections``)."""
    own = section_texts(params, metrics)
    theirs = {p: t for p, t in (other_sections or {}).items() if _section_key(p)[0] not in section_datasets(params)}
    return {**own, **assemble_texts({**theirs, **own}, default_context(params))}


def table4_grids(root: str = ".", names=None) -> list[tuple[str, str, list[dict]]]:
    """(grid, data set, rows) of the Table 4 grids ``names`` (None: every one that has run,
    ``paths.table4_sources``): its data set from its committed params file, its rows from its committed results
    table CSV (``results_table.results_rows``). A named grid without its files is an error naming them."""
    from pathlib import Path

    from ncil.pipeline import io

    if names is None:
        sources = paths.table4_sources(root)
    else:
        sources = [(g, paths.grid_params(g), paths.table_files(g)[1]) for g in names]
        for grid, *files in sources:
            for f in files:
                if not (Path(root) / f).is_file():
                    raise ValueError(f"{f}: not found (Table 4 grid {grid}: its params file is written by "
                                     f"`python -m ncil grid {grid}`, its results table by the grid's run)")
    out = []
    for grid, params_file, csv_file in sources:
        params = io.read_yaml(Path(root) / params_file)
        try:
            dataset = params["dataset"]["name"]
        except (KeyError, TypeError):
            raise ValueError(f"{params_file}: dataset.name missing (expected the grid's params file, written by "
                             f"`python -m ncil grid {grid}`)") from None
        text = (Path(root) / csv_file).read_text(encoding="utf-8")
        out.append((grid, dataset, results_table.results_rows(text, dataset, csv_file)))
    return out


def unsectioned_texts(table4_grids: list[tuple[str, str, list[dict]]] = ()) -> dict[str, str]:
    """Path -> text of the tables the paper-tables step writes without per-data-set sections
    (``paths.UNSECTIONED_TABLES``): Table 4 (DyTox; ours from ``table4_grids``, ``table4_grids``'s output) and
    the EFCIL benchmark table (no grid runs its methods on CIFAR-100 yet, so ours reads "not run"). The step
    writes these texts and ``verify`` compares the committed files with them."""
    makers = {results_table.TABLE4: lambda: results_table.table4_texts(list(table4_grids)),
              results_table.EFCIL: lambda: results_table.efcil_texts([])}
    if set(makers) != set(paths.UNSECTIONED_TABLES):
        raise ValueError(f"unsectioned tables {sorted(paths.UNSECTIONED_TABLES)} but makers for {sorted(makers)}")
    out = {}
    for table in paths.UNSECTIONED_TABLES:
        md_path, csv_path = paths.paper_table_files(table)
        out[md_path], out[csv_path] = makers[table]()
    return out


def curve_tables(params: dict, metrics: list[dict]) -> dict[str, tuple[str, list[dict]]]:
    """PNG path -> (title, Figure 3 data) of every setting of the grid."""
    rows = results_table.aggregate(metrics)
    methods = list(params["method"])
    out = {}
    dataset = params["dataset"]["name"]  # the metrics' run.dataset; the files are named by the grid's folder
    n_tasks = {(r.folder, r.setting): r.n_tasks for r in experiment_grid.runs(params)}
    for folder, setting, label in grid_curves(params):
        png, _ = paths.curve_figure_files(folder, setting)
        table = plots.curve_table(rows, dataset, setting, methods, n_tasks[(folder, setting)])
        out[png] = (f"{folder} {label}: accuracy after each task", table)
    return out


def curve_csv_texts(params: dict, metrics: list[dict]) -> dict[str, str]:
    """CSV path -> text of every Figure 3 panel's data."""
    return {png[: -len(".png")] + ".csv": plots.table_to_csv(table)
            for png, (_, table) in curve_tables(params, metrics).items()}
