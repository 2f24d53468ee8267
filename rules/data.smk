# Data preparation and class splits.


rule prepare:
    """The data set's train/val/test arrays and their manifest (SHA-256 of every file, class names)."""
    input:
        unpack(raw_data),  # raw: the raw folder, class_list: ImageNet-Subset's class list (digits: none)
        code=code("prepare"),
        config_keys=config_stamp("prepare"),
    output:
        manifest="data/{dataset}/manifest.json",
        arrays=multiext("data/{dataset}/", *[f"{s}_{kind}.npy" for s in paths.DATA_SPLITS for kind in ("images", "labels")]),
    params:
        code=fingerprint("prepare"),
        params_file=params_file,
        config_keys=keys_digest("prepare"),
    log:
        "logs/prepare/{dataset}.log",
    benchmark:
        "benchmarks/prepare/{dataset}.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=job_mem_mb("prepare"),
        runtime=job_runtime("prepare"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil prepare --params {params.params_file} --log {log}"


rule split:
    """Class order (order_seed) and the classes of each task: base<F> holds the base task alone."""
    input:
        code=code("split"),
        config_keys=config_stamp("split"),
    output:
        split="results/{grid}/{split_id}/split.json",
    params:
        code=fingerprint("split"),
        params_file=params_file,
        initial=split_initial,
        increment=split_increment,
        config_keys=keys_digest("split"),
    log:
        "logs/split/{grid}/{split_id}.log",
    benchmark:
        "benchmarks/split/{grid}/{split_id}.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=job_mem_mb("split"),
        runtime=job_runtime("split"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil split --params {params.params_file} --initial {params.initial}"
        " --increment {params.increment} --out {output.split} --log {log}"
