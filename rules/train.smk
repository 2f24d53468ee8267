# One training job per task: task t reads task t-1's checkpoint and class centers.
# Task 0 lives under runs/<dataset>/base<F>/<base_recipe>/seed<s>/ and is shared by every setting
# with the same F and every method with the same base recipe.


rule train:
    output:
        checkpoint="runs/{dataset}/{run}/task_{task}/model.pt",
        centers="runs/{dataset}/{run}/task_{task}/centers.parquet",
    input:
        unpack(step_inputs("runs/{dataset}/{run}/task_{task}/model.pt")),
    params:
        cmd=step_command("runs/{dataset}/{run}/task_{task}/model.pt"),
        digest=step_params_digest("runs/{dataset}/{run}/task_{task}/model.pt"),
    log:
        "logs/train/{dataset}/{run}/task_{task}.log",
    benchmark:
        "benchmarks/train/{dataset}/{run}/task_{task}.tsv"
    threads: config["runtime"]["threads"]
    resources:
        gpu=config["runtime"]["gpus_per_job"],
        mem_mb=2000,
    conda:
        "../envs/ncil.yaml"
    shell:
        "{params.cmd}"


rule evaluate:
    output:
        evals=directory("results/{dataset}/{run}/eval"),
    input:
        unpack(step_inputs("results/{dataset}/{run}/eval")),
    params:
        cmd=step_command("results/{dataset}/{run}/eval"),
        digest=step_params_digest("results/{dataset}/{run}/eval"),
    log:
        "logs/evaluate/{dataset}/{run}.log",
    benchmark:
        "benchmarks/evaluate/{dataset}/{run}.tsv"
    threads: config["runtime"]["threads"]
    resources:
        gpu=config["runtime"]["gpus_per_job"],
        mem_mb=2000,
    conda:
        "../envs/ncil.yaml"
    shell:
        "{params.cmd}"
