"""nashflow: iterative on-policy preference optimization of language models.

The library is importable without Snakemake; the workflow's scripts are thin wrappers
around the functions exported by the submodules (see docs/data-contracts.md).
"""

__version__ = "0.1.0"
