# One training job per task: task t reads task t-1's checkpoint and class centers (previous_task in
# rules/common.smk). Task 0 lives under runs/<grid>/base<F>/<base_recipe>/seed<s>/ and is shared by
# every setting with the same F and every method with the same base recipe.


rule train_base:
    """Task 0 of every run with base size F, base recipe `recipe` and this seed."""
    input:
        manifest=data_manifest,  # data/<dataset>/manifest.json: the data set's, shared by its grids
        split=base_split,  # results/{grid}/base{initial}/split.json, for a base run of the grid
        code=code("train"),
        config_keys=config_stamp("train"),
    output:
        checkpoint="runs/{grid}/base{initial}/{recipe}/seed{seed}/task_0/model.pt",
        centers="runs/{grid}/base{initial}/{recipe}/seed{seed}/task_0/centers.parquet",
    params:
        code=fingerprint("train"),
        params_file=params_file,
        config_keys=keys_digest("train"),
    log:
        "logs/train/{grid}/base{initial}/{recipe}/seed{seed}/task_0.log",
    benchmark:
        "benchmarks/train/{grid}/base{initial}/{recipe}/seed{seed}/task_0.tsv"
    threads: job_threads("train_base")
    resources:
        gpu=job_gpus("train_base"),
        mem_mb=job_mem_mb("train_base"),
        runtime=job_runtime("train_base"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil train --params {params.params_file} --split {input.split} --task 0"
        " --seed {wildcards.seed} --method {wildcards.recipe}"
        " --checkpoint {output.checkpoint} --centers {output.centers} --log {log}"


rule train:
    """Task t >= 1 of a run: starts from task t-1's checkpoint and class centers."""
    input:
        manifest=data_manifest,  # data/<dataset>/manifest.json: the data set's, shared by its grids
        split="results/{grid}/{setting}/split.json",
        prev_checkpoint=previous_checkpoint,
        prev_centers=previous_centers,
        code=code("train"),
        config_keys=config_stamp("train", per_method=True),
    output:
        checkpoint="runs/{grid}/{setting}/{method}/seed{seed}/task_{task}/model.pt",
        centers="runs/{grid}/{setting}/{method}/seed{seed}/task_{task}/centers.parquet",
    wildcard_constraints:
        task="[1-9][0-9]*",
    params:
        code=fingerprint("train"),
        params_file=params_file,
        config_keys=keys_digest("train"),
    log:
        "logs/train/{grid}/{setting}/{method}/seed{seed}/task_{task}.log",
    benchmark:
        "benchmarks/train/{grid}/{setting}/{method}/seed{seed}/task_{task}.tsv"
    threads: job_threads("train")
    resources:
        gpu=job_gpus("train"),
        mem_mb=job_mem_mb("train"),
        runtime=job_runtime("train"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil train --params {params.params_file} --split {input.split} --task {wildcards.task}"
        " --seed {wildcards.seed} --method {wildcards.method}"
        " --prev-checkpoint {input.prev_checkpoint} --prev-centers {input.prev_centers}"
        " --checkpoint {output.checkpoint} --centers {output.centers} --log {log}"


# Rehearsal methods (exemplars_per_class > 0: DyTox, docs/dytox.md): the same jobs, with the exemplar memory
# as one more output of task t and one more input of task t+1 (memory.parquet beside the centers). Only the
# grids' rehearsal methods and base recipes match these rules (REHEARSAL_METHODS, REHEARSAL_RECIPES in
# rules/common.smk); every other method's jobs are train_base and train, which name no memory.
ruleorder: train_base_memory > train_base
ruleorder: train_memory > train


rule train_base_memory:
    """Task 0 of a rehearsal base recipe: also writes the exemplar memory task 1 trains on."""
    input:
        manifest=data_manifest,  # data/<dataset>/manifest.json: the data set's, shared by its grids
        split=base_split,
        code=code("train"),
        config_keys=config_stamp("train"),
    output:
        checkpoint="runs/{grid}/base{initial}/{recipe}/seed{seed}/task_0/model.pt",
        centers="runs/{grid}/base{initial}/{recipe}/seed{seed}/task_0/centers.parquet",
        memory="runs/{grid}/base{initial}/{recipe}/seed{seed}/task_0/memory.parquet",
    wildcard_constraints:
        recipe=REHEARSAL_RECIPES,
    params:
        code=fingerprint("train"),
        params_file=params_file,
        config_keys=keys_digest("train"),
    log:
        "logs/train/{grid}/base{initial}/{recipe}/seed{seed}/task_0.log",
    benchmark:
        "benchmarks/train/{grid}/base{initial}/{recipe}/seed{seed}/task_0.tsv"
    threads: job_threads("train_base")
    resources:
        gpu=job_gpus("train_base"),
        mem_mb=job_mem_mb("train_base"),
        runtime=job_runtime("train_base"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil train --params {params.params_file} --split {input.split} --task 0"
        " --seed {wildcards.seed} --method {wildcards.recipe}"
        " --checkpoint {output.checkpoint} --centers {output.centers} --memory {output.memory} --log {log}"


rule train_memory:
    """Task t >= 1 of a rehearsal run: reads task t-1's checkpoint, centers and exemplar memory, writes its own."""
    input:
        manifest=data_manifest,  # data/<dataset>/manifest.json: the data set's, shared by its grids
        split="results/{grid}/{setting}/split.json",
        prev_checkpoint=previous_checkpoint,
        prev_centers=previous_centers,
        prev_memory=previous_memory,
        code=code("train"),
        config_keys=config_stamp("train", per_method=True),
    output:
        checkpoint="runs/{grid}/{setting}/{method}/seed{seed}/task_{task}/model.pt",
        centers="runs/{grid}/{setting}/{method}/seed{seed}/task_{task}/centers.parquet",
        memory="runs/{grid}/{setting}/{method}/seed{seed}/task_{task}/memory.parquet",
    wildcard_constraints:
        task="[1-9][0-9]*",
        method=REHEARSAL_METHODS,
    params:
        code=fingerprint("train"),
        params_file=params_file,
        config_keys=keys_digest("train"),
    log:
        "logs/train/{grid}/{setting}/{method}/seed{seed}/task_{task}.log",
    benchmark:
        "benchmarks/train/{grid}/{setting}/{method}/seed{seed}/task_{task}.tsv"
    threads: job_threads("train")
    resources:
        gpu=job_gpus("train"),
        mem_mb=job_mem_mb("train"),
        runtime=job_runtime("train"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil train --params {params.params_file} --split {input.split} --task {wildcards.task}"
        " --seed {wildcards.seed} --method {wildcards.method}"
        " --prev-checkpoint {input.prev_checkpoint} --prev-centers {input.prev_centers}"
        " --prev-memory {input.prev_memory}"
        " --checkpoint {output.checkpoint} --centers {output.centers} --memory {output.memory} --log {log}"


# FeCAM (classifier fecam, docs/efcil.md): every task also writes its classes' statistics (statistics.parquet
# beside the centers), which the run's evaluation reads. Only the grids' FeCAM methods and base recipes match
# these rules (FECAM_METHODS, FECAM_RECIPES in rules/common.smk); tasks t >= 1 train nothing (frozen backbone).
ruleorder: train_base_statistics > train_base
ruleorder: train_statistics > train
ruleorder: evaluate_statistics > evaluate


rule train_base_statistics:
    """Task 0 of a FeCAM base recipe: trains the backbone, then writes its classes' statistics."""
    input:
        manifest=data_manifest,  # data/<dataset>/manifest.json: the data set's, shared by its grids
        split=base_split,
        code=code("train"),
        config_keys=config_stamp("train"),
    output:
        checkpoint="runs/{grid}/base{initial}/{recipe}/seed{seed}/task_0/model.pt",
        centers="runs/{grid}/base{initial}/{recipe}/seed{seed}/task_0/centers.parquet",
        statistics="runs/{grid}/base{initial}/{recipe}/seed{seed}/task_0/statistics.parquet",
    wildcard_constraints:
        recipe=FECAM_RECIPES,
    params:
        code=fingerprint("train"),
        params_file=params_file,
        config_keys=keys_digest("train"),
    log:
        "logs/train/{grid}/base{initial}/{recipe}/seed{seed}/task_0.log",
    benchmark:
        "benchmarks/train/{grid}/base{initial}/{recipe}/seed{seed}/task_0.tsv"
    threads: job_threads("train_base")
    resources:
        gpu=job_gpus("train_base"),
        mem_mb=job_mem_mb("train_base"),
        runtime=job_runtime("train_base"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil train --params {params.params_file} --split {input.split} --task 0"
        " --seed {wildcards.seed} --method {wildcards.recipe}"
        " --checkpoint {output.checkpoint} --centers {output.centers} --statistics {output.statistics} --log {log}"


rule train_statistics:
    """Task t >= 1 of a FeCAM run: task t-1's frozen backbone, the new classes' statistics; nothing trained."""
    input:
        manifest=data_manifest,  # data/<dataset>/manifest.json: the data set's, shared by its grids
        split="results/{grid}/{setting}/split.json",
        prev_checkpoint=previous_checkpoint,
        prev_centers=previous_centers,
        code=code("train"),
        config_keys=config_stamp("train", per_method=True),
    output:
        checkpoint="runs/{grid}/{setting}/{method}/seed{seed}/task_{task}/model.pt",
        centers="runs/{grid}/{setting}/{method}/seed{seed}/task_{task}/centers.parquet",
        statistics="runs/{grid}/{setting}/{method}/seed{seed}/task_{task}/statistics.parquet",
    wildcard_constraints:
        task="[1-9][0-9]*",
        method=FECAM_METHODS,
    params:
        code=fingerprint("train"),
        params_file=params_file,
        config_keys=keys_digest("train"),
    log:
        "logs/train/{grid}/{setting}/{method}/seed{seed}/task_{task}.log",
    benchmark:
        "benchmarks/train/{grid}/{setting}/{method}/seed{seed}/task_{task}.tsv"
    threads: job_threads("train")
    resources:
        gpu=job_gpus("train"),
        mem_mb=job_mem_mb("train"),
        runtime=job_runtime("train"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil train --params {params.params_file} --split {input.split} --task {wildcards.task}"
        " --seed {wildcards.seed} --method {wildcards.method}"
        " --prev-checkpoint {input.prev_checkpoint} --prev-centers {input.prev_centers}"
        " --checkpoint {output.checkpoint} --centers {output.centers} --statistics {output.statistics} --log {log}"


rule evaluate:
    """Predictions of every task's checkpoint on the test images of the classes seen so far."""
    input:
        manifest=data_manifest,  # data/<dataset>/manifest.json: the data set's, shared by its grids
        split="results/{grid}/{setting}/split.json",
        checkpoints=run_checkpoints,
        code=code("evaluate"),
        config_keys=config_stamp("evaluate", per_method=True),
    output:
        evals=directory("results/{grid}/{setting}/{method}/seed{seed}/eval"),
    params:
        code=fingerprint("evaluate"),
        params_file=params_file,
        evals=run_evals,  # eval/task_<t>.parquet, one per checkpoint
        config_keys=keys_digest("evaluate"),
    log:
        "logs/evaluate/{grid}/{setting}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/evaluate/{grid}/{setting}/{method}/seed{seed}.tsv"
    threads: job_threads("evaluate")
    resources:
        gpu=job_gpus("evaluate"),
        mem_mb=job_mem_mb("evaluate"),
        runtime=job_runtime("evaluate"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil evaluate --params {params.params_file} --split {input.split}"
        " --checkpoints {input.checkpoints} --out {params.evals} --log {log}"


rule evaluate_statistics:
    """A FeCAM run's predictions: every task's checkpoint with the class statistics of tasks 0..t."""
    input:
        manifest=data_manifest,  # data/<dataset>/manifest.json: the data set's, shared by its grids
        split="results/{grid}/{setting}/split.json",
        checkpoints=run_checkpoints,
        statistics=run_statistics,
        code=code("evaluate"),
        config_keys=config_stamp("evaluate", per_method=True),
    wildcard_constraints:
        method=FECAM_METHODS,
    output:
        evals=directory("results/{grid}/{setting}/{method}/seed{seed}/eval"),
    params:
        code=fingerprint("evaluate"),
        params_file=params_file,
        evals=run_evals,  # eval/task_<t>.parquet, one per checkpoint
        config_keys=keys_digest("evaluate"),
    log:
        "logs/evaluate/{grid}/{setting}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/evaluate/{grid}/{setting}/{method}/seed{seed}.tsv"
    threads: job_threads("evaluate")
    resources:
        gpu=job_gpus("evaluate"),
        mem_mb=job_mem_mb("evaluate"),
        runtime=job_runtime("evaluate"),
    conda:
        "../envs/ncil.yaml"
    shell:
        "python -m ncil evaluate --params {params.params_file} --split {input.split}"
        " --checkpoints {input.checkpoints} --statistics {input.statistics} --out {params.evals} --log {log}"
