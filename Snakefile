# cct-bench: the experiment grid of the CCT paper (Ouali et al., CVPR 2020) as one Snakemake DAG.
#
#   snakemake --cores N                        # the grid of config/config.yaml (profiles/default applies)
#   snakemake -n                               # list every job, touch nothing
#   snakemake --report results/report.html     # tables and figures with captions
#
# Every config key is documented in config/README.md; the method itself is the `cct` package.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


# A job's `gpu` counts against the machine it runs on (with the slurm executor: per node, not
# cluster-wide), so the profile's `resources: gpu=1` means one training per GPU.
resource_scopes:
    gpu="local",


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/weak.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
