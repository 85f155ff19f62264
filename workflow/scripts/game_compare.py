from nashflow.game_eval import game_compare
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    game_compare(snakemake.config, files=snakemake.params.files, out_csv=snakemake.output.table,
                 out_plot=snakemake.output.plot)
