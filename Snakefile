# nashflow: iterative on-policy preference optimization as one Snakemake DAG.
# Table of contents only: logic lives in rules/common.smk and the nashflow package.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/generate.smk"
include: "rules/score.smk"
include: "rules/pairs.smk"
include: "rules/logps.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/game.smk"


rule all:
    input:
        get_final_targets(),
    default_target: True
