"""The weak-label setting in the workflow: grid expansion (aliases, pseudo-label paths per seed, CAM
configs), checks before any job, and a real tiny run through snakemake (CAM -> pseudo labels ->
training -> tables and figure)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate
from workflow_helpers import ROOT, load_test_config, snakemake, write_config

from planner import grid, weak_labels
from planner.configs import GridError
from planner.layout import Run

SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")


def weak_config(**settings) -> dict:
    config = {
        "datasets": {"emb": {"cct": {"data": {"dataset": "embedded"}}, "label_counts": [20, 50]}},
        "seeds": [0, 1],
        "settings": {"weak_labels": {"enabled": True, **settings}},
    }
    validate(config, SCHEMA)
    return config


def test_weak_setting_defaults_to_the_smallest_label_count_and_aliases_the_curve():
    config = weak_config()
    runs = grid.check_config(config)
    weak = [r for r in runs if r.setting == "weak_labels"]
    assert {(r.method, r.labels) for r in weak} == {(m, 20) for m in ("supervised", "cct", "cct_weak")}
    canonical = grid.canonical_runs(config, runs)
    # supervised and cct at 20 labels are the curve's runs; cct_weak is trained
    assert canonical[Run("emb", "weak_labels", "cct", 20, 0, 1)] == Run("emb", "label_fraction", "cct", 20, 0, 1)
    assert canonical[Run("emb", "weak_labels", "supervised", 20, 0, 0)].setting == "label_fraction"
    assert canonical[Run("emb", "weak_labels", "cct_weak", 20, 0, 0)].setting == "weak_labels"
    assert weak_labels.pipelines(config, runs) == [("emb", 0), ("emb", 1)]


def test_cct_weak_reads_its_seeds_pseudo_labels_and_is_cct_otherwise():
    config = weak_config()
    weak = grid.workflow_run_config(config, Run("emb", "weak_labels", "cct_weak", 20, 0, 1))
    cct = grid.workflow_run_config(config, Run("emb", "weak_labels", "cct", 20, 0, 1))
    assert weak["weak"] == {"pseudo_labels": "results/weak/emb/seed1/pseudo_labels"}
    assert {k: v for k, v in weak.items() if k != "weak"} == cct
    cam = weak_labels.cam_config(config, "emb", 1)
    assert cam == {"data": {"dataset": "embedded", "root": "results/data/embedded"}, "train": {"seed": 1}}


def test_a_cam_seed_gives_one_pipeline_whose_pseudo_labels_every_seed_reads():
    config = weak_config(cam_seed=1)
    runs = grid.check_config(config)
    assert weak_labels.pipelines(config, runs) == [("emb", 1)]
    for seed in (0, 1):
        weak = grid.workflow_run_config(config, Run("emb", "weak_labels", "cct_weak", 20, 0, seed))
        assert weak["weak"] == {"pseudo_labels": "results/weak/emb/seed1/pseudo_labels"}
        assert weak["train"]["seed"] == seed  # the run keeps its own training seed
    assert weak_labels.cam_config(config, "emb", 1)["train"] == {"seed": 1}
    with pytest.raises(Exception, match="cam_seed"):
        weak_config(cam_seed=-1)


def test_cam_overrides_merge_setting_then_dataset():
    config = weak_config(cam={"train": {"iterations": 7, "lr": 0.2}, "pseudo": {"fg_threshold": 0.4}})
    config["datasets"]["emb"]["cam"] = {"train": {"lr": 0.3}}
    cam = weak_labels.cam_config(config, "emb", 0)
    assert cam["train"] == {"iterations": 7, "lr": 0.3, "seed": 0} and cam["pseudo"] == {"fg_threshold": 0.4}


def test_cam_keys_are_checked_before_any_job():
    from cct.config import CamRunConfig, from_dict

    def validate_cam(tree):
        return from_dict(tree, kind=CamRunConfig)

    config = weak_config(cam={"pseudo": {"fg_threshold": 0.01}})
    with pytest.raises(GridError, match="CAM config of emb .*pseudo: need 0 <= bg_threshold < fg_threshold"):
        grid.check_config(config, validate_cam=validate_cam)
    config = weak_config(cam={"train": {"seed": 3}})
    with pytest.raises(GridError, match=r"settings.weak_labels.cam.train.seed: .*remove it"):
        grid.check_config(config)
    config = weak_config(cct={"weak": {"pseudo_labels": "x"}})
    with pytest.raises(GridError, match="settings.weak_labels.cct.weak.pseudo_labels: this key is set per run"):
        grid.check_config(config)


TINY = load_test_config("weak")  # .test/config/weak.yaml


def test_a_shared_cam_is_one_job_chain_read_by_every_seeds_run(tmp_path):
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["seeds"] = [0, 1, 2]
    config["settings"]["weak_labels"]["cam_seed"] = 1
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["cam_train"] == counts["cam_infer"] == counts["pseudo_labels"] == 1
    proc = snakemake(tmp_path, "-n", "-p", "results/runs/tiny/weak_labels/cct_weak/10/split0/seed2/overrides.yaml")
    assert "results/weak/tiny/seed1" in proc.stdout and "results/weak/tiny/seed0" not in proc.stdout


@pytest.mark.slow
def test_tiny_weak_grid_end_to_end(tmp_path):
    write_config(tmp_path, TINY)
    proc = snakemake(tmp_path, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = tmp_path / "results"
    weak_root = results / "weak" / "tiny" / "seed0"
    assert (weak_root / "cam" / "checkpoint.pt").is_file()
    assert len(list((weak_root / "cams").glob("*.npz"))) == 1000
    assert len(list((weak_root / "pseudo_labels").glob("*.png"))) == 1000
    run = results / "runs" / "tiny" / "weak_labels" / "cct_weak" / "10" / "split0" / "seed0"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["weak"]["pseudo_labels"] == "results/weak/tiny/seed0/pseudo_labels"
    assert json.loads((run / "metrics.json").read_text())["history"][-1]["loss_weak"] > 0
    # the weak table: supervised and cct copied from the curve (aliases), cct_weak trained
    table = pd.read_csv(results / "tables" / "weak_labels.csv")
    assert table["method"].tolist() == ["supervised", "cct", "cct_weak"]
    assert (results / "runs" / "tiny" / "weak_labels" / "cct" / "10" / "split0" / "seed0" / "alias.log").is_file()
    quality = pd.read_csv(results / "tables" / "pseudo_labels.csv")
    assert quality["dataset"].tolist() == ["tiny"] and quality["pseudo_miou"].between(0, 100).all()
    assert "Pseudo-label mIoU" in (results / "tables" / "pseudo_labels.md").read_text()
    for name in ("weak_labels.png", "weak_labels_examples_tiny.png", "weak_labels_examples_tiny.pdf"):
        assert (results / "plots" / name).stat().st_size > 1000
    assert not any((results / "resume").rglob("state.pt"))
    # nothing left to do
    proc = snakemake(tmp_path, "--cores", "2", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
