"""A real `snakemake` run of the workflow on a tiny grid (a few iterations) in a temporary directory:
splits, training (the ablation's supervised run an alias of the curve's), tables, plots, the runtime
table and the report; then the behaviours users rely on (nothing reruns, a changed hyperparameter
reruns exactly its runs, an interrupted run resumes)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pandas as pd
import pytest
from workflow_helpers import ROOT, SNAKEMAKE, load_test_config, snakemake, write_config

pytest.importorskip("cct.cli", reason="the cct package is needed for a real run")

TINY = load_test_config("tiny")  # .test/config/tiny.yaml
RUNS = {("label_fraction", "supervised"), ("label_fraction", "cct"),
        ("perturbation_ablation", "supervised"), ("perturbation_ablation", "vat")}


def train_jobs(stdout: str) -> list[str]:
    return re.findall(r"rule train:\n.*?wildcards: ([^\n]*)", stdout, re.S)


@pytest.mark.slow
def test_tiny_grid_end_to_end(tmp_path):
    write_config(tmp_path, TINY)
    proc = snakemake(tmp_path, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = tmp_path / "results"

    # one directory per run, with everything the issue lists; the resume state is gone once done
    runs = pd.read_csv(results / "tables" / "runs.csv")
    assert set(zip(runs["setting"], runs["method"], strict=True)) == RUNS and len(runs) == 4
    assert (runs["labels"] == 10).all() and (runs["dataset"] == "tiny").all()
    assert runs["miou"].between(0, 100).all() and runs["iou_background"].notna().all()
    run_dir = results / "runs" / "tiny" / "perturbation_ablation" / "vat" / "10" / "split0" / "seed0"
    for name in ("overrides.yaml", "config.yaml", "metrics.json", "checkpoint.pt", "train.log"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tb").glob("events.out.tfevents.*"))
    assert not any((results / "resume").rglob("state.pt"))
    assert "vat: 2" in (run_dir / "config.yaml").read_text() and "dropout: 0" in (run_dir / "config.yaml").read_text()
    labeled = (results / "splits" / "tiny" / "10" / "split0" / "labeled.txt").read_text().split()
    assert len(labeled) == 10
    # the ablation's supervised run has the curve's config: copied, not trained again
    alias = results / "runs" / "tiny" / "perturbation_ablation" / "supervised" / "10" / "split0" / "seed0"
    source = results / "runs" / "tiny" / "label_fraction" / "supervised" / "10" / "split0" / "seed0"
    for name in ("metrics.json", "config.yaml"):
        assert (alias / name).read_bytes() == (source / name).read_bytes(), name
    assert not (alias / "checkpoint.pt").exists() and not (alias / "overrides.yaml").exists()
    assert "results/runs/tiny/label_fraction/supervised/10/split0/seed0" in (alias / "alias.log").read_text()
    assert not (results / "benchmarks" / "train" / "tiny" / "perturbation_ablation" / "supervised").exists()

    # tables: CSV, Markdown and LaTeX per setting, with the protocol in the caption, no paper number
    lf = pd.read_csv(results / "tables" / "label_fraction.csv")
    assert list(lf["method"]) == ["supervised", "cct"] and (lf["n"] == 1).all()
    assert lf["paper_miou"].isna().all()
    ab = pd.read_csv(results / "tables" / "perturbation_ablation.csv")
    assert list(ab["method"]) == ["supervised", "vat"]
    for setting in ("label_fraction", "perturbation_ablation"):
        assert "single scale, full image" in (results / "tables" / f"{setting}.md").read_text().splitlines()[0]
        assert r"\caption{" in (results / "tables" / f"{setting}.tex").read_text()
        for name in (setting, f"{setting}_curves"):
            for ext in ("png", "pdf"):
                assert (results / "plots" / f"{name}.{ext}").stat().st_size > 1000
    cost = pd.read_csv(results / "tables" / "runtime.csv")
    assert cost.iloc[-1]["jobs"] == 3 and cost.iloc[-1]["wall_s_total"] > 0  # trainings only, not the alias
    assert not ((cost["setting"] == "perturbation_ablation") & (cost["method"] == "supervised")).any()

    # the report
    proc = snakemake(tmp_path, "--report", "results/report.html")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (results / "report.html").stat().st_size > 10_000

    # finished runs are not repeated ...
    proc = snakemake(tmp_path, "-n")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr
    # ... and a hyperparameter change reruns exactly the runs it affects
    changed = dict(TINY, settings={**TINY["settings"], "perturbation_ablation": {
        **TINY["settings"]["perturbation_ablation"], "cct": {"loss": {"unsupervised_w": 10.0}}}})
    write_config(tmp_path, changed)
    proc = snakemake(tmp_path, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = train_jobs(proc.stdout)
    assert len(jobs) == 2 and all("setting=perturbation_ablation" in j for j in jobs)
    assert any("method=supervised" in j for j in jobs)  # no longer the curve's config: trained


def test_interrupted_run_resumes(tmp_path):
    write_config(tmp_path, load_test_config("resume"))
    target = "results/runs/tiny/label_fraction/cct/10/split0/seed0/metrics.json"
    state = tmp_path / "results" / "resume" / "tiny" / "label_fraction" / "cct" / "10" / "split0" / "seed0" / "state.pt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE")}
    proc = subprocess.Popen([str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--cores", "1", target],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state.is_file(), "no resume state was written"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (tmp_path / target).exists()
    assert state.is_file()  # the resume state survives: it is not a declared output

    proc = snakemake(tmp_path, "--cores", "1", target)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / target).with_name("train.log").read_text()
    assert re.search(r"resuming from .*state\.pt at iteration [1-9]\d*", log), log
    assert not state.exists()
