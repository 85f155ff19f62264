from nashflow import stages
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0]):
    stages.split(snakemake.config, snakemake.output.eval, snakemake.output.pool)
