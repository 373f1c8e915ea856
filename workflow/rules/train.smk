# One job per run of the grid: `cct train` into the run directory
#   {results}/runs/{dataset}/{setting}/{method}/{labels}/split{split}/seed{seed}/
# holding overrides.yaml (what the workflow asks for), config.yaml (cct's resolved config),
# metrics.json, checkpoint.pt, tb/ and train.log. A joint run of the multi-domain setting lives under
# its pairing's name ({dataset} = the pairing) and reads the split lists of every member dataset.
#
# Snakemake deletes a job's declared outputs before it starts, so the resume state lives outside
# them, in {results}/resume/<run>/: an interrupted run resumes from its last checkpoint when the
# workflow is started again. A state written by a run with other numbers (its config changed, so
# Snakemake reruns it) is discarded (--stale-resume restart). It is removed once the run has finished.
# train.threads is the config's resources.train.threads, whatever --cores: the thread count changes
# a CPU run's numbers. --stop-with $PPID (the Snakemake process): a training whose Snakemake is
# killed saves its state and stops, instead of running on as an orphan (docs/operations.md).
#
# A run whose cct config equals that of an earlier run (grid.canonical_runs: the ablation's
# supervised/all at a label count of the curve are the curve's supervised/cct) is an alias: rule
# alias copies the canonical run's metrics.json and config.yaml into its directory (no checkpoint,
# no benchmark), so every config is trained once and the tables still get one row per run.


ruleorder: alias > train


rule run_config:
    """A run's cct config, written from params so that changing a hyperparameter reruns exactly the
    runs it affects (Snakemake's params trigger), then read by `cct train --config`."""
    output:
        L.run_file("overrides.yaml"),
    log:
        L.log("run_config", RUN),
    priority: PREPARE_PRIORITY
    localrule: True
    conda:
        ENV
    params:
        text=lambda wildcards: grid.yaml_text(run_cct_config(wildcards)),
    shell:
        WRITE_TEXT


rule train:
    input:
        config=rules.run_config.output[0],
        lists=run_lists,
        weak=weak_inputs,
        prepared=run_prepared,
    output:
        metrics=L.run_file("metrics.json"),
        config=L.run_file("config.yaml"),
        checkpoint=L.run_file("checkpoint.pt"),
        tb=directory(L.run_file("tb")),
    log:
        L.run_file("train.log"),
    benchmark:
        L.benchmark("train", RUN)
    priority: train_priority
    conda:
        ENV
    threads: threads_of("train")
    resources:
        **resources_of("train"),
    params:
        out=output_dir("metrics"),
        resume=L.resume_dir(),
        launch=train_launcher(),
        threads_per_process=threads_per_process(),
    shell:
        "{params.launch} train --config {input.config:q} --set train.threads={params.threads_per_process}"
        " --out {params.out:q} --resume-dir {params.resume:q} --stale-resume restart --stop-with $PPID"
        " > {log:q} 2>&1"
        " && rm -rf {params.resume:q}"


rule alias:
    """An alias run: the canonical run's results, copied (its config equals the alias run's)."""
    input:
        unpack(canonical_files),
    output:
        metrics=L.run_file("metrics.json", "{alias}"),
        config=L.run_file("config.yaml", "{alias}"),
    log:
        L.run_file("alias.log", "{alias}"),
    wildcard_constraints:
        alias=alias_pattern(),
    localrule: True
    conda:
        ENV
    params:
        source=lambda wildcards, input: os.path.dirname(input.metrics),
    shell:
        "cp {input.metrics:q} {output.metrics:q} && cp {input.config:q} {output.config:q}"
        " && echo alias of {params.source:q}: same cct config, copied, not trained > {log:q}"
