"""Aggregation on hand-made metrics.json files: every expected number below is computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from workflow_helpers import ROOT

from analysis import collect, plots, runtime, tables
from planner.layout import Run

PAPER = ROOT / "data" / "paper_numbers.csv"
CLASSES = ["background", "disk", "ring"]


def write_metrics(root: Path, run: Run, miou: float, best: float, *, cct_dataset: str = "embedded",
                  encoder: str = "small", history: list | None = None, **extra) -> Path:
    path = root / "runs" / run.path / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {
        "miou": miou, "best_miou": best, "best_iteration": 50,
        "per_class_iou": {"background": 90.0, "disk": miou, "ring": None},
        "pixel_accuracy": 91.5, "eval_protocol": "single scale, full image", "iterations": 100,
        "mode": "supervised" if run.method == "supervised" else "semi",
        "seed": run.seed, "split_seed": run.split, "n_labeled": run.labels, "n_unlabeled": 1000 - run.labels,
        "dataset": cct_dataset, "domain": "a",
        "history": history if history is not None else [
            {"iteration": 50, "val_miou": best, "loss_sup": 1.0, "lr": 0.01},
            {"iteration": 100, "val_miou": miou, "loss_sup": 0.5, "lr": 0.001},
        ],
        "wall_time_s": 12.5,
        "config": {"data": {"dataset": cct_dataset}, "model": {"encoder": encoder}},
    }
    metrics.update(extra)
    path.write_text(json.dumps(metrics))
    return path


@pytest.fixture
def grid_files(tmp_path) -> list[Path]:
    files = []
    lf = "label_fraction"
    # 10 labels, one split draw, three seeds
    for seed, (sup, sup_best, cct, cct_best) in enumerate([(40, 41, 45, 46), (42, 43, 48, 49), (44, 45, 48, 50)]):
        files.append(write_metrics(tmp_path, Run("toy", lf, "supervised", 10, 0, seed), sup, sup_best))
        files.append(write_metrics(tmp_path, Run("toy", lf, "cct", 10, 0, seed), cct, cct_best))
    # 20 labels, two split draws x two seeds (supervised only)
    for (split, seed), value in zip([(0, 0), (0, 1), (1, 0), (1, 1)], [50, 52, 54, 56], strict=True):
        files.append(write_metrics(tmp_path, Run("toy", lf, "supervised", 20, split, seed), value, value + 1))
    # a paper protocol: VOC, 1464 labels, ResNet-50
    voc = {"cct_dataset": "voc", "encoder": "resnet50"}
    files.append(write_metrics(tmp_path, Run("voc", lf, "cct", 1464, 0, 0), 60.0, 61.0, **voc))
    files.append(write_metrics(tmp_path, Run("voc", lf, "supervised", 1464, 0, 0), 55.0, 56.0, **voc))
    # the same label count with another encoder follows no paper protocol
    files.append(write_metrics(tmp_path, Run("voc18", lf, "cct", 1464, 0, 0), 50.0, 51.0, cct_dataset="voc",
                               encoder="resnet18"))
    # ablation: supervised and two perturbations, two seeds
    ab = "perturbation_ablation"
    for method, values in {"supervised": (30, 32), "vat": (35, 36), "all": (38, 40)}.items():
        for seed, value in enumerate(values):
            files.append(write_metrics(tmp_path, Run("toy", ab, method, 20, 0, seed), value, value + 2))
    return files


def test_collect_rows(grid_files):
    runs, history = collect.collect(grid_files)
    assert len(runs) == len(grid_files) == 19
    assert list(runs.columns[:6]) == ["dataset", "setting", "method", "labels", "split", "seed"]
    assert {"miou", "best_miou", "wall_time_s", "iou_background", "iou_disk", "iou_ring",
            "eval_protocol"} <= set(runs.columns)
    row = runs[(runs["dataset"] == "toy") & (runs["method"] == "cct") & (runs["seed"] == 1)].iloc[0]
    assert (row["miou"], row["best_miou"], row["iou_disk"], row["wall_time_s"]) == (48, 49, 48, 12.5)
    assert math.isnan(row["iou_ring"])  # null (class absent) stays empty
    assert row["encoder"] == "small" and row["cct_dataset"] == "embedded"
    assert len(history) == 2 * 19
    assert set(history.columns) >= {"dataset", "setting", "method", "labels", "split", "seed", "iteration", "val_miou"}


def test_collect_refuses_a_metrics_file_that_disagrees_with_its_path(tmp_path):
    path = write_metrics(tmp_path, Run("toy", "label_fraction", "cct", 10, 0, 0), 1.0, 1.0, n_labeled=11)
    with pytest.raises(ValueError, match="n_labeled=11 disagrees"):
        collect.collect([path])


def summary_row(summary: pd.DataFrame, dataset: str, method: str, labels: int) -> pd.Series:
    rows = summary[(summary["dataset"] == dataset) & (summary["method"] == method) & (summary["labels"] == labels)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_mean_std_n_and_paired_gain(grid_files):
    runs, _ = collect.collect(grid_files)
    summary = tables.summarize(runs, "label_fraction", tables.load_paper(PAPER))
    sup = summary_row(summary, "toy", "supervised", 10)
    # 40, 42, 44: mean 42, sample std sqrt((4 + 0 + 4) / 2) = 2
    assert (sup["n"], sup["n_seeds"], sup["n_splits"]) == (3, 3, 1)
    assert sup["miou_mean"] == pytest.approx(42.0) and sup["miou_std"] == pytest.approx(2.0)
    assert sup["best_miou_mean"] == pytest.approx(43.0) and sup["best_miou_std"] == pytest.approx(2.0)
    assert sup["gain_n"] == 0 and math.isnan(sup["gain_mean"])
    cct = summary_row(summary, "toy", "cct", 10)
    # 45, 48, 48: mean 47, sample std sqrt((4 + 1 + 1) / 2) = sqrt(3)
    assert cct["miou_mean"] == pytest.approx(47.0) and cct["miou_std"] == pytest.approx(math.sqrt(3))
    # paired gains 5, 6, 4: mean 5, sample std 1
    assert (cct["gain_mean"], cct["gain_std"], cct["gain_n"]) == (pytest.approx(5.0), pytest.approx(1.0), 3)
    # two axes: 50, 52 (split 0) and 54, 56 (split 1)
    two = summary_row(summary, "toy", "supervised", 20)
    assert (two["n"], two["n_seeds"], two["n_splits"]) == (4, 2, 2)
    assert two["miou_mean"] == pytest.approx(53.0)
    assert two["miou_std"] == pytest.approx(math.sqrt(20 / 3))  # deviations -3, -1, 1, 3
    assert two["miou_std_seed"] == pytest.approx(math.sqrt(2))  # within each split: std(50, 52) = sqrt(2)
    assert two["miou_std_split"] == pytest.approx(math.sqrt(8))  # split means 51, 55
    # order: by dataset, label count, then supervised before CCT
    assert list(summary["method"][summary["dataset"] == "toy"]) == ["supervised", "cct", "supervised"]


def test_paper_column_only_where_a_paper_protocol_matches(grid_files):
    runs, _ = collect.collect(grid_files)
    summary = tables.summarize(runs, "label_fraction", tables.load_paper(PAPER))
    voc = summary_row(summary, "voc", "cct", 1464)
    assert voc["paper_miou"] == pytest.approx(69.4)
    assert "CVPR 2020" in voc["paper_source"]
    assert math.isnan(voc["miou_std"]) and voc["n"] == 1
    # the supervised 66 is an author's recollection, not a paper number
    assert math.isnan(summary_row(summary, "voc", "supervised", 1464)["paper_miou"])
    assert math.isnan(summary_row(summary, "voc18", "cct", 1464)["paper_miou"])  # another encoder
    assert summary[summary["dataset"] == "toy"]["paper_miou"].isna().all()


def test_paper_numbers_file_holds_only_copied_numbers():
    paper = pd.read_csv(PAPER)
    assert set(paper[paper["kind"] == "paper"]["miou"]) == {69.4, 73.2}
    assert paper["source"].str.len().gt(0).all()
    # the only other number is the author's recollection of the supervised baseline, never shown as a paper number
    assert paper[paper["kind"] != "paper"][["method", "miou", "kind"]].values.tolist() == [
        ["supervised", 66.0, "author-recollection"]]
    # the weak-label table shows Table 1's pair: CCT 69.4 and CCT + image-level labels 73.2
    weak = paper[paper["setting"] == "weak_labels"].set_index("method")["miou"].to_dict()
    assert weak == {"cct": 69.4, "cct_weak": 73.2}


def test_markdown_and_latex(grid_files, tmp_path):
    runs, _ = collect.collect(grid_files)
    summary = tables.summarize(runs, "label_fraction", tables.load_paper(PAPER))
    out = {ext: tmp_path / f"t.{ext}" for ext in ("csv", "md", "tex")}
    tables.write_tables(summary, "label_fraction", out["csv"], out["md"], out["tex"])
    md = out["md"].read_text()
    assert md.startswith("Table: ") and "single scale, full image" in md.splitlines()[0]
    assert "| toy       | 10       | Supervised | 42.0 ± 2.0" in md
    assert "47.0 ± 1.7" in md and "+5.0 ± 1.0" in md and "3 (3 × 1)" in md and "4 (2 × 2)" in md
    assert "| 69.4" in md
    tex = out["tex"].read_text()
    assert r"\caption{" in tex and r"42.0 $\pm$ 2.0" in tex and r"\bottomrule" in tex
    assert pd.read_csv(out["csv"])["miou_mean"].round(4).tolist()[:2] == [42.0, 47.0]


def test_ablation_table(grid_files):
    runs, _ = collect.collect(grid_files)
    summary = tables.summarize(runs, "perturbation_ablation")
    assert list(summary["method"]) == ["supervised", "vat", "all"]
    vat = summary_row(summary, "toy", "vat", 20)
    assert vat["miou_mean"] == pytest.approx(35.5) and vat["miou_std"] == pytest.approx(math.sqrt(0.5))
    assert vat["gain_mean"] == pytest.approx(4.5) and vat["gain_std"] == pytest.approx(math.sqrt(0.5))  # gains 5, 4
    with pytest.raises(ValueError, match="no run of setting"):
        tables.summarize(runs[runs["setting"] == "label_fraction"], "perturbation_ablation")


def test_runtime_from_benchmarks(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    rows = {
        Run("toy", "label_fraction", "supervised", 10, 0, 0): (10.0, 500.0, 9.0),
        Run("toy", "label_fraction", "supervised", 10, 0, 1): (14.0, 520.0, 13.0),
        Run("toy", "label_fraction", "cct", 10, 0, 0): (30.0, 800.0, 29.0),
        Run("toy", "perturbation_ablation", "vat", 20, 0, 0): (20.0, "NA", 19.0),
    }
    paths = []
    for run, (s, rss, cpu) in rows.items():
        path = tmp_path / "benchmarks" / "train" / f"{run.path}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{s}\t0:00:{int(s):02d}\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")
        paths.append(path)
    summary = runtime.summarize(runtime.read_benchmarks(paths), threads=1)
    sup = summary[(summary["setting"] == "label_fraction") & (summary["method"] == "supervised")].iloc[0]
    assert (sup["jobs"], sup["wall_s_mean"], sup["wall_s_max"], sup["wall_s_total"], sup["max_rss_mb"]) == (
        2, 12.0, 14.0, 24.0, 520.0)
    total_lf = summary[(summary["setting"] == "label_fraction") & (summary["method"] == "total")].iloc[0]
    assert (total_lf["jobs"], total_lf["wall_s_total"], total_lf["cpu_s_total"], total_lf["max_rss_mb"]) == (
        3, 54.0, 51.0, 800.0)
    grand = summary.iloc[-1]
    assert (grand["dataset"], grand["jobs"], grand["wall_s_total"]) == ("all", 4, 74.0)
    md = runtime.to_markdown(summary)
    assert "1 thread(s) per job" in md and "**total**" in md


def test_runtime_takes_cpu_time_from_the_runs_own_count(tmp_path):
    """Snakemake samples a job's CPU time (every 30 s after its first 15 s): a 30 s single-thread
    job reads about 15 s. A run's metrics.json count (``cpu_time_s``) replaces the sample; a run
    without one keeps it, and the caption says which the table holds."""
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    counted = Run("toy", "label_fraction", "cct", 10, 0, 0)
    sampled = Run("toy", "label_fraction", "cct", 10, 0, 1)
    benchmarks, metrics = [], []
    for run in (counted, sampled):
        bench = tmp_path / "benchmarks" / "train" / f"{run.path}.tsv"
        bench.parent.mkdir(parents=True, exist_ok=True)
        bench.write_text(header + "30.0\t0:00:30\t800\t1\t1\t1\t0\t0\t50\t14.9\n")
        m = tmp_path / "runs" / run.path / "metrics.json"
        m.parent.mkdir(parents=True, exist_ok=True)
        m.write_text(json.dumps({"attempts": [{"wall_s": 27.0}], **({"cpu_time_s": 29.4} if run is counted else {})}))
        benchmarks.append(bench)
        metrics.append(m)
    rows = runtime.read_benchmarks(benchmarks, metrics).set_index("seed")
    assert rows.loc[0, "cpu_time"] == 29.4 and rows.loc[0, "cpu_source"] == "run"
    assert rows.loc[1, "cpu_time"] == 14.9 and rows.loc[1, "cpu_source"] == "benchmark"
    summary = runtime.summarize(rows.reset_index(), threads=1)
    grand = summary.iloc[-1]
    assert grand["cpu_s_total"] == pytest.approx(44.3) and grand["cores"] == pytest.approx(44.3 / 60.0)
    assert grand["cpu_source"] == "mixed"
    assert "no count of its own" in runtime.to_markdown(summary)
    only_run = runtime.summarize(rows.reset_index().iloc[:1], threads=1)
    assert only_run.iloc[-1]["cores"] == pytest.approx(29.4 / 30.0)
    assert "each training process's own count" in runtime.to_markdown(only_run)


def test_plots_are_written(grid_files, tmp_path):
    runs, history = collect.collect(grid_files)
    for kind, draw in plots.PLOTS.items():
        if kind not in set(runs["setting"]):  # the fixture grid has no weak_labels runs
            with pytest.raises(ValueError, match=f"no run of setting '{kind}'"):
                draw(runs, [tmp_path / "x.png"])
            continue
        out = [tmp_path / f"{kind}.png", tmp_path / f"{kind}.pdf"]
        draw(runs, out)
        assert all(p.stat().st_size > 1000 for p in out)
    out = [tmp_path / "curves.png", tmp_path / "curves.pdf"]
    plots.plot_curves(history, "label_fraction", out)
    assert all(p.stat().st_size > 1000 for p in out)
    empty = [tmp_path / "empty.png"]
    plots.plot_curves(history.iloc[0:0], "perturbation_ablation", empty)
    assert empty[0].stat().st_size > 0


def test_command_lines(grid_files, tmp_path):
    runs_csv, hist_csv = tmp_path / "tables" / "runs.csv", tmp_path / "tables" / "history.csv"
    assert collect.main(["--out", str(runs_csv), "--history", str(hist_csv), *map(str, grid_files)]) == 0
    out = {ext: str(tmp_path / "tables" / f"label_fraction.{ext}") for ext in ("csv", "md", "tex")}
    assert tables.main(["--runs", str(runs_csv), "--paper", str(PAPER), "--setting", "label_fraction",
                        "--csv", out["csv"], "--md", out["md"], "--tex", out["tex"]]) == 0
    assert pd.read_csv(out["csv"])["paper_miou"].dropna().tolist() == [69.4]
    png = tmp_path / "plots" / "lf.png"
    assert plots.main(["label_fraction", "--runs", str(runs_csv), "--out", str(png)]) == 0
    assert png.is_file()
