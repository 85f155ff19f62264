from nashflow import stages
from nashflow.config import job_config
from nashflow.launch import train_gpus
from nashflow.logutil import job_logging
from nashflow.plan import train_extras

with job_logging(snakemake.log[0], gpus=snakemake.resources.get("gpu", 0)):
    n_gpus = train_gpus(snakemake.resources)  # per node; a job over several nodes must be in their allocation
    stages.train(snakemake.params.settings, extras=train_extras(job_config(snakemake)),
                 policy_dir=snakemake.input.policy, pairs_path=snakemake.input.pairs, logps=snakemake.params.logps,
                 roles=snakemake.params.roles, out_dir=snakemake.output.model, metrics_path=snakemake.output.metrics,
                 n_gpus=n_gpus, threads=snakemake.threads, log_path=snakemake.log[0],
                 accelerate_config=snakemake.params.accelerate)
