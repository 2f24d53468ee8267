"""Recomputation (for ``verify``): recompute every reported number and stop at the first that differs.

Chain checked, each link from the one before (issue 4, item 5), after a check that the results are
not stale (0: every stage of ``dvc.lock`` that ``dvc.yaml`` still has ran with the params file's values now):

1. per-task evaluation tables (``eval/task_<t>.parquet``) -> each ``metrics.json``: accuracy matrix,
   test counts, Acc_k curve, Avg, Last, F_T, and the run's identity (data set, setting, method, seed);
2. ``metrics.json`` files of the grid -> ``results/tables/*`` (the per-data-set overview and the paper's
   Tables 1, 2, 3, 5, Markdown and CSV) and ``results/figures/fig3_*`` (Figure 3's data as CSV, and the
   PNG, which must be the byte-identical rendering of that data);
3. cross-check that does not reuse the table code: each Figure 3 curve's mean and last point equal
   the Avg and Last of Table 1's CSV (method-spec 7.6);
4. the README's copy of the digits Table 1 (between ``<!-- table1:<dataset> -->`` markers), if present.

A mismatch names the file, the row, the column, the expected and the found value.
"""

from __future__ import annotations

import csv
import hashlib
import io as stdio
import math
import re
from pathlib import Path

import numpy as np

from ncil.data.splits import read_split
from ncil.pipeline import experiment_grid, io, paths
from ncil.pipeline.provenance import setting_label
from ncil.reports import metrics, plots, report, results_table
from ncil.reports.metrics_json import layout_problem

REL_TOL = 1e-9  # metrics.json holds full floats computed by the same arithmetic
CSV_TOL = 2e-4  # the figure / table CSVs round to 4 decimals


class Mismatch(Exception):
    """A reported number differs from its recomputation."""

    def __init__(self, file, row, column, expected, found):
        self.file, self.row, self.column, self.expected, self.found = str(file), row, column, expected, found
        super().__init__(f"{file}: row {row}, column {column}: expected {expected!r}, found {found!r}")


class StaleParams(Mismatch):
    """The results were made with other parameter values than the params file holds now."""

    def __init__(self, stage, params_file, key, locked, current):
        Mismatch.__init__(self, "dvc.lock", stage, key, locked, current)
        now = "no such key" if current is ABSENT else f"{current!r}"
        was = "no such key" if locked is ABSENT else f"{key} = {locked!r}"
        Exception.__init__(self, f"dvc.lock: stage {stage} ran with {params_file}: {was}, and {params_file} has "
                           f"{now} now: the results are stale; rerun them (`snakemake` or `dvc repro`) and "
                           "record them (`make lock`), or restore the params file")


def _same(expected, found, tol: float) -> bool:
    if isinstance(expected, (int, float)) and isinstance(found, (int, float)) and not isinstance(found, bool):
        e, f = float(expected), float(found)
        if math.isnan(e) or math.isnan(f):
            return math.isnan(e) and math.isnan(f)
        return math.isclose(e, f, rel_tol=tol, abs_tol=tol)
    return expected == found


def _num_or_nan(v):
    return float("nan") if v is None else v


# --- 1. metrics.json from the evaluation tables --------------------------------------------------


def check_metrics(file: str, stored: dict, evaluations: list[dict], identity: dict, label: str,
                  classes_per_task: list[int] | None = None) -> None:
    """Compare one metrics.json with the numbers recomputed from its per-task evaluations (pure).
    The named variants (``variants``) are checked when the file has them."""
    acc, counts = metrics.accuracy_matrix(evaluations)
    summary = metrics.summarize(acc, counts)
    problem = layout_problem(stored)  # the layout summarize writes (ncil.reports.metrics_json)
    if problem is not None:
        raise Mismatch(file, problem[0], problem[1], "present", "missing")
    for key, value in {**identity, "label": label}.items():
        if stored["run"].get(key) != value:
            raise Mismatch(file, "run", key, value, stored["run"].get(key))
    if stored["provenance"].get("metric_convention") != metrics.CONVENTION:
        raise Mismatch(file, "provenance", "metric_convention", metrics.CONVENTION,
                       stored["provenance"].get("metric_convention"))
    if len(stored["acc_matrix"]) != len(acc):
        raise Mismatch(file, "acc_matrix", "(number of tasks)", len(acc), len(stored["acc_matrix"]))
    for k, row in enumerate(acc):
        for i, value in enumerate(row):
            found = _num_or_nan(stored["acc_matrix"][k][i]) if i < len(stored["acc_matrix"][k]) else "missing"
            if not _same(float(value), found, REL_TOL):
                raise Mismatch(file, f"acc_matrix[{k}]", f"[{i}]", float(value), found)
    for i, c in enumerate(counts):
        found = stored["test_counts"][i] if i < len(stored["test_counts"]) else "missing"
        if found != int(c):
            raise Mismatch(file, "test_counts", f"[{i}]", int(c), found)
    for k, value in enumerate(summary["accuracy_per_step"]):
        found = stored["accuracy_per_step"][k] if k < len(stored["accuracy_per_step"]) else "missing"
        if not _same(value, found, REL_TOL):
            raise Mismatch(file, "accuracy_per_step", f"[{k}]", value, found)
    for key in results_table.COLUMNS:
        if not _same(summary[key], _num_or_nan(stored[key]), REL_TOL):
            raise Mismatch(file, "(top level)", key, summary[key], stored[key])
    if "variants" in stored:  # derived from the matrix: checked after it
        for key, value in metrics.variants(acc, counts, classes_per_task).items():
            found = _num_or_nan(stored["variants"].get(key, "missing"))
            if not _same(value, found, REL_TOL):
                raise Mismatch(file, "variants", key, value, found)


# --- 2. text outputs ------------------------------------------------------------------------------


def compare_csv(file: str, expected: str, found: str, tol: float = CSV_TOL) -> None:
    """Cell-by-cell comparison; numbers within ``tol``. Rows are numbered from 1 after the header."""
    exp_rows = list(csv.reader(stdio.StringIO(expected)))
    got_rows = list(csv.reader(stdio.StringIO(found)))
    header = exp_rows[0] if exp_rows else []
    if not got_rows or got_rows[0] != header:
        raise Mismatch(file, 0, "(header)", ",".join(header), ",".join(got_rows[0]) if got_rows else "empty file")
    for r in range(1, max(len(exp_rows), len(got_rows))):
        if r >= len(got_rows):
            raise Mismatch(file, r, "(whole row)", ",".join(exp_rows[r]), "missing")
        if r >= len(exp_rows):
            raise Mismatch(file, r, "(whole row)", "no such row", ",".join(got_rows[r]))
        for c, name in enumerate(header):
            e = exp_rows[r][c]
            g = got_rows[r][c] if c < len(got_rows[r]) else "missing"
            if e == g:
                continue
            try:
                if math.isclose(float(e), float(g), rel_tol=0, abs_tol=tol):
                    continue
            except ValueError:
                pass
            raise Mismatch(file, f"{r} ({_row_key(header, exp_rows[r])})", name, e, g)


def _row_key(header: list[str], row: list[str]) -> str:
    keys = [k for k in ("table", "dataset", "setting", "row", "metric", "task", "label", "method", "map", "sample", "patch")
            if k in header]
    return " ".join(row[header.index(k)] for k in keys if header.index(k) < len(row))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def compare_markdown(file: str, expected: str, found: str) -> None:
    """Line-by-line comparison; a differing table line is reported by its first cell and column header."""
    exp_lines, got_lines = expected.splitlines(), found.splitlines()
    header: list[str] = []
    for n in range(max(len(exp_lines), len(got_lines))):
        e = exp_lines[n] if n < len(exp_lines) else "(end of file)"
        g = got_lines[n] if n < len(got_lines) else "(end of file)"
        if e.startswith("| ") and n + 1 < len(exp_lines) and exp_lines[n + 1].startswith("|---"):
            header = _cells(e)
        if e == g:
            continue
        if e.startswith("|") and g.startswith("|"):
            ec, gc = _cells(e), _cells(g)
            for c in range(max(len(ec), len(gc))):
                ev, gv = (ec[c] if c < len(ec) else "missing"), (gc[c] if c < len(gc) else "missing")
                if ev != gv:
                    column = header[c] if c < len(header) else f"cell {c + 1}"
                    raise Mismatch(file, f"line {n + 1} ({ec[0]})", column, ev, gv)
        raise Mismatch(file, f"line {n + 1}", "(text)", e, g)


# --- 3. cross-check of Figure 3 against Table 1 -------------------------------------------------


def check_curves_against_table1(curve_file: str, curve_csv: str, table1_csv: str, dataset: str, label: str) -> None:
    """Mean of each plotted curve = Table 1 Avg, last point = Table 1 Last (method-spec 7.6)."""
    rows = list(csv.DictReader(stdio.StringIO(curve_csv)))
    t1 = {(r["dataset"], r["setting"], r["method"], r["metric"]): r for r in csv.DictReader(stdio.StringIO(table1_csv))}
    methods = [k for k in (rows[0] if rows else {}) if k != "task" and not k.endswith(("_std", "_n"))]
    for m in methods:
        if not all(r[m] for r in rows):
            continue  # no results for this method yet (empty column)
        curve = np.array([float(r[m]) for r in rows])
        for metric, value in (("avg_accuracy", curve.mean()), ("last_accuracy", curve[-1])):
            cell = t1.get((dataset, label, m, metric))
            if cell is None or not cell["mean"]:
                continue  # a method shown in no Table 1 row (the curve itself was checked against metrics)
            if not math.isclose(float(cell["mean"]), value, abs_tol=1e-3):
                raise Mismatch(curve_file, f"curve {m}", "mean over tasks" if metric == "avg_accuracy" else "last task",
                               f"{float(cell['mean']):.4f} (table1.csv)", f"{value:.4f}")


def check_png(root: Path, png: str, expected: bytes) -> None:
    """A figure must be the byte-identical rendering of its recomputed data (deterministic PNG)."""
    path = root / png
    if not path.is_file():
        raise Mismatch(png, "-", "(image)", "the figure", "missing file")
    found = path.read_bytes()
    if found != expected:
        raise Mismatch(png, "-", "(image bytes, sha256)", hashlib.sha256(expected).hexdigest()[:16],
                       hashlib.sha256(found).hexdigest()[:16])


# --- Orchestration ---------------------------------------------------------------------------------


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise Mismatch(path, "-", "-", f"a {what}", "missing file")
    return path.read_text(encoding="utf-8")


def check_code(file: str, stored: dict, code: dict[str, str]) -> None:
    """A metrics.json made by other code than the package's now (its steps' fingerprints,
    ncil/pipeline/fingerprints.py) is stale: the steps that made it must rerun before it verifies (pure)."""
    found = stored["provenance"].get("code_fingerprints")
    if not isinstance(found, dict):
        raise Mismatch(file, "provenance", "code_fingerprints", code, found)
    for verb, value in code.items():
        if found.get(verb) != value:
            raise Mismatch(file, "provenance", f"code_fingerprints.{verb}", value, found.get(verb))


def verify(root: str | Path, params: dict, log=print, params_file: str = "params.yaml") -> dict:
    """Run every check under ``root`` for the grid of ``params`` (read from ``params_file``, relative to
    ``root``); raise ``Mismatch`` at the first difference. Returns counts of what was checked."""
    root = Path(root)
    checked = {"metrics": 0, "tables": 0, "figures": 0, "readme": 0}
    checked["locked stages"] = locked_params_checked(root, params, params_file)
    log(f"verify: {checked['locked stages']} stages of dvc.lock ran with {params_file}'s values")
    loaded = []
    from ncil.pipeline import fingerprints

    code = fingerprints.for_metrics()  # the code that would make each metrics.json now
    for run in experiment_grid.runs(params):
        mfile = root / run.metrics_file
        if not mfile.is_file():
            continue  # not run yet: the tables say so, and step 2 checks that they do
        stored = io.read_json(mfile, "metrics file")
        split = read_split(root / run.split_file)
        evaluations = []
        for t in range(run.n_tasks):
            ev = io.read_predictions(root / run.eval_file(t), split["tasks"])
            if ev["task"] != t:
                raise Mismatch(root / run.eval_file(t), "(schema metadata)", "ncil.task", t, ev["task"])
            evaluations.append(ev)
        identity = {"dataset": run.dataset, "setting": run.setting, "method": run.method, "seed": run.seed}
        label = setting_label(split["initial_increment"], split["increment"], len(split["tasks"]))
        check_metrics(run.metrics_file, stored, evaluations, identity, label, [len(t) for t in split["tasks"]])
        check_code(run.metrics_file, stored, code)
        loaded.append(stored)
        checked["metrics"] += 1
    log(f"verify: {checked['metrics']} metrics.json files match their evaluation tables")

    expected: dict[str, str] = {}
    dataset = params["dataset"]["name"]
    for folder in report.grid_settings(params):  # the grid's folder (its data set's name by default)
        rows = results_table.aggregate([m for m in loaded if m["run"]["dataset"] == dataset])
        md, csv_path = paths.table_files(folder)
        expected[md] = results_table.to_markdown(rows, dataset, report.default_context(params))
        expected[csv_path] = results_table.to_csv(rows)
    extra_grid = experiment_grid.own_folder(params)  # its runs are in no paper table: those are not its files
    if not extra_grid:
        # The tables hold every data set's sections present: the other data sets' as committed (their own
        # grids write and check them), this grid's recomputed from its metrics.
        expected.update(report.table_texts(params, loaded, report.read_sections(str(root))))
        # Table 4 (from the committed results tables of the Table 4 grids that have run), the EFCIL table: as the
        # paper-tables step writes them
        expected.update(report.unsectioned_texts(report.table4_grids(str(root))))
    figure_csvs = report.curve_csv_texts(params, loaded)
    for path, text in {**expected, **figure_csvs}.items():
        found = _read_text(root / path, "results file")
        (compare_csv if path.endswith(".csv") else compare_markdown)(path, text, found)
        checked["figures" if path in figure_csvs else "tables"] += 1
    for png, (title, table) in report.curve_tables(params, loaded).items():
        check_png(root, png, plots.png_bytes(plots.draw_curves(table, title)))
    if not extra_grid:
        t1_csv = (root / paths.paper_table_files("table1")[1]).read_text(encoding="utf-8")
        for folder, setting, label in report.grid_curves(params):
            curve = paths.curve_figure_files(folder, setting)[1]
            check_curves_against_table1(curve, (root / curve).read_text(encoding="utf-8"), t1_csv, folder, label)
    log(f"verify: {checked['tables']} table files, {checked['figures']} figure data files and their PNGs match the metrics")

    checked["figure4"] = check_figure4(root, params, log)

    if not extra_grid:  # Table 4's cells and the digits' EFCIL benchmark come from these grids: recompute them
        table4 = {grid for grid, _, _ in paths.table4_sources(str(root))}
        for grid, grid_params_file, _ in paths.committed_grid_sources(str(root)):
            log(f"verify: {'Table 4 grid' if grid in table4 else 'grid'} {grid} ({grid_params_file}):")
            verify(root, io.read_yaml(root / grid_params_file), log, grid_params_file)
            checked.setdefault("table4 grids" if grid in table4 else "extra grids", []).append(grid)

    readme = root / "README.md"
    if readme.is_file() and not extra_grid:  # the README copies the paper tables' sections
        checked["readme"] = check_readme(readme, expected)
        log(f"verify: {checked['readme']} table copies in README.md match results/tables")
    return checked


def check_figure4(root: Path, params: dict, log) -> int:
    """Figure 4 (when the grid has it): recompute the weight maps from the checkpoints, if they are here
    (they are DVC-cached: `dvc pull`); otherwise say that it was not checked."""
    from ncil.pipeline.config import parse_params
    from ncil.pipeline.workflow import steps

    step = next((s for s in steps(params) if s.kind == "figure4"), None)
    if step is None:
        return 0
    checkpoints = step.values("--checkpoints")
    missing = [c for c in checkpoints if not (root / c).is_file()]
    if missing or not (root / paths.data_manifest(params["dataset"]["name"])).is_file():
        log(f"verify: Figure 4 not checked: {missing[0] if missing else 'the data set'} is not here (dvc pull)")
        return 0
    options = {key: int(step.values(flag)[0]) for key, flag in (("n_images", "--images"), ("norm", "--p"))
               if step.values(flag)}  # what the step's command leaves out is the figure4 verb's default
    csv_text, png, _ = plots.weight_map_files(parse_params(params), step.values("--split")[0], checkpoints,
                                              root=str(root), **options)
    csv_file, png_file = step.outs["csv"], step.outs["png"]
    compare_csv(csv_file, csv_text, _read_text(root / csv_file, "Figure 4 data"))
    check_png(root, png_file, png)
    log("verify: Figure 4's weight maps match their checkpoints")
    return 1


README_BLOCK = re.compile(r"<!-- (table\d):([A-Za-z0-9_-]+) -->\n(.*?)<!-- /\1:\2 -->", re.S)


def readme_section(table_markdown: str, dataset: str) -> str:
    """The Markdown table of ``dataset`` inside a paper table (what the README shows)."""
    lines, out, inside = table_markdown.splitlines(), [], False
    for line in lines:
        if line.startswith("## "):
            inside = line == results_table.section_heading(dataset)  # exact: "digits_own" is not "digits"
            continue
        if inside and line.startswith("|"):
            out.append(line)
    return "\n".join(out) + "\n"


def refresh_readme(readme: Path, root: Path = Path(".")) -> bool:
    """Rewrite the README's table blocks from the committed tables; True if anything changed."""
    text = readme.read_text(encoding="utf-8")

    def block(match: re.Match) -> str:
        table, dataset, _ = match.groups()
        markdown = (root / paths.paper_table_files(table)[0]).read_text(encoding="utf-8")
        return f"<!-- {table}:{dataset} -->\n{readme_section(markdown, dataset)}<!-- /{table}:{dataset} -->"

    new = README_BLOCK.sub(block, text)
    if new != text:
        io.write_text(readme, new)
    return new != text


def check_readme(readme: Path, expected: dict[str, str]) -> int:
    n = 0
    for match in README_BLOCK.finditer(readme.read_text(encoding="utf-8")):
        table, dataset, body = match.groups()
        want = readme_section(expected[paths.paper_table_files(table)[0]], dataset)
        compare_markdown(f"{readme.name} ({table}:{dataset})", want, body)
        n += 1
    return n


# --- 0. the results are not stale: dvc.lock's params against the params file -----------------------
ABSENT = object()  # a key the params file does not have


def first_difference(key: str, locked, current):
    """(dotted key, locked value, current value) of the first difference, or None; a bool is not an
    int here (YAML's ``true`` and ``1`` are different settings)."""
    if isinstance(locked, dict) and isinstance(current, dict):
        for sub in sorted(set(locked) | set(current), key=str):
            found = first_difference(f"{key}.{sub}", locked.get(sub, ABSENT), current.get(sub, ABSENT))
            if found:
                return found
        return None
    if type(locked) is not type(current) and not (isinstance(locked, (int, float)) and isinstance(current, (int, float))
                                                   and not isinstance(locked, bool) and not isinstance(current, bool)):
        return key, locked, current
    return None if locked == current else (key, locked, current)


def check_locked_params(stages, locked: dict, params: dict, params_file: str) -> int:
    """Every stage of ``stages`` (dvc.yaml's names) that dvc.lock (``locked``: its ``stages``) holds must
    have run with ``params``' values of the keys it recorded from ``params_file``: otherwise its outputs,
    and the numbers made from them, belong to other parameters (``StaleParams``). Pure; returns the
    number of stages compared."""
    compared = 0
    for stage in stages:
        recorded = (locked.get(stage) or {}).get("params", {}).get(params_file)
        if recorded is None:
            continue
        compared += 1
        for key, value in recorded.items():
            node = params
            for part in key.split("."):
                node = node.get(part, ABSENT) if isinstance(node, dict) else ABSENT
            found = first_difference(key, value, node)
            if found:
                raise StaleParams(stage, params_file, *found)
    return compared


def locked_params_checked(root: Path, params: dict, params_file: str) -> int:
    """``check_locked_params`` on ``root``'s dvc.yaml and dvc.lock (0 where either is missing: nothing recorded)."""
    import yaml

    files = [root / "dvc.yaml", root / "dvc.lock"]
    if not all(f.is_file() for f in files):
        return 0
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # dvc.lock is ~1.3 MB: the C loader reads it in ~1 s
    stages, locked = (yaml.load(f.read_text(encoding="utf-8"), Loader=loader) or {} for f in files)
    return check_locked_params(stages.get("stages", {}), locked.get("stages", {}), params, params_file)
