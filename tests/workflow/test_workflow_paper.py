"""The paper protocol configs (config/paper/*.yaml) on a generated VOC-layout tree: `snakemake -n` with
`--config data_root=...` lists the paper's grid, every run's cct config is the paper's and reads the
given root (the multi-domain protocol: each dataset's own root, from a second config file), and a
missing root stops the workflow before any job.
Each snakemake call is a dry run (a few seconds; the limit below is 30 s), except the slow end-to-end
test, which runs the paper grid for real at a toy size and checks the paper column of its table."""

from __future__ import annotations

import copy
import importlib.util
import re
import time

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate
from workflow_helpers import ROOT, snakemake, write_config

from planner import configs, grid, multi_domain, weak_labels

PAPER = ROOT / "config" / "paper"
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
VOC_COUNTS = [60, 100, 200, 300, 500, 800, 1000, 1464]
DRY_RUN_LIMIT_S = 30


def _layouts():
    spec = importlib.util.spec_from_file_location("cct_test_layouts", ROOT / "tests" / "package" / "layouts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(name: str) -> dict:
    return yaml.safe_load((PAPER / name).read_text())


def merged(*extra: dict) -> dict:
    """config/config.yaml extended by the given configs, as `--configfile` / `--config` do, validated."""
    config = configs.deep_merge(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), *extra)
    validate(config, SCHEMA)
    return config


def job_counts(stdout: str) -> dict[str, int]:
    table = stdout[stdout.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    """A VOC tree with the paper's 1,464 train ids (and a few more training images): the dry run
    checks every label count against the training images it finds."""
    root = tmp_path_factory.mktemp("voc_data")
    _layouts().voc_tree(root, train=1464, extra=8, val=3, size=(8, 8))
    return root


@pytest.fixture
def workdir(tmp_path):
    """A working directory holding the default config/config.yaml, which --configfile extends."""
    write_config(tmp_path, yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    return tmp_path


def test_voc_dry_run_lists_the_paper_grid(workdir, voc_root):
    proc = snakemake(workdir, "-n", "--configfile", str(PAPER / "voc.yaml"), "--config", f"data_root={voc_root}",
                     timeout=DRY_RUN_LIMIT_S)
    assert proc.returncode == 0, proc.stderr
    counts = job_counts(proc.stdout)
    assert counts["train"] == len(VOC_COUNTS) * 2 == 16 and "alias" not in counts
    assert counts["splits"] == len(VOC_COUNTS)
    trained = re.findall(r"rule train:\n.*?wildcards: ([^\n]*)", proc.stdout, re.S)
    assert len(trained) == 16 and all("dataset=voc, setting=label_fraction" in w for w in trained)
    assert {int(re.search(r"labels=(\d+)", w).group(1)) for w in trained} == set(VOC_COUNTS)
    assert "embedded" not in proc.stdout and "results/paper/voc/tables/label_fraction.csv" in proc.stdout


def test_voc_run_configs_are_the_papers_and_read_the_given_root(voc_root):
    from cct.config import from_dict

    config = merged(load("voc.yaml"), {"data_root": str(voc_root)})
    runs = grid.check_config(config, from_dict)
    assert sorted({r.labels for r in runs}) == VOC_COUNTS and {r.dataset for r in runs} == {"voc"}
    run = next(r for r in runs if r.method == "cct" and r.labels == 1464)
    cfg = from_dict(grid.workflow_run_config(config, run))
    assert cfg.data.dataset == "voc" and cfg.data.root == str(voc_root)
    assert configs.split_config(config, "voc")["data"] == {"dataset": "voc", "root": str(voc_root)}
    assert (cfg.model.encoder, cfg.model.pretrained, cfg.model.output_stride, cfg.model.psp, cfg.model.decoder) == (
        "resnet50", True, 8, True, "pixelshuffle")
    assert (cfg.data.crop_size, cfg.data.base_size, cfg.data.scale_range) == (320, 400, (0.5, 2.0))
    assert (cfg.train.batch_size_labeled, cfg.train.batch_size_unlabeled) == (10, 10)
    assert (cfg.optim.lr, cfg.optim.encoder_lr_factor, cfg.optim.weight_decay, cfg.optim.momentum,
            cfg.optim.poly_power) == (0.01, 0.1, 1e-4, 0.9, 0.9)
    assert (cfg.loss.unsupervised_w, cfg.loss.rampup, cfg.loss.consistency) == (30.0, 0.1, "mse")
    assert vars(cfg.model.aux) == dict(vat=2, dropout=6, cutout=6, context_masking=2, object_masking=2,
                                       feature_drop=6, feature_noise=6)
    assert cfg.train.iterations == 50 * 912 and cfg.train.eval_interval == 5 * 912
    assert config["resources"]["train"]["gpu"] == 1
    # an explicit datasets.voc.cct.data.root wins over data_root
    explicit = merged(load("voc.yaml"), {"data_root": "/elsewhere",
                                         "datasets": {"voc": {"cct": {"data": {"root": "/mine"}}}}})
    assert grid.workflow_run_config(explicit, run)["data"]["root"] == "/mine"


def test_voc_without_a_data_root_stops_before_any_job(workdir):
    proc = snakemake(workdir, "-n", "--configfile", str(PAPER / "voc.yaml"), timeout=DRY_RUN_LIMIT_S)
    assert proc.returncode != 0
    assert "data.root is not set for the 'voc' dataset: run with --config data_root=" in proc.stdout + proc.stderr


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    """Dotted keys of a nested mapping's leaves (``model.aux`` counts as one leaf)."""
    keys = set()
    for key, value in tree.items():
        if isinstance(value, dict) and key != "aux":
            keys |= _leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


@pytest.mark.parametrize("name", ["voc.yaml", "ablation.yaml", "multidomain.yaml"])
def test_paper_protocols_set_every_key_of_the_embedded_default(name):
    """Snakemake merges config/config.yaml under every --configfile key by key, so a key of the
    default's ``cct`` that a protocol leaves out reaches the paper's runs (as optim.joint_backbone:
    mean once did). model.width is the small encoder's only (ResNet-50 ignores it)."""
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["cct"]
    missing = _leaf_keys(default) - _leaf_keys(load(name)["cct"]) - {"model.width"}
    assert not missing, f"config/paper/{name} inherits the embedded default's {sorted(missing)}"


def test_ablation_dry_run(workdir, voc_root):
    proc = snakemake(workdir, "-n", "--configfile", str(PAPER / "ablation.yaml"), "--config", f"data_root={voc_root}",
                     timeout=DRY_RUN_LIMIT_S)
    assert proc.returncode == 0, proc.stderr
    counts = job_counts(proc.stdout)
    assert counts["train"] == 9 * 3 and counts["splits"] == 1 and "alias" not in counts
    trained = re.findall(r"rule train:\n.*?wildcards: ([^\n]*)", proc.stdout, re.S)
    assert all("dataset=voc, setting=perturbation_ablation" in w and "labels=1464" in w for w in trained)


def test_ablation_uses_the_voc_protocol(voc_root):
    voc, ablation = load("voc.yaml"), load("ablation.yaml")
    assert ablation["cct"] == voc["cct"] and ablation["resources"] == voc["resources"]
    assert ablation["datasets"]["voc"]["cct"] == voc["datasets"]["voc"]["cct"]
    assert ablation["settings"]["perturbation_ablation"]["label_count"] == 1464
    config = merged(ablation, {"data_root": str(voc_root)})  # the dry run checks that the root exists
    runs = grid.check_config(config)
    one = grid.workflow_run_config(config, next(r for r in runs if r.method == "cutout"))
    assert one["model"]["aux"] == dict(vat=0, dropout=0, cutout=6, context_masking=0, object_masking=0,
                                       feature_drop=0, feature_noise=0)
    # the embedded default's alone_aux (merged under every --configfile) is not the protocol's: all is
    # the paper's 30 decoders, a trained run of its own
    assert config["settings"]["perturbation_ablation"]["alone_aux"] is None
    every = next(r for r in runs if r.method == "all")
    assert sum(grid.workflow_run_config(config, every)["model"]["aux"].values()) == 30
    assert grid.canonical_run(config, every) == every


def test_weak_dry_run_adds_the_weak_rows_to_the_voc_grid(workdir, voc_root):
    proc = snakemake(workdir, "-n", "--configfile", str(PAPER / "voc.yaml"), str(PAPER / "weak.yaml"),
                     "--config", f"data_root={voc_root}", timeout=DRY_RUN_LIMIT_S)
    assert proc.returncode == 0, proc.stderr
    counts = job_counts(proc.stdout)
    # the curve's 16 trainings + cct_weak at 1,464; the weak table's supervised/cct are the curve's
    assert counts["train"] == 17 and counts["alias"] == 2
    assert counts["cam_train"] == counts["cam_infer"] == counts["pseudo_labels"] == 1
    assert "results/paper/voc/tables/weak_labels.csv" in proc.stdout and "embedded" not in proc.stdout


def test_weak_protocol_is_the_official_cam_pipeline(voc_root):
    from cct.config import CamRunConfig, from_dict

    config = merged(load("voc.yaml"), load("weak.yaml"), {"data_root": str(voc_root)})
    runs = grid.check_config(config, from_dict, lambda t: from_dict(t, kind=CamRunConfig))
    weak = next(r for r in runs if r.method == "cct_weak")
    assert (weak.labels, weak.dataset) == (1464, "voc")
    cfg = from_dict(grid.workflow_run_config(config, weak))
    assert cfg.weak.loss_w == 0.4 and cfg.weak.pseudo_labels == "results/paper/voc/weak/voc/seed0/pseudo_labels"
    assert cfg.model.encoder == "resnet50" and cfg.train.iterations == 45600  # the VOC protocol otherwise
    cam = from_dict(weak_labels.cam_config(config, "voc", 0), kind=CamRunConfig)
    assert cam.data.dataset == "voc" and cam.data.root == str(voc_root)
    assert (cam.model.encoder, cam.model.pretrained, cam.model.output_stride) == ("resnet50", True, 16)
    assert (cam.train.batch_size, cam.train.crop_size, cam.train.lr, cam.train.classifier_lr_factor) == (
        16, 512, 0.1, 10.0)
    assert cam.train.iterations == 5 * 662 and cam.train.momentum == 0.0
    assert cam.infer.scales == [1.0, 0.5, 1.5, 2.0] and cam.infer.flip
    assert (cam.pseudo.fg_threshold, cam.pseudo.bg_threshold) == (0.30, 0.05)
    # the paper column: 69.4 beside CCT and 73.2 beside CCT + image-level labels
    paper = pd.read_csv(ROOT / "data" / "paper_numbers.csv")
    rows = paper[(paper["setting"] == "weak_labels") & (paper["kind"] == "paper")]
    assert dict(zip(rows["method"], rows["miou"], strict=True)) == {"cct": 69.4, "cct_weak": 73.2}


@pytest.fixture(scope="module")
def multidomain_roots(tmp_path_factory):
    """Generated Cityscapes, CamVid and SUN RGB-D trees and the roots file that names them."""
    base = tmp_path_factory.mktemp("multidomain_data")
    layouts = _layouts()
    # at least 101 training images each: the dry run checks the label counts (50, 100) against them
    layouts.cityscapes_tree(base / "cityscapes", cities={"train": ["aachen", "bochum"], "val": ["frankfurt"]},
                            per_city=51, size=(8, 8))
    layouts.camvid_tree(base / "camvid", sizes={"train": 101, "val": 2, "test": 3}, size=(8, 8))
    layouts.sunrgbd_tree(base / "sunrgbd", train=101, test=3, size=(8, 8))
    roots = {"datasets": {d: {"cct": {"data": {"root": str(base / d)}}} for d in ("cityscapes", "camvid", "sunrgbd")}}
    return write_config(base, roots, "roots.yaml"), roots


def test_multidomain_dry_run_lists_the_paper_grid(workdir, multidomain_roots):
    roots_file, _ = multidomain_roots
    proc = snakemake(workdir, "-n", "--configfile", str(PAPER / "multidomain.yaml"), str(roots_file),
                     timeout=DRY_RUN_LIMIT_S)
    assert proc.returncode == 0, proc.stderr
    counts = job_counts(proc.stdout)
    # per label count (50, 100): cityscapes, camvid and sunrgbd alone x {supervised, cct} (Cityscapes
    # alone is one run for both pairings) + 2 pairings x {joint_supervised, joint_cct}
    assert counts["train"] == 2 * (3 * 2 + 2 * 2) == 20 and "alias" not in counts
    assert counts["splits"] == 3 * 2
    trained = re.findall(r"rule train:\n.*?wildcards: ([^\n]*)", proc.stdout, re.S)
    joint = [w for w in trained if "method=joint" in w]
    assert len(joint) == 8 and {re.search(r"dataset=(\w+)", w).group(1) for w in joint} == {"cs_camvid", "cs_sunrgbd"}
    assert "embedded" not in proc.stdout and "results/paper/multidomain/tables/multi_domain.csv" in proc.stdout


def test_multidomain_run_configs_follow_the_voc_protocol_and_read_each_root(multidomain_roots):
    from cct.config import from_dict

    _, roots = multidomain_roots
    config = merged(load("multidomain.yaml"), roots)
    runs = grid.check_config(config, from_dict)
    assert multi_domain.pairings(config) == {"cs_camvid": ["cityscapes", "camvid"],
                                             "cs_sunrgbd": ["cityscapes", "sunrgbd"]}
    assert {r.setting for r in runs} == {"multi_domain"} and sorted({r.labels for r in runs}) == [50, 100]
    joint = next(r for r in runs if r.dataset == "cs_sunrgbd" and r.method == "joint_cct" and r.labels == 50)
    cfg = from_dict(grid.workflow_run_config(config, joint))
    assert cfg.domain_names() == ["cityscapes", "sunrgbd"]
    assert [(d.dataset, d.root, d.n_labeled, d.crop_size) for d in cfg.domains] == [
        ("cityscapes", roots["datasets"]["cityscapes"]["cct"]["data"]["root"], 50, 320),
        ("sunrgbd", roots["datasets"]["sunrgbd"]["cct"]["data"]["root"], 50, 320)]
    assert cfg.extra_domains[0].labeled_list == "results/paper/multidomain/splits/sunrgbd/50/split0/labeled.txt"
    # the VOC protocol's model, losses and optimiser; batches per dataset as on VOC
    voc, own = load("voc.yaml")["cct"], load("multidomain.yaml")["cct"]
    for section in ("model", "loss", "optim"):
        assert own[section] == voc[section]
    assert (cfg.model.encoder, cfg.model.pretrained, cfg.model.output_stride) == ("resnet50", True, 8)
    assert (cfg.train.batch_size_labeled, cfg.train.batch_size_unlabeled, cfg.train.mode) == (10, 10, "semi")
    # the losses summed over the datasets, as the paper describes, not the embedded default's mean step
    assert cfg.optim.joint_backbone == "sum" and merged()["cct"]["optim"]["joint_backbone"] == "mean"
    assert cfg.train.iterations == 50 * 524 and cfg.train.eval_interval == 5 * 524
    # no paper number is known for this table: nothing of the setting in data/paper_numbers.csv
    paper = pd.read_csv(ROOT / "data" / "paper_numbers.csv")
    assert not (paper["setting"] == "multi_domain").any()


def test_multidomain_without_a_root_stops_naming_the_dataset(workdir, multidomain_roots):
    _, roots = multidomain_roots
    partial = copy.deepcopy(roots)
    del partial["datasets"]["camvid"]
    roots_file = write_config(workdir, partial, "partial_roots.yaml")
    proc = snakemake(workdir, "-n", "--configfile", str(PAPER / "multidomain.yaml"), str(roots_file),
                     timeout=DRY_RUN_LIMIT_S)
    assert proc.returncode != 0
    message = "data.root is not set for the 'camvid' dataset: set datasets.camvid.cct.data.root"
    assert message in proc.stdout + proc.stderr


def test_data_root_leaves_the_embedded_dataset_alone():
    config = merged({"data_root": "/data"})
    run = grid.check_config(config)[0]
    # data_root is the real datasets': the embedded one reads the scenes the workflow writes
    assert grid.workflow_run_config(config, run)["data"]["root"] == f"{config['results']}/data/embedded"
    assert copy.deepcopy(config)["data_root"] == "/data"


# The override file of the end-to-end run (a second --configfile after config/paper/voc.yaml): the
# paper's model (ResNet-50 OS 8 + PSP, pixelshuffle, 30 auxiliary decoders) with random weights, for 2
# iterations at crop 64, batch 2 + 2, on CPU, at label counts 20 and 1464 (the tree's train list).
E2E_COUNTS = [20, 1464]
E2E_OVERRIDES = {
    "results": "results/paper-e2e",
    "cct": {
        "model": {"pretrained": False},
        "train": {"iterations": 2, "eval_interval": 2, "checkpoint_interval": 2, "batch_size_labeled": 2,
                  "batch_size_unlabeled": 2, "device": "cpu", "progress": False},
    },
    "datasets": {"voc": {"cct": {"data": {"crop_size": 64, "num_workers": 0}}, "label_counts": E2E_COUNTS}},
    "resources": {"train": {"threads": 1, "mem_mb": 4000, "runtime": 30, "gpu": 0}},
}
E2E_LIMIT_S = 300


@pytest.mark.slow
def test_voc_paper_grid_end_to_end_fills_the_paper_column(workdir, tmp_path):
    """The paper grid run for real on a VOC tree whose train list holds 1,464 images (32 x 48 px), 16
    SBD-only images and 4 val images: the 1464-label split is the train list, and the label_fraction
    table carries the paper's 69.4 on the CCT row at 1464 labels (the match is by dataset, setting,
    method, label count and encoder, analysis/tables.py), nowhere else."""
    tree = _layouts().voc_tree(tmp_path / "voc", train=1464, extra=16, val=4)
    overrides = write_config(workdir, E2E_OVERRIDES, "overrides.yaml")
    start = time.monotonic()
    proc = snakemake(workdir, "--cores", "2", "--configfile", str(PAPER / "voc.yaml"), str(overrides),
                     "--config", f"data_root={tmp_path / 'voc'}", timeout=E2E_LIMIT_S)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = workdir / "results" / "paper-e2e"
    # the 1464-label split is the VOC 2012 train list, the rest of train_aug unlabelled
    split = results / "splits" / "voc" / "1464" / "split0"
    assert sorted((split / "labeled.txt").read_text().split()) == sorted(tree["train"])
    assert sorted((split / "unlabeled.txt").read_text().split()) == sorted(tree["extra"])
    assert set((results / "splits" / "voc" / "20" / "split0" / "labeled.txt").read_text().split()) <= set(tree["train"])

    runs = pd.read_csv(results / "tables" / "runs.csv")
    assert len(runs) == 4 and set(runs["labels"]) == set(E2E_COUNTS) and (runs["encoder"] == "resnet50").all()
    table = pd.read_csv(results / "tables" / "label_fraction.csv")
    assert list(zip(table["labels"], table["method"], strict=True)) == [(20, "supervised"), (20, "cct"),
                                                          (1464, "supervised"), (1464, "cct")]
    paper = table.set_index(["labels", "method"])["paper_miou"]
    assert paper[(1464, "cct")] == pytest.approx(69.4)
    assert paper.drop((1464, "cct")).isna().all()  # the supervised 66 is a recollection, not the paper's
    assert "Table 1" in table.set_index(["labels", "method"]).loc[(1464, "cct"), "paper_source"]
    md = (results / "tables" / "label_fraction.md").read_text()
    assert any("1464" in line and "CCT" in line and "69.4" in line for line in md.splitlines())
    print(f"paper grid end to end: {elapsed:.0f} s")
