"""What a grid costs: wall time and peak memory of the training jobs, from the ``benchmark:`` files
Snakemake writes (``{results}/benchmarks/train/<run>.tsv``), per dataset, setting and method, with a
total per setting and for the whole grid.

Wall time is the job's (start-up, data loading, training, periodic and final evaluation);
``max_rss`` the peak resident memory (MB). A benchmark file records the last attempt of a job only:
a training that was interrupted and resumed also counts its earlier attempts, from the run's
``metrics.json`` (``attempts``: each attempt's training time up to its last saved state;
``--metrics``), so the wall time is what the run cost in all. Memory is the last attempt's.

CPU time is the run's own count where its ``metrics.json`` has one (``cpu_time_s``: user + system
seconds of the training process from its start, every attempt included), else the benchmark file's
``cpu_time``. The latter is a sample: Snakemake reads a job's CPU time every 0.5 s for the first 15
s and every 30 s after, so a job of 30 s reports about half of its CPU time (14.9 of a 30 s
single-thread training in the default grid's run of 476dea0). ``Cores`` is CPU over wall time: the
share of a core a job got (1 for a single-thread job that never waits).

    python -m analysis.runtime --threads 1 --csv runtime.csv --md runtime.md BENCHMARK.tsv ... \
        [--metrics METRICS.json ...]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Iterable

import pandas as pd

from planner.layout import Run
from planner.vocabulary import METHOD_NAMES, METHOD_ORDER

COLUMNS = ["dataset", "setting", "method", "jobs", "attempts", "wall_s_mean", "wall_s_max", "wall_s_total",
           "cpu_s_total", "cores", "cpu_source", "max_rss_mb", "threads"]


def from_metrics(metrics_paths: Iterable[str | Path]) -> dict[Run, tuple[int, float, float]]:
    """Run -> (its number of attempts, the wall seconds of all but the last, its CPU seconds or NaN)
    from ``metrics.json`` files (a run without ``attempts``: one attempt; without ``cpu_time_s``,
    written before runs counted it: NaN)."""
    out = {}
    for path in metrics_paths:
        metrics = json.loads(Path(path).read_text())
        attempts = metrics.get("attempts") or [{}]
        cpu = metrics.get("cpu_time_s")
        out[Run.from_path(path)] = (len(attempts), float(sum(a.get("wall_s", 0.0) for a in attempts[:-1])),
                                    math.nan if cpu is None else float(cpu))
    return out


def read_benchmarks(paths: Iterable[str | Path], metrics: Iterable[str | Path] = ()) -> pd.DataFrame:
    """One row per benchmark file (repeats averaged): the run's coordinates, s, cpu_time, max_rss,
    attempts, cpu_source; ``s`` plus the earlier attempts of the run and ``cpu_time`` the run's own
    count where its metrics.json (``metrics``) has one (``cpu_source`` "run", else "benchmark")."""
    earlier = from_metrics(metrics)
    rows = []
    for path in paths:
        run = Run.from_path(path)
        frame = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
        row = dict(run.__dict__)
        for column in ("s", "cpu_time", "max_rss"):
            values = pd.to_numeric(frame[column], errors="coerce") if column in frame else pd.Series(dtype=float)
            row[column] = float(values.mean()) if values.notna().any() else math.nan
        n, before, cpu = earlier.get(run, (1, 0.0, math.nan))
        row["attempts"], row["s"] = n, row["s"] + before
        if math.isnan(cpu):
            row["cpu_source"] = "benchmark"
        else:
            row["cpu_source"], row["cpu_time"] = "run", cpu
        rows.append(row)
    if not rows:
        raise ValueError("no benchmark file given")
    return pd.DataFrame(rows)


def summarize(bench: pd.DataFrame, threads: int | None = None) -> pd.DataFrame:
    """Per (dataset, setting, method) rows, then a ``total`` row per setting and one for the grid."""

    def agg(frame: pd.DataFrame, dataset: str, setting: str, method: str) -> dict:
        cpu = frame["cpu_time"].sum(min_count=1)
        sources = set(frame["cpu_source"])  # read_benchmarks names every row's
        return {
            "dataset": dataset, "setting": setting, "method": method, "jobs": len(frame),
            "attempts": int(frame["attempts"].sum()) if "attempts" in frame else len(frame),
            "wall_s_mean": frame["s"].mean(), "wall_s_max": frame["s"].max(), "wall_s_total": frame["s"].sum(),
            "cpu_s_total": cpu, "cores": cpu / frame["s"].sum() if frame["s"].sum() > 0 else math.nan,
            "cpu_source": sources.pop() if len(sources) == 1 else "mixed", "max_rss_mb": frame["max_rss"].max(),
            "threads": threads,
        }

    order = {m: k for k, m in enumerate(METHOD_ORDER)}
    rows = []
    for (dataset, setting), frame in bench.groupby(["dataset", "setting"], sort=True):
        methods = sorted(frame["method"].unique(), key=lambda m: (order.get(m, len(order)), m))
        rows += [agg(frame[frame["method"] == m], dataset, setting, m) for m in methods]
        rows.append(agg(frame, dataset, setting, "total"))
    rows.append(agg(bench, "all", "all", "total"))
    return pd.DataFrame(rows, columns=COLUMNS)


def to_markdown(summary: pd.DataFrame) -> str:
    table = pd.DataFrame({
        "Dataset": summary["dataset"],
        "Setting": summary["setting"],
        "Method": [METHOD_NAMES.get(m, m) if m != "total" else "**total**" for m in summary["method"]],
        "Jobs": summary["jobs"],
        "Attempts": summary["attempts"],
        "Wall s (mean)": summary["wall_s_mean"].map(lambda v: f"{v:.1f}"),
        "Wall s (max)": summary["wall_s_max"].map(lambda v: f"{v:.1f}"),
        "Wall s (sum)": summary["wall_s_total"].map(lambda v: f"{v:.0f}"),
        "CPU s (sum)": summary["cpu_s_total"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}"),
        "Cores": summary["cores"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}"),
        "Peak RSS MB": summary["max_rss_mb"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}"),
    })
    threads = summary["threads"].dropna().unique()
    note = f" with {int(threads[0])} thread(s) per job" if len(threads) == 1 else ""
    caption = (
        "Table: Cost of the training jobs of the grid, from Snakemake's benchmark files" + note + ". "
        "Wall s (sum) is the sequential cost; parallel jobs finish sooner. A resumed training counts "
        "every attempt (Attempts > Jobs): its earlier attempts' time comes from its metrics.json. "
        + _cpu_note(summary)
        + " Cores is CPU over wall time, the share of a core the jobs got. Peak RSS is the largest "
        "resident memory of one job."
    )
    return f"{caption}\n\n{table.to_markdown(index=False, disable_numparse=True)}\n"


def _cpu_note(summary: pd.DataFrame) -> str:
    """Where the table's CPU seconds come from: the last row (the whole grid) names the source of all."""
    source = summary["cpu_source"].iloc[-1]
    if source == "run":
        return "CPU s is each training process's own count (user + system, from its metrics.json)."
    note = ("CPU s is Snakemake's sample (every 30 s after a job's first 15 s), which misses up to the "
            "last 30 s of a job")
    return note + (", where a run's metrics.json has no count of its own." if source == "mixed" else ".")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.runtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmarks", nargs="+", help="benchmark TSV files of the training jobs")
    parser.add_argument("--threads", type=int, default=None, help="threads per training job (for the caption)")
    parser.add_argument("--metrics", nargs="*", default=[], help="metrics.json of the runs (their earlier attempts)")
    parser.add_argument("--csv", required=True)
    parser.add_argument("--md", required=True)
    args = parser.parse_args(argv)
    summary = summarize(read_benchmarks(args.benchmarks, args.metrics), args.threads)
    for path in (args.csv, args.md):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.csv, index=False, float_format="%.2f")
    Path(args.md).write_text(to_markdown(summary))
    print(f"{len(summary)} rows -> {args.csv}, {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
