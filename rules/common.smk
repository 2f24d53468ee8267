# Targets, the step lookup and input functions shared by every rule file.
import hashlib
import json

from ncil import grid, paths
from ncil.workflow import CODE_DEP, lookup_params, steps

PARAMS_FILE = "params.yaml"
STEPS = steps(config, PARAMS_FILE)
STEP_BY_OUTPUT = {out: step for step in STEPS for out in step.outs.values()}
DATASET = config["dataset"]["name"]
RUNS = grid.runs(config)
TABLES = list(paths.table_files(DATASET))
METRICS = [run.metrics_file for run in RUNS]
CHECKPOINTS = [s.outs["checkpoint"] for s in STEPS if s.kind == "train"]
REPORT = [f for s in STEPS if s.kind in ("paper_tables", "figures", "figure4") for f in s.outs.values()]


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


def step_params_digest(template):
    """Digest of the params.yaml keys a step reads: Snakemake's params trigger reruns it on change."""

    def digest(wildcards):
        step = step_for(template.format(**wildcards))
        values = json.dumps(lookup_params(config, step.params), sort_keys=True)
        return hashlib.sha256(values.encode()).hexdigest()[:16]

    return digest
