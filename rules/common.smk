# Targets, the step lookup and input functions shared by every rule file.
import hashlib
import json
import os

import yaml

from ncil import grid, paths
from ncil.workflow import CODE_DEP, lookup_params, steps

PARAMS_FILE = "params.yaml"
DATASET = config["dataset"]["name"]


def load_grids():
    """The paper data sets' grids (grids/<name>/params.yaml), each with its own data set name.

    A grid whose data set is the one of params.yaml is left out: params.yaml's grid owns those paths.
    """
    grids = {}
    for name in paths.GRID_NAMES:
        path = paths.grid_params(name)
        if os.path.exists(path):
            with open(path) as fh:
                data = yaml.safe_load(fh)
            if data["dataset"]["name"] != DATASET:
                grids[name] = (path, data)
    return grids


GRIDS = load_grids()
STEPS = steps(config, PARAMS_FILE)
STEP_CONFIG = {id(step): config for step in STEPS}
REPORT_KINDS = ("paper_tables", "figures", "figure4")
for _grid_file, _grid_config in GRIDS.values():
    for _step in steps(_grid_config, _grid_file, report=False):  # the paper's tables: params.yaml's grid only
        STEPS.append(_step)
        STEP_CONFIG[id(_step)] = _grid_config
STEP_BY_OUTPUT = {out: step for step in STEPS for out in step.outs.values()}
GRID_TABLES = {name: list(paths.table_files(cfg["dataset"]["name"])) for name, (_, cfg) in GRIDS.items()}
RUNS = grid.runs(config)
TABLES = list(paths.table_files(DATASET))
METRICS = [run.metrics_file for run in RUNS]
CHECKPOINTS = [s.outs["checkpoint"] for s in STEPS if s.kind == "train"]
REPORT = [f for s in STEPS if s.kind in REPORT_KINDS for f in s.outs.values()]


wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    split_id="[A-Za-z0-9_-]+",
    task="[0-9]+",
    run="[^/]+/[^/]+/seed[0-9]+",


def step_for(path):
    """The workflow step that produces ``path`` (a KeyError names a path outside the grid)."""
    try:
        return STEP_BY_OUTPUT[path]
    except KeyError:
        raise ValueError(f"{path} is not an output of the grid in {PARAMS_FILE}") from None


def step_inputs(template):
    """Input function: the named inputs of the step that writes ``template`` (filled with wildcards)."""

    def inputs(wildcards):
        return step_for(template.format(**wildcards)).deps

    return inputs


def step_command(template):
    def command(wildcards):
        return step_for(template.format(**wildcards)).shell

    return command


def prepare_inputs(wildcards):
    """The prepare step's raw inputs; a missing raw data set fails here, saying where to put it."""
    step = step_for(f"data/{wildcards.dataset}/manifest.json")
    raw = step.deps.get("raw")
    if raw and not os.path.exists(raw):
        from ncil.data.prepare import missing_message

        raise ValueError(missing_message(wildcards.dataset, raw))
    return step.deps


def step_params_digest(template):
    """Digest of the params keys a step reads: Snakemake's params trigger reruns it on change."""

    def digest(wildcards):
        step = step_for(template.format(**wildcards))
        values = json.dumps(lookup_params(STEP_CONFIG[id(step)], step.params), sort_keys=True)
        return hashlib.sha256(values.encode()).hexdigest()[:16]

    return digest
