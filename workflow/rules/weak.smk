# The weak-label setting (paper Sec. 3.4): per dataset and training seed (per dataset with
# settings.weak_labels.cam_seed), a CAM classifier trained on the training set's image-level labels,
# its class activation maps, and pseudo pixel labels thresholded from them; the cct_weak runs train
# their auxiliary decoders on those labels.
#   {results}/weak/{dataset}/seed{seed}/cam.yaml            the CAM config (from params)
#   {results}/weak/{dataset}/seed{seed}/cam/                config.yaml, checkpoint.pt, metrics.json
#   {results}/weak/{dataset}/seed{seed}/cams/               <id>.npz per training image
#   {results}/weak/{dataset}/seed{seed}/pseudo_labels/      <id>.png per training image
#   {results}/weak/{dataset}/seed{seed}/pseudo_labels.json  their quality against the ground truth

WEAK_PATHS = L.weak_paths()  # the folders above, with {dataset} and {seed} as wildcards


rule cam_config:
    """The CAM config of a dataset and seed, written from params (a changed key retrains the CAM)."""
    output:
        WEAK_PATHS["config"],
    log:
        L.log("cam_config", weak_key()),
    priority: PREPARE_PRIORITY
    localrule: True
    conda:
        ENV
    params:
        text=lambda wildcards: grid.yaml_text(weak_labels.cam_config(config, wildcards.dataset, wildcards.seed)),
    shell:
        WRITE_TEXT


rule cam_train:
    input:
        config=rules.cam_config.output[0],
        prepared=cam_prepared,
    output:
        checkpoint=f"{WEAK_PATHS['cam']}/checkpoint.pt",
        metrics=f"{WEAK_PATHS['cam']}/metrics.json",
        config=f"{WEAK_PATHS['cam']}/config.yaml",
    log:
        f"{WEAK_PATHS['cam']}/train.log",
    benchmark:
        L.benchmark("cam_train", weak_key())
    priority: PREPARE_PRIORITY
    conda:
        ENV
    threads: threads_of("cam")
    resources:
        **resources_of("cam"),
    params:
        out=output_dir("checkpoint"),
        resume=L.weak_resume_dir(),
        threads=threads_of("cam"),
    shell:
        "cct cam train --config {input.config:q} --set train.threads={params.threads} --out {params.out:q}"
        " --resume-dir {params.resume:q} --stale-resume restart --stop-with $PPID > {log:q} 2>&1"
        " && rm -rf {params.resume:q}"


rule cam_infer:
    input:
        checkpoint=rules.cam_train.output.checkpoint,
        prepared=cam_prepared,
    output:
        directory(WEAK_PATHS["cams"]),
    log:
        L.log("cam_infer", weak_key()),
    benchmark:
        L.benchmark("cam_infer", weak_key())
    priority: PREPARE_PRIORITY
    conda:
        ENV
    threads: threads_of("cam")
    resources:
        **resources_of("cam"),
    params:
        threads=threads_of("cam"),  # the config's, not --cores-dependent: it changes the maps' numbers
    shell:
        "cct cam infer --checkpoint {input.checkpoint:q} --set train.threads={params.threads} --out {output:q}"
        " > {log:q} 2>&1"


rule pseudo_labels:
    input:
        cams=rules.cam_infer.output[0],
        checkpoint=rules.cam_train.output.checkpoint,
        prepared=cam_prepared,
    output:
        labels=directory(WEAK_PATHS["pseudo_labels"]),
        summary=WEAK_PATHS["summary"],
    log:
        L.log("pseudo_labels", weak_key()),
    priority: PREPARE_PRIORITY
    conda:
        ENV
    threads: threads_of("analysis")
    resources:
        **resources_of("analysis"),
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
            L.table("pseudo_labels", "csv"),
            caption="../report/pseudo_labels.rst",
            category="Tables",
            subcategory="weak_labels",
            labels={"table": "pseudo labels"},
        ),
        md=L.table("pseudo_labels", "md"),
    log:
        L.log("pseudo_label_table"),
    conda:
        ENV
    threads: threads_of("analysis")
    resources:
        **resources_of("analysis"),
    shell:
        "python -m analysis.weak table --summaries {input.summaries:q} --cams {input.cams:q}"
        " --csv {output.csv:q} --md {output.md:q} > {log:q} 2>&1"


rule weak_figure:
    """A few unlabelled images: ground truth, CAM, pseudo label and the CCT + weak prediction."""
    input:
        unpack(weak_figure_inputs),
    output:
        png=report(
            L.plot("weak_labels_examples_{dataset}", "png"),
            caption="../report/weak_figure.rst",
            category="Figures",
            subcategory="weak_labels",
            labels={"figure": "weak labels: examples ({dataset})"},
        ),
        pdf=L.plot("weak_labels_examples_{dataset}", "pdf"),
    log:
        L.log("weak_figure", "{dataset}"),
    conda:
        ENV
    threads: threads_of("analysis")
    resources:
        **resources_of("analysis"),
    shell:
        "python -m analysis.weak figure --cam-config {input.cam_config:q} --cams {input.cams:q}"
        " --pseudo {input.pseudo:q} --checkpoint {input.checkpoint:q} --ids {input.unlabeled:q}"
        " --out {output.png:q} {output.pdf:q} > {log:q} 2>&1"
