rule report:
    """One run's plots, summary table, example responses and config, collected by `snakemake --report`."""
    input:
        metrics=get_all_eval_metrics,
        train_metrics=get_all_train_metrics,
        responses=get_all_eval_responses,
        models=get_all_models,
    output:
        table=report("results/{run}/report/summary.csv", caption="../workflow/report/summary.rst",
                     category="Runs", subcategory="{run}"),
        reward=report("results/{run}/report/reward.png", caption="../workflow/report/reward.rst",
                      category="Runs", subcategory="{run}"),
        winrate=report("results/{run}/report/win_rate.png", caption="../workflow/report/win_rate.rst",
                       category="Runs", subcategory="{run}"),
        length=report("results/{run}/report/length.png", caption="../workflow/report/length.rst",
                      category="Runs", subcategory="{run}"),
        training=report("results/{run}/report/training.png", caption="../workflow/report/training.rst",
                        category="Runs", subcategory="{run}"),
        objectives=report("results/{run}/report/objectives.png", caption="../workflow/report/objectives.rst",
                          category="Runs", subcategory="{run}"),
        examples=report("results/{run}/report/examples.html", caption="../workflow/report/examples.rst",
                        category="Runs", subcategory="{run}"),
        config="results/{run}/report/run.yaml",
        config_html=report("results/{run}/report/run.html", caption="../workflow/report/config.rst",
                           category="Runs", subcategory="{run}"),
    log:
        "logs/{run}/report.log",
    benchmark:
        "logs/{run}/report.benchmark.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/inference.yaml"
    script:
        "../workflow/scripts/report.py"


rule compare:
    """Every run on the same held-out prompts with the same judge: per-iteration metrics, a round-robin
    of the base model and every run's final iterate, plots, example responses and configs."""
    input:
        unpack(get_compare_inputs),
    output:
        table=report(f"results/{TOP}/compare/summary.csv", caption="../workflow/report/compare_summary.rst",
                     category="Comparison"),
        roundrobin=f"results/{TOP}/compare/roundrobin.parquet",
        roundrobin_plot=report(f"results/{TOP}/compare/roundrobin.png",
                               caption="../workflow/report/compare_roundrobin.rst", category="Comparison"),
        reward=report(f"results/{TOP}/compare/reward.png", caption="../workflow/report/compare_reward.rst",
                      category="Comparison"),
        winrate=report(f"results/{TOP}/compare/win_rate.png", caption="../workflow/report/compare_win_rate.rst",
                       category="Comparison"),
        length=report(f"results/{TOP}/compare/length.png", caption="../workflow/report/compare_length.rst",
                      category="Comparison"),
        training=report(f"results/{TOP}/compare/training.png", caption="../workflow/report/compare_training.rst",
                        category="Comparison"),
        examples=report(f"results/{TOP}/compare/examples.html", caption="../workflow/report/examples.rst",
                        category="Comparison"),
        config=f"results/{TOP}/compare/runs.yaml",
        config_html=report(f"results/{TOP}/compare/runs.html", caption="../workflow/report/config.rst",
                           category="Comparison"),
    params:
        files=get_compare_files(),
        settings={"scorer": config["scorer"], "evaluation": config["evaluation"]},
    log:
        f"logs/{TOP}/compare.log",
    benchmark:
        f"logs/{TOP}/compare.benchmark.tsv"
    threads: EVAL_THREADS
    resources:
        gpu=0,
        mem_mb=EVAL_MEM_MB,
        runtime=30,
    conda:
        "../envs/inference.yaml"
    script:
        "../workflow/scripts/compare.py"
