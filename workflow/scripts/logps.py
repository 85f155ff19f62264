from nashflow import stages
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    stages.logps(snakemake.params.settings, pairs_path=snakemake.input.pairs, shard=int(snakemake.wildcards.shard),
                 model_dir=snakemake.input.model, out=snakemake.output.logps, threads=snakemake.threads)
