"""The workflow config: schema errors stop `snakemake` before any job with a message naming the key;
the default and full configs dry-run to the expected jobs; `snakemake --lint` is silent."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml
from workflow_helpers import ROOT, snakemake, write_config


def job_counts(stdout: str) -> dict[str, int]:
    """Job stats of a dry run: {rule: count}."""
    table = stdout[stdout.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture
def workdir(tmp_path, default_config):
    write_config(tmp_path, default_config)
    return tmp_path


def test_default_config_dry_run_lists_every_job(workdir, default_config):
    proc = snakemake(workdir, "-n")
    assert proc.returncode == 0, proc.stderr
    counts = job_counts(proc.stdout)
    n_counts = len(default_config["datasets"]["embedded"]["label_counts"])
    n_seeds = len(default_config["seeds"])
    ablation_count = default_config["settings"]["perturbation_ablation"]["label_count"]
    assert ablation_count in default_config["datasets"]["embedded"]["label_counts"]
    multi = default_config["settings"]["multi_domain"]["methods"]
    alone = [m for m in multi if not m.startswith("joint_")]
    # the curve, the ablation (its perturbations alone: their own runs, the paper's decoder counts,
    # settings.perturbation_ablation.alone_aux; its supervised and all are the curve's supervised and
    # cct: aliases), the weak-label setting (supervised and cct are the curve's: aliases) and the
    # multi-domain setting (each alone method on both domains and the joint runs, at 10 labels per
    # domain, which the curve has too; its runs have their own iterations and backbone rate
    # (settings.multi_domain.cct), so domain a's alone runs are trained, not aliases of the curve's)
    multi_labels = default_config["settings"]["multi_domain"]["label_counts"]
    assert multi_labels == [10] and 10 in default_config["datasets"]["embedded"]["label_counts"]
    assert default_config["settings"]["multi_domain"]["cct"]["optim"]["encoder_lr_factor"] == 1.0
    n_curve, n_ablation, n_weak = n_counts * 2 * n_seeds, 9 * n_seeds, 3 * n_seeds
    n_multi = (2 * len(alone) + len(multi) - len(alone)) * n_seeds
    n_aliases = (2 + 2) * n_seeds
    assert counts["train"] == n_curve + n_ablation + n_weak + n_multi - n_aliases == 51
    assert counts["alias"] == n_aliases == 12
    assert counts["run_config"] == counts["train"]
    # the curve's counts of domain a (the others' are among them, 10 included) and domain b's 10
    assert counts["splits"] == n_counts + 1
    smallest = min(default_config["datasets"]["embedded"]["label_counts"])
    aliases = re.findall(r"rule alias:\n.*?wildcards: alias=([^\n]*)", proc.stdout, re.S)
    assert sorted(aliases) == sorted(
        [f"embedded/weak_labels/{m}/{smallest}/split0/seed{s}" for m in ("supervised", "cct")
           for s in default_config["seeds"]]
        + [f"embedded/perturbation_ablation/{m}/{ablation_count}/split0/seed{s}"
           for m in ("supervised", "all") for s in default_config["seeds"]])
    # the pretrained encoder is trained once, before the trainings that read it
    assert counts["pretrain"] == 1 and counts["embedded_data"] == 3
    trained = re.findall(r"rule train:\n.*?wildcards: ([^\n]*)", proc.stdout, re.S)
    assert sum("setting=perturbation_ablation, method=all" in w for w in trained) == 0
    assert sum("setting=perturbation_ablation, method=vat" in w for w in trained) == n_seeds
    joint = [w for w in trained if "setting=multi_domain, method=joint" in w]
    assert len(joint) == (len(multi) - len(alone)) * n_seeds and all("dataset=embedded_ab" in w for w in joint)
    assert counts["table"] == 4 and counts["plot"] == 4 and counts["plot_curves"] == 4
    assert counts["collect"] == counts["runtime"] == counts["all"] == 1
    assert not (workdir / "results").exists()  # a dry run touches no data


def test_full_config_dry_run(tmp_path, default_config):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    full = yaml.safe_load((ROOT / "config" / "embedded-full.yaml").read_text())
    assert len(full["seeds"]) >= 3
    proc = snakemake(tmp_path, "-n", "--configfile", "config/embedded-full.yaml")
    assert proc.returncode == 0, proc.stderr
    counts = job_counts(proc.stdout)
    n_points = len(full["seeds"]) * len(full["datasets"]["embedded"]["split_seeds"])
    # the default's label counts (embedded-full.yaml extends config.yaml); curve, ablation, weak labels,
    # multi-domain (2 methods x 2 domains alone + 2 joint) per seed and split draw
    n_counts = len(default_config["datasets"]["embedded"]["label_counts"])
    assert full["settings"]["multi_domain"]["methods"] == ["supervised", "cct", "joint_supervised", "joint_cct"]
    n_runs = n_points * (n_counts * 2 + 9 + 3 + 6)
    assert n_runs == 144
    # the weak setting's supervised/cct and the ablation's supervised and all are aliases (the
    # ablation's perturbations alone have their own decoder counts; domain a alone in the
    # multi-domain setting has its 10 labels)
    assert counts["train"] == n_runs - 4 * n_points == 120
    assert counts["alias"] == 4 * n_points
    assert f"{full['results']}/tables/runs.csv" in proc.stdout
    assert f"{full['results']}/tables/multi_domain.csv" in proc.stdout


def test_no_alias_when_the_ablation_config_differs(workdir, default_config):
    """A settings.perturbation_ablation.cct that changes its runs' config: every run is trained."""
    write_config(workdir, {"settings": {"perturbation_ablation": {"cct": {"loss": {"unsupervised_w": 10.0}}},
                                        "weak_labels": {"enabled": False}, "multi_domain": {"enabled": False}}},
                 "own.yaml")
    proc = snakemake(workdir, "-n", "--configfile", "own.yaml")
    assert proc.returncode == 0, proc.stderr
    counts = job_counts(proc.stdout)
    n_seeds, n_counts = len(default_config["seeds"]), len(default_config["datasets"]["embedded"]["label_counts"])
    assert counts["train"] == counts["run_config"] == (n_counts * 2 + 9) * n_seeds == 45
    assert "alias" not in counts


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"seed": [0]}, "seed"),
        ({"settings": {"label_fraction": {"methds": ["cct"]}}}, "methds"),
        ({"datasets": {"embedded": {"label_count": [10]}}}, "label_count"),
        ({"resources": {"train": {"gpus": 1}}}, "gpus"),
        ({"cct": {"trian": {"iterations": 5}}}, "trian"),
    ],
)
def test_unknown_key_fails_before_any_job(workdir, patch, key):
    write_config(workdir, patch, "bad.yaml")
    proc = snakemake(workdir, "-n", "--configfile", "bad.yaml")
    assert proc.returncode != 0
    assert f"'{key}' was unexpected" in proc.stdout + proc.stderr
    assert not (workdir / "results").exists()


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"seeds": ["a"]}, "'a' is not of type 'integer'"),
        ({"settings": {"label_fraction": {"methods": ["cct", "vat"]}}}, "'vat' is not one of ['supervised', 'cct']"),
        ({"resources": {"train": {"threads": 0}}}, "0 is less than the minimum of 1"),
    ],
)
def test_bad_value_fails_with_its_message(workdir, patch, message):
    write_config(workdir, patch, "bad.yaml")
    proc = snakemake(workdir, "-n", "--configfile", "bad.yaml")
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_cct_keys_are_checked_before_any_job(workdir):
    pytest.importorskip("cct.config")
    write_config(workdir, {"cct": {"train": {"iteratons": 5}}}, "bad.yaml")
    proc = snakemake(workdir, "-n", "--configfile", "bad.yaml")
    assert proc.returncode != 0
    assert "iteratons" in proc.stdout + proc.stderr


def test_grid_keys_are_refused(workdir):
    write_config(workdir, {"cct": {"train": {"seed": 3}}}, "bad.yaml")
    proc = snakemake(workdir, "-n", "--configfile", "bad.yaml")
    assert proc.returncode != 0
    assert "cct.train.seed: this key is set per run by the workflow" in proc.stdout + proc.stderr


def test_lint_is_silent(workdir):
    proc = snakemake(workdir, "--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_profile_limits_gpus(workdir):
    """profiles/default sets the global `gpu` limit to 1 (one training per GPU); Snakemake caps a
    job's request at the limit, so even a request of 2 shows as 1."""
    profile = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    assert profile["resources"] == {"gpu": 1} and profile["rerun-incomplete"] is True
    write_config(workdir, {"resources": {"train": {"threads": 1, "mem_mb": 1000, "runtime": 5, "gpu": 2}}}, "gpu.yaml")
    proc = snakemake(workdir, "-n", "--configfile", "gpu.yaml")
    assert proc.returncode == 0, proc.stderr
    train_jobs = re.findall(r"rule train:.*?resources: ([^\n]*)", proc.stdout, re.S)
    assert train_jobs and all("gpu=1," in r for r in train_jobs)


# every rule whose outputs a training reads, directly or through another job
PREPARATION = {"embedded_data", "pretrain_config", "pretrain", "split_config", "splits", "run_config",
               "cam_config", "cam_train", "cam_infer", "pseudo_labels"}


def test_dry_run_priorities_prepare_first_then_longest_training(workdir):
    """Snakemake starts the ready jobs of highest priority first: every job a training waits for
    outranks every training (else trainings hold back the splits and configs of later ones), and
    trainings go longest first (the joint runs before the supervised ones)."""
    proc = snakemake(workdir, "-n")
    assert proc.returncode == 0, proc.stderr
    jobs = [(m.group(1), m.group(2), float(m.group(3) or 0)) for m in re.finditer(
        r"^(?:local)?rule (\w+):\n(.*?)(?:^    priority: ([\d.]+)\n|(?=^\S))", proc.stdout, re.M | re.S)]
    by_rule: dict[str, set[float]] = {}
    for rule, body, priority in jobs:
        key = rule if rule != "train" else re.search(r"method=(\w+)", body).group(1)
        by_rule.setdefault(key, set()).add(priority)
    assert PREPARATION <= set(by_rule)
    prepare = {p for rule in PREPARATION for p in by_rule[rule]}
    assert len(prepare) == 1
    train = {method: ps for method, ps in by_rule.items() if method not in PREPARATION and method != "alias"
             and not method.startswith(("plot", "table", "collect", "runtime", "weak_", "pseudo_label_", "all"))}
    assert max(p for ps in train.values() for p in ps) < min(prepare)
    assert min(train["joint_cct"]) > max(train["cct"]) > max(train["vat"]) > max(train["supervised"]) > 0
