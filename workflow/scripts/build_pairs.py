from nashflow import stages
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0]):
    stages.pairs(snakemake.config, samples_paths=list(snakemake.input.samples),
                 scores_paths=list(snakemake.input.scores), out=snakemake.output.pairs)
