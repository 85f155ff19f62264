from nashflow.config import job_config
from nashflow.logutil import job_logging
from nashflow.summaries import run_report

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    run_report(job_config(snakemake, evaluation=True), metrics=list(snakemake.input.metrics),
               train_metrics=list(snakemake.input.train_metrics), responses=list(snakemake.input.responses),
               models=list(snakemake.input.models), out=dict(snakemake.output.items()))
