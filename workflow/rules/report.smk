# Figures for the report (`snakemake --report results/report.html`): per setting, the headline plot
# (its figure kind in planner/vocabulary.py: mIoU against labelled-image count, the per-method bars,
# or the multi-domain grouped bars) and the training curves.


rule plot:
    input:
        runs=rules.collect.output.runs,
    output:
        png=report(
            L.plot("{setting}", "png"),
            caption="../report/plot.rst",
            category="Figures",
            subcategory="{setting}",
            labels={"figure": "{setting}"},
        ),
        pdf=L.plot("{setting}", "pdf"),
    log:
        L.log("plot", "{setting}"),
    conda:
        ENV
    threads: threads_of("analysis")
    resources:
        **resources_of("analysis"),
    params:
        pairings=pairing_args,
    shell:
        "python -m analysis.plots {wildcards.setting} --runs {input.runs:q} --out {output.png:q} {output.pdf:q}"
        " {params.pairings} > {log:q} 2>&1"


rule plot_curves:
    input:
        history=rules.collect.output.history,
    output:
        png=report(
            L.plot("{setting}_curves", "png"),
            caption="../report/curves.rst",
            category="Figures",
            subcategory="{setting}",
            labels={"figure": "{setting} training curves"},
        ),
        pdf=L.plot("{setting}_curves", "pdf"),
    log:
        L.log("plot", "{setting}_curves"),
    conda:
        ENV
    threads: threads_of("analysis")
    resources:
        **resources_of("analysis"),
    shell:
        "python -m analysis.plots curves --setting {wildcards.setting} --history {input.history:q}"
        " --out {output.png:q} {output.pdf:q} > {log:q} 2>&1"
