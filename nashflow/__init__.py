"""nashflow: iterative on-policy preference optimization of language models.

The library is importable without Snakemake; the workflow's scripts are thin wrappers around
:mod:`nashflow.stages`, which take the settings :func:`nashflow.plan.job_settings` gives each job.
docs/modules.md maps the modules, docs/data-contracts.md the files they write.
"""

__version__ = "0.1.0"
