# One job per run of the grid: `cct train` into the run directory
#   {results}/runs/{dataset}/{setting}/{method}/{labels}/split{split}/seed{seed}/
# holding overrides.yaml (what the workflow asks for), config.yaml (cct's resolved config),
# metrics.json, checkpoint.pt, tb/ and train.log. A joint run of the multi-domain setting lives under
# its pairing's name ({dataset} = the pairing) and reads the split lists of every member dataset.
#
# Snakemake deletes a job's declared outputs before it starts, so the resume state lives outside
# them, in {results}/resume/<run>/: an interrupted run resumes from its last checkpoint when the
# workflow is started again (cct ignores a state written by a different config). It is removed
# once the run has finished.
#
# A run whose cct config equals that of an earlier run (grid.canonical_runs: the ablation's
# supervised/all at a label count of the curve are the curve's supervised/cct) is an alias: rule
# alias copies the canonical run's metrics.json and config.yaml into its directory (no checkpoint,
# no benchmark), so every config is trained once and the tables still get one row per run.


localrules:
    run_config,
    alias,


ruleorder: alias > train


rule run_config:
    """A run's cct config, written from params so that changing a hyperparameter reruns exactly the
    runs it affects (Snakemake's params trigger), then read by `cct train --config`."""
    output:
        f"{RUN_DIR}/overrides.yaml",
    params:
        cct=run_cct_config,
    log:
        f"{R}/logs/run_config/{RUN}.log",
    run:
        grid.dump_yaml(output[0], params.cct)


rule train:
    input:
        config=rules.run_config.output[0],
        lists=run_lists,
        weak=weak_inputs,
    output:
        metrics=f"{RUN_DIR}/metrics.json",
        config=f"{RUN_DIR}/config.yaml",
        checkpoint=f"{RUN_DIR}/checkpoint.pt",
        tb=directory(f"{RUN_DIR}/tb"),
    params:
        out=lambda wildcards, output: os.path.dirname(output.metrics),
        resume=f"{R}/resume/{RUN}",
        launch=train_launcher(),
        threads_per_process=lambda wildcards, threads: max(1, threads // max(1, res("train", "gpu"))),
    log:
        f"{RUN_DIR}/train.log",
    benchmark:
        f"{R}/benchmarks/train/{RUN}.tsv"
    threads: res("train", "threads")
    resources:
        mem_mb=res("train", "mem_mb"),
        runtime=res("train", "runtime"),
        gpu=res("train", "gpu"),
    conda:
        ENV
    shell:
        "{params.launch} train --config {input.config:q} --set train.threads={params.threads_per_process}"
        " --out {params.out:q}"
        " --resume-dir {params.resume:q} > {log:q} 2>&1"
        " && rm -rf {params.resume:q}"


rule alias:
    """An alias run: the canonical run's results, copied (its config equals the alias run's)."""
    input:
        unpack(canonical_files),
    output:
        metrics=f"{R}/runs/{{alias}}/metrics.json",
        config=f"{R}/runs/{{alias}}/config.yaml",
    log:
        f"{R}/runs/{{alias}}/alias.log",
    wildcard_constraints:
        alias=alias_pattern(),
    run:
        copy_alias(input, output, log[0])
