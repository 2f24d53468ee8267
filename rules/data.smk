# Data preparation and class splits.


rule prepare:
    output:
        manifest="data/{dataset}/manifest.json",
        arrays=multiext("data/{dataset}/", *[f"{s}_{kind}.npy" for s in paths.DATA_SPLITS for kind in ("images", "labels")]),
    input:
        unpack(prepare_inputs),
    params:
        cmd=step_command("data/{dataset}/manifest.json"),
        digest=step_params_digest("data/{dataset}/manifest.json"),
    log:
        "logs/prepare/{dataset}.log",
    benchmark:
        "benchmarks/prepare/{dataset}.tsv"
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/ncil.yaml"
    shell:
        "{params.cmd}"


rule split:
    output:
        split="results/{dataset}/{split_id}/split.json",
    params:
        cmd=step_command("results/{dataset}/{split_id}/split.json"),
        digest=step_params_digest("results/{dataset}/{split_id}/split.json"),
    log:
        "logs/split/{dataset}_{split_id}.log",
    benchmark:
        "benchmarks/split/{dataset}_{split_id}.tsv"
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/ncil.yaml"
    shell:
        "{params.cmd}"
