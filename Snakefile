# ncil workflow: data -> split -> one training job per task -> evaluation -> summary -> tables, figures.
# The grid (datasets x settings x methods x seeds x tasks) comes from params.yaml, validated when this
# file loads by the CLI's parser (ncil.pipeline.config.parse_params: a bad value stops here, nothing runs), and is
# expanded by ncil/pipeline/experiment_grid.py, the module dvc.yaml is generated from. Run: snakemake --cores all [target]

configfile: "params.yaml"


# `snakemake --report report.html`: one page with Tables 1-5, Figures 3 and 4 and the cost summary.
report: "report/workflow.rst"


include: "rules/common.smk"


rule all:
    input:
        TABLES,
        REPORT,
        COSTS,
    default_target: True


# Named targets: `snakemake --cores 2 <name>`.
rule tables:
    input:
        TABLES,


rule report:
    input:
        REPORT,
        COSTS,


rule metrics:
    input:
        METRICS,


rule models:  # params.yaml's grid: a paper data set's checkpoints are part of its own target
    input:
        CHECKPOINTS,


# The paper's data sets (grids/<name>/params.yaml, from `python -m ncil grid <name> [+smoke=cpu]`):
# `snakemake --cores N cifar100` runs that data set's whole grid, up to its results table.
rule cifar100:
    input:
        GRID_TABLES.get("cifar100", []),


rule tinyimagenet:
    input:
        GRID_TABLES.get("tinyimagenet", []),


rule imagenet_subset:
    input:
        GRID_TABLES.get("imagenet_subset", []),


# A failed run: the committed tables Snakemake put back are marked stale (rules/common.smk).
onerror:
    mark_restored_stale(log, workflow.persistence)


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/report.smk"
