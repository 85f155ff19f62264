from nashflow.game_eval import game_eval
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    game_eval(snakemake.params.settings, models=list(snakemake.input.models), eval_prompts=snakemake.input.prompts,
              base_model_dir=snakemake.input.base, out_csv=snakemake.output.table, out_plot=snakemake.output.plot,
              threads=snakemake.threads)
