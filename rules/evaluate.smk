rule eval_generate:
    """One scored response per held-out prompt from iterate t (t = 0: the base model)."""
    input:
        unpack(get_eval_generate_inputs),
    output:
        responses="results/{run}/iter{iter}/eval/responses.parquet",
    params:
        settings=SETTINGS["eval_generate"],
    log:
        "logs/{run}/iter{iter}/eval/generate.log",
    benchmark:
        "logs/{run}/iter{iter}/eval/generate.benchmark.tsv"
    threads: 2
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=60,
    script:
        "../workflow/scripts/eval_generate.py"


rule eval_metrics:
    """Mean reward, win rate vs the base and the previous iterate (judged here by a preference scorer), length."""
    input:
        unpack(get_eval_inputs),
    output:
        metrics="results/{run}/iter{iter}/eval/metrics.json",
    params:
        settings=SETTINGS["eval_metrics"],
    log:
        "logs/{run}/iter{iter}/eval/metrics.log",
    benchmark:
        "logs/{run}/iter{iter}/eval/metrics.benchmark.tsv"
    threads: SCORER_THREADS
    resources:
        gpu=0,
        mem_mb=SCORER_MEM_MB,
        runtime=10,
    script:
        "../workflow/scripts/eval_metrics.py"
