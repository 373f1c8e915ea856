"""The paper's tables from ``runs.csv``: one row per (dataset, method, label count) of a setting, as
CSV (all numbers), Markdown and LaTeX (formatted, with a caption).

Per row: the final-iteration mIoU (the headline) and the best-on-validation mIoU (selected on the set
it is reported on, so optimistic; its own column), each as mean ± sample standard deviation over the
runs (training seeds x split draws) with their number n; the spread split into its two axes (over
training seeds within a split draw, over split draws); the paired gain over the supervised baseline
(same dataset, label count, split and seed); and the paper's number where the run follows a paper
protocol (same cct dataset, setting, method, label count and encoder), else empty. Paper numbers are
read from ``data/paper_numbers.csv`` (rows with kind ``paper`` only); none is ever filled in here.

    python -m analysis.tables --runs runs.csv --paper data/paper_numbers.csv --setting label_fraction \
        --csv t.csv --md t.md --tex t.tex

A setting whose table layout is ``pairings`` (the multi-domain setting: a column per dataset of a
pairing, planner/vocabulary.py) has its own module: analysis/multidomain.py.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import multidomain
from analysis.formatting import fmt_mean_std, join_distinct, latex, latex_tabular, mean_defined, sample_std
from planner.vocabulary import METHOD_NAMES, METHOD_ORDER, SETTING_NAMES, SETTINGS_BY_NAME

GROUP = ["dataset", "method", "labels"]
PAPER_KEYS = ["dataset", "setting", "method", "labels", "encoder"]
SUMMARY_COLUMNS = [
    "dataset", "setting", "method", "method_name", "labels",
    "n", "n_seeds", "n_splits",
    "miou_mean", "miou_std", "best_miou_mean", "best_miou_std",
    "miou_std_seed", "miou_std_split",
    "gain_mean", "gain_std", "gain_n",
    "paper_miou", "paper_source",
    "cct_dataset", "encoder", "iterations", "eval_protocol",
]


def load_paper(path: str | Path | None) -> pd.DataFrame:
    """Rows of the paper CSV that are the paper's own numbers (kind == paper)."""
    if path is None:
        return pd.DataFrame(columns=PAPER_KEYS + ["miou", "source"])
    paper = pd.read_csv(path)
    missing = [c for c in PAPER_KEYS + ["miou", "kind", "source"] if c not in paper.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return paper[paper["kind"] == "paper"].reset_index(drop=True)


def summarize(runs: pd.DataFrame, setting: str, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (dataset, method, labels) of ``setting`` with the columns of SUMMARY_COLUMNS."""
    runs = runs[runs["setting"] == setting]
    if runs.empty:
        raise ValueError(f"runs.csv has no run of setting {setting!r}")
    baseline = runs[runs["method"] == "supervised"].set_index(["dataset", "labels", "split", "seed"])["miou"]
    rows = []
    for (dataset, method, labels), group in runs.groupby(GROUP, sort=False):
        per_split = group.groupby("split")["miou"]
        row = {
            "dataset": dataset, "setting": setting, "method": method,
            "method_name": METHOD_NAMES.get(method, method), "labels": int(labels),
            "n": int(group["miou"].notna().sum()),
            "n_seeds": int(group["seed"].nunique()), "n_splits": int(group["split"].nunique()),
            "miou_mean": float(group["miou"].mean()), "miou_std": sample_std(group["miou"]),
            "best_miou_mean": float(group["best_miou"].mean()), "best_miou_std": sample_std(group["best_miou"]),
            # the two axes of the spread: training seeds within a split draw, and split draws
            "miou_std_seed": mean_defined(per_split.apply(sample_std)),
            "miou_std_split": sample_std(per_split.mean()),
            "gain_mean": math.nan, "gain_std": math.nan, "gain_n": 0,
            "cct_dataset": join_distinct(group["cct_dataset"]), "encoder": join_distinct(group["encoder"]),
            "iterations": join_distinct(group["iterations"]), "eval_protocol": join_distinct(group["eval_protocol"]),
        }
        if method != "supervised" and len(baseline):
            keys = pd.MultiIndex.from_frame(group[["dataset", "labels", "split", "seed"]])
            paired = group["miou"].to_numpy() - baseline.reindex(keys).to_numpy()
            paired = paired[~np.isnan(paired)]
            if len(paired):
                row.update(gain_mean=float(paired.mean()), gain_std=sample_std(pd.Series(paired)), gain_n=len(paired))
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary["paper_miou"], summary["paper_source"] = math.nan, ""
    if paper is not None and len(paper):
        for i, row in summary.iterrows():
            match = paper[
                (paper["dataset"] == row["cct_dataset"]) & (paper["setting"] == setting)
                & (paper["method"] == row["method"]) & (paper["labels"].astype(int) == row["labels"])
                & (paper["encoder"] == row["encoder"])
            ]
            if len(match):
                summary.loc[i, "paper_miou"] = float(match["miou"].iloc[0])
                summary.loc[i, "paper_source"] = str(match["source"].iloc[0])
    order = {m: k for k, m in enumerate(METHOD_ORDER)}
    summary["_order"] = summary["method"].map(order).fillna(len(order))
    summary = summary.sort_values(["dataset", "labels", "_order"], kind="stable").drop(columns="_order")
    return summary[SUMMARY_COLUMNS].reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Formatting


def caption(summary: pd.DataFrame, setting: str) -> str:
    protocols = "; ".join(sorted({p for v in summary["eval_protocol"] for p in str(v).split("; ") if p})) or "unknown"
    datasets = ", ".join(sorted(set(summary["dataset"])))
    text = (
        f"{SETTING_NAMES.get(setting, setting)} ({datasets}). mIoU (%) on the validation set, "
        f"evaluation protocol: {protocols}. Final: after the last training iteration (headline). "
        "Best on val: the best periodic evaluation, selected on the set it is reported on (optimistic). "
        "Mean ± sample standard deviation over n runs (training seeds × split draws). "
    )
    if (summary["gain_n"] > 0).any():
        text += "Gain: paired difference to the supervised run with the same split and seed. "
    text += "Paper: the number the paper reports for the same protocol; empty where no paper number matches."
    return text


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The formatted columns of the Markdown and LaTeX tables."""
    table = pd.DataFrame({
        "Dataset": summary["dataset"],
        "Labels": summary["labels"],
        "Method": summary["method_name"],
        "mIoU final": [fmt_mean_std(m, s) for m, s in zip(summary["miou_mean"], summary["miou_std"], strict=True)],
        "mIoU best on val": [fmt_mean_std(m, s)
                             for m, s in zip(summary["best_miou_mean"], summary["best_miou_std"], strict=True)],
    })
    if (summary["gain_n"] > 0).any():
        table["Gain vs supervised"] = [
            fmt_mean_std(m, s, signed=True) if n else ""
            for m, s, n in zip(summary["gain_mean"], summary["gain_std"], summary["gain_n"], strict=True)
        ]
    counts = zip(summary["n"], summary["n_seeds"], summary["n_splits"], strict=True)
    table["n (seeds × splits)"] = [f"{n} ({a} × {b})" for n, a, b in counts]
    table["Paper"] = ["" if math.isnan(p) else f"{p:.1f}" for p in summary["paper_miou"]]
    return table


def to_markdown(summary: pd.DataFrame, setting: str) -> str:
    body = display_table(summary).to_markdown(index=False, disable_numparse=True)
    return f"Table: {caption(summary, setting)}\n\n{body}\n"


def to_latex(summary: pd.DataFrame, setting: str) -> str:
    table = display_table(summary)
    align = "ll" + "l" + "r" * (len(table.columns) - 3)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex(caption(summary, setting))}}}",
             rf"\label{{tab:{setting}}}"]
    lines += latex_tabular(table, align) + [r"\end{table}", ""]
    return "\n".join(lines)


def write_tables(summary: pd.DataFrame, setting: str, csv: str | Path, md: str | Path, tex: str | Path) -> None:
    for path in (csv, md, tex):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(csv, index=False, float_format="%.4f")
    Path(md).write_text(to_markdown(summary, setting))
    Path(tex).write_text(to_latex(summary, setting))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="runs.csv from analysis.collect")
    parser.add_argument("--paper", default=None, help="paper numbers CSV (data/paper_numbers.csv)")
    parser.add_argument("--setting", required=True, help="setting whose table to write, e.g. label_fraction")
    parser.add_argument("--csv", required=True)
    parser.add_argument("--md", required=True)
    parser.add_argument("--tex", required=True)
    parser.add_argument("--pairing", action="append", default=[], metavar="NAME=A,B",
                        help="multi_domain: a pairing and its datasets (default: inferred from the joint runs)")
    args = parser.parse_args(argv)
    known = SETTINGS_BY_NAME.get(args.setting)
    if known is not None and known.table == "pairings":  # a column per domain (analysis/multidomain.py)
        summary = multidomain.summarize(pd.read_csv(args.runs), multidomain.parse_pairings(args.pairing),
                                        load_paper(args.paper))
        multidomain.write_tables(summary, args.csv, args.md, args.tex)
        print(f"{len(summary)} rows -> {args.csv}, {args.md}, {args.tex}")
        return 0
    summary = summarize(pd.read_csv(args.runs), args.setting, load_paper(args.paper))
    write_tables(summary, args.setting, args.csv, args.md, args.tex)
    print(f"{len(summary)} rows -> {args.csv}, {args.md}, {args.tex}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
