from nashflow import stages
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    stages.split(snakemake.params.settings, snakemake.output.eval, snakemake.output.pool)
