# Per-run summary (accuracy matrix, Avg, Last, forgetting) and the data set's results table.


rule summarize:
    output:
        metrics="results/{dataset}/{run}/metrics.json",
    input:
        unpack(step_inputs("results/{dataset}/{run}/metrics.json")),
    params:
        cmd=step_command("results/{dataset}/{run}/metrics.json"),
        digest=step_params_digest("results/{dataset}/{run}/metrics.json"),
    log:
        "logs/summarize/{dataset}/{run}.log",
    benchmark:
        "benchmarks/summarize/{dataset}/{run}.tsv"
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/ncil.yaml"
    shell:
        "{params.cmd}"


rule results_table:
    output:
        markdown="results/tables/{dataset}_results.md",
        csv="results/tables/{dataset}_results.csv",
    input:
        unpack(step_inputs("results/tables/{dataset}_results.md")),
    params:
        cmd=step_command("results/tables/{dataset}_results.md"),
        digest=step_params_digest("results/tables/{dataset}_results.md"),
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
        "{params.cmd}"
