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


# The paper's Tables 1, 2, 3, 5 and Figure 3 (every setting) from the grid's metrics; Figure 4 (PKS
# weight maps) only when the grid has a PKS method on the ViT. Outputs are listed by ncil/workflow.py.
REPORT_STEPS = {s.kind: s for s in STEPS if s.kind in ("paper_tables", "figures", "figure4")}
REPORT_OUTS = {kind: list(step.outs.values()) for kind, step in REPORT_STEPS.items()}
REPORT_DEPS = {kind: list(step.deps.values()) for kind, step in REPORT_STEPS.items()}
REPORT_CMD = {kind: step.shell for kind, step in REPORT_STEPS.items()}
REPORT_DIGEST = {
    kind: hashlib.sha256(json.dumps(lookup_params(config, step.params), sort_keys=True).encode()).hexdigest()[:16]
    for kind, step in REPORT_STEPS.items()
}


rule paper_tables:
    output:
        REPORT_OUTS["paper_tables"],
    input:
        REPORT_DEPS["paper_tables"],
    params:
        cmd=REPORT_CMD["paper_tables"],
        digest=REPORT_DIGEST["paper_tables"],
    log:
        REPORT_STEPS["paper_tables"].log,
    benchmark:
        REPORT_STEPS["paper_tables"].benchmark
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/ncil.yaml"
    shell:
        "{params.cmd}"


rule figures:
    output:
        REPORT_OUTS["figures"],
    input:
        REPORT_DEPS["figures"],
    params:
        cmd=REPORT_CMD["figures"],
        digest=REPORT_DIGEST["figures"],
    log:
        REPORT_STEPS["figures"].log,
    benchmark:
        REPORT_STEPS["figures"].benchmark
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/ncil.yaml"
    shell:
        "{params.cmd}"


if "figure4" in REPORT_STEPS:

    rule figure4:
        output:
            REPORT_OUTS["figure4"],
        input:
            REPORT_DEPS["figure4"],
        params:
            cmd=REPORT_CMD["figure4"], digest=REPORT_DIGEST["figure4"],
        log:
            REPORT_STEPS["figure4"].log,
        benchmark:
            REPORT_STEPS["figure4"].benchmark
        threads: 1
        resources:
            gpu=0,
        conda:
            "../envs/ncil.yaml"
        shell:
            "{params.cmd}"
