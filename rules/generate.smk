rule generate:
    """Sample K responses per prompt of one shard from the previous iterate (π_{t-1})."""
    input:
        unpack(get_generate_inputs),
    output:
        samples="results/{run}/iter{iter}/samples/shard{shard}.parquet",
    params:
        settings=settings("generate"),
    log:
        "logs/{run}/iter{iter}/generate/shard{shard}.log",
    benchmark:
        "logs/{run}/iter{iter}/generate/shard{shard}.benchmark.tsv"
    threads: 2
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/inference.yaml"
    script:
        "../workflow/scripts/generate.py"
