# What is prepared once and read by many runs (planner/prepare.py):
#   {results}/data/embedded/embedded-{domain}-{split}.npz   the embedded dataset's scenes of a domain
#   {results}/pretrained/{name}/                             an encoder pretrained by the workflow
#                                                            (overrides.yaml, config.yaml, checkpoint.pt, ...)
# The embedded scenes are the bytes a run would generate (12 s each time); a pretrained encoder is the
# embedded benchmark's stand-in for the paper's ImageNet-pretrained encoder (config `pretrained`).


rule embedded_data:
    output:
        L.embedded_files(),
    log:
        L.log("embedded_data", "{domain}"),
    benchmark:
        L.benchmark("embedded_data", "{domain}")
    priority: PREPARE_PRIORITY
    conda:
        ENV
    threads: 1
    resources:
        **resources_of("splits"),
    params:
        out=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "cct embedded --domain {wildcards.domain} --out {params.out:q} > {log:q} 2>&1"


rule pretrain_config:
    """A pretrained encoder's cct config, written from params (a changed key retrains it)."""
    output:
        L.pretrained_file("overrides.yaml"),
    log:
        L.log("pretrain_config", "{name}"),
    priority: PREPARE_PRIORITY
    localrule: True
    conda:
        ENV
    params:
        text=lambda wildcards: grid.yaml_text(prepare.encoder_config(config, wildcards.name)),
    shell:
        WRITE_TEXT


rule pretrain:
    input:
        config=rules.pretrain_config.output[0],
        data=lambda wildcards: prepare.inputs(config, prepare.encoder_config(config, wildcards.name)),
    output:
        checkpoint=L.pretrained_file("checkpoint.pt"),
        metrics=L.pretrained_file("metrics.json"),
        config=L.pretrained_file("config.yaml"),
        tb=directory(L.pretrained_file("tb")),
    log:
        L.pretrained_file("train.log"),
    benchmark:
        L.benchmark("pretrain", "{name}")
    priority: PREPARE_PRIORITY
    conda:
        ENV
    threads: threads_of("pretrain")
    resources:
        **resources_of("pretrain"),
    params:
        out=output_dir("checkpoint"),
        resume=L.pretrained_resume_dir(),
        threads=threads_of("pretrain"),
    shell:
        "cct train --config {input.config:q} --set train.threads={params.threads} --out {params.out:q}"
        " --resume-dir {params.resume:q} > {log:q} 2>&1"
        " && rm -rf {params.resume:q}"
