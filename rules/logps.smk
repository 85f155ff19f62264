rule logps:
    """Summed response log-probs and token counts of one shard of pairs under one checkpoint
    (reference, history player or anchor: whichever iteration t's roles name)."""
    input:
        pairs="results/{run}/iter{iter}/pairs.parquet",
        model=get_logps_model,
    output:
        logps="results/{run}/iter{iter}/logps/{ckpt}/shard{shard}.parquet",
    params:
        settings=settings("logps"),
    log:
        "logs/{run}/iter{iter}/logps/{ckpt}_shard{shard}.log",
    benchmark:
        "logs/{run}/iter{iter}/logps/{ckpt}_shard{shard}.benchmark.tsv"
    threads: 2
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/logps.py"
