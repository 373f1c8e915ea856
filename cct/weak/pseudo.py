"""Pseudo pixel labels from class activation maps, and the sources that train on them.

The threshold rule of the official pipeline (IRN's ``cam_to_ir_label``), without its dense-CRF
refinement: a pixel takes the present class with the largest normalised CAM when that CAM is above
``fg_threshold``; it is background when every present class's CAM is at most ``bg_threshold``; in
between it is 255, ignored by the weak loss. (The CRF is left out because no maintained library
provides one: pydensecrf has had no release since 2018; the pseudo labels' quality is measured
instead, and the paper's CRF is listed as a deviation in config/README.md.)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from cct import IGNORE_INDEX
from cct.config import CamRunConfig, ConfigError
from cct.data.base import Source, default_palette, load_source, read_mask
from cct.io import OutputError, atomic_write_json, check_replaceable_dir, same_path
from cct.weak.cam import foreground_labels, id_filename, read_cams


def pseudo_label(cams: np.ndarray, classes: np.ndarray, fg_threshold: float, bg_threshold: float) -> np.ndarray:
    """The label map of one image.

    ``cams``: float (n, H, W) normalised CAMs of the image's n present classes; ``classes``: int (n,)
    their dataset class indices (1..K-1, 0 is background). Returns int64 (H, W): the arg-max class
    where its CAM > ``fg_threshold``, 0 where every CAM <= ``bg_threshold`` (all of it when n = 0),
    255 elsewhere.
    """
    if len(classes) == 0:
        return np.zeros(cams.shape[1:], dtype=np.int64)
    best = cams.max(0)
    label = np.full(best.shape, IGNORE_INDEX, dtype=np.int64)
    label[best <= bg_threshold] = 0
    fg = best > fg_threshold
    label[fg] = np.asarray(classes, dtype=np.int64)[cams.argmax(0)][fg]
    return label


def write_png(path: Path, label: np.ndarray) -> None:
    """A label map as a palette PNG (class indices as pixel values, 255 white)."""
    from PIL import Image

    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette(default_palette().flatten().tolist())
    image.save(path)


def quality(confusion: np.ndarray, ignored: int, total: int, class_names: tuple[str, ...]) -> dict:
    """Pseudo-label scores: mIoU on the pixels they label, and the share they leave ignored (%)."""
    from cct.evaluate import scores

    result = scores(confusion, class_names)
    return {
        "miou": result["miou"],
        "per_class_iou": result["per_class_iou"],
        "pixel_accuracy": result["pixel_accuracy"],
        "ignored_fraction": 100.0 * ignored / max(total, 1),
    }


def make_pseudo_labels(config: CamRunConfig, cams_dir: str | Path, out_dir: str | Path) -> dict:
    """Pseudo labels of every training image from ``cams_dir`` -> ``out_dir/<id>.png`` and
    ``summary.json`` (thresholds, and the labels' quality against the ground truth where it exists).

    Written into ``out_dir.partial`` and renamed when complete."""
    import shutil

    cams_dir = Path(cams_dir)
    if str(out_dir).strip() and same_path(cams_dir, out_dir):
        raise OutputError(f"--out: {out_dir} is the --cams folder; give another folder")
    out_dir = check_replaceable_dir(out_dir, "summary.json", "--out")
    if not cams_dir.is_dir():
        raise ConfigError(f"--cams: not a directory: {cams_dir}")
    source = load_source(config.data, "train")
    foreground_labels(source)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    p, k = config.pseudo, source.num_classes
    confusion = np.zeros((k, k), dtype=np.int64)
    ignored = total = 0
    t0 = time.perf_counter()
    for i, image_id in enumerate(source.ids):
        classes, cams = read_cams(cams_dir / f"{id_filename(image_id)}.npz", k)
        label = pseudo_label(cams, classes, p.fg_threshold, p.bg_threshold)
        write_png(partial / f"{id_filename(image_id)}.png", label)
        truth = source.load(i)[1]
        if truth.shape != label.shape:
            raise ConfigError(
                f"--cams: {cams_dir}/{id_filename(image_id)}.npz is {label.shape} but image {image_id} is {truth.shape}"
            )
        valid = (truth != IGNORE_INDEX) & (label != IGNORE_INDEX)
        confusion += np.bincount(truth[valid] * k + label[valid], minlength=k * k).reshape(k, k)
        ignored += int(((label == IGNORE_INDEX) & (truth != IGNORE_INDEX)).sum())
        total += int((truth != IGNORE_INDEX).sum())
    summary = {
        **quality(confusion, ignored, total, source.class_names),
        "n_images": len(source),
        "fg_threshold": p.fg_threshold,
        "bg_threshold": p.bg_threshold,
        "cams": str(cams_dir),
        "class_names": list(source.class_names),
        "confusion_matrix": confusion.tolist(),
        "wall_time_s": time.perf_counter() - t0,
        "config": config.to_dict(),
    }
    atomic_write_json(partial / "summary.json", summary)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    return summary


def with_pseudo_labels(source: Source, directory: str | Path, indices: list[int]) -> Source:
    """``source`` with its masks replaced by the pseudo labels in ``directory`` (``<id>.png``) for
    the images ``indices``; other images get all-255 masks. A missing file is a ConfigError naming it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"weak.pseudo_labels: not a directory: {directory} (write it with `cct pseudo-labels`)")
    paths = {i: directory / f"{id_filename(source.ids[i])}.png" for i in indices}
    missing = [path for path in paths.values() if not path.is_file()]
    if missing:
        raise ConfigError(
            f"weak.pseudo_labels: {len(missing)} unlabelled image(s) have no pseudo label, e.g. {missing[0]}"
        )
    if source.files is not None:
        files = [(image, str(paths.get(i, ""))) for i, (image, _) in enumerate(source.files)]
        return dataclasses.replace(source, name=f"{source.name}+pseudo", files=files, label_map=None)
    images, masks = source.arrays
    pseudo = np.full(masks.shape, IGNORE_INDEX, dtype=np.uint8)
    for i, path in paths.items():
        label = read_mask(path)
        if label.shape != masks.shape[1:]:
            raise ConfigError(
                f"weak.pseudo_labels: {path} is {label.shape[1]}x{label.shape[0]}, its image "
                f"{masks.shape[2]}x{masks.shape[1]}"
            )
        pseudo[i] = label
    return dataclasses.replace(source, name=f"{source.name}+pseudo", arrays=(images, pseudo))
