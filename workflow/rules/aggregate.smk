# From run directories to tables: one tidy row per run, the paper's tables per setting (CSV,
# Markdown, LaTeX; mean ± std over seeds and split draws, the paper's number beside; the
# multi-domain table has a column per dataset of each pairing), and the cost of the grid from the
# training jobs' benchmark files.


rule collect:
    input:
        metrics=run_files("metrics.json"),
    output:
        runs=report(
            f"{R}/tables/runs.csv",
            caption="../report/runs.rst",
            category="Tables",
            subcategory="All runs",
            labels={"table": "runs (one row per run)"},
        ),
        history=f"{R}/tables/history.csv",
    log:
        f"{R}/logs/collect.log",
    threads: res("analysis", "threads")
    resources:
        mem_mb=res("analysis", "mem_mb"),
        runtime=res("analysis", "runtime"),
    conda:
        ENV
    shell:
        "python -m analysis.collect --out {output.runs:q} --history {output.history:q} {input.metrics:q} > {log:q} 2>&1"


rule table:
    input:
        runs=rules.collect.output.runs,
        paper=PAPER_NUMBERS,
    output:
        csv=report(
            f"{R}/tables/{{setting}}.csv",
            caption="../report/table.rst",
            category="Tables",
            subcategory="{setting}",
            labels={"table": "{setting}"},
        ),
        md=f"{R}/tables/{{setting}}.md",
        tex=f"{R}/tables/{{setting}}.tex",
    params:
        pairings=pairing_args,
    log:
        f"{R}/logs/table/{{setting}}.log",
    threads: res("analysis", "threads")
    resources:
        mem_mb=res("analysis", "mem_mb"),
        runtime=res("analysis", "runtime"),
    conda:
        ENV
    shell:
        "python -m analysis.tables --runs {input.runs:q} --paper {input.paper:q} --setting {wildcards.setting}"
        " --csv {output.csv:q} --md {output.md:q} --tex {output.tex:q} {params.pairings} > {log:q} 2>&1"


rule runtime:
    input:
        benchmarks=train_benchmarks(),
    output:
        csv=report(
            f"{R}/tables/runtime.csv",
            caption="../report/runtime.rst",
            category="Tables",
            subcategory="Runtime",
            labels={"table": "runtime"},
        ),
        md=f"{R}/tables/runtime.md",
    params:
        threads=res("train", "threads"),
    log:
        f"{R}/logs/runtime.log",
    threads: res("analysis", "threads")
    resources:
        mem_mb=res("analysis", "mem_mb"),
        runtime=res("analysis", "runtime"),
    conda:
        ENV
    shell:
        "python -m analysis.runtime --threads {params.threads} --csv {output.csv:q} --md {output.md:q}"
        " {input.benchmarks:q} > {log:q} 2>&1"
