from nashflow import stages
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    stages.compare(snakemake.config, files=snakemake.params.files, out=dict(snakemake.output.items()),
                   base_model_dir=snakemake.input.get("scorer_model"), threads=snakemake.threads)
