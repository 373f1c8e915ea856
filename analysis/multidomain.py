"""The multi-domain setting's table, in the paper's layout, from ``runs.csv``.

Per pairing (``settings.multi_domain.pairings``: two or more datasets) and label count (labelled
images per domain), four rows:

- Supervised: each member dataset trained alone on its labelled images (``supervised``);
- CCT: each member trained alone with CCT (``cct``);
- Supervised (joint): one model over every member, a shared encoder and a main decoder per dataset,
  labelled images only (``joint_supervised``);
- CCT (joint): the same with each dataset's auxiliary decoders and consistency loss (``joint_cct``).

Columns: each member's final-iteration mIoU on its own validation set (a joint run's
``miou@<member>``, an alone run's ``miou``) as mean ± sample standard deviation over the runs
(training seeds × split draws), and their mean: the mean over runs of the per-run average over the
members (for a joint run, over its domains; for the alone rows, over the members' runs with the same
split draw and training seed). A joint row also has its paired gain over the same training alone
(CCT (joint) − CCT, Supervised (joint) − Supervised; same split and seed), per member and for the
mean. The paper column holds the paper's numbers where ``data/paper_numbers.csv`` has rows of kind
``paper`` for them (setting ``multi_domain``, the method, label count and encoder, and the dataset
``<d1>+<d2>`` for the mean or ``<d1>+<d2>@<di>`` for member ``di``, each ``d`` a cct dataset, or
``embedded_<domain>`` for the embedded one); none is ever filled in here.

    python -m analysis.tables --setting multi_domain --pairing ab=a,b --runs runs.csv --paper P.csv \
        --csv t.csv --md t.md --tex t.tex
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from analysis.formatting import fmt_mean_std, join_distinct, latex, latex_tabular, sample_std
from planner.vocabulary import JOINT_METHODS, METHOD_NAMES, SETTING_NAMES

SETTING = "multi_domain"
ROWS = ("supervised", "cct", "joint_supervised", "joint_cct")  # the paper's row order
MEAN = "mean"  # the domain key of the per-run average over the members
STATS = ("n", "miou_mean", "miou_std", "best_miou_mean", "best_miou_std", "gain_mean", "gain_std", "gain_n",
         "paper_miou")
HEAD_COLUMNS = ["pairing", "members", "setting", "method", "method_name", "labels", "n", "n_seeds", "n_splits",
                "miou_mean", "miou_std", "best_miou_mean", "best_miou_std", "gain_mean", "gain_std", "gain_n",
                "paper_miou", "paper_source"]
TAIL_COLUMNS = ["paper_dataset", "encoder", "iterations", "eval_protocol"]


def domain_label(cct_dataset: object, domain: object) -> str:
    """A domain's cct dataset as the paper numbers name it: ``cityscapes``, ``embedded_b``."""
    return f"embedded_{domain}" if cct_dataset == "embedded" else str(cct_dataset)


def parse_pairings(items: Iterable[str] | None) -> dict[str, list[str]]:
    """``["ab=a,b", ...]`` -> ``{"ab": ["a", "b"]}``."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        name, sep, members = item.partition("=")
        if not sep or len(members.split(",")) < 2:
            raise ValueError(f"--pairing {item!r}: expected NAME=DATASET,DATASET[,...]")
        out[name] = members.split(",")
    return out


def infer_pairings(runs: pd.DataFrame) -> dict[str, list[str]]:
    """Pairings of the joint runs in ``runs`` (their dataset and ``domains`` columns)."""
    joint = runs[runs["method"].isin(list(JOINT_METHODS)) & (runs["setting"] == SETTING)]
    if joint.empty or "domains" not in joint:
        return {}
    return {name: str(group["domains"].dropna().iloc[0]).split(";")
            for name, group in joint.groupby("dataset", sort=False)}


def scores(runs: pd.DataFrame, name: str, members: list[str]) -> pd.DataFrame:
    """Long table of one pairing: labels, method, split, seed, domain (a member or MEAN), miou, best_miou.

    Alone runs give their member's score; a MEAN row exists for a split and seed where every member
    has an alone run of that method. Joint runs give ``miou@<member>`` per member and their mean."""
    runs = runs[runs["setting"] == SETTING]
    parts = []
    alone = runs[runs["dataset"].isin(members) & runs["method"].isin([m for m in ROWS if m not in JOINT_METHODS])]
    for member in members:
        sub = alone[alone["dataset"] == member]
        parts.append(sub.assign(domain=member)[["labels", "method", "split", "seed", "domain", "miou", "best_miou"]])
    joint = runs[(runs["dataset"] == name) & runs["method"].isin(list(JOINT_METHODS))]
    for member in members:
        cols = {k: f"{k}@{member}" for k in ("miou", "best_miou")}
        sub = joint.assign(domain=member, **{k: joint[c] if c in joint else math.nan for k, c in cols.items()})
        parts.append(sub[["labels", "method", "split", "seed", "domain", "miou", "best_miou"]])
    frame = pd.concat(parts, ignore_index=True)
    per_domain = frame.pivot_table(index=["labels", "method", "split", "seed"], columns="domain",
                                   values=["miou", "best_miou"], aggfunc="first", dropna=False)
    means = []
    for key in ("miou", "best_miou"):
        table = per_domain[key].reindex(columns=members) if key in per_domain else None
        if table is not None:
            means.append(table.mean(axis=1, skipna=False).rename(key))  # every member or nothing
    if means:
        mean = pd.concat(means, axis=1).dropna(subset=["miou"]).reset_index().assign(domain=MEAN)
        frame = pd.concat([frame, mean[frame.columns]], ignore_index=True)
    return frame.dropna(subset=["miou"]).reset_index(drop=True)


def _paper_lookup(paper: pd.DataFrame | None, dataset: str, method: str, labels: int,
                  encoder: str) -> tuple[float, str]:
    if paper is None or paper.empty:
        return math.nan, ""
    match = paper[(paper["dataset"] == dataset) & (paper["setting"] == SETTING) & (paper["method"] == method)
                  & (paper["labels"].astype(int) == int(labels)) & (paper["encoder"] == encoder)]
    if match.empty:
        return math.nan, ""
    return float(match["miou"].iloc[0]), str(match["source"].iloc[0])


def _domain_labels(runs: pd.DataFrame, name: str, members: list[str]) -> dict[str, str]:
    """Each member's cct dataset label (from its alone runs, else from the joint runs' columns)."""
    labels = {}
    for member in members:
        alone = runs[runs["dataset"] == member]
        joint = runs[runs["dataset"] == name]
        if len(alone) and "cct_dataset" in alone:
            labels[member] = domain_label(alone["cct_dataset"].iloc[0], alone["domain"].iloc[0])
        elif len(joint) and f"cct_dataset@{member}" in joint:
            labels[member] = domain_label(joint[f"cct_dataset@{member}"].iloc[0], joint[f"domain@{member}"].iloc[0])
        else:
            labels[member] = member
    return labels


def _select(runs: pd.DataFrame, pairings: Mapping[str, list[str]] | None) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The setting's runs, and the pairings (given, or inferred from the joint runs)."""
    runs = runs[runs["setting"] == SETTING]
    if runs.empty:
        raise ValueError(f"runs.csv has no run of setting {SETTING!r}")
    pairings = dict(pairings or infer_pairings(runs))
    if not pairings:
        raise ValueError("no pairing given (--pairing NAME=A,B) and no joint run to infer one from")
    return runs, pairings


def summarize(runs: pd.DataFrame, pairings: Mapping[str, list[str]] | None = None,
              paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (pairing, label count, method) with the columns HEAD_COLUMNS, then per member
    ``<stat>@<member>`` (STATS), then TAIL_COLUMNS."""
    runs, pairings = _select(runs, pairings)
    rows, domain_order = [], []
    for name, members in pairings.items():
        domain_order += [m for m in members if m not in domain_order]
        long = scores(runs, name, members)
        if long.empty:
            continue
        labels_of = _domain_labels(runs, name, members)
        paper_key = "+".join(labels_of[m] for m in members)
        for labels in sorted(long["labels"].unique()):
            at = long[long["labels"] == labels]
            for method in [m for m in ROWS if m in set(at["method"])]:
                sub = at[at["method"] == method]
                base = at[at["method"] == JOINT_METHODS.get(method, "")]
                source = runs[(runs["labels"] == labels) & (runs["method"] == method)
                              & runs["dataset"].isin([name] if method in JOINT_METHODS else members)]
                encoder = join_distinct(source["encoder"])
                mean = sub[sub["domain"] == MEAN]
                row = {
                    "pairing": name, "members": ";".join(members), "setting": SETTING, "method": method,
                    "method_name": METHOD_NAMES.get(method, method), "labels": int(labels),
                    "n_seeds": int(mean["seed"].nunique()), "n_splits": int(mean["split"].nunique()),
                    "paper_source": "", "paper_dataset": paper_key, "encoder": encoder,
                    "iterations": join_distinct(source["iterations"]),
                    "eval_protocol": join_distinct(source["eval_protocol"]),
                }
                sources = []
                for domain in [*members, MEAN]:
                    cell = sub[sub["domain"] == domain].set_index(["split", "seed"])
                    suffix = "" if domain == MEAN else f"@{domain}"
                    stats = {
                        "n": int(cell["miou"].notna().sum()),
                        "miou_mean": float(cell["miou"].mean()) if len(cell) else math.nan,
                        "miou_std": sample_std(cell["miou"]),
                        "best_miou_mean": (float(cell["best_miou"].mean()) if cell["best_miou"].notna().any()
                                           else math.nan),
                        "best_miou_std": sample_std(cell["best_miou"]),
                        "gain_mean": math.nan, "gain_std": math.nan, "gain_n": 0,
                    }
                    if len(base):
                        reference = base[base["domain"] == domain].set_index(["split", "seed"])["miou"]
                        paired = (cell["miou"] - reference.reindex(cell.index)).dropna()
                        if len(paired):
                            stats.update(gain_mean=float(paired.mean()), gain_std=sample_std(paired),
                                         gain_n=len(paired))
                    key = paper_key if domain == MEAN else f"{paper_key}@{labels_of[domain]}"
                    stats["paper_miou"], found = _paper_lookup(paper, key, method, labels, encoder)
                    if found:
                        sources.append(found)
                    row.update({f"{k}{suffix}": v for k, v in stats.items()})
                row["paper_source"] = "; ".join(dict.fromkeys(sources))
                rows.append(row)
    if not rows:
        raise ValueError(f"no run of the pairings {dict(pairings)} in runs.csv")
    per_domain = [f"{k}@{d}" for d in domain_order for k in STATS]
    summary = pd.DataFrame(rows)
    return summary.reindex(columns=HEAD_COLUMNS + per_domain + TAIL_COLUMNS).reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Formatting


def caption(summary: pd.DataFrame) -> str:
    protocols = "; ".join(sorted({p for v in summary["eval_protocol"].dropna() for p in str(v).split("; ") if p}))
    protocols = protocols or "unknown"
    return (
        f"{SETTING_NAMES[SETTING]}. Per pairing and number of labelled images per domain: each dataset "
        "trained alone (Supervised, CCT) and all of them jointly with a shared encoder and a decoder set "
        "per dataset (Supervised (joint), CCT (joint)). Final-iteration mIoU (%) on each dataset's "
        f"validation set, evaluation protocol: {protocols}. Mean ± sample standard deviation over n runs "
        "(training seeds × split draws); Mean: the per-run average over the datasets (alone rows: over the "
        "datasets' runs with the same split and seed). Gain: paired difference of a joint row to the same "
        "training alone (same split and seed). Paper: the paper's numbers (per dataset / mean) for the same "
        "protocol; empty where none is known."
    )


def _blocks(summary: pd.DataFrame) -> list[tuple[str, list[str], int, pd.DataFrame]]:
    """(pairing, members, labels, rows) in table order."""
    out = []
    for (name, labels), rows in summary.groupby(["pairing", "labels"], sort=False):
        out.append((name, rows["members"].iloc[0].split(";"), int(labels), rows))
    return out


def _fmt_paper(row: pd.Series, members: list[str]) -> str:
    values = [row.get(f"paper_miou@{m}", math.nan) for m in members] + [row["paper_miou"]]
    if all(pd.isna(v) for v in values):
        return ""
    return " / ".join("–" if pd.isna(v) else f"{v:.1f}" for v in values)


def display_block(rows: pd.DataFrame, members: list[str]) -> pd.DataFrame:
    """The formatted columns of one (pairing, label count) block."""
    table = pd.DataFrame({"Method": rows["method_name"].to_list()})
    for domain in [*members, MEAN]:
        suffix = "" if domain == MEAN else f"@{domain}"
        table["Mean" if domain == MEAN else domain] = [
            fmt_mean_std(m, s) for m, s in zip(rows[f"miou_mean{suffix}"], rows[f"miou_std{suffix}"], strict=True)]
    if (rows["gain_n"] > 0).any():
        for domain in [*members, MEAN]:
            suffix = "" if domain == MEAN else f"@{domain}"
            table[f"Gain {'mean' if domain == MEAN else domain}"] = [
                fmt_mean_std(m, s, signed=True) if n else ""
                for m, s, n in zip(rows[f"gain_mean{suffix}"], rows[f"gain_std{suffix}"], rows[f"gain_n{suffix}"],
                                   strict=True)]
    table["n (seeds × splits)"] = [f"{n} ({a} × {b})"
                                   for n, a, b in zip(rows["n"], rows["n_seeds"], rows["n_splits"], strict=True)]
    table["Paper"] = [_fmt_paper(row, members) for _, row in rows.iterrows()]
    return table


def _title(name: str, members: list[str], labels: int) -> str:
    return f"{name} ({' + '.join(members)}), {labels} labelled images per domain"


def to_markdown(summary: pd.DataFrame) -> str:
    parts = [f"Table: {caption(summary)}\n"]
    for name, members, labels, rows in _blocks(summary):
        body = display_block(rows, members).to_markdown(index=False, disable_numparse=True)
        parts.append(f"{_title(name, members, labels)}:\n\n{body}\n")
    return "\n".join(parts)


def to_latex(summary: pd.DataFrame) -> str:
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex(caption(summary))}}}", rf"\label{{tab:{SETTING}}}"]
    for k, (name, members, labels, rows) in enumerate(_blocks(summary)):
        table = display_block(rows, members)
        if k:
            lines.append(r"\medskip")
        lines.append(rf"\par\textbf{{{latex(_title(name, members, labels))}}}\par")
        lines += latex_tabular(table, "l" + "r" * (len(table.columns) - 1))
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def write_tables(summary: pd.DataFrame, csv: str | Path, md: str | Path, tex: str | Path) -> None:
    for path in (csv, md, tex):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(csv, index=False, float_format="%.4f")
    Path(md).write_text(to_markdown(summary))
    Path(tex).write_text(to_latex(summary))


def bar_frame(runs: pd.DataFrame, pairings: Mapping[str, list[str]] | None = None) -> pd.DataFrame:
    """Per-run scores of every pairing for the figure: pairing, labels, method, split, seed, domain
    (a member or MEAN), miou."""
    runs, pairings = _select(runs, pairings)
    parts = [scores(runs, name, members).assign(pairing=name) for name, members in pairings.items()]
    frame = pd.concat(parts, ignore_index=True)
    if frame.empty:
        raise ValueError(f"no run of the pairings {dict(pairings)}")
    return frame

