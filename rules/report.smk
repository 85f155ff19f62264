rule report:
    """Plots and a summary table over iterations, collected by `snakemake --report`."""
    input:
        metrics=get_all_eval_metrics,
        train_metrics=get_all_train_metrics,
        responses=get_all_eval_responses,
    output:
        table=report("results/{run}/report/summary.csv", caption="../workflow/report/summary.rst",
                     category="Summary"),
        reward=report("results/{run}/report/reward.png", caption="../workflow/report/reward.rst",
                      category="Evaluation"),
        winrate=report("results/{run}/report/win_rate.png", caption="../workflow/report/win_rate.rst",
                       category="Evaluation"),
        length=report("results/{run}/report/length.png", caption="../workflow/report/length.rst",
                      category="Evaluation"),
        training=report("results/{run}/report/training.png", caption="../workflow/report/training.rst",
                        category="Training"),
        objectives=report("results/{run}/report/objectives.png", caption="../workflow/report/objectives.rst",
                          category="Evaluation"),
    log:
        "logs/{run}/report.log",
    benchmark:
        "logs/{run}/report.benchmark.tsv"
    threads: 1
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow/scripts/report.py"
