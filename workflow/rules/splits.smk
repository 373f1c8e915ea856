# Labelled/unlabelled lists per dataset, label count and split draw. `cct splits` draws them
# deterministically and nested across label counts (the set for a smaller count is a subset of the
# set for a larger one); user lists (datasets.*.user_splits) are validated and copied instead.


rule split_config:
    """The dataset part of the cct config that `cct splits` reads (from params: a changed dataset
    key redraws the splits)."""
    output:
        L.split_config(),
    log:
        L.log("split_config", "{dataset}"),
    priority: PREPARE_PRIORITY
    localrule: True
    conda:
        ENV
    params:
        text=lambda wildcards: grid.yaml_text(configs.split_config(config, wildcards.dataset)),
    shell:
        WRITE_TEXT


rule splits:
    input:
        config=rules.split_config.output[0],
        lists=user_lists,
        prepared=split_prepared,
    output:
        **L.split_lists(),
    log:
        L.log("splits", split_key()),
    benchmark:
        L.benchmark("splits", split_key())
    priority: PREPARE_PRIORITY
    conda:
        ENV
    threads: threads_of("splits")
    resources:
        **resources_of("splits"),
    params:
        out=output_dir("labeled"),
        source=split_source,
    shell:
        "cct splits --config {input.config:q} {params.source} --out {params.out:q} > {log:q} 2>&1"
