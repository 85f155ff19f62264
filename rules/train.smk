rule train:
    """Train π_t from π_{t-1} on the pairs (accelerate launch, one process per GPU of the job)."""
    input:
        policy=get_generator,
        pairs="results/{run}/iter{iter}/pairs.parquet",
        logps=get_train_logps,
    output:
        model=directory("results/{run}/iter{iter}/model"),
        metrics="results/{run}/iter{iter}/train_metrics.csv",
    params:
        settings=settings("train"),
        logps=get_logps_by_role,
        roles=get_roles,
        accelerate=get_accelerate_config,
    log:
        "logs/{run}/iter{iter}/train.log",
    benchmark:
        "logs/{run}/iter{iter}/train.benchmark.tsv"
    threads: 2
    resources:
        gpu=0,
        mem_mb=16000,
        runtime=480,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/train.py"
