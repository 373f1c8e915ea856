# The weak-label setting (paper Sec. 3.4): per dataset and training seed, a CAM classifier trained on
# the training set's image-level labels, its class activation maps, and pseudo pixel labels
# thresholded from them; the cct_weak runs train their auxiliary decoders on those labels.
#   {results}/weak/{dataset}/seed{seed}/cam.yaml            the CAM config (from params)
#   {results}/weak/{dataset}/seed{seed}/cam/                config.yaml, checkpoint.pt, metrics.json
#   {results}/weak/{dataset}/seed{seed}/cams/               <id>.npz per training image
#   {results}/weak/{dataset}/seed{seed}/pseudo_labels/      <id>.png per training image
#   {results}/weak/{dataset}/seed{seed}/pseudo_labels.json  their quality against the ground truth


localrules:
    cam_config,


rule cam_config:
    """The CAM config of a dataset and seed, written from params (a changed key retrains the CAM)."""
    output:
        f"{WEAK_DIR}/cam.yaml",
    params:
        cam=lambda wildcards: grid.cam_config(config, wildcards.dataset, wildcards.seed),
    log:
        f"{R}/logs/cam_config/{grid.WEAK_PATTERN}.log",
    run:
        grid.dump_yaml(output[0], params.cam)


rule cam_train:
    input:
        config=rules.cam_config.output[0],
    output:
        checkpoint=f"{WEAK_DIR}/cam/checkpoint.pt",
        metrics=f"{WEAK_DIR}/cam/metrics.json",
        config=f"{WEAK_DIR}/cam/config.yaml",
    params:
        out=lambda wildcards, output: os.path.dirname(output.checkpoint),
        resume=f"{R}/resume/weak/{grid.WEAK_PATTERN}",
    log:
        f"{WEAK_DIR}/cam/train.log",
    benchmark:
        f"{R}/benchmarks/cam_train/{grid.WEAK_PATTERN}.tsv"
    threads: res("cam", "threads")
    resources:
        mem_mb=res("cam", "mem_mb"),
        runtime=res("cam", "runtime"),
        gpu=res("cam", "gpu"),
    conda:
        ENV
    shell:
        "cct cam train --config {input.config:q} --set train.threads={threads} --out {params.out:q}"
        " --resume-dir {params.resume:q} > {log:q} 2>&1"
        " && rm -rf {params.resume:q}"


rule cam_infer:
    input:
        checkpoint=rules.cam_train.output.checkpoint,
    output:
        directory(f"{WEAK_DIR}/cams"),
    log:
        f"{R}/logs/cam_infer/{grid.WEAK_PATTERN}.log",
    benchmark:
        f"{R}/benchmarks/cam_infer/{grid.WEAK_PATTERN}.tsv"
    threads: res("cam", "threads")
    resources:
        mem_mb=res("cam", "mem_mb"),
        runtime=res("cam", "runtime"),
        gpu=res("cam", "gpu"),
    conda:
        ENV
    shell:
        "cct cam infer --checkpoint {input.checkpoint:q} --set train.threads={threads} --out {output:q} > {log:q} 2>&1"


rule pseudo_labels:
    input:
        cams=rules.cam_infer.output[0],
        checkpoint=rules.cam_train.output.checkpoint,
    output:
        labels=directory(f"{WEAK_DIR}/pseudo_labels"),
        summary=f"{WEAK_DIR}/pseudo_labels.json",
    log:
        f"{R}/logs/pseudo_labels/{grid.WEAK_PATTERN}.log",
    threads: res("analysis", "threads")
    resources:
        mem_mb=res("analysis", "mem_mb"),
        runtime=res("analysis", "runtime"),
    conda:
        ENV
    shell:
        "cct pseudo-labels --checkpoint {input.checkpoint:q} --cams {input.cams:q} --out {output.labels:q}"
        " --summary {output.summary:q} > {log:q} 2>&1"


rule pseudo_label_table:
    """Quality of the pseudo labels (mIoU on the pixels they label, share left ignored) and of the
    CAM classifier, per dataset: mean ± std over the training seeds."""
    input:
        summaries=weak_summaries(),
        cams=cam_metrics(),
    output:
        csv=report(
            f"{R}/tables/pseudo_labels.csv",
            caption="../report/pseudo_labels.rst",
            category="Tables",
            subcategory="weak_labels",
            labels={"table": "pseudo labels"},
        ),
        md=f"{R}/tables/pseudo_labels.md",
    log:
        f"{R}/logs/pseudo_label_table.log",
    threads: res("analysis", "threads")
    resources:
        mem_mb=res("analysis", "mem_mb"),
        runtime=res("analysis", "runtime"),
    conda:
        ENV
    shell:
        "python -m analysis.weak table --summaries {input.summaries:q} --cams {input.cams:q}"
        " --csv {output.csv:q} --md {output.md:q} > {log:q} 2>&1"


rule weak_figure:
    """A few unlabelled images: ground truth, CAM, pseudo label and the CCT + weak prediction."""
    input:
        unpack(weak_figure_inputs),
    output:
        png=report(
            f"{R}/plots/weak_labels_examples_{{dataset}}.png",
            caption="../report/weak_figure.rst",
            category="Figures",
            subcategory="weak_labels",
            labels={"figure": "weak labels: examples ({dataset})"},
        ),
        pdf=f"{R}/plots/weak_labels_examples_{{dataset}}.pdf",
    log:
        f"{R}/logs/weak_figure/{{dataset}}.log",
    threads: res("analysis", "threads")
    resources:
        mem_mb=res("analysis", "mem_mb"),
        runtime=res("analysis", "runtime"),
    conda:
        ENV
    shell:
        "python -m analysis.weak figure --cam-config {input.cam_config:q} --cams {input.cams:q}"
        " --pseudo {input.pseudo:q} --checkpoint {input.checkpoint:q} --ids {input.unlabeled:q}"
        " --out {output.png:q} {output.pdf:q} > {log:q} 2>&1"
