"""The experiment grid: which runs and which jobs a params dict asks for (no I/O).

Both the Snakefile and the dvc.yaml generator expand the grid through this module, so the two
workflow engines cannot disagree on what exists.

A grid owns one folder under runs/ and results/ (``grid_folder``): the top-level ``grid`` key, by default the
data set's name. The prepared data (data/<dataset>/) is the data set's and shared by every grid on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ncil.data.scenario import task_sizes
from ncil.pipeline import paths


def grid_folder(params: dict) -> str:
    """The folder a grid owns under runs/ and results/: params' top-level ``grid``, else the data set's name
    (the default grid, whose paths are therefore runs/<dataset>/..., results/<dataset>/...)."""
    return params.get("grid") or params["dataset"]["name"]


def own_folder(params: dict) -> bool:
    """Whether the grid's folder is not its data set's name: an extra grid on a data set (Table 4's DyTox on the
    digits). Its runs, results table, figures and costs are its own; it writes no section of the paper's Tables
    1, 2, 3, 5 and does not assemble them (those are the data set's grid's)."""
    return grid_folder(params) != params["dataset"]["name"]


def folder_collisions(folders: dict[str, str]) -> list[tuple[str, str, str]]:
    """(folder, grid, other grid) for every two grids of ``folders`` (grid name -> its folder) that share a
    folder, in the order given (pure): two grids in one folder would write the same runs/ and results/ paths."""
    owner: dict[str, str] = {}
    out = []
    for name, folder in folders.items():
        if folder in owner:
            out.append((folder, owner[folder], name))
        else:
            owner[folder] = name
    return out


@dataclass(frozen=True)
class Run:
    """One (dataset, setting, method, seed) cell of the grid: a chain of tasks 0..n_tasks-1.

    ``grid``: the folder of its grid under runs/ and results/ (``grid_folder``; empty = ``dataset``).
    """

    dataset: str
    setting: str
    method: str
    seed: int
    initial: int
    increment: int
    n_tasks: int
    base_recipe: str
    rehearsal: bool = False  # the method keeps an exemplar memory (exemplars_per_class > 0: DyTox)
    fecam: bool = False  # the method classifies with per-class statistics (classifier fecam; docs/efcil.md)
    grid: str = ""

    @property
    def folder(self) -> str:
        """The folder of this run's artifacts: runs/<folder>/..., results/<folder>/... (not its data: data/<dataset>/)."""
        return self.grid or self.dataset

    @property
    def run_id(self) -> str:
        return paths.run_id(self.setting, self.method, self.seed)

    @property
    def base_run_id(self) -> str:
        return paths.base_run_id(self.initial, self.base_recipe, self.seed)

    def task_run_id(self, task: int) -> str:
        """Run id that owns task ``task``'s checkpoint (task 0 is shared)."""
        return self.base_run_id if task == 0 else self.run_id

    def checkpoint(self, task: int) -> str:
        return paths.checkpoint(self.folder, self.task_run_id(task), task)

    def centers(self, task: int) -> str:
        return paths.centers(self.folder, self.task_run_id(task), task)

    def memory(self, task: int) -> str:
        """Task ``task``'s exemplar memory: an output of task t and an input of task t+1 of a rehearsal run only."""
        if not self.rehearsal:
            raise ValueError(f"{self.run_id}: method {self.method} keeps no exemplars: its tasks have no memory")
        return paths.memory(self.folder, self.task_run_id(task), task)

    def statistics(self, task: int) -> str:
        """Task ``task``'s class statistics: an output of every task of a FeCAM run, read by its evaluation."""
        if not self.fecam:
            raise ValueError(f"{self.run_id}: method {self.method} does not classify with class statistics "
                             "(classifier fecam): its tasks have none")
        return paths.statistics(self.folder, self.task_run_id(task), task)

    def eval_file(self, task: int) -> str:
        return paths.eval_file(self.folder, self.run_id, task)

    @property
    def metrics_file(self) -> str:
        return paths.metrics_file(self.folder, self.run_id)

    @property
    def split_file(self) -> str:
        return paths.split_file(self.folder, self.setting)

    @property
    def base_split_file(self) -> str:
        return paths.split_file(self.folder, paths.base_split_id(self.initial))


@dataclass(frozen=True)
class TrainJob:
    """One training job: task ``task`` of ``run`` (for task 0, the shared base run)."""

    run: Run
    task: int

    @property
    def run_id(self) -> str:
        return self.run.task_run_id(self.task)

    @property
    def name(self) -> str:
        return f"{self.run.folder}/{self.run_id}/task_{self.task}"


def runs(params: dict) -> list[Run]:
    """Every run of the grid, in a stable order (setting, method, seed)."""
    dataset, folder = params["dataset"]["name"], grid_folder(params)
    n_classes = int(params["dataset"]["n_classes"])
    out = []
    for setting, scenario in params["scenario"].items():
        initial, increment = int(scenario["initial_increment"]), int(scenario["increment"])
        n_tasks = len(task_sizes(n_classes, initial, increment))
        for method, spec in params["method"].items():
            for seed in params["seeds"]:
                out.append(
                    Run(dataset, setting, method, int(seed), initial, increment, n_tasks, spec["base_recipe"],
                        rehearsal=int(spec.get("exemplars_per_class", 0)) > 0,
                        fecam=spec.get("classifier", "head") == "fecam",
                        grid="" if folder == dataset else folder)
                )
    return out


def train_jobs(params: dict) -> list[TrainJob]:
    """Every training job, each shared task-0 job listed once."""
    jobs, seen = [], set()
    for run in runs(params):
        for task in range(run.n_tasks):
            job = TrainJob(run, task)
            key = (run.folder, job.run_id, task)
            if key not in seen:
                seen.add(key)
                jobs.append(job)
    return jobs


def find_run(params: dict, setting: str, method: str, seed: int) -> Run:
    for run in runs(params):
        if (run.setting, run.method, run.seed) == (setting, method, seed):
            return run
    raise KeyError(
        f"params.yaml: no run with setting={setting!r}, method={method!r}, seed={seed} in the grid "
        f"(settings {sorted(params['scenario'])}, methods {sorted(params['method'])}, seeds {params['seeds']})"
    )


def base_splits(params: dict) -> list[tuple[str, int]]:
    """(grid folder, F) of every base split used by the grid."""
    return sorted({(r.folder, r.initial) for r in runs(params)})
