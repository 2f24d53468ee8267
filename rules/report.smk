# Per-run summary (accuracy matrix, Avg, Last, forgetting), the data set's results table, its sections
# of the paper's Tables 1, 2, 3, 5 (every grid), the tables assembled from every data set's sections
# and Figures 3 and 4 (params.yaml's grid), and the cost summary (Snakemake only).
# report(...): what `snakemake --report report.html` shows, with the caption beside (report/*.rst).


rule summarize:
    """Accuracy matrix, Avg, Last and forgetting of one run, from its per-task predictions (and the
    precision its checkpoints were trained in)."""
    input:
        split="results/{grid}/{setting}/split.json",
        evals="results/{grid}/{setting}/{method}/seed{seed}/eval",
        checkpoints=run_checkpoints,  # their config.runtime.precision: the run's training precision
        code=code("summarize"),
        config_keys=config_stamp("summarize", per_method=True),
    output:
        metrics="results/{grid}/{setting}/{method}/seed{seed}/metrics.json",
    params:
        code=fingerprint("summarize"),
        params_file=params_file,
        evals=run_evals,
        config_keys=keys_digest("summarize"),
    log:
        "logs/summarize/{grid}/{setting}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/summarize/{grid}/{setting}/{method}/seed{seed}.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=job_mem_mb("summarize"),
        runtime=job_runtime("summarize"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil summarize --params {params.params_file} --split {input.split} --evals {params.evals}"
        " --setting {wildcards.setting} --method {wildcards.method} --seed {wildcards.seed}"
        " --out {output.metrics} --checkpoints {input.checkpoints} --log {log}"


rule results_table:
    """The data set's results table: mean and std over seeds of every setting and method."""
    input:
        metrics=grid_metrics,
        code=code("tables"),
        config_keys=config_stamp("tables"),
    output:
        markdown=report("results/tables/{grid}_results.md", caption="../report/results_table.rst",
                        category="Results tables", subcategory="{grid}", labels={"data set": "{grid}"}),
        csv="results/tables/{grid}_results.csv",
    params:
        code=fingerprint("tables"),
        params_file=params_file,
        config_keys=keys_digest("tables"),
    log:
        "logs/tables/{grid}.log",
    benchmark:
        "benchmarks/tables/{grid}.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=job_mem_mb("results_table"),
        runtime=job_runtime("results_table"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil tables --params {params.params_file} --metrics {input.metrics}"
        " --markdown {output.markdown} --csv {output.csv} --log {log}"


rule paper_sections:
    """One data set's sections of Tables 1, 2, 3 and 5 (its own files: a second grid adds its sections
    and rewrites no other data set's)."""
    input:
        metrics=grid_metrics,
        code=code("paper-sections"),
        config_keys=config_stamp("paper_sections"),
    output:
        table1_md="results/tables/{grid}/table1.md",
        table1_csv="results/tables/{grid}/table1.csv",
        table2_md="results/tables/{grid}/table2.md",
        table2_csv="results/tables/{grid}/table2.csv",
        table3_md="results/tables/{grid}/table3.md",
        table3_csv="results/tables/{grid}/table3.csv",
        table5_md="results/tables/{grid}/table5.md",
        table5_csv="results/tables/{grid}/table5.csv",
    params:
        code=fingerprint("paper-sections"),
        params_file=params_file,
        config_keys=keys_digest("paper_sections"),
    log:
        "logs/tables/{grid}_sections.log",
    benchmark:
        "benchmarks/tables/{grid}_sections.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=job_mem_mb("paper_sections"),
        runtime=job_runtime("paper_sections"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil paper-sections --params {params.params_file} --metrics {input.metrics} --log {log}"


rule paper_tables:
    """The paper's Tables 1, 2, 3 and 5 from every data set's sections present (PAPER_SECTIONS: this
    grid's and the committed ones of other data sets; the paper's values beside), and Table 4 (DyTox: the
    paper's values, ours from the committed results tables of the Table 4 grids that have run, TABLE4_SOURCES)
    and the exemplar-free benchmark table (issue 25:
    the quoted values, ours "not run"). Committed files every grid shares: a
    failing job leaves them as they were (``committed``), never deleted."""
    input:
        sections=PAPER_SECTIONS,
        table4=TABLE4_SOURCES,  # committed params file and results table of each Table 4 grid that has run
        code=code("paper-tables"),
        config_keys=config_stamp("paper_tables"),
    output:
        table1_md=paper_table("table1"),
        table1_csv=committed(paths.paper_table_files("table1")[1]),
        table2_md=paper_table("table2"),
        table2_csv=committed(paths.paper_table_files("table2")[1]),
        table3_md=paper_table("table3"),
        table3_csv=committed(paths.paper_table_files("table3")[1]),
        table5_md=paper_table("table5"),
        table5_csv=committed(paths.paper_table_files("table5")[1]),
        table4_md=paper_table("table4"),  # DyTox: the paper's values, ours from the Table 4 grids' results
        table4_csv=committed(paths.paper_table_files("table4")[1]),
        efcil_md=paper_table("efcil_benchmark"),  # exemplar-free methods (issue 25): paper values, ours "not run"
        efcil_csv=committed(paths.paper_table_files("efcil_benchmark")[1]),
    params:
        code=fingerprint("paper-tables"),
        params_file=PARAMS_FILE,
        table4_grids=TABLE4_GRIDS_ARG,
        config_keys=keys_digest("paper_tables"),
    log:
        "logs/tables/paper.log",
    benchmark:
        "benchmarks/tables/paper.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=job_mem_mb("paper_tables"),
        runtime=job_runtime("paper_tables"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil paper-tables --params {params.params_file} --sections {input.sections}{params.table4_grids}"
        " --log {log}"


# Figures 3 and 4 of every grid: their files are named by the grid's folder (its data set's name by default),
# whose settings fix how many there are, so each grid has its own rules (params.yaml's: `figures`, `figure4`; a
# paper data set's: `figures_<folder>`, `figure4_<folder>`), defined with the same body here.
for FIG_GRID, (FIG_PARAMS_FILE, FIG_CONFIG) in FIGURE_GRIDS.items():
    FIG_SETTINGS, FIG3_PNG, FIG3_CSV, FIG4 = grid_figures(FIG_CONFIG)
    FIG_SUFFIX = "" if FIG_GRID == FOLDER else f"_{FIG_GRID}"

    rule:
        """Figure 3 of every setting: accuracy after each task, one curve per method (PNG and its data)."""
        name:
            f"figures{FIG_SUFFIX}"
        input:
            metrics=[run.metrics_file for run in experiment_grid.runs(FIG_CONFIG)],
            code=code("figures"),
            config_keys=config_stamp("figures", FIG_GRID),
        output:
            png=[report(png, caption="../report/figure3.rst", category="Figure 3", subcategory=FIG_GRID,
                        labels={"data set": FIG_GRID, "setting": setting}) for png, setting in zip(FIG3_PNG, FIG_SETTINGS)],
            csv=FIG3_CSV,
        params:
            code=fingerprint("figures"),
            params_file=FIG_PARAMS_FILE,
            config_keys=keys_digest("figures", FIG_GRID),
        log:
            f"logs/figures/{FIG_GRID}.log",
        benchmark:
            f"benchmarks/figures/{FIG_GRID}.tsv"
        threads: 1
        resources:
            gpu=0,
            mem_mb=job_mem_mb(f"figures{FIG_SUFFIX}"),
            runtime=job_runtime(f"figures{FIG_SUFFIX}"),
        conda:
            "../envs/ncil.yaml"
        shell:
            "python -m ncil figures --params {params.params_file} --metrics {input.metrics} --log {log}"

    if FIG4:

        rule:
            """Figure 4: PKS patch weights of the first base-task images after tasks 1, 3, 5, ... of one run
            (ncil.pipeline.workflow.figure4_run: `ours`, the first seed, the longest setting)."""
            name:
                f"figure4{FIG_SUFFIX}"
            input:
                manifest=paths.data_manifest(FIG_CONFIG["dataset"]["name"]),
                split=FIG4[1].split_file,
                checkpoints=FIG4[2],
                code=code("figure4"),
                config_keys=config_stamp("figure4", FIG_GRID),
            output:
                png=report(paths.weight_map_files(FIG_GRID)[0], caption="../report/figure4.rst",
                           category="Figure 4", subcategory=FIG_GRID, labels={"data set": FIG_GRID}),
                csv=paths.weight_map_files(FIG_GRID)[1],
            params:
                code=fingerprint("figure4"),
                params_file=FIG_PARAMS_FILE,
                p=FIG_CONFIG["method"][FIG4[0]].get("pks_p", 2),
                config_keys=keys_digest("figure4", FIG_GRID),
            log:
                f"logs/figures/{FIG_GRID}_pks.log",
            benchmark:
                f"benchmarks/figures/{FIG_GRID}_pks.tsv"
            threads: 1
            resources:
                gpu=0,
                mem_mb=job_mem_mb(f"figure4{FIG_SUFFIX}"),
                runtime=job_runtime(f"figure4{FIG_SUFFIX}"),
            conda:
                "../envs/ncil.yaml"
            shell:
                "python -m ncil figure4 --params {params.params_file} --split {input.split}"
                " --checkpoints {input.checkpoints} --p {params.p} --out-png {output.png} --out-csv {output.csv}"
                " --log {log}"


rule costs:
    """What each setting and method cost (training wall time, peak memory) from the benchmark files of
    the grid's training jobs; after every metrics.json exists. Snakemake only: DVC writes no benchmark
    files, so it is no DVC stage; a measurement, so it lives in results/costs/ and is not verified."""
    input:
        metrics=grid_metrics,
        code=code("costs"),
    output:
        markdown=report("results/costs/{grid}_costs.md", caption="../report/costs.rst", category="Costs",
                        subcategory="{grid}", labels={"data set": "{grid}"}),
        csv="results/costs/{grid}_costs.csv",
    params:
        code=fingerprint("costs"),
        params_file=params_file,
    log:
        "logs/costs/{grid}.log",
    benchmark:
        "benchmarks/costs/{grid}.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=job_mem_mb("costs"),
        runtime=job_runtime("costs"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil costs --params {params.params_file} --out {output.markdown} --log {log}"
