# Validation, targets and the input functions shared by every rule file.
#
# The grid (data set x setting x method x seed x task) comes from params.yaml through ncil/pipeline/experiment_grid.py,
# the paths from ncil/pipeline/paths.py and the params keys and code of each step from ncil/pipeline/workflow.py: the
# same records `python -m ncil dvc-yaml` writes dvc.yaml from, so both engines run the same commands
# (tests/test_commands_agree.py).
import hashlib
import json
import os
import re
import sys

from ncil.pipeline import experiment_grid, paths
from ncil.pipeline import fingerprints as _fingerprints
from ncil.pipeline import resources as res
from ncil.pipeline.config import ConfigError, parse_params
from ncil.pipeline.devices import cuda_refusal
from ncil.pipeline.io import ArtifactError, read_yaml
from ncil.pipeline.workflow import figure4_run, params_digest, raw_inputs, section_dataset, table_sections

PARAMS_FILE = "params.yaml"


def validate(data, source):
    """The CLI's typed parser on a params mapping; a bad value stops Snakemake here, in one line,
    before any job is scheduled or any output is touched."""
    try:
        parse_params(data, source)
    except ConfigError as err:
        sys.exit(f"error: {err}")


def read_params(path):
    """A params file through the CLI's YAML reader: a key given twice stops Snakemake here (its own
    `configfile:` reader silently keeps the last value)."""
    try:
        return read_yaml(path)
    except ArtifactError as err:
        sys.exit(f"error: {err}")


for _path in workflow.configfiles:  # params.yaml and any --configfile
    read_params(_path)
validate(config, PARAMS_FILE)
DATASET = config["dataset"]["name"]
# The folder params.yaml's grid owns under runs/ and results/ (its top-level `grid`, by default DATASET).
FOLDER = experiment_grid.grid_folder(config)

# Each rule's code dependency is its verb's fingerprint (fingerprints.yaml, ncil/pipeline/fingerprints.py), a param
# of the rule. fingerprints.yaml out of date with the code (an edit without `python -m ncil dvc-yaml`)
# stops here, as DVC's check_params stage does: both engines then see the same code.
_STALE_FINGERPRINTS = _fingerprints.problem(workflow.basedir)
if _STALE_FINGERPRINTS:
    sys.exit(f"error: {_STALE_FINGERPRINTS}")
FINGERPRINTS = _fingerprints.committed(workflow.basedir)

# runtime.device cuda on a machine without CUDA (runtime=gpu composed here by mistake): a dry run says so,
# a local run stops before its first training or evaluation job (exit 2); a cluster executor's jobs run on
# other nodes, whose own CLI check refuses a node without CUDA.
CUDA_REFUSAL = cuda_refusal(str(config["runtime"]["device"]), PARAMS_FILE) if workflow.is_main_process else ""
if CUDA_REFUSAL:
    print(f"warning: {CUDA_REFUSAL} (a local run of training or evaluation jobs stops before they start)",
          file=sys.stderr)


onstart:
    if CUDA_REFUSAL and workflow.local_exec and any(
        job.rule.name in ("train_base", "train", "train_base_memory", "train_memory", "train_base_statistics",
                          "train_statistics", "evaluate", "evaluate_statistics") for job in workflow.dag.needrun_jobs()):
        print(f"error: {CUDA_REFUSAL}", file=sys.stderr)
        sys.exit(2)


def load_grids():
    """The paper data sets' grids (grids/<name>/params.yaml), validated, each with its own folder.

    A grid whose folder is the one of params.yaml is left out: params.yaml's grid owns those paths.
    """
    grids = {}
    for name in paths.GRID_NAMES:
        path = paths.grid_params(name)
        if os.path.exists(path):
            data = read_params(path)
            validate(data, path)
            if experiment_grid.grid_folder(data) != FOLDER:
                grids[name] = (path, data)
    return grids


GRIDS = load_grids()
# Grid folder -> (params file, params): the `grid` wildcard (runs/{grid}/..., results/{grid}/...) picks the grid a
# job belongs to.
GRID_OF = {FOLDER: (PARAMS_FILE, config)}
GRID_OF.update({experiment_grid.grid_folder(cfg): (path, cfg) for path, cfg in GRIDS.values()})
# A paper data set's sections are named by its canonical name (results/tables/cifar100/...); an extra grid with
# its own folder (experiment_grid.own_folder) has none.
GRID_OF.update({section_dataset(cfg): (path, cfg) for path, cfg in list(GRID_OF.values())
                if not experiment_grid.own_folder(cfg)})
# Data set name -> the GRID_OF key of the grid that prepares it (the `dataset` wildcard of data/{dataset}/: the
# prepared data is shared by every grid on the data set): the grid whose folder is the data set's name, else the first.
DATA_GRID = {}
for _folder, (_, _cfg) in GRID_OF.items():
    _name = _cfg["dataset"]["name"]
    if _name not in DATA_GRID or _folder == _name:
        DATA_GRID[_name] = _folder

# --- Targets ------------------------------------------------------------------------------------
RUNS = experiment_grid.runs(config)
TABLES = list(paths.table_files(FOLDER))
METRICS = [run.metrics_file for run in RUNS]
CHECKPOINTS = [job.run.checkpoint(job.task) for job in experiment_grid.train_jobs(config)]  # params.yaml's grid only
# Each grid writes its own data set's sections of the paper's tables (results/tables/<dataset>/):
# running a paper data set's grid adds its sections; Tables 1, 2, 3, 5 are then reassembled by
# params.yaml's grid (`snakemake tables` or `report`), from every data set's sections present.
GRID_TABLES = {name: [*paths.table_files(experiment_grid.grid_folder(cfg)),
                      *([] if experiment_grid.own_folder(cfg) else paths.paper_sections(section_dataset(cfg)))]
               for name, (_, cfg) in GRIDS.items()}
# The paper's tables (files shared by every data set: params.yaml's grid assembles them) and figures.
PAPER_SECTIONS = table_sections(config)  # every data set's section files present, and params.yaml's own
# Table 4's grids that have run: their committed params files and results tables, and the flag naming them.
TABLE4_SOURCES = [f for _, params_file, csv_file in paths.table4_sources() for f in (params_file, csv_file)]
TABLE4_GRIDS_ARG = "".join(f" --table4-grids {g}" if i == 0 else f" {g}" for i, (g, _, _) in enumerate(paths.table4_sources()))
PAPER_TABLES_MD = [paths.paper_table_files(t)[0] for t in paths.PAPER_TABLES]
PAPER_TABLES_CSV = [paths.paper_table_files(t)[1] for t in paths.PAPER_TABLES]


def grid_figures(params):
    """(settings, Figure 3 PNGs, their CSVs, Figure 4's (method, run, checkpoints) or None) of a grid:
    files named by its folder, so every grid has its own figure rules (rules/report.smk)."""
    folder = experiment_grid.grid_folder(params)
    settings = list(dict.fromkeys(run.setting for run in experiment_grid.runs(params)))
    curves = [paths.curve_figure_files(folder, s) for s in settings]
    return settings, [png for png, _ in curves], [csv for _, csv in curves], figure4_run(params)


def figure_files(params):
    """Every figure file of a grid (Figure 3 of each setting, Figure 4 when it has one)."""
    _, pngs, csvs, figure4 = grid_figures(params)
    return pngs + csvs + (list(paths.weight_map_files(experiment_grid.grid_folder(params))) if figure4 else [])


# Grid folder -> (params file, params) of every grid, params.yaml's first: each has its figure rules.
FIGURE_GRIDS = {experiment_grid.grid_folder(cfg): (path, cfg) for path, cfg in [(PARAMS_FILE, config), *GRIDS.values()]}
for _name, (_, _cfg) in GRIDS.items():
    GRID_TABLES[_name] += figure_files(_cfg)
# An extra grid with its own folder (experiment_grid.own_folder: DyTox on the digits) does not assemble the paper's
# tables, which are the data set's grid's: its default target then writes only its own folder's files.
REPORT = ([] if experiment_grid.own_folder(config) else
          PAPER_TABLES_MD + PAPER_TABLES_CSV + [f for t in paths.UNSECTIONED_TABLES for f in paths.paper_table_files(t)]) + figure_files(config)
# The cost summary (Snakemake only: from the benchmark files Snakemake writes; not a DVC stage).
COSTS = [paths.cost_table_file(FOLDER)]


# The rehearsal methods and base recipes of every grid (exemplars_per_class > 0: DyTox): the only wildcard
# values rules train_memory and train_base_memory match; "(?!)" matches nothing (no such method).
_REHEARSAL = [run for _, cfg in GRID_OF.values() for run in experiment_grid.runs(cfg) if run.rehearsal]
REHEARSAL_METHODS = "|".join(re.escape(m) for m in sorted({r.method for r in _REHEARSAL})) or "(?!)"
REHEARSAL_RECIPES = "|".join(re.escape(m) for m in sorted({r.base_recipe for r in _REHEARSAL})) or "(?!)"
# The FeCAM methods and base recipes (classifier fecam, docs/efcil.md): the only wildcard values rules
# train_base_statistics, train_statistics and evaluate_statistics match.
_FECAM = [run for _, cfg in GRID_OF.values() for run in experiment_grid.runs(cfg) if run.fecam]
FECAM_METHODS = "|".join(re.escape(m) for m in sorted({r.method for r in _FECAM})) or "(?!)"
FECAM_RECIPES = "|".join(re.escape(m) for m in sorted({r.base_recipe for r in _FECAM})) or "(?!)"


# Jobs build files of the grids above only (params.yaml's and grids/*/params.yaml's): `grid` is a grid's folder
# (runs/{grid}/, results/{grid}/), `dataset` a data set one of them prepares (data/{dataset}/). Another grid's
# committed files (results/tables/digits/ after `dataset=folder`) are inputs without a producer, never a job whose
# input function cannot find its grid (issue 20, item 2).
GRID_FOLDERS = "|".join(re.escape(name) for name in sorted(GRID_OF, key=len, reverse=True))
GRID_DATASETS = "|".join(re.escape(name) for name in sorted(DATA_GRID, key=len, reverse=True))


wildcard_constraints:
    grid=f"(?:{GRID_FOLDERS})",
    dataset=f"(?:{GRID_DATASETS})",
    split_id="[A-Za-z0-9_-]+",
    setting="[A-Za-z0-9_-]+",
    method="[A-Za-z0-9_-]+",
    recipe="[A-Za-z0-9_-]+",
    initial="[0-9]+",
    seed="[0-9]+",
    task="[0-9]+",


# --- Input and params functions -----------------------------------------------------------------
def grid_key(wildcards):
    """The GRID_OF key (grid folder) of a job: its `grid` wildcard; for a prepare job (`dataset` wildcard) the
    grid that prepares the data set (DATA_GRID); else params.yaml's (report)."""
    if hasattr(wildcards, "grid"):
        grid = wildcards.grid
    elif hasattr(wildcards, "dataset"):
        if wildcards.dataset not in DATA_GRID:
            raise ValueError(f"data set {wildcards.dataset!r}: not in {PARAMS_FILE} or grids/*/params.yaml "
                             f"(have {sorted(DATA_GRID)})")
        grid = DATA_GRID[wildcards.dataset]
    else:
        grid = FOLDER
    if grid not in GRID_OF:
        raise ValueError(f"grid folder {grid!r}: not in {PARAMS_FILE} or grids/*/params.yaml (have {sorted(GRID_OF)})")
    return grid


def grid_params(wildcards):
    """(params file, params) of the grid a job belongs to (``grid_key``)."""
    return GRID_OF[grid_key(wildcards)]


def data_manifest(wildcards):
    """data/<dataset>/manifest.json of the job's grid's data set (shared by every grid on it)."""
    return paths.data_manifest(grid_params(wildcards)[1]["dataset"]["name"])


def params_file(wildcards):
    """The `--params` file of a job: params.yaml, or a paper data set's grids/<name>/params.yaml."""
    return grid_params(wildcards)[0]


def code(verb):
    """The file holding `python -m ncil <verb>`'s code fingerprint alone (fingerprints/<verb>.txt), an input of
    its rule: rewritten only when the fingerprint changes, so Snakemake's mtime trigger sees a code change
    even in a checkout without .snakemake/ metadata, and no other edit."""
    return _fingerprints.stamp(verb)


def fingerprint(verb):
    """The code fingerprint of `python -m ncil <verb>` (fingerprints.yaml, ncil/pipeline/fingerprints.py), a param of
    its rule: Snakemake reruns a job whose params changed, so an edit reruns exactly the steps DVC reports
    stale, and an edit outside the verb's code (or to launch-only code such as ncil/pipeline/devices.py) none."""
    if verb not in FINGERPRINTS:
        sys.exit(f"error: fingerprints.yaml: {verb}: missing; run `python -m ncil dvc-yaml`")
    return FINGERPRINTS[verb]


def step_params(kind, wildcards, grid=None):
    """(grid folder, method, digest) of the params a ``kind`` step reads (ncil.pipeline.workflow.params_digest).
    ``grid``: the grid of a job without a `grid` wildcard (default: ``grid_key``)."""
    grid = grid or grid_key(wildcards)
    return (grid, *kind_params(kind, grid, getattr(wildcards, "method", None)))


def kind_params(kind, grid, method=None):
    """(method, digest) of the params a ``kind`` step of the grid in folder ``grid`` reads (of ``method``'s runs)."""
    params = GRID_OF[grid][1]
    if kind == "figure4":
        method = figure4_run(params)[0]
    extra = None
    if kind == "prepare" and "raw" in raw_inputs(params["dataset"]):  # what is in the raw folder
        extra = {"raw files": folder_state(params["dataset"]["root"])}
    return method, params_digest(kind, params, method, extra)


def keys_digest(kind, grid=None):
    """Params function: the digest of the params keys a step reads, so Snakemake's params trigger
    reruns a job when, and only when, one of them changes (in a checkout with .snakemake/ metadata)."""
    return lambda wildcards: step_params(kind, wildcards, grid)[2]


# (kind, the grid of its jobs or None for every grid, one stamp per method?): every config_stamp of the rules.
STAMP_KINDS = set()
_STAMPED_GRIDS = set()


def config_stamp(kind, grid=None, per_method=False):
    """Input function: the step's params stamp (ncil.pipeline.paths.params_stamp), holding the same digest and
    rewritten only when it changes, so an edit of a key the step reads reruns it by mtime alone, as
    in a copied checkout without .snakemake/ metadata, where the params trigger has nothing to compare.
    A stamp written for the first time is dated 1970 (its absence is no evidence of an edit); a
    digest that changes and changes back (a dry run in between) reruns the step once.
    ``per_method``: the rule has a `method` wildcard, and one stamp per method of the grid."""
    STAMP_KINDS.add((kind, grid, per_method))

    def stamp(wildcards):
        grid_name, method, digest = step_params(kind, wildcards, grid)
        write_grid_stamps(grid_name)
        path = paths.params_stamp(grid_name, kind, method)
        write_stamp(path, digest)  # a method outside the grid's runs (written above for those)
        return path

    return stamp


def write_grid_stamps(grid):
    """Write every params stamp of the grid in folder ``grid``, the first time one of its jobs asks for one.

    All at once, before Snakemake looks at any: it lists a folder once while building the DAG
    (its IOCache inventory) and takes a file created there later for a missing input."""
    if grid in _STAMPED_GRIDS:
        return
    _STAMPED_GRIDS.add(grid)
    methods = sorted({run.method for run in experiment_grid.runs(GRID_OF[grid][1])})
    for kind, only, per_method in sorted(STAMP_KINDS, key=str):
        if only in (None, grid):
            for method in methods if per_method else [None]:
                method, digest = kind_params(kind, grid, method)
                write_stamp(paths.params_stamp(grid, kind, method), digest)


def write_stamp(path, digest):
    """Write ``digest`` to ``path`` unless it holds it already (atomically: concurrent Snakemake
    processes, as cluster jobs, compute the same digest and find it there)."""
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == f"{digest}\n":
                return
        new = False
    except FileNotFoundError:
        new = True
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(f"{digest}\n")
    if new:
        os.utime(tmp, (1, 1))  # 1 s after the epoch: Snakemake skips the mtime check for mtime 0
    os.replace(tmp, path)


_FOLDER_STATES = {}


def folder_state(root):
    """Digest of every file under ``root``: its path, size and mtime (ns). Snakemake compares a folder
    input by the folder's own mtime, which replacing, adding or deleting an image in a class folder
    leaves as it was; as part of the prepare step's params digest, any such change reruns prepare
    (issue 20, item 4). One stat per file when Snakemake builds its DAG, no reading: about 1 s per
    10^5 files on a local disk (0.5 s for 5 x 10^4 here), so ~15 s for an ImageNet-size folder (whose
    ImageNet-Subset root is no input at all, ncil.pipeline.workflow.raw_inputs). DVC, which hashes the folder,
    likewise trusts size and mtime to skip rehashing a file it has seen."""
    if root not in _FOLDER_STATES:
        entries = []
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError:  # a dangling link: prepare names it when it reads the folder
                    st = None
                entries.append((os.path.relpath(path, root), st.st_size if st else -1, st.st_mtime_ns if st else -1))
        _FOLDER_STATES[root] = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return _FOLDER_STATES[root]


def raw_data(wildcards):
    """The prepare step's raw inputs; a missing raw data set fails here, saying where to put it (also
    ImageNet-Subset's root, which is not an input: it may be a whole ImageNet tree, too large to hash)."""
    dataset = grid_params(wildcards)[1]["dataset"]
    root = dataset.get("root")
    if root and not dataset.get("download") and not os.path.exists(root):
        from ncil.data.preparation import missing_message

        raise ValueError(missing_message(wildcards.dataset, root))
    return raw_inputs(dataset)


def split_sizes(wildcards):
    """(F, C) of a split: base<F> is the base task alone (C = 0), a setting is its scenario."""
    params = grid_params(wildcards)[1]
    for run in experiment_grid.runs(params):
        if wildcards.split_id == paths.base_split_id(run.initial):
            return run.initial, 0
        if wildcards.split_id == run.setting:
            return run.initial, run.increment
    raise ValueError(f"{wildcards.split_id}: no setting or base split of that name in {params_file(wildcards)}")


def split_initial(wildcards):
    return split_sizes(wildcards)[0]


def split_increment(wildcards):
    return split_sizes(wildcards)[1]


def this_run(wildcards):
    """The run (setting, method, seed) of a job; a KeyError names the grid's settings and methods."""
    params = grid_params(wildcards)[1]
    return experiment_grid.find_run(params, wildcards.setting, wildcards.method, int(wildcards.seed))


def base_split(wildcards):
    """The base split of a task-0 job, results/<grid>/base<F>/split.json, once the base run
    (F, base recipe, seed) is known to be in the grid: a path outside it fails naming the grid's base runs."""
    params = grid_params(wildcards)[1]
    wanted = (int(wildcards.initial), wildcards.recipe, int(wildcards.seed))
    runs = experiment_grid.runs(params)
    if wanted not in {(r.initial, r.base_recipe, r.seed) for r in runs}:
        have = sorted({r.base_run_id for r in runs})
        raise ValueError(f"base{wanted[0]}/{wanted[1]}/seed{wanted[2]}: not a base run of {params_file(wildcards)} "
                         f"(base runs: {', '.join(have)})")
    return paths.split_file(wildcards.grid, paths.base_split_id(wanted[0]))


def previous_task(wildcards):
    """Task t-1 of this run (PyPSA-Eur's `solved_previous_horizon`): (checkpoint, centers).

    Task 1 reads the shared base task, runs/<grid>/base<F>/<base_recipe>/seed<s>/task_0.
    """
    run, task = this_run(wildcards), int(wildcards.task)
    return run.checkpoint(task - 1), run.centers(task - 1)


def previous_checkpoint(wildcards):
    return previous_task(wildcards)[0]


def previous_memory(wildcards):
    """Task t-1's exemplar memory (rules train_memory only; a method without exemplars has none to name)."""
    run, task = this_run(wildcards), int(wildcards.task)
    return run.memory(task - 1)


def previous_centers(wildcards):
    return previous_task(wildcards)[1]


def run_checkpoints(wildcards):
    """Checkpoints after tasks 0..T-1 of this run, in task order (task 0: the shared base task)."""
    run = this_run(wildcards)
    return [run.checkpoint(t) for t in range(run.n_tasks)]


def run_statistics(wildcards):
    """A FeCAM run's class statistics of tasks 0..T-1, in task order (rule evaluate_statistics)."""
    run = this_run(wildcards)
    return [run.statistics(t) for t in range(run.n_tasks)]


def run_evals(wildcards):
    """One predictions table per task, in the run's eval folder."""
    run = this_run(wildcards)
    return [run.eval_file(t) for t in range(run.n_tasks)]


def grid_metrics(wildcards):
    """Every run's metrics.json of the grid, in the grid's order (setting, method, seed)."""
    return [run.metrics_file for run in experiment_grid.runs(grid_params(wildcards)[1])]


def paper_table(table):
    """Table ``table``'s Markdown (results/tables/<table>.md) as a report item with its caption,
    report/<table>.rst (relative to rules/, where the rule is); a committed file (``committed``)."""
    return committed(report(paths.paper_table_files(table)[0], caption=f"../report/{table}.rst",
                            category="Paper tables", labels={"table": table}))


def committed(path):
    """A committed output shared by every grid (results/tables/table1.md, ...): Snakemake's update flag
    keeps it while its job runs and puts the previous version back if the job fails, where a plain
    output is deleted (issue 20, item 2). ``mark_restored_stale`` then makes the next run redo the job."""
    return update(path)


RESTORED = re.compile(r"Restored previous version of (\S+)")


def mark_restored_stale(logs, persistence):
    """onerror: each file Snakemake put back after its job failed (its log says "Restored previous
    version of <file>") loses the provenance Snakemake records even for a failed job (which would pass
    the old file as up to date: same params, same input checksums) and gets an mtime older than its
    inputs, so the next run redoes the job. ``logs``: the run's log file(s); ``persistence``:
    ``workflow.persistence``, what `snakemake --cleanup-metadata` uses."""
    from snakemake.io import IOFile

    restored = set()
    for log_file in [logs] if isinstance(logs, str) else logs or []:
        if os.path.isfile(log_file):
            with open(log_file, encoding="utf-8", errors="replace") as fh:
                restored.update(RESTORED.findall(fh.read()))
    for path in sorted(restored):
        if os.path.isfile(path):
            persistence.cleanup_metadata(IOFile(path))
            os.utime(path, (1, 1))  # 1 s after the epoch: Snakemake skips the mtime check for mtime 0
            print(f"{path}: previous version kept; its job failed, so the next run redoes it", file=sys.stderr)


# --- Scheduler requests (ncil/pipeline/resources.py): threads, mem_mb (MB), runtime (minutes), gpu -------------
# What a cluster job asks for (profiles/slurm sends them as --cpus-per-task, --mem, -t, --gpus); no
# command or output depends on them. Override any of them without editing code:
#     snakemake --set-resources train:runtime=720 train:mem_mb=16000 --set-threads train=8
_PARSED = {}


def parsed_params(wildcards):
    """The typed params (ncil.pipeline.config.Params) of a job's grid, parsed once per grid."""
    path, data = grid_params(wildcards)
    if path not in _PARSED:
        _PARSED[path] = parse_params(data, path)
    return _PARSED[path]


def method_of_recipe(params, recipe):
    """A method of the grid whose task 0 is base recipe ``recipe`` (they share task 0, hence its cost)."""
    for method in params.method.values():
        if method.base_recipe == recipe:
            return method
    raise ValueError(f"base recipe {recipe!r}: no method of the grid has it")


def job_request(wildcards, rule_name, attempt=1):
    """ncil.pipeline.resources' request (cpus, mem_mb, runtime, gpus) of one job of the rule named ``rule_name``."""
    params = parsed_params(wildcards)
    if rule_name == "train_base":
        method = method_of_recipe(params, wildcards.recipe)
        return res.train(params, method, int(wildcards.initial), 0, 0, attempt)
    if rule_name in ("train", "evaluate"):
        run = this_run(wildcards)
        method = params.method[run.method]
        if rule_name == "train":
            return res.train(params, method, run.initial, run.increment, int(wildcards.task), attempt)
        return res.evaluate(params, method, run.initial, run.increment, run.n_tasks, attempt)
    if rule_name == "prepare":
        return res.prepare(params, attempt)
    if rule_name.startswith("figure4"):
        return res.figure4(params, attempt)
    return res.small(rule_name, attempt)


def job_threads(rule_name):
    """Threads of a job (its --cpus-per-task): runtime.threads of its grid for train and evaluate."""
    return lambda wildcards: job_request(wildcards, rule_name).cpus


def job_mem_mb(rule_name):
    return lambda wildcards, attempt: job_request(wildcards, rule_name, attempt).mem_mb


def job_runtime(rule_name):
    """Minutes; a retried job (attempt 2, 3) gets 2x, 3x the limit, so a timed-out task can finish."""
    return lambda wildcards, attempt: job_request(wildcards, rule_name, attempt).runtime


def job_gpus(rule_name):
    """runtime.gpus_per_job of the grid, 0 when runtime.device is cpu (SLURM's --gpus)."""
    return lambda wildcards: job_request(wildcards, rule_name).gpus
