# From run directories to tables: one tidy row per run, the paper's tables per setting (CSV,
# Markdown, LaTeX; mean ± std over seeds and split draws, the paper's number beside; the
# multi-domain table has a column per dataset of each pairing), and the cost of the grid from the
# training jobs' benchmark files.


rule collect:
    input:
        metrics=run_files("metrics.json"),
    output:
        runs=report(
            L.table("runs"),
            caption="../report/runs.rst",
            category="Tables",
            subcategory="All runs",
            labels={"table": "runs (one row per run)"},
        ),
        history=L.table("history"),
    log:
        L.log("collect"),
    conda:
        ENV
    threads: threads_of("analysis")
    resources:
        **resources_of("analysis"),
    shell:
        "python -m analysis.collect --out {output.runs:q} --history {output.history:q} {input.metrics:q} > {log:q} 2>&1"


rule table:
    input:
        runs=rules.collect.output.runs,
        paper=PAPER_NUMBERS,
    output:
        csv=report(
            L.table("{setting}", "csv"),
            caption="../report/table.rst",
            category="Tables",
            subcategory="{setting}",
            labels={"table": "{setting}"},
        ),
        md=L.table("{setting}", "md"),
        tex=L.table("{setting}", "tex"),
    log:
        L.log("table", "{setting}"),
    conda:
        ENV
    threads: threads_of("analysis")
    resources:
        **resources_of("analysis"),
    params:
        pairings=pairing_args,
    shell:
        "python -m analysis.tables --runs {input.runs:q} --paper {input.paper:q} --setting {wildcards.setting}"
        " --csv {output.csv:q} --md {output.md:q} --tex {output.tex:q} {params.pairings} > {log:q} 2>&1"


rule runtime:
    input:
        benchmarks=train_benchmarks(),
        metrics=[L.run_file("metrics.json", r) for r in TRAINED],  # earlier attempts of resumed runs
    output:
        csv=report(
            L.table("runtime", "csv"),
            caption="../report/runtime.rst",
            category="Tables",
            subcategory="Runtime",
            labels={"table": "runtime"},
        ),
        md=L.table("runtime", "md"),
    log:
        L.log("runtime"),
    conda:
        ENV
    threads: threads_of("analysis")
    resources:
        **resources_of("analysis"),
    params:
        threads=threads_of("train"),
    shell:
        "python -m analysis.runtime --threads {params.threads} --csv {output.csv:q} --md {output.md:q}"
        " {input.benchmarks:q} --metrics {input.metrics:q} > {log:q} 2>&1"
