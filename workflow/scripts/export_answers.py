from nashflow.export import export_answers
from nashflow.logutil import job_logging

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    export_answers(responses=snakemake.input.responses, out_alpaca=snakemake.output.alpaca_eval,
                   out_mt_bench=snakemake.output.mt_bench)
