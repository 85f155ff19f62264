from nashflow.export import export_trl_pairs  # not through nashflow.stages: this job needs no torch
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    export_trl_pairs(snakemake.input.pairs, snakemake.output.trl)
