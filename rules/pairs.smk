rule build_pairs:
    """Gather all shards (joined by prompt_id) and build chosen/rejected pairs with targets."""
    input:
        samples=get_samples,
        scores=get_scores,
    output:
        pairs="results/{run}/iter{iter}/pairs.parquet",
    params:
        settings=settings("build_pairs"),
    log:
        "logs/{run}/iter{iter}/build_pairs.log",
    benchmark:
        "logs/{run}/iter{iter}/build_pairs.benchmark.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=20,
    conda:
        "../envs/inference.yaml"
    script:
        "../workflow/scripts/build_pairs.py"


rule export_pairs:
    """Iteration t's pairs in TRL's conversational preference format (prompt, chosen, rejected)."""
    input:
        pairs="results/{run}/iter{iter}/pairs.parquet",
    output:
        trl="results/{run}/iter{iter}/pairs_trl.parquet",
    log:
        "logs/{run}/iter{iter}/export_pairs.log",
    benchmark:
        "logs/{run}/iter{iter}/export_pairs.benchmark.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=5,
    conda:
        "../envs/inference.yaml"
    script:
        "../workflow/scripts/export_pairs.py"
