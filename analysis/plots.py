"""Figures of the paper's settings, each written as PNG and PDF. A setting's figure is of the kind
its entry in planner/vocabulary.py names (``Setting.figure``):

- ``curve`` (``label_fraction``): final mIoU against the number of labelled images, one line per
  method (supervised vs CCT); the line is the mean over runs, the band one standard deviation, the
  dots single runs.
- ``bars`` (``perturbation_ablation``: each perturbation alone, all together, supervised;
  ``weak_labels``: supervised, CCT and CCT + image-level labels): final mIoU per method, bars with
  ± one standard deviation and the single runs as dots.
- ``pairings`` (``multi_domain``): per pairing and label count, grouped bars: final mIoU on each
  dataset of the pairing and their mean, one bar per method (each dataset alone, supervised and CCT;
  jointly, supervised and CCT), ± one standard deviation, single runs as dots.
- ``curves`` (every setting): validation mIoU and the training losses against the iteration (from
  each run's ``history``), mean ± one standard deviation over runs.

    python -m analysis.plots label_fraction --runs runs.csv --out fig.png fig.pdf
    python -m analysis.plots multi_domain --runs runs.csv --pairing ab=a,b --out fig.png fig.pdf
    python -m analysis.plots curves --setting label_fraction --history history.csv --out fig.png fig.pdf
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis import multidomain  # noqa: E402
from planner.vocabulary import JOINT_METHODS, METHOD_NAMES, METHOD_ORDER, SETTINGS_BY_NAME, setting_of  # noqa: E402

CURVE_METRICS = {"val_miou": "val mIoU (%)", "loss_sup": "supervised loss", "loss_unsup": "consistency loss",
                 "loss_weak": "weak (pseudo-label) loss"}
_SINGLE = [m for m in METHOD_ORDER if m not in JOINT_METHODS]
PALETTE = dict(zip([METHOD_NAMES[m] for m in _SINGLE], sns.color_palette("tab10", len(_SINGLE)), strict=True))
# a joint method: the colour of the same training alone, darker
PALETTE.update({METHOD_NAMES[j]: tuple(0.55 * c for c in PALETTE[METHOD_NAMES[m]]) for j, m in JOINT_METHODS.items()})


def _named(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Add a display-name column; return the frame and the present names in method order."""
    frame = frame.copy()
    frame["Method"] = frame["method"].map(lambda m: METHOD_NAMES.get(m, m))
    present = set(frame["method"])
    order = [METHOD_NAMES[m] for m in METHOD_ORDER if m in present]
    order += sorted(METHOD_NAMES.get(m, m) for m in present if m not in METHOD_ORDER)
    return frame, order


def save(fig: plt.Figure, paths: Sequence[str | Path]) -> None:
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def _select(runs: pd.DataFrame, setting: str) -> pd.DataFrame:
    frame = runs[runs["setting"] == setting]
    if frame.empty:
        raise ValueError(f"no run of setting {setting!r}")
    return frame


def plot_curve(runs: pd.DataFrame, setting: str, paths: Sequence[str | Path]) -> plt.Figure:
    """Final mIoU of ``setting`` against the number of labelled images, one panel per dataset."""
    frame, order = _named(_select(runs, setting))
    datasets = sorted(frame["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.8 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        sub = frame[frame["dataset"] == dataset]
        sns.lineplot(data=sub, x="labels", y="miou", hue="Method", hue_order=order, palette=PALETTE,
                     errorbar="sd", marker="o", ax=ax)
        sns.scatterplot(data=sub, x="labels", y="miou", hue="Method", hue_order=order, palette=PALETTE,
                        alpha=0.4, s=14, legend=False, ax=ax)
        counts = sorted(sub["labels"].unique())
        if len(counts) > 1 and counts[-1] / max(counts[0], 1) > 4:
            ax.set_xscale("log")
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.minorticks_off()
        n = sub.groupby(["method", "labels"]).size()
        ax.set_title(f"{dataset} (n = {n.min()}{'' if n.min() == n.max() else f'-{n.max()}'} runs per point)")
        ax.set_xlabel("labelled images")
        ax.set_ylabel("mIoU (%), final iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, paths)
    return fig


def plot_bars(runs: pd.DataFrame, setting: str, paths: Sequence[str | Path]) -> plt.Figure:
    """Final mIoU per method of ``setting``, one panel per (dataset, label count)."""
    frame, order = _named(_select(runs, setting))
    panels = sorted({(d, int(n)) for d, n in zip(frame["dataset"], frame["labels"], strict=True)})
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.0, 0.75 * len(order) + 1.5) * len(panels), 3.8),
                             squeeze=False)
    for ax, (dataset, labels) in zip(axes[0], panels, strict=True):
        sub = frame[(frame["dataset"] == dataset) & (frame["labels"] == labels)]
        sns.barplot(data=sub, x="Method", y="miou", order=order, hue="Method", hue_order=order, palette=PALETTE,
                    errorbar="sd", capsize=0.25, err_kws={"linewidth": 1.2}, legend=False, ax=ax)
        sns.stripplot(data=sub, x="Method", y="miou", order=order, color="0.15", size=3, jitter=0.15, ax=ax)
        if (sub["method"] == "supervised").any():
            ax.axhline(sub.loc[sub["method"] == "supervised", "miou"].mean(), color="0.4", ls="--", lw=1,
                       label="supervised mean")
        ax.set_title(f"{dataset}, {labels} labelled images (n = {sub.groupby('method').size().max()} runs per bar)")
        ax.set_xlabel("")
        ax.set_ylabel("mIoU (%), final iteration")
        ax.tick_params(axis="x", rotation=40)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save(fig, paths)
    return fig


def plot_curves(history: pd.DataFrame, setting: str, paths: Sequence[str | Path]) -> plt.Figure:
    frame = history[history["setting"] == setting] if "setting" in history else history.iloc[0:0]
    metrics = [m for m in CURVE_METRICS if m in frame.columns and frame[m].notna().any()]
    if frame.empty or not metrics:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{setting}: no training history recorded", ha="center", va="center")
        save(fig, paths)
        return fig
    frame, order = _named(frame)
    panels = sorted({(d, int(n)) for d, n in zip(frame["dataset"], frame["labels"], strict=True)})
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(4.4 * len(panels), 2.9 * len(metrics)),
                             squeeze=False, sharex="col")
    for col, (dataset, labels) in enumerate(panels):
        sub = frame[(frame["dataset"] == dataset) & (frame["labels"] == labels)]
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            data = sub[sub[metric].notna()]
            hue_order = [o for o in order if o in set(data["Method"])]
            sns.lineplot(data=data, x="iteration", y=metric, hue="Method", hue_order=hue_order,
                         palette=PALETTE, errorbar="sd", ax=ax, legend=(row == 0 and col == len(panels) - 1))
            ax.set_ylabel(CURVE_METRICS[metric])
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{dataset}, {labels} labelled images")
    legend = axes[0][-1].get_legend()
    if legend is not None:
        legend.set_bbox_to_anchor((1.02, 1))
        legend.set_loc("upper left")
    fig.tight_layout()
    save(fig, paths)
    return fig


def plot_pairings(runs: pd.DataFrame, setting: str, paths: Sequence[str | Path],
                  pairings: dict[str, list[str]] | None = None) -> plt.Figure:
    """Grouped bars per (pairing, label count) of the multi-domain setting: x = each dataset of the
    pairing and their mean, one bar per method (alone and joint), mean ± one standard deviation over
    runs, dots: single runs."""
    if setting != multidomain.SETTING:
        raise ValueError(f"{setting}: the pairings figure is the {multidomain.SETTING} setting's")
    frame, order = _named(multidomain.bar_frame(runs, pairings))
    panels = list(dict.fromkeys(zip(frame["pairing"], frame["labels"].astype(int), strict=True)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (name, labels) in zip(axes[0], panels, strict=True):
        sub = frame[(frame["pairing"] == name) & (frame["labels"] == labels)]
        x_order = [d for d in dict.fromkeys(sub["domain"]) if d != multidomain.MEAN] + [multidomain.MEAN]
        sns.barplot(data=sub, x="domain", y="miou", order=x_order, hue="Method", hue_order=order, palette=PALETTE,
                    errorbar="sd", capsize=0.15, err_kws={"linewidth": 1.0}, ax=ax)
        sns.stripplot(data=sub, x="domain", y="miou", order=x_order, hue="Method", hue_order=order, dodge=True,
                      palette={m: "0.15" for m in order}, size=2.5, jitter=0.1, legend=False, ax=ax)
        n = sub[sub["domain"] == multidomain.MEAN].groupby("method").size()
        ax.set_title(f"{name}, {labels} labelled images per domain (n = {n.max() if len(n) else 0} runs per bar)")
        ax.set_xlabel("")
        ax.set_ylabel("mIoU (%), final iteration")
        ax.grid(axis="y", alpha=0.3)
        if ax.get_legend() is not None:  # beside the bars, not over them
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    save(fig, paths)
    return fig


FIGURES = {"curve": plot_curve, "bars": plot_bars, "pairings": plot_pairings}  # Setting.figure -> its function


def plot_setting(setting: str, runs: pd.DataFrame, paths: Sequence[str | Path], **options) -> plt.Figure:
    """The figure of ``setting``, of its kind (planner/vocabulary.py)."""
    return FIGURES[setting_of(setting).figure](runs, setting, paths, **options)


PLOTS = {name: partial(plot_setting, name) for name in SETTINGS_BY_NAME}  # setting -> f(runs, paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.plots", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind in PLOTS:
        p = sub.add_parser(kind, help=f"the {kind} figure from runs.csv")
        p.add_argument("--runs", required=True)
        p.add_argument("--out", nargs="+", required=True, help="output files (.png, .pdf)")
        if SETTINGS_BY_NAME[kind].figure == "pairings":
            p.add_argument("--pairing", action="append", default=[], metavar="NAME=A,B",
                           help="a pairing and its datasets (default: inferred from the joint runs)")
    p = sub.add_parser("curves", help="training curves of a setting from history.csv")
    p.add_argument("--setting", required=True)
    p.add_argument("--history", required=True)
    p.add_argument("--out", nargs="+", required=True)
    args = parser.parse_args(argv)
    sns.set_theme(style="ticks", context="paper")
    if args.kind == "curves":
        plot_curves(pd.read_csv(args.history), args.setting, args.out)
    elif SETTINGS_BY_NAME[args.kind].figure == "pairings":
        PLOTS[args.kind](pd.read_csv(args.runs), args.out, pairings=multidomain.parse_pairings(args.pairing))
    else:
        PLOTS[args.kind](pd.read_csv(args.runs), args.out)
    print(f"{args.kind} -> {' '.join(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
