"""Every run's ``metrics.json`` into one tidy table: a row per run (``runs.csv``) and a row per
periodic evaluation (``history.csv``).

A run over several domains (a joint run of the multi-domain setting: ``metrics.json`` has more than
one entry under ``domains``) also gets, per domain ``<name>``, the columns ``miou@<name>``,
``best_miou@<name>``, ``pixel_accuracy@<name>``, ``cct_dataset@<name>`` and ``domain@<name>``, and a
``domains`` column listing the names (``;``-separated); its ``miou`` is the mean over its domains.

The grid coordinates (dataset, setting, method, labels, split, seed) come from the run's path,
``.../{dataset}/{setting}/{method}/{labels}/split{split}/seed{seed}/metrics.json``; a metrics file
that disagrees with its path (label count, split seed, training seed) is an error.

    python -m analysis.collect --out runs.csv --history history.csv RUN/metrics.json ...
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from planner.layout import Run

KEY_COLUMNS = ["dataset", "setting", "method", "labels", "split", "seed"]
METRIC_COLUMNS = [
    "miou",  # final-iteration mIoU on the validation set (%), the headline
    "best_miou",  # best periodic evaluation on the same set (%), reported separately
    "best_iteration",
    "pixel_accuracy",
    "iterations",
    "mode",
    "n_labeled",
    "n_unlabeled",
    "cct_dataset",  # the cct dataset (data.dataset) the key `dataset` stands for
    "domain",
    "encoder",
    "eval_protocol",
    "wall_time_s",
    "device",
]
# metrics.json field -> the path coordinate it must agree with
_CONSISTENCY = {"n_labeled": "labels", "split_seed": "split", "seed": "seed"}


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def read_run(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(row of runs.csv, rows of history.csv) for one metrics.json."""
    path = Path(path)
    run = Run.from_path(path)
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read metrics ({exc})") from exc
    keys = {"dataset": run.dataset, "setting": run.setting, "method": run.method, "labels": run.labels,
            "split": run.split, "seed": run.seed}
    for field, key in _CONSISTENCY.items():
        # a user split list may be given without data.split_seed: only n_labeled and seed are strict
        if field in metrics and metrics[field] is not None and int(metrics[field]) != keys[key]:
            if field == "split_seed" and metrics.get("config", {}).get("data", {}).get("labeled_list"):
                continue
            raise ValueError(f"{path}: {field}={metrics[field]} disagrees with the run path ({key}={keys[key]})")
    config = metrics.get("config") or {}
    row: dict[str, Any] = dict(keys)
    row.update(
        miou=_number(metrics["miou"]),
        best_miou=_number(metrics.get("best_miou")),
        best_iteration=metrics.get("best_iteration"),
        pixel_accuracy=_number(metrics.get("pixel_accuracy")),
        iterations=metrics.get("iterations"),
        mode=metrics.get("mode"),
        n_labeled=metrics.get("n_labeled"),
        n_unlabeled=metrics.get("n_unlabeled"),
        cct_dataset=metrics.get("dataset", config.get("data", {}).get("dataset")),
        domain=metrics.get("domain", config.get("data", {}).get("domain")),
        encoder=config.get("model", {}).get("encoder"),
        eval_protocol=metrics.get("eval_protocol"),
        wall_time_s=_number(metrics.get("wall_time_s")),
        device=metrics.get("device"),
    )
    domains = metrics.get("domains") or {}
    if len(domains) > 1:
        row["domains"] = ";".join(domains)
        for name, scores in domains.items():
            row[f"miou@{name}"] = _number(scores.get("miou"))
            row[f"best_miou@{name}"] = _number(scores.get("best_miou"))
            row[f"pixel_accuracy@{name}"] = _number(scores.get("pixel_accuracy"))
            row[f"cct_dataset@{name}"] = scores.get("dataset")
            row[f"domain@{name}"] = scores.get("domain")
    for name, value in (metrics.get("per_class_iou") or {}).items():
        row[f"iou_{name}"] = _number(value)
    row["path"] = str(path.parent)
    history = [dict(keys, **entry) for entry in metrics.get("history") or []]
    return row, history


def collect(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, history) tables, sorted by the grid coordinates."""
    rows, history = [], []
    for path in paths:
        row, hist = read_run(path)
        rows.append(row)
        history.extend(hist)
    if not rows:
        raise ValueError("no metrics.json given")
    runs = pd.DataFrame(rows)
    iou = [c for c in runs.columns if c.startswith("iou_")]  # first-seen (class) order
    per_domain = [c for c in runs.columns if "@" in c]  # first-seen (domain) order
    domains = ["domains"] if "domains" in runs.columns else []
    runs = runs[KEY_COLUMNS + METRIC_COLUMNS + domains + per_domain + iou + ["path"]]
    runs = runs.sort_values(KEY_COLUMNS, kind="stable").reset_index(drop=True)
    hist = pd.DataFrame(history, columns=None if history else KEY_COLUMNS + ["iteration", "val_miou"])
    if not hist.empty:
        hist = hist.sort_values(KEY_COLUMNS + ["iteration"], kind="stable").reset_index(drop=True)
    return runs, hist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", nargs="+", help="metrics.json files of the runs")
    parser.add_argument("--out", required=True, help="runs.csv (one row per run)")
    parser.add_argument("--history", required=True, help="history.csv (one row per periodic evaluation)")
    args = parser.parse_args(argv)
    runs, history = collect(args.metrics)
    for target, frame in ((args.out, runs), (args.history, history)):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(target, index=False, float_format="%.4f")
    print(f"{len(runs)} runs -> {args.out}; {len(history)} evaluations -> {args.history}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
