"""Every step of the grid as data: command, inputs, outputs, params keys, code, log and benchmark.

``dvcgen`` writes one DVC stage per step. The Snakemake rules (rules/*.smk) spell the same commands
out with named wildcards and take from here what both engines must agree on: the params keys of each
kind of step (``param_keys``), the code each verb runs (``code_deps``) and Figure 4's run
(``figure4_run``). tests/test_commands_agree.py proves the two run the same commands on the same
files for the default grid (design.md 4).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ncil.cli import VERBS
from ncil.pipeline import codedeps, experiment_grid, paths
from ncil.pipeline.provenance import setting_label

# The module each verb of `python -m ncil` runs (the verb table of ncil/cli.py: one module per verb) and
# the entry point every verb goes through (ncil/__main__.py, then ncil/cli.py: numerics before torch, logs,
# error types); their imports, scanned by ncil/pipeline/codedeps.py, are each step's code dependencies.
STAGE_MODULES: dict[str, str] = dict(VERBS)
ENTRY_MODULES: tuple[str, ...] = ("ncil.__main__",)
ENTRY_FILES: tuple[str, ...] = ()
REPO_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this ncil package
# What shapes a training or evaluation job (its method section is added per job). The grid-level `preset`
# is not here: each method carries its own (method.<name>.preset), which is what a checkpoint records.
RUN_KEYS = ["order_seed", "dataset", "model", "train", "runtime.threads", "runtime.numerics", "runtime.precision"]
# Where the raw data lives and whether it may be downloaded: only the prepare step reads these, so
# moving a data set's folder reruns prepare (whose unchanged arrays then stop the cascade), not training.
LOCATION_KEYS = ("root", "download")


@lru_cache(maxsize=None)
def code_deps(verb: str) -> tuple[str, ...]:
    """The package files ``python -m ncil <verb>`` runs (relative paths): each step's code dependency."""
    return tuple(codedeps.step_code_files(verb, STAGE_MODULES, REPO_ROOT, ENTRY_MODULES, ENTRY_FILES))


def order_keys(params: dict) -> tuple[str, ...]:
    """The keys of the class order: ``order_seed``, and ``class_order`` where a grid sets one (a grid without it,
    such as every grid before it existed, keeps the stage parameters it had)."""
    return ("order_seed", "class_order") if params.get("class_order") is not None else ("order_seed",)


def run_keys(params: dict) -> list[str]:
    """The params keys a training or evaluation job reads: RUN_KEYS without the data location."""
    dataset = params["dataset"]
    keys = []
    for key in RUN_KEYS:
        if key == "dataset" and any(k in dataset for k in LOCATION_KEYS):
            keys += [f"dataset.{k}" for k in dataset if k not in LOCATION_KEYS]
        else:  # digits: the whole dataset section
            keys += list(order_keys(params)) if key == "order_seed" else [key]
    return keys


@dataclass(frozen=True)
class Step:
    name: str  # unique, DVC-safe stage name
    kind: str  # prepare | split | train | evaluate | summarize | tables | paper_sections | paper_tables | figures | figure4
    cmd: tuple[str, ...]  # argv after `python -m ncil`
    deps: dict[str, str]  # named inputs (data/artifacts)
    outs: dict[str, str]  # named outputs
    params: tuple[str, ...]  # params.yaml keys the step reads
    log: str
    benchmark: str
    cached: bool = True  # DVC cache (False: small result files committed to git)
    metric: bool = False  # a DVC metrics file
    out_dirs: tuple[str, ...] = field(default=())  # outputs that are directories
    plots: tuple[tuple[str, tuple[str, ...], str], ...] = ()  # DVC plots: (csv, y columns, title)

    @property
    def verb(self) -> str:
        return self.cmd[0]

    def values(self, flag: str) -> list[str]:
        """The values that follow ``flag`` in the command, up to the next flag (empty when it is absent)."""
        if flag not in self.cmd:
            return []
        out = []
        for word in self.cmd[self.cmd.index(flag) + 1:]:
            if word.startswith("--"):
                break
            out.append(word)
        return out

    @property
    def code(self) -> tuple[str, ...]:
        """The package files this step's command runs (its code dependency in both engines)."""
        return code_deps(self.verb)

    @property
    def shell(self) -> str:
        return "python -m ncil " + " ".join(shlex.quote(a) for a in self.cmd)


def stage_name(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", "_".join(str(p) for p in parts)).strip("_")


def steps(params: dict, params_file: str = "params.yaml", report: bool = True, root: str = ".") -> list[Step]:
    """All steps of the grid defined by ``params`` (a composed params.yaml mapping).

    Every grid writes its own data set's sections of the paper's tables (results/tables/<dataset>/)
    and its own figures (named by the data set). ``report``: also assemble Tables 1, 2, 3 and 5
    (results/tables/table1.md, ...) from the sections of every data set present under ``root``. Those
    files are shared by all data sets, so only the root grid (params.yaml) has that step, and no file
    has two producers (issue 10, item 8).
    """
    dataset, folder = params["dataset"]["name"], experiment_grid.grid_folder(params)
    p = ["--params", params_file]
    out: list[Step] = []
    data = paths.data_files(dataset)
    out.append(Step(
        name=stage_name("prepare", dataset), kind="prepare",
        cmd=("prepare", *p, "--log", paths.log_file("prepare", dataset)), deps=raw_inputs(params["dataset"]),
        outs={f"f{i}": f for i, f in enumerate(data)}, params=param_keys("prepare", params),
        log=paths.log_file("prepare", dataset), benchmark=paths.benchmark_file("prepare", dataset),
    ))
    manifest = paths.data_manifest(dataset)  # the data set's, shared by its grids

    runs = experiment_grid.runs(params)
    split_ids = {paths.base_split_id(r.initial): (r.initial, 0) for r in runs}
    split_ids.update({r.setting: (r.initial, r.increment) for r in runs})
    for split_id, (initial, increment) in sorted(split_ids.items()):
        target = paths.split_file(folder, split_id)
        out.append(Step(
            name=stage_name("split", folder, split_id), kind="split",
            cmd=("split", *p, "--initial", str(initial), "--increment", str(increment), "--out", target,
                 "--log", paths.log_file("split", f"{folder}/{split_id}")),
            deps={}, outs={"split": target}, params=param_keys("split", params),
            log=paths.log_file("split", f"{folder}/{split_id}"),
            benchmark=paths.benchmark_file("split", f"{folder}/{split_id}"), cached=False,
        ))

    for job in experiment_grid.train_jobs(params):
        run, t = job.run, job.task
        split = run.base_split_file if t == 0 else run.split_file
        method = run.base_recipe if t == 0 else run.method
        deps = {"manifest": manifest, "split": split}
        cmd = ["train", *p, "--split", split, "--task", str(t), "--seed", str(run.seed), "--method", method]
        if t > 0:
            deps.update(prev_checkpoint=run.checkpoint(t - 1), prev_centers=run.centers(t - 1))
            cmd += ["--prev-checkpoint", run.checkpoint(t - 1), "--prev-centers", run.centers(t - 1)]
            if run.rehearsal:  # task t-1's exemplar memory: an input of rehearsal methods' tasks only
                deps["prev_memory"] = run.memory(t - 1)
                cmd += ["--prev-memory", run.memory(t - 1)]
        outs = {"checkpoint": run.checkpoint(t), "centers": run.centers(t)}
        log = paths.log_file("train", job.name)
        cmd += ["--checkpoint", outs["checkpoint"], "--centers", outs["centers"]]
        if run.rehearsal:
            outs["memory"] = run.memory(t)
            cmd += ["--memory", outs["memory"]]
        if run.fecam:  # FeCAM: the statistics of the task's classes, beside the checkpoint and centers
            outs["statistics"] = run.statistics(t)
            cmd += ["--statistics", outs["statistics"]]
        cmd += ["--log", log]
        keys = param_keys("train", params, run.method if t > 0 else None)
        out.append(Step(
            name=stage_name("train", folder, job.run_id, f"task{t}"), kind="train", cmd=tuple(cmd),
            deps=deps, outs=outs, params=keys, log=log,
            benchmark=paths.benchmark_file("train", job.name),
        ))

    metrics_files = []
    for run in runs:
        tag = f"{folder}/{run.run_id}"
        checkpoints = [run.checkpoint(t) for t in range(run.n_tasks)]
        evals = [run.eval_file(t) for t in range(run.n_tasks)]
        eval_dir = evals[0].rsplit("/", 1)[0]
        log = paths.log_file("evaluate", tag)
        statistics = [run.statistics(t) for t in range(run.n_tasks)] if run.fecam else []
        out.append(Step(
            name=stage_name("evaluate", folder, run.run_id), kind="evaluate",
            cmd=("evaluate", *p, "--split", run.split_file, "--checkpoints", *checkpoints,
                 *(("--statistics", *statistics) if statistics else ()), "--out", *evals, "--log", log),
            deps={"manifest": manifest, "split": run.split_file, **{f"checkpoint{t}": c for t, c in enumerate(checkpoints)},
                  **{f"statistics{t}": s for t, s in enumerate(statistics)}},
            outs={"evals": eval_dir}, params=param_keys("evaluate", params), log=log,
            benchmark=paths.benchmark_file("evaluate", tag), cached=False, out_dirs=(eval_dir,),
        ))
        out.append(Step(
            name=stage_name("summarize", folder, run.run_id), kind="summarize",
            cmd=("summarize", *p, "--split", run.split_file, "--evals", *evals, "--setting", run.setting,
                 "--method", run.method, "--seed", str(run.seed), "--out", run.metrics_file,
                 "--checkpoints", *checkpoints, "--log", paths.log_file("summarize", tag)),
            deps={"split": run.split_file, "evals": eval_dir,  # the checkpoints: their training precision
                  **{f"checkpoint{t}": c for t, c in enumerate(checkpoints)}},
            outs={"metrics": run.metrics_file},
            params=param_keys("summarize", params), log=paths.log_file("summarize", tag),
            benchmark=paths.benchmark_file("summarize", tag), cached=False, metric=True,
        ))
        metrics_files.append(run.metrics_file)

    markdown, csv = paths.table_files(folder)
    out.append(Step(
        name=stage_name("tables", folder), kind="tables",
        cmd=("tables", *p, "--metrics", *metrics_files, "--markdown", markdown, "--csv", csv,
             "--log", paths.log_file("tables", folder)),
        deps={f"metrics{i}": m for i, m in enumerate(metrics_files)}, outs={"markdown": markdown, "csv": csv},
        params=param_keys("tables", params), log=paths.log_file("tables", folder),
        benchmark=paths.benchmark_file("tables", folder), cached=False,
    ))
    out.extend(report_steps(params, p, metrics_files))
    if report and not experiment_grid.own_folder(params):  # an extra grid's runs are in no paper table
        out.append(paper_tables_step(params, p, root))
    return out


def section_dataset(params: dict) -> str:
    """The grid's data set as the paper tables name it (a paper data set's alias: its canonical name)."""
    from ncil.reports.paper_values import canonical_dataset

    return canonical_dataset(params["dataset"]["name"])


def table_sections(params: dict, root: str = ".") -> list[str]:
    """The section files Tables 1, 2, 3 and 5 are assembled from: this grid's data set's and those of
    every other data set with sections under ``root`` (committed files, not outputs of this grid)."""
    own = section_dataset(params)
    datasets = sorted({own, *paths.paper_section_datasets(root)})
    return [f for d in datasets for f in paths.paper_sections(d)]


def paper_tables_step(params: dict, p: list[str], root: str = ".") -> Step:
    """Tables 1, 2, 3 and 5 (Markdown and CSV) from every data set's section files (``table_sections``),
    and the unsectioned tables (``paths.UNSECTIONED_TABLES``): Table 4 with ours from the results tables of the
    Table 4 grids that have run (``paths.table4_sources``), the EFCIL benchmark (ours "not run")."""
    sections = table_sections(params, root)
    table4 = paths.table4_sources(root)  # committed files of the Table 4 grids that have run
    outs = {}
    for table in (*paths.PAPER_TABLES, *paths.UNSECTIONED_TABLES):
        outs[f"{table}_md"], outs[f"{table}_csv"] = paths.paper_table_files(table)
    log = paths.log_file("tables", "paper")
    grids = ("--table4-grids", *(g for g, _, _ in table4)) if table4 else ()
    deps = {f"section{i}": f for i, f in enumerate(sections)}
    for grid, params_file, csv_file in table4:
        deps[f"table4_{grid}_params"], deps[f"table4_{grid}_results"] = params_file, csv_file
    return Step(
        name="paper_tables", kind="paper_tables",
        cmd=("paper-tables", *p, "--sections", *sections, *grids, "--log", log),
        deps=deps, outs=outs,
        params=param_keys("paper_tables", params), log=log, benchmark=paths.benchmark_file("tables", "paper"),
        cached=False,
    )


def report_steps(params: dict, p: list[str], metrics_files: list[str]) -> list[Step]:
    """This grid's data set's sections of the paper's tables (not for an extra grid with its own folder), Figure 3
    of every setting and, when the grid has a PKS method on the ViT, Figure 4 from its seed's checkpoints of the
    longest setting (the paper shows the tasks 1, 3, 5, ...): figures named by the grid's folder (the data set's
    name by default), so every grid has these steps."""
    dataset, folder = params["dataset"]["name"], experiment_grid.grid_folder(params)
    deps = {f"metrics{i}": m for i, m in enumerate(metrics_files)}
    out = []
    if not experiment_grid.own_folder(params):  # an extra grid (own folder) has no section of the paper's tables
        section = section_dataset(params)
        section_outs = {}
        for table in paths.PAPER_TABLES:
            section_outs[f"{table}_md"], section_outs[f"{table}_csv"] = paths.paper_section_files(section, table)
        log = paths.log_file("tables", f"{section}_sections")
        out.append(Step(
            name=stage_name("paper_sections", dataset), kind="paper_sections",
            cmd=("paper-sections", *p, "--metrics", *metrics_files, "--log", log),
            deps=deps, outs=section_outs, params=param_keys("paper_sections", params),
            log=log, benchmark=paths.benchmark_file("tables", f"{section}_sections"), cached=False,
        ))
    figure_outs, plots, runs = {}, [], experiment_grid.runs(params)
    for setting in dict.fromkeys(r.setting for r in runs):
        png, csv = paths.curve_figure_files(folder, setting)
        figure_outs[f"{setting}_png"], figure_outs[f"{setting}_csv"] = png, csv
        run = next(r for r in runs if r.setting == setting)
        label = setting_label(run.initial, run.increment, run.n_tasks)
        plots.append((csv, tuple(params["method"]), f"{folder} {label}: accuracy after each task (Acc_k, %)"))
    out.append(Step(
        name=stage_name("figures", folder), kind="figures",
        cmd=("figures", *p, "--metrics", *metrics_files, "--log", paths.log_file("figures", folder)),
        deps=deps, outs=figure_outs, params=param_keys("figures", params), log=paths.log_file("figures", folder),
        benchmark=paths.benchmark_file("figures", folder), cached=False, plots=tuple(plots),
    ))
    shown = figure4_run(params)
    if shown:
        method, run, checkpoints = shown
        png, csv = paths.weight_map_files(folder)
        log = paths.log_file("figures", f"{folder}_pks")
        out.append(Step(
            name=stage_name("figure4", folder), kind="figure4",
            cmd=("figure4", *p, "--split", run.split_file, "--checkpoints", *checkpoints,
                 "--p", str(params["method"][method].get("pks_p", 2)), "--out-png", png, "--out-csv", csv,
                 "--log", log),
            deps={"manifest": paths.data_manifest(dataset), "split": run.split_file,
                  **{f"checkpoint{i}": c for i, c in enumerate(checkpoints)}},
            outs={"png": png, "csv": csv}, params=param_keys("figure4", params, method), log=log,
            benchmark=paths.benchmark_file("figures", f"{folder}_pks"), cached=False,
        ))
    return out


def figure4_run(params: dict) -> tuple[str, experiment_grid.Run, list[str]] | None:
    """Figure 4's (method, run, checkpoints), or None when the grid has no PKS method on the ViT: the
    method ``ours`` (else the first PKS method), its first seed's longest setting, and the checkpoints
    after tasks 1, 3, 5, ... (at most five, as the paper shows)."""
    pks = [m for m, spec in params["method"].items() if spec.get("pks", 0) and spec.get("backbone", "vit") == "vit"]
    if not pks:
        return None
    method = "ours" if "ours" in pks else pks[0]
    runs = [r for r in experiment_grid.runs(params) if r.method == method and r.seed == params["seeds"][0]]
    run = max(runs, key=lambda r: r.n_tasks)
    return method, run, [run.checkpoint(t) for t in range(1, run.n_tasks, 2)][:5]


def param_keys(kind: str, params: dict, method: str | None = None) -> tuple[str, ...]:
    """The params.yaml keys a step of ``kind`` reads (DVC's ``params:``, Snakemake's params trigger).

    ``method``: the incremental method of a training step after task 0 (task 0 reads no method
    section: its base recipe is in the keys every training step reads), or Figure 4's method.
    """
    report = ("preset", *order_keys(params), "seeds")
    keys = {
        "prepare": ("dataset",),
        "split": ("dataset.n_classes", *order_keys(params)),
        "evaluate": tuple(run_keys(params)),
        "summarize": ("preset", *order_keys(params)),
        "tables": report,
        "paper_sections": report,
        "paper_tables": report,
        "figures": report,
    }
    if kind == "train":
        return (*run_keys(params), *([f"method.{method}"] if method else []))
    if kind == "figure4":
        return ("dataset", "model", f"method.{method}")
    return keys[kind]


def raw_inputs(dataset: dict) -> dict[str, str]:
    """What the prepare step reads from disk besides its parameters (digits: nothing, it is bundled).

    The raw folder where it is small enough to hash (CIFAR-100, TinyImageNet, an image folder),
    except when a download is allowed (the folder may not exist yet); ImageNet-Subset depends on its
    class list only, since its root may be a whole ImageNet tree (~150 GB to hash).
    """
    deps = {}
    if dataset.get("root") and not dataset.get("download") and dataset["name"] != "imagenet_subset":
        deps["raw"] = dataset["root"]
    if dataset.get("class_list"):
        deps["class_list"] = dataset["class_list"]
    return deps


def lookup_params(params: dict, keys) -> dict:
    """The values of dotted ``keys`` in ``params`` (what a step depends on), for change detection."""
    values = {}
    for key in keys:
        node = params
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


def params_digest(kind: str, params: dict, method: str | None = None, extra: dict | None = None) -> str:
    """Digest of what a ``kind`` step reads from ``params`` (``param_keys``; ``extra``: anything else it
    reads that is not a file input, as the raw folder's state of a prepare step): Snakemake's params
    trigger and its params stamps (rules/common.smk) compare this, DVC the keys themselves."""
    values = lookup_params(params, param_keys(kind, params, method))
    values.update(extra or {})
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
