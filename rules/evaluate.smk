rule eval_generate:
    """One scored response per held-out prompt from iterate t (t = 0: the base model)."""
    input:
        model=get_eval_model,
        prompts="results/{run}/prompts/eval.parquet",
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
    """Mean reward, win rate vs the base and the previous iterate, mean length."""
    input:
        unpack(get_eval_inputs),
    output:
        metrics="results/{run}/iter{iter}/eval/metrics.json",
    log:
        "logs/{run}/iter{iter}/eval/metrics.log",
    benchmark:
        "logs/{run}/iter{iter}/eval/metrics.benchmark.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow/scripts/eval_metrics.py"
