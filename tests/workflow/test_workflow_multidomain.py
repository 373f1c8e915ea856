"""The multi-domain setting in the workflow: grid expansion (alone runs alias the curve's, joint runs
named by their pairing with each member's data and split lists), pairing checks before any job, the
per-domain columns of runs.csv and the paper-layout table and figure on hand-made metrics.json files
(every expected number computed by hand), and a tiny joint grid end to end through snakemake."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate
from workflow_helpers import ROOT, load_test_config, snakemake, write_config

from analysis import collect, multidomain, plots, tables
from planner import grid, multi_domain
from planner.configs import GridError
from planner.layout import Layout, Run

SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
MD = "multi_domain"


def md_config(**settings) -> dict:
    """Datasets a (embedded domain a) and b (domain b), the curve on a only, the pairing ab."""
    config = {
        "datasets": {
            "a": {"cct": {"data": {"dataset": "embedded", "domain": "a"}}, "label_counts": [20, 50]},
            "b": {"cct": {"data": {"dataset": "embedded", "domain": "b"}}, "label_counts": [50, 100]},
        },
        "seeds": [0, 1],
        "settings": {
            "label_fraction": {"datasets": ["a"]},
            "perturbation_ablation": {"enabled": False},
            "multi_domain": {"enabled": True, "pairings": {"ab": ["a", "b"]}, **settings},
        },
    }
    validate(config, SCHEMA)
    return config


# --------------------------------------------------------------------------------------------------
# The grid


def test_runs_per_pairing_label_count_and_seed_alone_runs_alias_the_curve():
    config = md_config()
    runs = [r for r in grid.check_config(config) if r.setting == MD]
    # label_counts null: the smallest count both members list (50); 2 seeds x (2 x 2 alone + 2 joint)
    assert {r.labels for r in runs} == {50} and len(runs) == 2 * (2 * 2 + 2)
    assert {(r.dataset, r.method) for r in runs} == {
        ("a", "supervised"), ("a", "cct"), ("b", "supervised"), ("b", "cct"),
        ("ab", "joint_supervised"), ("ab", "joint_cct")}
    canonical = grid.canonical_runs(config)
    for seed in (0, 1):
        for method in ("supervised", "cct"):
            # a alone is the curve's run (same config); b has no curve: trained here
            assert canonical[Run("a", MD, method, 50, 0, seed)] == Run("a", "label_fraction", method, 50, 0, seed)
            assert canonical[Run("b", MD, method, 50, 0, seed)] == Run("b", MD, method, 50, 0, seed)
        for method in ("joint_supervised", "joint_cct"):
            assert canonical[Run("ab", MD, method, 50, 0, seed)] == Run("ab", MD, method, 50, 0, seed)
    assert grid.splits_needed(runs, config) == [("a", 50, 0), ("b", 50, 0)]
    with pytest.raises(ValueError, match="pass the config"):
        grid.splits_needed(runs)


def test_joint_run_config_follows_the_package_contract():
    from cct.config import from_dict

    config = md_config()
    config["cct"] = {"train": {"iterations": 7}}
    config["datasets"]["b"]["cct"]["data"]["crop_size"] = 32  # data keys may differ per dataset
    joint = grid.workflow_run_config(config, Run("ab", MD, "joint_cct", 50, 0, 1))
    assert joint["data"] == {
        "dataset": "embedded", "domain": "a", "root": "results/data/embedded", "name": "a", "n_labeled": 50,
        "split_seed": 0,
        "labeled_list": "results/splits/a/50/split0/labeled.txt",
        "unlabeled_list": "results/splits/a/50/split0/unlabeled.txt"}
    assert joint["extra_domains"] == [{
        "dataset": "embedded", "domain": "b", "crop_size": 32, "root": "results/data/embedded", "name": "b",
        "n_labeled": 50, "split_seed": 0,
        "labeled_list": "results/splits/b/50/split0/labeled.txt",
        "unlabeled_list": "results/splits/b/50/split0/unlabeled.txt"}]
    # model/loss/optim/train: the first member's and the setting's, plus the method and seed, like CCT alone
    alone = grid.workflow_run_config(config, Run("a", MD, "cct", 50, 0, 1))
    assert {k: v for k, v in joint.items() if k not in ("data", "extra_domains")} == {
        k: v for k, v in alone.items() if k != "data"}
    assert joint["train"] == {"iterations": 7, "mode": "semi", "seed": 1}
    sup = grid.workflow_run_config(config, Run("ab", MD, "joint_supervised", 50, 0, 1))
    assert sup["train"]["mode"] == "supervised" and "aux" not in sup.get("model", {})
    assert sup["extra_domains"] == joint["extra_domains"]
    cfg = from_dict(joint)
    assert cfg.domain_names() == ["a", "b"] and cfg.extra_domains[0].crop_size == 32
    # alone runs carry no domain name: they stay equal to the curve's configs
    assert "name" not in alone["data"] and "extra_domains" not in alone
    # the run's split lists: every member's
    assert grid.run_split_lists(config, Run("ab", MD, "joint_cct", 50, 0, 1)) == {
        d: Layout.of(config).split_lists(d, 50, 0) for d in ("a", "b")}


def test_setting_keys_apply_to_every_member_and_end_the_sharing():
    config = md_config(cct={"loss": {"unsupervised_w": 5.0}, "data": {"flip": False}}, label_counts=[20, 50],
                       seeds=[3], methods=["cct", "joint_cct"])
    runs = [r for r in grid.check_config(config) if r.setting == MD]
    assert {(r.dataset, r.method, r.labels, r.seed) for r in runs} == {
        (d, m, n, 3) for n in (20, 50) for d, m in (("a", "cct"), ("b", "cct"), ("ab", "joint_cct"))}
    joint = grid.workflow_run_config(config, Run("ab", MD, "joint_cct", 20, 0, 3))
    assert joint["loss"] == {"unsupervised_w": 5.0}
    assert joint["data"]["flip"] is False and joint["extra_domains"][0]["flip"] is False
    canonical = grid.canonical_runs(config)
    assert all(c == r for r, c in canonical.items() if r.setting == MD)  # no longer the curve's configs


def test_a_dropped_pairing_and_several_pairings():
    config = md_config()
    config["datasets"]["c"] = {"cct": {"data": {"dataset": "embedded", "domain": "b"}}, "label_counts": [50],
                               "split_seeds": [0], "user_splits": None, "cam": {}}
    config["settings"][MD]["pairings"] = {"ab": None, "ac": ["a", "c"], "abc": ["a", "b", "c"]}
    validate(config, SCHEMA)
    runs = [r for r in grid.check_config(config) if r.setting == MD]
    assert {r.dataset for r in runs if multi_domain.is_joint(r)} == {"ac", "abc"}
    tree = grid.workflow_run_config(config, Run("abc", MD, "joint_cct", 50, 0, 0))
    assert [d["name"] for d in tree["extra_domains"]] == ["b", "c"]


@pytest.mark.parametrize("patch, message", [
    ({"pairings": {"a": ["a", "b"]}}, r"settings.multi_domain.pairings.a: 'a' is also a key of datasets"),
    ({"pairings": {"ab": ["a", "x"]}}, r"settings.multi_domain.pairings.ab: 'x' is not a key of datasets"),
    ({"pairings": {}}, r"settings.multi_domain.pairings: the setting is enabled but names no pairing"),
    ({"methods": ["cct_weak"]}, r"settings.multi_domain.methods: 'cct_weak' is not one of"),
])
def test_bad_pairings_are_refused_naming_the_key(patch, message):
    config = md_config()
    config["settings"][MD].update(patch)
    with pytest.raises(GridError, match=message):
        grid.check_config(config)


def test_pairing_checks_the_schema_cannot_make():
    config = md_config()
    config["datasets"]["b"]["label_counts"] = [100]
    with pytest.raises(GridError, match=r"settings.multi_domain.label_counts: .*pairing 'ab' .*share none"):
        grid.check_config(config)
    config = md_config()
    config["datasets"]["b"]["split_seeds"] = [1]
    with pytest.raises(GridError, match=r"pairings.ab: its datasets \['a', 'b'\] share no split seed"):
        grid.check_config(config)
    config = md_config()
    config["datasets"]["b"]["cct"]["model"] = {"width": 8}
    with pytest.raises(GridError, match=r"datasets.b.cct.model: differs from datasets.a.cct.model"):
        grid.check_config(config)
    for where in ("cct", "datasets.a.cct", "settings.multi_domain.cct"):
        for key, value in (("data", {"name": "x"}),):
            config = md_config()
            node = config
            for part in where.split("."):
                node = node[part]
            node[key] = value
            with pytest.raises(GridError, match=rf"{where}.data.name: this key is set per run"):
                grid.check_config(config)
    config = md_config()
    config["cct"] = {"extra_domains": []}
    with pytest.raises(GridError, match=r"cct.extra_domains: this key is set per run"):
        grid.check_config(config)
    with pytest.raises(Exception, match="is too short"):  # the schema: two datasets at least
        validate({**md_config(), "settings": {MD: {"pairings": {"ab": ["a"]}}}}, SCHEMA)


def test_cct_keys_of_joint_runs_are_checked_and_a_missing_root_is_named():
    from cct.config import from_dict

    config = md_config()
    config["datasets"]["b"]["cct"]["data"]["crop_size"] = 30  # not a multiple of the output stride (4)
    with pytest.raises(GridError, match=r"cct config of .*(b|ab)/multi_domain/.*crop_size"):
        grid.check_config(config, from_dict)
    config = md_config()
    config["datasets"]["b"]["cct"]["data"] = {"dataset": "camvid"}
    with pytest.raises(GridError, match=r"data.root is not set for the 'camvid' dataset: set datasets.b.cct.data.root"):
        grid.check_config(config)


# --------------------------------------------------------------------------------------------------
# Aggregation on hand-made metrics.json files

CLASSES = {"a": ["background", "solid", "dots"], "b": ["background", "zigzag", "dots"]}


def write_metrics(root: Path, run: Run, scores: dict[str, float], *, best: dict[str, float] | None = None) -> Path:
    """A metrics.json as cct writes it: ``scores`` per domain name (one entry: a single-domain run,
    keyed main), the headline the mean over domains."""
    best = best or {name: value + 1 for name, value in scores.items()}
    domain_of = {name: run.dataset if name == "main" else name for name in scores}  # embedded domain a or b
    domains = {
        name: {"miou": value, "best_miou": best[name], "per_class_iou": {c: value for c in CLASSES[domain_of[name]]},
               "pixel_accuracy": 90.0, "class_names": CLASSES[domain_of[name]], "n_labeled": run.labels,
               "n_unlabeled": 1000 - run.labels, "dataset": "embedded", "domain": domain_of[name]}
        for name, value in scores.items()
    }
    first = next(iter(domains.values()))
    history = [{"iteration": 10, "val_miou": sum(scores.values()) / len(scores), "loss_sup": 1.0}]
    if len(scores) > 1:
        history[0].update({f"val_miou@{name}": value for name, value in scores.items()})
    metrics = {
        "miou": sum(scores.values()) / len(scores), "best_miou": sum(best.values()) / len(best), "best_iteration": 10,
        "per_class_iou": first["per_class_iou"], "pixel_accuracy": 90.0, "eval_protocol": "single scale, full image",
        "iterations": 10, "mode": "supervised" if "supervised" in run.method else "semi", "seed": run.seed,
        "split_seed": run.split, "n_labeled": run.labels, "n_unlabeled": 1000 - run.labels,
        "dataset": "embedded", "domain": first["domain"], "domains": domains, "history": history, "wall_time_s": 3.0,
        "config": {"data": {"dataset": "embedded"}, "model": {"encoder": "small"}},
    }
    path = root / "runs" / run.path / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))
    return path


# final mIoU per seed (0, 1, 2) of split 0 at 50 labels per domain
ALONE = {("supervised", "a"): [40, 42, 44], ("supervised", "b"): [30, 30, 33],
         ("cct", "a"): [45, 47, 49], ("cct", "b"): [35, 36, 37]}
JOINT = {("joint_supervised", "a"): [41, 43, 45], ("joint_supervised", "b"): [31, 32, 33],
         ("joint_cct", "a"): [47, 48, 52], ("joint_cct", "b"): [38, 37, 39]}


@pytest.fixture
def md_files(tmp_path) -> list[Path]:
    files = []
    for (method, dataset), values in ALONE.items():
        for seed, value in enumerate(values):
            files.append(write_metrics(tmp_path, Run(dataset, MD, method, 50, 0, seed), {"main": value}))
    for method in ("joint_supervised", "joint_cct"):
        for seed in range(3):
            files.append(write_metrics(tmp_path, Run("ab", MD, method, 50, 0, seed),
                                       {d: JOINT[(method, d)][seed] for d in ("a", "b")}))
    # a curve run of dataset a: no per-domain columns of its own
    files.append(write_metrics(tmp_path, Run("a", "label_fraction", "cct", 50, 0, 0), {"main": 45}))
    return files


def test_collect_adds_per_domain_columns_for_joint_runs(md_files):
    runs, history = collect.collect(md_files)
    assert len(runs) == 4 * 3 + 2 * 3 + 1
    for column in ("domains", "miou@a", "miou@b", "best_miou@a", "best_miou@b", "cct_dataset@a", "domain@b"):
        assert column in runs.columns
    joint = runs[(runs["dataset"] == "ab") & (runs["method"] == "joint_cct") & (runs["seed"] == 2)].iloc[0]
    assert (joint["miou@a"], joint["miou@b"], joint["miou"], joint["domains"]) == (52, 39, 45.5, "a;b")
    assert joint["best_miou@b"] == 40 and joint["domain@b"] == "b"
    alone = runs[(runs["dataset"] == "b") & (runs["method"] == "cct") & (runs["seed"] == 0)].iloc[0]
    assert alone["miou"] == 35 and math.isnan(alone["miou@a"]) and pd.isna(alone["domains"])
    assert "val_miou@a" in history.columns
    # the columns follow the metrics: per-domain after the metrics, before the per-class IoU
    columns = list(runs.columns)
    assert columns.index("domains") < columns.index("miou@a") < columns.index("iou_background")


def test_table_in_the_papers_layout(md_files):
    runs, _ = collect.collect(md_files)
    summary = multidomain.summarize(runs, {"ab": ["a", "b"]}, tables.load_paper(ROOT / "data" / "paper_numbers.csv"))
    assert summary["method"].tolist() == ["supervised", "cct", "joint_supervised", "joint_cct"]
    assert summary["method_name"].tolist() == ["Supervised", "CCT", "Supervised (joint)", "CCT (joint)"]
    row = summary.set_index("method")
    # CCT alone: a 45, 47, 49 (mean 47, std 2); b 35, 36, 37 (36, 1); per-seed averages 40, 41.5, 43
    assert (row.loc["cct", "miou_mean@a"], row.loc["cct", "miou_std@a"]) == (47, 2)
    assert (row.loc["cct", "miou_mean@b"], row.loc["cct", "miou_std@b"]) == (36, 1)
    assert row.loc["cct", "miou_mean"] == pytest.approx(41.5) and row.loc["cct", "miou_std"] == pytest.approx(1.5)
    assert row.loc["cct", "best_miou_mean@a"] == 48
    # CCT (joint): a 47, 48, 52 (49); b 38, 37, 39 (38); averages 42.5, 42.5, 45.5 (43.5)
    assert (row.loc["joint_cct", "miou_mean@a"], row.loc["joint_cct", "miou_mean@b"]) == (49, 38)
    assert row.loc["joint_cct", "miou_mean"] == pytest.approx(43.5)
    # paired gain over CCT alone: a 2, 1, 3 (2 ± 1); b 3, 1, 2 (2 ± 1); mean 2.5, 1, 2.5 (2 ± sqrt(0.75))
    joint = row.loc["joint_cct"]
    assert (joint["gain_mean@a"], joint["gain_std@a"], joint["gain_n@a"]) == (2, 1, 3)
    assert (row.loc["joint_cct", "gain_mean@b"], row.loc["joint_cct", "gain_std@b"]) == (2, 1)
    assert row.loc["joint_cct", "gain_mean"] == pytest.approx(2.0)
    assert row.loc["joint_cct", "gain_std"] == pytest.approx(math.sqrt(0.75))
    # Supervised (joint) over Supervised alone: a 1, 1, 1; b 1, 2, 0
    assert (row.loc["joint_supervised", "gain_mean@a"], row.loc["joint_supervised", "gain_mean@b"]) == (1, 1)
    assert row.loc[["supervised", "cct"], "gain_n"].eq(0).all()
    assert (row["n"] == 3).all() and (row["n_seeds"] == 3).all() and (row["n_splits"] == 1).all()
    # no paper number is known for the multi-domain table: the paper columns stay empty
    assert summary[["paper_miou", "paper_miou@a", "paper_miou@b"]].isna().all().all()
    assert (summary["paper_dataset"] == "embedded_a+embedded_b").all()
    md = multidomain.to_markdown(summary)
    assert "ab (a + b), 50 labelled images per domain" in md
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Method", "a", "b", "Mean", "Gain a", "Gain b", "Gain mean", "n (seeds × splits)", "Paper"]
    joint_line = next(line for line in md.splitlines() if line.startswith("| CCT (joint)"))
    assert "49.0 ± 2.6" in joint_line and "43.5 ± 1.7" in joint_line and "+2.0 ± 1.0" in joint_line
    assert "\\begin{tabular}" in multidomain.to_latex(summary)


def test_pairings_are_inferred_from_the_joint_runs_and_the_paper_column_reads_paper_rows(md_files, tmp_path):
    runs, _ = collect.collect(md_files)
    assert multidomain.infer_pairings(runs) == {"ab": ["a", "b"]}
    # a made-up paper row for the test only (the real CSV has none for this setting)
    paper = pd.DataFrame([{"dataset": "embedded_a+embedded_b@embedded_b", "setting": MD, "method": "joint_cct",
                           "labels": 50, "encoder": "small", "miou": 12.3, "kind": "paper", "source": "test"}])
    summary = multidomain.summarize(runs, None, paper)
    row = summary.set_index("method").loc["joint_cct"]
    assert row["paper_miou@b"] == 12.3 and math.isnan(row["paper_miou@a"]) and row["paper_source"] == "test"
    assert summary.drop(index=summary.index[summary["method"] == "joint_cct"])["paper_miou@b"].isna().all()
    assert "– / 12.3 / –" in multidomain.to_markdown(summary)


def test_table_and_figure_commands(md_files, tmp_path):
    runs, _ = collect.collect(md_files)
    runs_csv = tmp_path / "runs.csv"
    runs.to_csv(runs_csv, index=False)
    out = {ext: tmp_path / "tables" / f"multi_domain.{ext}" for ext in ("csv", "md", "tex")}
    assert tables.main(["--runs", str(runs_csv), "--paper", str(ROOT / "data" / "paper_numbers.csv"), "--setting", MD,
                        "--pairing", "ab=a,b", "--csv", str(out["csv"]), "--md", str(out["md"]),
                        "--tex", str(out["tex"])]) == 0
    table = pd.read_csv(out["csv"])
    assert len(table) == 4 and {"miou_mean@a", "miou_mean@b", "miou_mean", "gain_mean@a"} <= set(table.columns)
    figure = [tmp_path / "plots" / "multi_domain.png", tmp_path / "plots" / "multi_domain.pdf"]
    assert plots.main(["multi_domain", "--runs", str(runs_csv), "--pairing", "ab=a,b", "--out", *map(str, figure)]) == 0
    assert all(p.stat().st_size > 1000 for p in figure)
    frame = multidomain.bar_frame(runs, {"ab": ["a", "b"]})
    assert set(frame["domain"]) == {"a", "b", "mean"} and len(frame) == 4 * 3 * 3
    assert "multi_domain" in plots.PLOTS


# --------------------------------------------------------------------------------------------------
# End to end

TINY = load_test_config("multidomain")  # .test/config/multidomain.yaml


def _package_has_multiple_domains() -> bool:
    try:
        from cct.config import RunConfig
    except ImportError:
        return False
    return hasattr(RunConfig(), "extra_domains")


@pytest.mark.slow
@pytest.mark.skipif(not _package_has_multiple_domains(), reason="the cct package has no extra_domains yet")
def test_tiny_joint_grid_end_to_end(tmp_path):
    write_config(tmp_path, TINY)
    proc = snakemake(tmp_path, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = tmp_path / "results"
    run = results / "runs" / "tiny_ab" / "multi_domain" / "joint_cct" / "10" / "split0" / "seed0"
    overrides = yaml.safe_load((run / "overrides.yaml").read_text())
    assert overrides["data"]["name"] == "tiny_a" and overrides["extra_domains"][0]["name"] == "tiny_b"
    assert overrides["extra_domains"][0]["labeled_list"] == "results/splits/tiny_b/10/split0/labeled.txt"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["domains"]) == {"tiny_a", "tiny_b"}
    domains = metrics["domains"]
    assert metrics["miou"] == pytest.approx((domains["tiny_a"]["miou"] + domains["tiny_b"]["miou"]) / 2)
    # domain a alone is the curve's run (alias); domain b alone and the joint runs are trained
    assert (results / "runs" / "tiny_a" / "multi_domain" / "cct" / "10" / "split0" / "seed0" / "alias.log").is_file()
    assert (results / "runs" / "tiny_b" / "multi_domain" / "cct" / "10" / "split0" / "seed0"
            / "checkpoint.pt").is_file()
    table = pd.read_csv(results / "tables" / "multi_domain.csv")
    assert table["method"].tolist() == ["supervised", "cct", "joint_supervised", "joint_cct"]
    for column in ("miou_mean@tiny_a", "miou_mean@tiny_b", "miou_mean"):
        assert table[column].between(0, 100).all()
    assert table.loc[table["method"] == "joint_cct", "gain_n"].item() == 1
    md = (results / "tables" / "multi_domain.md").read_text()
    assert "tiny_ab (tiny_a + tiny_b), 10 labelled images per domain" in md and "CCT (joint)" in md
    runs = pd.read_csv(results / "tables" / "runs.csv")
    assert {"miou@tiny_a", "miou@tiny_b"} <= set(runs.columns)
    for name in ("multi_domain.png", "multi_domain.pdf", "multi_domain_curves.png"):
        assert (results / "plots" / name).stat().st_size > 1000
    proc = snakemake(tmp_path, "--cores", "2", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
