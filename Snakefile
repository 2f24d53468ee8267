# ncil workflow: data -> split -> one training job per task -> evaluation -> summary -> tables, figures.
# The grid (datasets x settings x methods x seeds x tasks) comes from params.yaml through
# ncil/workflow.py, the same module that generates dvc.yaml. Run: snakemake --cores all [target]

configfile: "params.yaml"


include: "rules/common.smk"


rule all:
    input:
        TABLES,
        REPORT,
    default_target: True


# Named targets: `snakemake --cores 2 <name>`.
rule tables:
    input:
        TABLES,


rule report:
    input:
        REPORT,


rule metrics:
    input:
        METRICS,


rule models:
    input:
        CHECKPOINTS,


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/report.smk"
