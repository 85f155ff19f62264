from nashflow.logutil import job_logging
from nashflow.summaries import compare_runs

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    compare_runs(snakemake.config, files=snakemake.params.files, out=dict(snakemake.output.items()),
                 base_model_dir=snakemake.input.get("scorer_model"), threads=snakemake.threads)
