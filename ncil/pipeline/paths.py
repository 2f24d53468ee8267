"""The one owner of path templates (stdlib only, so the Snakefile can import it).

Layout (all paths relative to the repository root):

    data/<dataset>/                                   prepared arrays + manifest.json (DVC)
    results/<grid>/<split_id>/split.json              class order and classes of each task (git)
    runs/<grid>/<run_id>/task_<t>/model.pt            checkpoint after task t (DVC cache)
    runs/<grid>/<run_id>/task_<t>/centers.parquet     class centers after task t (DVC cache)
    runs/<grid>/<run_id>/task_<t>/memory.parquet      exemplar memory after task t: rehearsal methods only (DVC cache)
    runs/<grid>/<run_id>/task_<t>/statistics.parquet  FeCAM: task t's classes' mean and covariance (DVC cache)
    results/<grid>/<setting>/<method>/seed<s>/eval/task_<t>.parquet   per-task predictions (git)
    results/<grid>/<setting>/<method>/seed<s>/metrics.json            summary (git, DVC metric)
    results/tables/<grid>_results.{md,csv}                            results table (git)
    grids/<name>/params.yaml, grids/<name>/dvc.yaml   a paper data set's grid (Snakemake target <name>)

<grid> is the folder a grid owns (``ncil.pipeline.experiment_grid.grid_folder``: params' top-level ``grid``, by
default the data set's name), so two grids on one data set never share a run or result path while they share the
data set's prepared data. The functions below take that folder where their path is under runs/ or results/.

Task 0 does not depend on the increment or on the incremental method, so its run id is
``base<F>/<base_recipe>/seed<s>`` and every setting with the same F and every method with the same
base recipe reads the same task-0 checkpoint.
"""

from __future__ import annotations

DATA_ROOT = "data"
RESULTS_ROOT = "results"
RUNS_ROOT = "runs"
LOGS_ROOT = "logs"
BENCH_ROOT = "benchmarks"
TABLES_DIR = f"{RESULTS_ROOT}/tables"
GRIDS_ROOT = "grids"
# The paper's data sets: each has a Hydra experiment conf/experiment/<name>.yaml composed into
# grids/<name>/params.yaml (`python -m ncil grid <name>`) and a Snakemake target of the same name.
GRID_NAMES = ("cifar100", "tinyimagenet", "imagenet_subset")
# Grids with methods kept out of a data set's grid (Table 4's DyTox on the digits and on CIFAR-100, issue 25's FeCAM): a
# grids/<name>/params.yaml from conf/experiment/<name>.yaml, run by composing it into params.yaml
# (`python -m ncil params +experiment=<name>`). Each has its own folder (top-level `grid: <name>`: runs/<name>/,
# results/<name>/, its own results table, figures and costs) and shares the data set's data/<dataset>/; no dvc.yaml
# or Snakemake target of its own.
EXTRA_GRID_NAMES = ("digits_dytox", "digits_efcil", "cifar100_dytox", "cifar100_efcil", "tinyimagenet_efcil",
                    "imagenet_subset_efcil")

CHECKPOINT_NAME = "model.pt"
CENTERS_NAME = "centers.parquet"
MEMORY_NAME = "memory.parquet"  # the exemplar memory of a rehearsal method (DyTox, exemplars_per_class > 0)
STATISTICS_NAME = "statistics.parquet"  # FeCAM's per-class statistics (classifier fecam; docs/efcil.md)
MANIFEST_NAME = "manifest.json"
DATA_SPLITS = ("train", "val", "test")


def data_dir(dataset: str) -> str:
    return f"{DATA_ROOT}/{dataset}"


def data_manifest(dataset: str) -> str:
    return f"{data_dir(dataset)}/{MANIFEST_NAME}"


def data_arrays(dataset: str, split: str) -> tuple[str, str]:
    """(images, labels) NPY files of one data split."""
    return (f"{data_dir(dataset)}/{split}_images.npy", f"{data_dir(dataset)}/{split}_labels.npy")


def data_files(dataset: str) -> list[str]:
    files = [data_manifest(dataset)]
    for split in DATA_SPLITS:
        files.extend(data_arrays(dataset, split))
    return files


def base_split_id(initial: int) -> str:
    return f"base{initial}"


def split_file(dataset: str, split_id: str) -> str:
    return f"{RESULTS_ROOT}/{dataset}/{split_id}/split.json"


def base_run_id(initial: int, base_recipe: str, seed: int) -> str:
    return f"{base_split_id(initial)}/{base_recipe}/seed{seed}"


def run_id(setting: str, method: str, seed: int) -> str:
    return f"{setting}/{method}/seed{seed}"


def task_dir(dataset: str, run: str, task: int) -> str:
    return f"{RUNS_ROOT}/{dataset}/{run}/task_{task}"


def checkpoint(dataset: str, run: str, task: int) -> str:
    return f"{task_dir(dataset, run, task)}/{CHECKPOINT_NAME}"


def centers(dataset: str, run: str, task: int) -> str:
    return f"{task_dir(dataset, run, task)}/{CENTERS_NAME}"


def memory(dataset: str, run: str, task: int) -> str:
    """The training images a rehearsal method keeps after task ``task`` (never written by a NECIL method)."""
    return f"{task_dir(dataset, run, task)}/{MEMORY_NAME}"


def statistics(dataset: str, run: str, task: int) -> str:
    """FeCAM's statistics of the classes task ``task`` introduced (classifier fecam only)."""
    return f"{task_dir(dataset, run, task)}/{STATISTICS_NAME}"


def result_dir(dataset: str, run: str) -> str:
    return f"{RESULTS_ROOT}/{dataset}/{run}"


def eval_file(dataset: str, run: str, task: int) -> str:
    return f"{result_dir(dataset, run)}/eval/task_{task}.parquet"


def metrics_file(dataset: str, run: str) -> str:
    return f"{result_dir(dataset, run)}/metrics.json"


def table_files(dataset: str) -> tuple[str, str]:
    return (f"{TABLES_DIR}/{dataset}_results.md", f"{TABLES_DIR}/{dataset}_results.csv")


def log_file(kind: str, name: str) -> str:
    return f"{LOGS_ROOT}/{kind}/{name}.log"


def benchmark_file(kind: str, name: str) -> str:
    return f"{BENCH_ROOT}/{kind}/{name}.tsv"


def grid_params(name: str) -> str:
    return f"{GRIDS_ROOT}/{name}/params.yaml"


def grid_dvc_yaml(name: str) -> str:
    return f"{GRIDS_ROOT}/{name}/dvc.yaml"


# --- The paper's tables and figures (results/tables, results/figures; git) -----------------------
FIGURES_DIR = f"{RESULTS_ROOT}/figures"
PAPER_TABLES = ("table1", "table2", "table3", "table5")
# Tables the paper-tables step writes without per-data-set sections: Table 4 (DyTox; its cells of ours come
# from the results tables of the TABLE4_GRIDS that have run) and the exemplar-free benchmark table (issue 25).
UNSECTIONED_TABLES = ("table4", "efcil_benchmark")
# Grids (conf/experiment/<name>.yaml, each in a folder of its own) whose results fill Table 4: the paper-tables
# step reads each one's committed params file and results table CSV where that CSV exists (``table4_sources``).
TABLE4_GRIDS = ("digits_dytox", "cifar100_dytox")
# Grids in folders of their own whose committed results `verify` recomputes from their evaluations, code fingerprints
# included (``committed_grid_sources``): Table 4's and issue 25's exemplar-free benchmark grids.
VERIFIED_GRIDS = (*TABLE4_GRIDS, "digits_efcil", "cifar100_efcil", "tinyimagenet_efcil", "imagenet_subset_efcil")


def table4_sources(root: str = ".") -> list[tuple[str, str, str]]:
    """(grid, params file, results table CSV) of every Table 4 grid whose results CSV is under ``root``: the
    files Table 4 is made from besides the paper's values (a grid that has not run adds none)."""
    return committed_grid_sources(root, TABLE4_GRIDS)


def committed_grid_sources(root: str = ".", names: tuple[str, ...] = VERIFIED_GRIDS) -> list[tuple[str, str, str]]:
    """(grid, params file, results table CSV) of every grid of ``names`` whose results CSV is under ``root``."""
    import os

    out = []
    for name in names:
        csv = table_files(name)[1]
        if os.path.isfile(os.path.join(root, csv)):
            out.append((name, grid_params(name), csv))
    return out


def paper_table_files(table: str) -> tuple[str, str]:
    """Markdown and CSV of one of the paper's tables (every data set of the grid and of the paper)."""
    return (f"{TABLES_DIR}/{table}.md", f"{TABLES_DIR}/{table}.csv")


def curve_figure_files(dataset: str, setting: str) -> tuple[str, str]:
    """Figure 3 (accuracy per task, all methods) of one setting: PNG and the plotted data as CSV."""
    return (f"{FIGURES_DIR}/fig3_{dataset}_{setting}.png", f"{FIGURES_DIR}/fig3_{dataset}_{setting}.csv")


def weight_map_files(dataset: str) -> tuple[str, str]:
    """Figure 4 (PKS weight maps): PNG and the per-patch weights as CSV."""
    return (f"{FIGURES_DIR}/fig4_{dataset}.png", f"{FIGURES_DIR}/fig4_{dataset}.csv")


COSTS_DIR = f"{RESULTS_ROOT}/costs"
# Folders of results/ that hold every grid's reports: no grid may take one of these names as its folder.
RESERVED_RESULT_FOLDERS = tuple(d.split("/", 1)[1] for d in (TABLES_DIR, FIGURES_DIR, COSTS_DIR))


def cost_table_file(dataset: str) -> str:
    """Wall time and peak memory per setting and method (Markdown; CSV beside), a report item: a
    measurement that differs every run, so it lives apart (results/costs/), written by Snakemake's
    `costs` rule only (not a DVC stage), not verified and not compared by `make check-reproduction`."""
    return f"{COSTS_DIR}/{dataset}_costs.md"


# --- DVC's first stage (ncil/pipeline/dvcgen.py) ----------------------------------------------------------
# Written empty by the stage that validates params.yaml and checks dvc.yaml against it; every other
# stage depends on it, so `dvc repro` / `dvc exp run` stop there on a bad value. Its content never
# changes, so a rerun of the check makes nothing downstream stale. Committed (git), not DVC-cached.
PARAMS_CHECK_STAMP = f"{RESULTS_ROOT}/params_checked"


# --- Snakemake's params stamps (rules/common.smk; local, gitignored) ----------------------------
# One file per (data set, step kind, method) holding the digest of the params keys the step reads
# (ncil.pipeline.workflow.params_digest), an input of its rules, rewritten only when the digest changes: an
# edit of params.yaml then reruns those steps by mtime alone, in a checkout without .snakemake/ too.
PARAMS_STAMP_ROOT = ".ncil/params"


def params_stamp(dataset: str, kind: str, method: str | None = None) -> str:
    """The params stamp of the ``kind`` steps of ``dataset`` (of ``method``'s runs, where keyed by method)."""
    return f"{PARAMS_STAMP_ROOT}/{dataset}/{kind}{'.' + method if method else ''}.txt"


# --- One data set's sections of the paper's tables (results/tables/<dataset>/; git) --------------
# Each grid writes only its own data set's sections; results/tables/<table>.{md,csv} are assembled
# from every data set's sections present, so a second grid adds to the tables and rewrites nothing.


def paper_section_files(dataset: str, table: str) -> tuple[str, str]:
    """Markdown and CSV of ``dataset``'s section of one of the paper's tables."""
    return (f"{TABLES_DIR}/{dataset}/{table}.md", f"{TABLES_DIR}/{dataset}/{table}.csv")


def paper_sections(dataset: str) -> list[str]:
    """Every section file of ``dataset`` (Tables 1, 2, 3, 5; Markdown, CSV)."""
    return [f for table in PAPER_TABLES for f in paper_section_files(dataset, table)]


def paper_section_datasets(root: str = ".") -> list[str]:
    """Data sets (sorted) with a section folder under ``root``/results/tables (one holding table1.md)."""
    import os

    base = os.path.join(root, TABLES_DIR)
    if not os.path.isdir(base):
        return []
    return sorted(d for d in os.listdir(base)
                  if os.path.isfile(os.path.join(root, paper_section_files(d, PAPER_TABLES[0])[0])))
