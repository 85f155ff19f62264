rule reference_logps:
    """Summed response log-probs and token counts under the reference, for one shard of pairs."""
    input:
        pairs="results/{run}/iter{iter}/pairs.parquet",
        model=get_reference,
    output:
        logps="results/{run}/iter{iter}/logps/ref/shard{shard}.parquet",
    log:
        "logs/{run}/iter{iter}/logps/ref_shard{shard}.log",
    benchmark:
        "logs/{run}/iter{iter}/logps/ref_shard{shard}.benchmark.tsv"
    threads: 2
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=120,
    script:
        "../workflow/scripts/logps.py"
