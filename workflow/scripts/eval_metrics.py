from nashflow import stages
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    stages.eval_metrics(snakemake.params.settings, iteration=int(snakemake.wildcards.iter),
                        current=snakemake.input.current, base=snakemake.input.get("base"),
                        previous=snakemake.input.get("previous"), out=snakemake.output.metrics,
                        base_model_dir=snakemake.input.get("scorer_model"), threads=snakemake.threads)
