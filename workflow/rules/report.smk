# Figures for the report (`snakemake --report results/report.html`): per setting, the headline plot
# (mIoU against labelled-image count, the per-method bars, or the multi-domain grouped bars) and the
# training curves.


rule plot:
    input:
        runs=rules.collect.output.runs,
    output:
        png=report(
            f"{R}/plots/{{setting}}.png",
            caption="../report/plot.rst",
            category="Figures",
            subcategory="{setting}",
            labels={"figure": "{setting}"},
        ),
        pdf=f"{R}/plots/{{setting}}.pdf",
    params:
        pairings=pairing_args,
    log:
        f"{R}/logs/plot/{{setting}}.log",
    threads: res("analysis", "threads")
    resources:
        mem_mb=res("analysis", "mem_mb"),
        runtime=res("analysis", "runtime"),
    conda:
        ENV
    shell:
        "python -m analysis.plots {wildcards.setting} --runs {input.runs:q} --out {output.png:q} {output.pdf:q}"
        " {params.pairings} > {log:q} 2>&1"


rule plot_curves:
    input:
        history=rules.collect.output.history,
    output:
        png=report(
            f"{R}/plots/{{setting}}_curves.png",
            caption="../report/curves.rst",
            category="Figures",
            subcategory="{setting}",
            labels={"figure": "{setting} training curves"},
        ),
        pdf=f"{R}/plots/{{setting}}_curves.pdf",
    log:
        f"{R}/logs/plot/{{setting}}_curves.log",
    threads: res("analysis", "threads")
    resources:
        mem_mb=res("analysis", "mem_mb"),
        runtime=res("analysis", "runtime"),
    conda:
        ENV
    shell:
        "python -m analysis.plots curves --setting {wildcards.setting} --history {input.history:q}"
        " --out {output.png:q} {output.pdf:q} > {log:q} 2>&1"
