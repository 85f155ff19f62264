from nashflow import stages
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    stages.generate(snakemake.params.settings, iteration=int(snakemake.wildcards.iter), shard=int(snakemake.wildcards.shard),
                    model_dir=snakemake.input.model, pool_path=snakemake.input.pool,
                    reference_dir=snakemake.input.get("reference"), out=snakemake.output.samples,
                    threads=snakemake.threads,
                    gpus=int(snakemake.resources.get("gpu", 0)))
