# Exact evaluation on a matrix game (nashflow/game_eval.py): only when the evaluation scorer is matrix_game.


if IS_GAME:

    rule game_eval:
        """Every checkpoint's exact action distribution on the held-out prompts: distance to the Nash
        equilibrium and exploitability per iteration, one run."""
        input:
            unpack(get_game_inputs),
        output:
            table=report("results/{run}/report/game.csv", caption="../workflow/report/game.rst",
                         category="Runs", subcategory="{run}"),
            plot=report("results/{run}/report/game.png", caption="../workflow/report/game.rst",
                        category="Runs", subcategory="{run}"),
        params:
            settings=settings("game_eval"),
        log:
            "logs/{run}/game_eval.log",
        benchmark:
            "logs/{run}/game_eval.benchmark.tsv"
        threads: 1
        resources:
            gpu=0,
            mem_mb=4000,
            runtime=10,
        conda:
            "../envs/inference.yaml"
        script:
            "../workflow/scripts/game_eval.py"


if IS_GAME and config["runs"]:

    rule game_compare:
        """Every run's game.csv with a run column, and their trajectories in one plot."""
        input:
            tables=[f"results/{r}/report/game.csv" for r in RUNS],
        output:
            table=report(f"results/{TOP}/compare/game.csv", caption="../workflow/report/compare_game.rst",
                         category="Comparison"),
            plot=report(f"results/{TOP}/compare/game.png", caption="../workflow/report/compare_game.rst",
                        category="Comparison"),
        params:
            files={r: f"results/{r}/report/game.csv" for r in RUNS},
        log:
            f"logs/{TOP}/game_compare.log",
        benchmark:
            f"logs/{TOP}/game_compare.benchmark.tsv"
        threads: 1
        resources:
            gpu=0,
            mem_mb=2000,
            runtime=10,
        conda:
            "../envs/inference.yaml"
        script:
            "../workflow/scripts/game_compare.py"
