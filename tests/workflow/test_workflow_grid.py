"""The grid expansion (workflow/planner/grid.py): which runs a config asks for and each run's cct config."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate
from workflow_helpers import ROOT

from cct.model.perturbations import PERTURBATIONS
from planner import configs, grid
from planner.configs import GridError
from planner.layout import Run
from planner.vocabulary import SETTINGS

SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")


def validated(config: dict) -> dict:
    config = copy.deepcopy(config)
    validate(config, SCHEMA)
    return config


def minimal(**extra) -> dict:
    config = {"datasets": {"embedded": {"cct": {"data": {"dataset": "embedded"}}, "label_counts": [10, 20, 50]}}}
    config.update(extra)
    return validated(config)


def test_schema_fills_defaults():
    config = minimal()
    assert config["results"] == "results"
    assert config["seeds"] == [0, 1]
    assert config["settings"]["label_fraction"] == {
        "enabled": True, "methods": ["supervised", "cct"], "label_counts": None, "datasets": None, "seeds": None,
        "cct": {}}
    ablation = config["settings"]["perturbation_ablation"]
    assert ablation["methods"] == ["supervised", *PERTURBATIONS, "all"]
    assert ablation["label_count"] is None
    assert config["datasets"]["embedded"]["split_seeds"] == [0]
    assert config["resources"]["train"] == {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpu": 0}


def test_default_config_grid(default_config):
    config = validated(default_config)
    runs = grid.check_config(config)
    by_setting = {s: [r for r in runs if r.setting == s] for s in SETTINGS}
    counts = config["datasets"]["embedded"]["label_counts"]
    assert len(counts) >= 3 and len(config["seeds"]) >= 3  # issue 14: 3 label counts, 3 seeds at least
    # label_fraction: counts x {supervised, cct} x split draws x seeds
    assert len(by_setting["label_fraction"]) == len(counts) * 2 * 1 * len(config["seeds"])
    assert {r.method for r in by_setting["label_fraction"]} == {"supervised", "cct"}
    # the full ablation: supervised, seven perturbations, all, at one label count
    ablation = by_setting["perturbation_ablation"]
    assert {r.method for r in ablation} == {"supervised", *PERTURBATIONS, "all"}
    assert {r.labels for r in ablation} == {config["settings"]["perturbation_ablation"]["label_count"]}
    assert len(ablation) == 9 * len(config["seeds"])
    assert len(runs) == len(set(runs))


def test_default_config_trains_each_config_once(default_config):
    """63 runs, 51 trainings: the weak setting's supervised and cct runs and the ablation's
    supervised and all runs have the curve's supervised and cct configs (split lists included) and
    become aliases of them (the multi-domain setting's runs alone have 10 labels, which the curve
    does not); the ablation's perturbations alone have six decoders each, the paper's largest count of
    a kind (settings.perturbation_ablation.alone_aux), and are trained."""
    config = validated(default_config)
    runs = grid.check_config(config)
    canonical = grid.canonical_runs(config, runs)
    assert list(canonical) == runs and len(runs) == 63
    assert len({c for c in canonical.values()}) == 51
    labels = config["settings"]["perturbation_ablation"]["label_count"]
    expected = {
        Run("embedded", setting, method, labels, 0, seed): Run("embedded", "label_fraction", curve, labels, 0, seed)
        for setting, pairs in (("weak_labels", (("supervised", "supervised"), ("cct", "cct"))),
                               ("perturbation_ablation", (("supervised", "supervised"), ("all", "cct"))))
        for method, curve in pairs for seed in config["seeds"]
    }
    assert {r: c for r, c in canonical.items() if r != c} == expected
    for alias, run in expected.items():
        assert grid.canonical_run(config, alias) == run
        assert grid.canonical_run(config, run) == run  # a trained run is its own canonical run
        assert grid.workflow_run_config(config, alias) == grid.workflow_run_config(config, run)
        assert grid.workflow_run_config(config, alias)["data"]["labeled_list"] == (
            f"results/splits/embedded/{labels}/split0/labeled.txt")
    vat = Run("embedded", "perturbation_ablation", "vat", labels, 0, 0)
    assert grid.canonical_run(config, vat) == vat
    assert grid.workflow_run_config(config, vat)["model"]["aux"] == {
        "vat": 6, "dropout": 0, "cutout": 0, "context_masking": 0, "object_masking": 0, "feature_drop": 0,
        "feature_noise": 0}
    for kind, count in config["settings"]["perturbation_ablation"]["alone_aux"].items():
        alone = grid.workflow_run_config(config, Run("embedded", "perturbation_ablation", kind, labels, 0, 0))
        assert alone["model"]["aux"] == {p: count if p == kind else 0 for p in PERTURBATIONS}
        assert count == max(configs.PAPER_AUX.values())  # six of every kind, the paper's largest count
    cct = Run("embedded", "label_fraction", "cct", labels, 0, 0)
    assert grid.workflow_run_config(config, cct)["model"]["aux"] == dict.fromkeys(PERTURBATIONS, 1)
    with pytest.raises(GridError, match="not a run of the grid"):
        grid.canonical_run(config, Run("embedded", "perturbation_ablation", "vat", 7, 0, 0))


@pytest.mark.parametrize("setting", ["label_fraction", "perturbation_ablation"])
def test_no_alias_when_a_setting_config_differs(default_config, setting):
    config = validated(default_config)
    for other in ("weak_labels", "multi_domain"):  # they share the curve's runs too
        config["settings"][other]["enabled"] = False
    config["settings"][setting]["cct"] = {"loss": {"unsupervised_w": 10.0}}
    canonical = grid.canonical_runs(config)
    n_runs = (len(config["datasets"]["embedded"]["label_counts"]) * 2 + 9) * len(config["seeds"])
    assert len(canonical) == n_runs == 45 and all(r == c for r, c in canonical.items())


def test_no_alias_across_split_lists_or_label_counts():
    # two dataset keys with one cct config: same mapping but for the split list paths
    config = minimal()
    config["datasets"]["twin"] = copy.deepcopy(config["datasets"]["embedded"])
    config["settings"]["label_fraction"]["datasets"] = ["embedded"]
    config["settings"]["perturbation_ablation"]["datasets"] = ["twin"]
    assert all(r == c for r, c in grid.canonical_runs(config).items())
    # the ablation's label count is not on the curve
    config = minimal()
    config["settings"]["label_fraction"]["label_counts"] = [20, 50]
    assert all(r == c for r, c in grid.canonical_runs(config).items())
    # and is: the ablation's supervised and all share the curve's runs
    config["settings"]["perturbation_ablation"]["label_count"] = 20
    aliases = {r for r, c in grid.canonical_runs(config).items() if r != c}
    assert {(r.setting, r.method, r.labels) for r in aliases} == {
        ("perturbation_ablation", "supervised", 20), ("perturbation_ablation", "all", 20)}


def test_grid_is_the_product_of_its_axes():
    config = minimal(seeds=[0, 1, 2])
    config["datasets"]["embedded"]["split_seeds"] = [0, 1]
    config["datasets"]["other"] = {"cct": {"data": {"dataset": "embedded", "domain": "b"}}, "label_counts": [5, 40],
                                   "split_seeds": [3], "user_splits": None}
    runs = grid.expand_runs(config)
    lf = [r for r in runs if r.setting == "label_fraction"]
    # embedded: 3 counts x 2 splits x 3 seeds x 2 methods; other: 2 counts x 1 split x 3 seeds x 2 methods
    assert len(lf) == 3 * 2 * 3 * 2 + 2 * 1 * 3 * 2
    ab = [r for r in runs if r.setting == "perturbation_ablation"]
    # one label count per dataset (the smallest when label_count is null)
    assert {(r.dataset, r.labels) for r in ab} == {("embedded", 10), ("other", 5)}
    assert len(ab) == 9 * 3 * (2 + 1)
    assert {(r.split, r.seed) for r in lf if r.dataset == "embedded"} == {(s, t) for s in (0, 1) for t in (0, 1, 2)}
    assert grid.splits_needed(runs) == sorted(
        [("embedded", n, s) for n in (10, 20, 50) for s in (0, 1)] + [("other", 5, 3), ("other", 40, 3)]
    )


def test_setting_level_selectors():
    config = minimal()
    config["datasets"]["other"] = {"cct": {}, "label_counts": [7], "split_seeds": [0], "user_splits": None}
    config["settings"]["label_fraction"].update(label_counts=[20, 10], seeds=[5], datasets=["embedded"])
    config["settings"]["perturbation_ablation"].update(enabled=False)
    runs = grid.expand_runs(config)
    assert {r.setting for r in runs} == {"label_fraction"}
    assert {(r.dataset, r.labels, r.seed) for r in runs} == {("embedded", 10, 5), ("embedded", 20, 5)}
    assert configs.enabled_settings(config) == ["label_fraction"]


def test_run_paths_round_trip():
    run = Run("embedded", "perturbation_ablation", "context_masking", 20, 1, 3)
    assert run.path == "embedded/perturbation_ablation/context_masking/20/split1/seed3"
    assert Run.from_path(f"results/runs/{run.path}") == run
    assert Run.from_path(f"/abs/results/runs/{run.path}/metrics.json") == run
    assert Run.from_path(f"results/benchmarks/train/{run.path}.tsv") == run
    with pytest.raises(ValueError):
        Run.from_path("results/runs/embedded/cct/20/seed0/metrics.json")


def test_method_overrides():
    aux = dict(configs.PAPER_AUX)
    assert configs.method_overrides("supervised", aux) == {"train": {"mode": "supervised"}}
    for method in ("cct", "all"):
        assert configs.method_overrides(method, aux) == {
            "train": {"mode": "semi"},
            "model": {"aux": {"vat": 2, "dropout": 6, "cutout": 6, "context_masking": 2, "object_masking": 2,
                              "feature_drop": 6, "feature_noise": 6}},
        }
    for method in PERTURBATIONS:
        counts = configs.method_overrides(method, aux)["model"]["aux"]
        assert counts[method] == configs.PAPER_AUX[method]
        assert sum(counts.values()) == configs.PAPER_AUX[method]
    with pytest.raises(GridError, match="feature_noise"):
        configs.method_overrides("feature_noise", {**aux, "feature_noise": 0})


def test_run_config_merge_order():
    config = minimal()
    config["cct"] = {"train": {"iterations": 100, "eval_interval": 50}, "model": {"aux": {"dropout": 3}}}
    config["datasets"]["embedded"]["cct"] = {"data": {"dataset": "embedded", "domain": "b"},
                                             "train": {"iterations": 200}}
    config["settings"]["perturbation_ablation"]["cct"] = {"train": {"iterations": 300}}
    run = Run("embedded", "perturbation_ablation", "dropout", 20, 1, 4)
    tree = grid.run_config(config, run, "L.txt", "U.txt")
    assert tree["train"] == {"iterations": 300, "eval_interval": 50, "mode": "semi", "seed": 4}
    assert tree["data"] == {"dataset": "embedded", "domain": "b", "n_labeled": 20, "split_seed": 1,
                            "labeled_list": "L.txt", "unlabeled_list": "U.txt",
                            "root": "results/data/embedded"}  # the scenes the workflow writes once
    # the base config's aux count is the one the ablation keeps
    assert tree["model"]["aux"] == {p: (3 if p == "dropout" else 0) for p in PERTURBATIONS}
    lf = grid.run_config(config, Run("embedded", "label_fraction", "cct", 10, 0, 0))
    assert lf["train"]["iterations"] == 200
    assert lf["model"]["aux"]["dropout"] == 3 and lf["model"]["aux"]["vat"] == 2
    assert "labeled_list" not in lf["data"]
    assert config["cct"]["model"]["aux"] == {"dropout": 3}  # inputs are not mutated


def test_alone_aux_sets_a_perturbation_alone_and_nothing_else():
    """settings.perturbation_ablation.alone_aux: the count of a perturbation in its run alone; one not
    named keeps the base count, and the all run (every perturbation) keeps every base count."""
    config = minimal()
    config["cct"] = {"model": {"aux": dict.fromkeys(PERTURBATIONS, 1)}}
    config["settings"]["perturbation_ablation"]["alone_aux"] = {"dropout": 6, "vat": 2}
    config = validated(config)

    def aux(method):
        return grid.run_config(config, Run("embedded", "perturbation_ablation", method, 10, 0, 0))["model"]["aux"]

    assert aux("dropout") == {p: (6 if p == "dropout" else 0) for p in PERTURBATIONS}
    assert aux("vat") == {p: (2 if p == "vat" else 0) for p in PERTURBATIONS}
    assert aux("feature_noise") == {p: (1 if p == "feature_noise" else 0) for p in PERTURBATIONS}
    assert aux("all") == dict.fromkeys(PERTURBATIONS, 1)
    # so the all run is the curve's cct at that label count
    all_run = Run("embedded", "perturbation_ablation", "all", 10, 0, 0)
    assert grid.canonical_run(config, all_run) == Run("embedded", "label_fraction", "cct", 10, 0, 0)
    # a perturbation whose base count is 0 still has its bar when alone_aux gives it decoders
    config["cct"]["model"]["aux"]["cutout"] = 0
    config["settings"]["perturbation_ablation"]["alone_aux"]["cutout"] = 6
    assert aux("cutout") == {p: (6 if p == "cutout" else 0) for p in PERTURBATIONS}
    assert aux("all")["cutout"] == 0


@pytest.mark.parametrize("alone, message", [({"vat": 0}, "0 is less than the minimum of 1"),
                                            ({"vta": 2}, "'vta' was unexpected")])
def test_alone_aux_is_checked_by_the_schema(alone, message):
    config = minimal()
    config["settings"]["perturbation_ablation"]["alone_aux"] = alone
    with pytest.raises(WorkflowError, match=re.escape(message)):
        validated(config)


def test_split_config_keeps_only_what_defines_the_images():
    config = minimal()
    config["cct"] = {"data": {"crop_size": 32, "num_workers": 2, "root": "/data"}}
    config["datasets"]["embedded"]["cct"] = {"data": {"dataset": "embedded", "domain": "b", "flip": False}}
    assert configs.split_config(config, "embedded") == {"data": {"root": "/data", "dataset": "embedded", "domain": "b"}}


@pytest.mark.parametrize("where", ["cct", "datasets.embedded.cct", "settings.label_fraction.cct"])
@pytest.mark.parametrize("key", ["train.seed", "data.n_labeled", "train.mode", "data.labeled_list"])
def test_grid_keys_are_refused(where, key):
    config = minimal()
    node = config
    for part in where.split("."):
        node = node[part]
    section, name = key.split(".")
    node.setdefault(section, {})[name] = 1
    with pytest.raises(GridError, match=f"{where}.{key}"):
        grid.check_config(config)


def test_unknown_dataset_in_setting():
    config = minimal()
    config["settings"]["label_fraction"]["datasets"] = ["nope"]
    with pytest.raises(GridError, match="settings.label_fraction.datasets: 'nope'"):
        grid.check_config(config)


def test_ablation_of_a_disabled_perturbation_is_refused():
    config = minimal()
    config["cct"] = {"model": {"aux": {"vat": 0}}}
    with pytest.raises(GridError, match="vat"):
        grid.check_config(config)


def test_user_splits(tmp_path):
    labeled, unlabeled = tmp_path / "l.txt", tmp_path / "u.txt"
    labeled.write_text("a\nb\n")
    unlabeled.write_text("c\n")
    config = minimal()
    config["datasets"]["embedded"]["user_splits"] = [
        {"labels": 2, "labeled": str(labeled), "unlabeled": str(unlabeled)}]
    config = validated(config)
    grid.check_config(config)
    assert grid.user_split(config, "embedded", 2, 0)["labeled"] == str(labeled)
    assert grid.user_split(config, "embedded", 2, 1) is None
    assert grid.user_split(config, "embedded", 10, 0) is None
    config["datasets"]["embedded"]["user_splits"][0]["labels"] = 3
    with pytest.raises(GridError, match=r"user_splits\[0\].labeled: .* lists 2 images, but labels is 3"):
        grid.check_config(config)
    config["datasets"]["embedded"]["user_splits"][0]["unlabeled"] = str(tmp_path / "missing.txt")
    with pytest.raises(GridError, match="user_splits\\[0\\].unlabeled: file not found"):
        grid.check_config(config)


def test_cct_keys_are_checked_before_any_job():
    cct_config = pytest.importorskip("cct.config")
    config = minimal()
    config["cct"] = {"train": {"iteratons": 10}}
    with pytest.raises(GridError, match="iteratons"):
        grid.check_config(config, cct_config.from_dict)
    config["cct"] = {"train": {"iterations": "many"}}
    with pytest.raises(GridError, match="train.iterations"):
        grid.check_config(config, cct_config.from_dict)
    config["cct"] = {"train": {"iterations": 10}}
    assert grid.check_config(config, cct_config.from_dict)


def test_run_config_is_valid_yaml_for_cct(tmp_path):
    cct_config = pytest.importorskip("cct.config")
    config = minimal()
    run = Run("embedded", "perturbation_ablation", "vat", 10, 0, 1)
    path = tmp_path / "overrides.yaml"
    path.write_text(grid.yaml_text(grid.run_config(config, run, "l.txt", "u.txt")))
    loaded = cct_config.load_config(path)
    assert loaded.train.mode == "semi" and loaded.train.seed == 1
    assert loaded.model.aux.vat == 2 and loaded.model.aux.dropout == 0
    assert yaml.safe_load(path.read_text())["data"]["labeled_list"] == "l.txt"


def test_a_null_setting_cct_drops_the_earlier_config_files_overrides(default_config):
    """--configfile merges mappings key by key, so only null can take back a setting's cct overrides
    (as config/paper/multidomain.yaml does with the default's multi-domain iterations)."""
    from snakemake.utils import update_config

    config = copy.deepcopy(default_config)
    update_config(config, {"settings": {"multi_domain": {"cct": None}}})
    config = validated(config)
    assert config["settings"]["multi_domain"]["cct"] is None
    alone = grid.workflow_run_config(config, Run("embedded", "multi_domain", "cct", 10, 0, 0))
    joint = grid.workflow_run_config(config, Run("embedded_ab", "multi_domain", "joint_cct", 10, 0, 0))
    assert alone["train"]["iterations"] == joint["train"]["iterations"] == default_config["cct"]["train"]["iterations"]
    with pytest.raises(WorkflowError, match="cct"):
        validated(config | {"settings": config["settings"] | {"label_fraction": {"cct": "x"}}})


def test_train_priority_orders_runs_by_cost(default_config):
    """The train jobs' priority (grid.relative_cost) puts the longest runs first: on the default
    grid joint CCT > CCT + pseudo labels > CCT (7 decoders, the ablation's all too) > one
    perturbation (6 decoders, each kind alike) > supervised, each in proportion to its iterations
    (the multi-domain runs have fewer); cct's defaults count where a config leaves a key out."""
    config = validated(default_config)
    cost = {}
    for run in grid.canonical_runs(config).values():
        key = ("md_" if run.setting == "multi_domain" else "") + run.method
        cost.setdefault(key, set()).add(grid.relative_cost(grid.workflow_run_config(config, run)))
    assert all(len(values) == 1 for values in cost.values()), cost  # a method's runs cost the same
    cost = {method: values.pop() for method, values in cost.items()}
    assert "all" not in cost  # an alias of cct
    assert cost["md_joint_cct"] > cost["cct_weak"] > cost["cct"] > cost["vat"] > cost["supervised"]
    assert {cost[p] for p in PERTURBATIONS} == {cost["vat"]}
    # the estimate counts decoders: a kind alone with 6, CCT with 7 (one per kind)
    assert cost["cct"] - cost["vat"] == pytest.approx(config["cct"]["train"]["iterations"] * grid.AUX_COST)
    md_its = config["settings"]["multi_domain"]["cct"]["train"]["iterations"]
    assert cost["md_cct"] == pytest.approx(cost["cct"] * md_its / config["cct"]["train"]["iterations"])
    assert cost["md_joint_cct"] == 2 * cost["md_cct"]
    its = config["cct"]["train"]["iterations"]
    assert cost["supervised"] == its
    assert grid.relative_cost({"train": {"mode": "supervised", "iterations": 2 * its}}) == 2 * its
    # cct's defaults: semi-supervised, 30 auxiliary decoders, 1000 iterations
    assert grid.relative_cost({}) == round(1000 * (1 + grid.UNLABELLED_COST + 30 * grid.AUX_COST), 1)


def test_default_joint_run_steps_its_backbone_like_a_single_domain_run(default_config):
    """The default grid sets ``optim.joint_backbone: mean`` for every run: it changes the joint runs
    only (their backbone's rate over 2 domains). Domain a's CCT run alone at the setting's 10 labels
    has the curve's 10-label config but for the setting's iterations and backbone rate (the full
    rate where the curve has the paper's tenth), which the joint run shares, so it is trained on its
    own rather than read from the curve."""
    cct_config = pytest.importorskip("cct.config")
    train = pytest.importorskip("cct.train")
    config = validated(default_config)
    joint = grid.workflow_run_config(config, Run("embedded_ab", "multi_domain", "joint_cct", 10, 0, 0))
    alone = Run("embedded", "multi_domain", "cct", 10, 0, 0)
    assert joint["optim"]["joint_backbone"] == "mean"
    assert grid.canonical_run(config, alone) == alone
    curve = grid.workflow_run_config(config, Run("embedded", "label_fraction", "cct", 10, 0, 0))
    mine = grid.workflow_run_config(config, alone)
    assert mine["data"] == curve["data"]
    assert mine["data"]["labeled_list"] == "results/splits/embedded/10/split0/labeled.txt"
    setting = config["settings"]["multi_domain"]["cct"]
    assert setting["train"] == {"iterations": 500, "eval_interval": 500}
    assert setting["optim"] == {"encoder_lr_factor": 1.0}
    assert curve["optim"]["encoder_lr_factor"] == 0.1
    for key in setting:
        assert mine[key] == curve[key] | setting[key] and joint[key] == mine[key]
    assert {k: v for k, v in mine.items() if k not in setting} == {
        k: v for k, v in curve.items() if k not in setting}
    joint_cfg = cct_config.from_dict(joint)
    alone_cfg = cct_config.from_dict(mine)
    domains = 1 + len(joint_cfg.extra_domains)
    assert domains == 2
    assert train.backbone_lr(joint_cfg.optim, domains) == train.backbone_lr(alone_cfg.optim, 1) / 2
