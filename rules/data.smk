rule prepare_model:
    """Convert the configured base model (GGUF or folder) into a safetensors folder, once."""
    output:
        model=directory("results/base_model"),
    params:
        settings=SETTINGS_TOP["prepare_model"],
    log:
        "logs/base_model/prepare_model.log",
    benchmark:
        "logs/base_model/prepare_model.benchmark.tsv"
    threads: 2
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/inference.yaml"
    script:
        "../workflow/scripts/prepare_model.py"


rule split_prompts:
    """Held-out evaluation prompts and the training pool, cut into per-iteration parts."""
    input:
        prompts=local_inputs(config["prompts"]["path"]),  # none for a hub id (read from the datasets cache)
    output:
        eval=f"{PROMPTS}/eval.parquet",
        pool=f"{PROMPTS}/pool.parquet",
    params:
        settings=SETTINGS_TOP["split_prompts"],
    log:
        f"logs/{TOP}/prompts/split_prompts.log",
    benchmark:
        f"logs/{TOP}/prompts/split_prompts.benchmark.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/inference.yaml"
    script:
        "../workflow/scripts/split_prompts.py"


if config["initial_data"]["path"]:

    ruleorder: import_initial > generate
    ruleorder: import_initial > score

    rule import_initial:
        """Iteration 1 from an existing preference dataset: its samples and scores, per shard."""
        input:
            data=local_inputs(config["initial_data"]["path"]),
        output:
            samples="results/{run}/iter1/samples/shard{shard}.parquet",
            scores="results/{run}/iter1/scores/shard{shard}.parquet",
        params:
            settings=settings("import_initial"),
        log:
            "logs/{run}/iter1/import_initial/shard{shard}.log",
        benchmark:
            "logs/{run}/iter1/import_initial/shard{shard}.benchmark.tsv"
        threads: 1
        resources:
            gpu=0,
            mem_mb=4000,
            runtime=20,
        conda:
            "../envs/inference.yaml"
        script:
            "../workflow/scripts/import_initial.py"
