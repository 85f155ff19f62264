from nashflow import stages
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    stages.import_initial(snakemake.params.settings, shard=int(snakemake.wildcards.shard),
                          samples_out=snakemake.output.samples, scores_out=snakemake.output.scores)
