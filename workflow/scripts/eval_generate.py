from nashflow import stages
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    stages.eval_generate(snakemake.params.settings, model_dir=snakemake.input.model,
                         eval_prompts=snakemake.input.prompts, out=snakemake.output.responses,
                         threads=snakemake.threads,
                         gpus=int(snakemake.resources.get("gpu", 0)), base_model_dir=snakemake.input.get("scorer_model"))
