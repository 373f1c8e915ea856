"""The weak-label setting's own outputs: the pseudo-label quality table and the example figure.

- ``table``: per dataset, the pseudo labels' mIoU on the pixels they label, the share of pixels they
  leave ignored (255), and the CAM classifier's image-level accuracy on val, each as mean ± sample
  standard deviation over the training seeds (one CAM classifier per seed).
- ``figure``: a few unlabelled training images side by side with their ground truth, the CAM of
  their classes (maximum over the present classes), the pseudo label, and the prediction of the
  CCT + image-level labels model.

    python -m analysis.weak table --summaries S1.json S2.json --cams C1/metrics.json C2/metrics.json \
        --csv t.csv --md t.md
    python -m analysis.weak figure --cam-config cam.yaml --cams CAMS --pseudo PSEUDO --checkpoint RUN/checkpoint.pt \
        --ids unlabeled.txt --out fig.png fig.pdf
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.formatting import fmt_mean_std, mean_defined, sample_std
from planner.layout import weak_key_of


def quality_rows(summaries: Sequence[str | Path], cams: Sequence[str | Path]) -> pd.DataFrame:
    """One row per (dataset, seed): pseudo-label mIoU, ignored share (%), CAM val accuracy (%)."""
    rows: dict[tuple[str, int], dict] = {}
    for path in summaries:
        data = json.loads(Path(path).read_text())
        rows.setdefault(weak_key_of(path), {}).update(
            pseudo_miou=data["miou"], ignored_fraction=data["ignored_fraction"],
            pseudo_pixel_accuracy=data.get("pixel_accuracy"),
            fg_threshold=data.get("fg_threshold"), bg_threshold=data.get("bg_threshold"),
        )
    for path in cams:
        data = json.loads(Path(path).read_text())
        rows.setdefault(weak_key_of(Path(path).parent), {}).update(
            cam_label_accuracy=data.get("val_label_accuracy"), cam_exact_match=data.get("val_exact_match"),
        )
    frame = pd.DataFrame([{"dataset": d, "seed": s, **v} for (d, s), v in sorted(rows.items())])
    if frame.empty:
        raise ValueError("no pseudo-label summary given")
    return frame


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    columns = ["pseudo_miou", "ignored_fraction", "cam_label_accuracy", "cam_exact_match"]
    out = []
    for dataset, group in frame.groupby("dataset", sort=True):
        row = {"dataset": dataset, "n_seeds": int(group["seed"].nunique())}
        for c in columns:
            values = group[c] if c in group else pd.Series(dtype=float)
            row[f"{c}_mean"], row[f"{c}_std"] = mean_defined(values), sample_std(values)
        thresholds = zip(group["fg_threshold"], group["bg_threshold"], strict=True)
        row["thresholds"] = "; ".join(sorted({f"fg {f}, bg {b}" for f, b in thresholds}))
        out.append(row)
    return pd.DataFrame(out)


def _cells(summary: pd.DataFrame, column: str) -> list[str]:
    """``mean ± std`` cells of a summary column (``<column>_mean``, ``<column>_std``)."""
    return [fmt_mean_std(m, s) for m, s in zip(summary[f"{column}_mean"], summary[f"{column}_std"], strict=True)]


def to_markdown(summary: pd.DataFrame) -> str:
    table = pd.DataFrame({
        "Dataset": summary["dataset"],
        "Pseudo-label mIoU (labelled pixels)": _cells(summary, "pseudo_miou"),
        "Ignored pixels (%)": _cells(summary, "ignored_fraction"),
        "CAM image-level accuracy on val (%)": _cells(summary, "cam_label_accuracy"),
        "Thresholds": summary["thresholds"],
        "Seeds": summary["n_seeds"],
    })
    caption = (
        "Table: Pseudo pixel labels from image-level labels (a CAM classifier per seed listed: each training "
        "seed's own, or one shared by every seed, settings.weak_labels.cam_seed), scored against the ground truth "
        "of the training images: mIoU (%) over the pixels they label, and the share of pixels they leave ignored "
        "(255). Mean ± sample standard deviation over those seeds."
    )
    return f"{caption}\n\n{table.to_markdown(index=False, disable_numparse=True)}\n"


# --------------------------------------------------------------------------------------------------
# The example figure


def figure(cam_config: str, cams: str, pseudo: str, checkpoint: str, ids_file: str, paths: Sequence[str], n: int = 4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from analysis.plots import save
    from cct.config import CamRunConfig, load_config
    from cct.data.base import default_palette, load_source, read_mask
    from cct.data.transforms import normalize, to_tensors
    from cct.engine import load_checkpoint
    from cct.evaluate import predict_image
    from cct.weak.cam import id_filename, read_cams

    config = load_config(cam_config, kind=CamRunConfig)
    source = load_source(config.data, "train")
    model, _ = load_checkpoint(checkpoint)
    wanted = [line.strip() for line in Path(ids_file).read_text().splitlines() if line.strip()]
    position = {name: i for i, name in enumerate(source.ids)}
    # images with at least one foreground class, in list order: the first n
    labelled = source.image_labels
    chosen = [name for name in wanted if labelled is not None and labelled[position[name]].any()][:n]
    palette = default_palette().astype(np.float32) / 255.0
    columns = ["image", "ground truth", "CAM (max over present classes)", "pseudo label", "CCT + image-level labels"]
    fig, axes = plt.subplots(len(chosen), len(columns), figsize=(2.2 * len(columns), 2.2 * len(chosen)), squeeze=False)
    for r, (row, name) in enumerate(zip(axes, chosen, strict=True)):
        image, truth = source.load(position[name])
        _, maps = read_cams(Path(cams) / f"{id_filename(name)}.npz")
        label = read_mask(Path(pseudo) / f"{id_filename(name)}.png")
        x, _ = to_tensors(image, truth)
        pred = predict_image(model, normalize()(x)[None], model.stride)[0].numpy()
        heat = maps.max(0) if len(maps) else np.zeros(truth.shape, dtype=np.float32)
        panels = [image, palette[truth], heat, palette[label], palette[pred]]
        for ax, panel, title in zip(row, panels, columns, strict=True):
            ax.imshow(panel, cmap="jet" if panel is heat else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
        row[0].set_ylabel(name, fontsize=7)
    fig.tight_layout()
    save(fig, paths)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.weak", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("table", help="pseudo-label quality per dataset")
    p.add_argument("--summaries", nargs="+", required=True, help="pseudo_labels.json of each dataset and seed")
    p.add_argument("--cams", nargs="*", default=[], help="cam/metrics.json of each dataset and seed")
    p.add_argument("--csv", required=True)
    p.add_argument("--md", required=True)
    p = sub.add_parser("figure", help="examples: image, ground truth, CAM, pseudo label, prediction")
    p.add_argument("--cam-config", required=True)
    p.add_argument("--cams", required=True)
    p.add_argument("--pseudo", required=True)
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt of a cct_weak run")
    p.add_argument("--ids", required=True, help="image ids to draw from (the run's unlabelled list)")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--out", nargs="+", required=True)
    args = parser.parse_args(argv)
    if args.kind == "table":
        frame = quality_rows(args.summaries, args.cams)
        summary = summarize(frame)
        for path in (args.csv, args.md):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        frame.merge(summary, on="dataset").to_csv(args.csv, index=False, float_format="%.4f")
        Path(args.md).write_text(to_markdown(summary))
        print(f"{len(frame)} pipelines -> {args.csv}, {args.md}")
    else:
        figure(args.cam_config, args.cams, args.pseudo, args.checkpoint, args.ids, args.out, args.n)
        print(f"figure -> {' '.join(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
