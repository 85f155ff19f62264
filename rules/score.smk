rule score:
    """Rewards for every sample of one shard."""
    input:
        samples="results/{run}/iter{iter}/samples/shard{shard}.parquet",
    output:
        scores="results/{run}/iter{iter}/scores/shard{shard}.parquet",
    params:
        settings=SETTINGS["score"],
    log:
        "logs/{run}/iter{iter}/score/shard{shard}.log",
    benchmark:
        "logs/{run}/iter{iter}/score/shard{shard}.benchmark.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=60,
    script:
        "../workflow/scripts/score.py"
