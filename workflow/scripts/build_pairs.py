from nashflow import stages
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    stages.pairs(snakemake.params.settings, samples_paths=list(snakemake.input.samples),
                 scores_paths=list(snakemake.input.scores), out=snakemake.output.pairs)
