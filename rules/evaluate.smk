rule eval_generate:
    """One scored response per held-out prompt from iterate t (t = 0: the base model)."""
    input:
        unpack(get_eval_generate_inputs),
    output:
        responses="results/{run}/iter{iter}/eval/responses.parquet",
    params:
        settings=settings("eval_generate"),
    log:
        "logs/{run}/iter{iter}/eval/generate.log",
    benchmark:
        "logs/{run}/iter{iter}/eval/generate.benchmark.tsv"
    threads: 2
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/inference.yaml"
    script:
        "../workflow/scripts/eval_generate.py"


rule eval_metrics:
    """Mean reward, win rate vs the base and the previous iterate (judged here by a preference scorer), length."""
    input:
        unpack(get_eval_inputs),
    output:
        metrics="results/{run}/iter{iter}/eval/metrics.json",
    params:
        settings=settings("eval_metrics"),
    log:
        "logs/{run}/iter{iter}/eval/metrics.log",
    benchmark:
        "logs/{run}/iter{iter}/eval/metrics.benchmark.tsv"
    threads: EVAL_THREADS
    resources:
        gpu=0,
        mem_mb=EVAL_MEM_MB,
        runtime=10,
    conda:
        "../envs/inference.yaml"
    script:
        "../workflow/scripts/eval_metrics.py"


rule export_answers:
    """Iterate t's held-out responses in AlpacaEval's and MT-Bench's answer formats."""
    input:
        unpack(get_export_inputs),
    output:
        alpaca_eval="results/{run}/iter{iter}/eval/alpaca_eval.json",
        mt_bench="results/{run}/iter{iter}/eval/mt_bench_answers.jsonl",
    log:
        "logs/{run}/iter{iter}/eval/export.log",
    benchmark:
        "logs/{run}/iter{iter}/eval/export.benchmark.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/inference.yaml"
    script:
        "../workflow/scripts/export_answers.py"
