from nashflow import stages
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0]):
    out = snakemake.output
    stages.report(snakemake.config, metrics=list(snakemake.input.metrics),
                  train_metrics=list(snakemake.input.train_metrics), responses=list(snakemake.input.responses),
                  out_table=out.table, out_reward=out.reward, out_winrate=out.winrate, out_length=out.length,
                  out_training=out.training, out_objectives=out.objectives)
