# Per-run summary (accuracy matrix, Avg, Last, forgetting), the data set's results table, and the
# paper's Tables 1, 2, 3, 5 and Figures 3 and 4 (params.yaml's grid only).


rule summarize:
    """Accuracy matrix, Avg, Last and forgetting of one run, from its per-task predictions."""
    input:
        split="results/{dataset}/{setting}/split.json",
        evals="results/{dataset}/{setting}/{method}/seed{seed}/eval",
        code=code("summarize"),
    output:
        metrics="results/{dataset}/{setting}/{method}/seed{seed}/metrics.json",
    params:
        params_file=params_file,
        evals=run_evals,
        config_keys=keys_digest("summarize"),
    log:
        "logs/summarize/{dataset}/{setting}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/summarize/{dataset}/{setting}/{method}/seed{seed}.tsv"
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil summarize --params {params.params_file} --split {input.split} --evals {params.evals}"
        " --setting {wildcards.setting} --method {wildcards.method} --seed {wildcards.seed}"
        " --out {output.metrics} --log {log}"


rule results_table:
    """The data set's results table: mean and std over seeds of every setting and method."""
    input:
        metrics=grid_metrics,
        code=code("tables"),
    output:
        markdown="results/tables/{dataset}_results.md",
        csv="results/tables/{dataset}_results.csv",
    params:
        params_file=params_file,
        config_keys=keys_digest("tables"),
    log:
        "logs/tables/{dataset}.log",
    benchmark:
        "benchmarks/tables/{dataset}.tsv"
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil tables --params {params.params_file} --metrics {input.metrics}"
        " --markdown {output.markdown} --csv {output.csv} --log {log}"


rule paper_tables:
    """The paper's Tables 1, 2, 3 and 5 (every data set of the grid; the paper's values beside)."""
    input:
        metrics=METRICS,
        code=code("paper-tables"),
    output:
        markdown=PAPER_TABLES_MD,
        csv=PAPER_TABLES_CSV,
    params:
        params_file=PARAMS_FILE,
        config_keys=keys_digest("paper_tables"),
    log:
        "logs/tables/paper.log",
    benchmark:
        "benchmarks/tables/paper.tsv"
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil paper-tables --params {params.params_file} --metrics {input.metrics} --log {log}"


rule figures:
    """Figure 3 of every setting: accuracy after each task, one curve per method (PNG and its data)."""
    input:
        metrics=METRICS,
        code=code("figures"),
    output:
        png=FIGURE3_PNG,
        csv=FIGURE3_CSV,
    params:
        params_file=PARAMS_FILE,
        config_keys=keys_digest("figures"),
    log:
        f"logs/figures/{DATASET}.log",
    benchmark:
        f"benchmarks/figures/{DATASET}.tsv"
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil figures --params {params.params_file} --metrics {input.metrics} --log {log}"


if FIGURE4:

    rule figure4:
        """Figure 4: PKS patch weights of the first base-task images after tasks 1, 3, 5, ... of one run
        (ncil.workflow.figure4_run: `ours`, the first seed, the longest setting)."""
        input:
            manifest=f"data/{DATASET}/manifest.json",
            split=FIGURE4[1].split_file,
            checkpoints=FIGURE4[2],
            code=code("figure4"),
        output:
            png=f"results/figures/fig4_{DATASET}.png",
            csv=f"results/figures/fig4_{DATASET}.csv",
        params:
            params_file=PARAMS_FILE,
            p=config["method"][FIGURE4[0]].get("pks_p", 2),
            config_keys=keys_digest("figure4"),
        log:
            f"logs/figures/{DATASET}_pks.log",
        benchmark:
            f"benchmarks/figures/{DATASET}_pks.tsv"
        threads: 1
        resources:
            gpu=0,
        conda:
            "../envs/ncil.yaml"
        shell:
            "python -m ncil figure4 --params {params.params_file} --split {input.split}"
            " --checkpoints {input.checkpoints} --p {params.p} --out-png {output.png} --out-csv {output.csv}"
            " --log {log}"
