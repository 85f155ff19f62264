rule score:
    """Rewards (or a preference matrix per prompt) for every sample of one shard."""
    input:
        unpack(get_score_inputs),
    output:
        scores="results/{run}/iter{iter}/scores/shard{shard}.parquet",
    params:
        settings=settings("score"),
    log:
        "logs/{run}/iter{iter}/score/shard{shard}.log",
    benchmark:
        "logs/{run}/iter{iter}/score/shard{shard}.benchmark.tsv"
    threads: SCORER_THREADS
    resources:
        gpu=0,
        mem_mb=SCORER_MEM_MB,
        runtime=60,
    conda:
        "../envs/inference.yaml"
    script:
        "../workflow/scripts/score.py"
