# Labelled/unlabelled lists per dataset, label count and split draw. `cct splits` draws them
# deterministically and nested across label counts (the set for a smaller count is a subset of the
# set for a larger one); user lists (datasets.*.user_splits) are validated and copied instead.


localrules:
    split_config,


rule split_config:
    """The dataset part of the cct config that `cct splits` reads (from params: a changed dataset
    key redraws the splits)."""
    output:
        f"{R}/splits/{{dataset}}/dataset.yaml",
    params:
        cct=lambda wildcards: grid.split_config(config, wildcards.dataset),
    log:
        f"{R}/logs/split_config/{{dataset}}.log",
    run:
        grid.dump_yaml(output[0], params.cct)


rule splits:
    input:
        config=rules.split_config.output[0],
        lists=user_lists,
    output:
        labeled=f"{SPLIT_DIR}/labeled.txt",
        unlabeled=f"{SPLIT_DIR}/unlabeled.txt",
    params:
        out=lambda wildcards, output: os.path.dirname(output.labeled),
        source=split_source,
    log:
        f"{R}/logs/splits/{{dataset}}/{{labels}}/split{{split}}.log",
    benchmark:
        f"{R}/benchmarks/splits/{{dataset}}/{{labels}}/split{{split}}.tsv"
    threads: res("splits", "threads")
    resources:
        mem_mb=res("splits", "mem_mb"),
        runtime=res("splits", "runtime"),
    conda:
        ENV
    shell:
        "cct splits --config {input.config:q} {params.source} --out {params.out:q} > {log:q} 2>&1"
