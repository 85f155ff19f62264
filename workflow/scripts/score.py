from nashflow import stages
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    stages.score(snakemake.params.settings, samples_path=snakemake.input.samples, out=snakemake.output.scores,
                 base_model_dir=snakemake.input.get("scorer_model"), threads=snakemake.threads)
