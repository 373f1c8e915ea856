"""PASCAL VOC 2012 with the SBD augmentation (``train_aug``), read from the official layout.

``data.root`` is the folder that holds ``VOCdevkit/VOC2012`` (for example the folder
``VOCtrainval_11-May-2012.tar`` was extracted in); ``VOCdevkit`` itself, or ``VOC2012`` itself,
are accepted too. Inside ``VOC2012/``:

- ``JPEGImages/<id>.jpg``: the images (VOCtrainval_11-May-2012.tar);
- ``SegmentationClass/<id>.png``: VOC's own palette masks (classes 0..20, 255 on object boundaries);
  labels of the ``val`` split;
- ``SegmentationClassAug/<id>.png``: the SBD-augmented greyscale masks (``SegmentationClassAug.zip``
  as distributed with DeepLab: 12,031 PNGs, the 10,582 ``train_aug`` images and the 1,449 ``val``
  images), extracted into ``VOC2012/``; labels of the ``train`` split;
- ``ImageSets/Segmentation/{train,val}.txt``: the 1,464 and 1,449 ids of VOC 2012;
- ``Annotations/<id>.xml``: the object annotations, read for image-level labels (the classes of the
  objects an image holds).

Splits: ``train`` is train_aug, the ids listed in ``ImageSets/Segmentation/train_aug.txt`` when that
file exists (lines ``<id>`` or ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png``), otherwise
every mask of ``SegmentationClassAug`` whose id is not in ``val.txt`` (10,582 images); labels from
``SegmentationClassAug``. ``val`` is ``val.txt`` with labels from ``SegmentationClass`` (palette
indices). The ``train.txt`` ids are the images a drawn labelled set takes first
(``Source.labeled_first``), so the 1,464-label split is the VOC 2012 ``train`` list, the paper's.
21 classes; 255 is ignored; background (class 0) is the context of the guided perturbations.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from cct.config import ConfigError, DataConfig, read_text_file
from cct.data.base import Source, background_classes, dataset_root, require

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
BACKGROUND = [0]
SPLITS = ("train", "val")

ROOT_HINT = "the folder holding VOCdevkit/VOC2012, where VOCtrainval_11-May-2012.tar was extracted"
_HINTS = {
    "JPEGImages": "the VOC 2012 images, from VOCtrainval_11-May-2012.tar",
    "SegmentationClass": "the VOC 2012 masks of the val split, from VOCtrainval_11-May-2012.tar",
    "SegmentationClassAug": "the SBD-augmented labels of the 10,582-image train_aug set: extract "
                            "SegmentationClassAug.zip (as distributed with DeepLab) into VOC2012/",
    "Annotations": "the VOC 2012 object annotations (image-level labels), from VOCtrainval_11-May-2012.tar",
    "ImageSets/Segmentation/train.txt": "the 1,464-image VOC 2012 train list, from VOCtrainval_11-May-2012.tar",
    "ImageSets/Segmentation/val.txt": "the 1,449-image VOC 2012 val list, from VOCtrainval_11-May-2012.tar",
}


def voc_dir(root: Path) -> Path:
    """``root/VOCdevkit/VOC2012``, ``root/VOC2012`` or ``root`` itself, whichever exists first."""
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012"):
        if candidate.is_dir():
            return candidate
    if (root / "JPEGImages").is_dir() or (root / "ImageSets").is_dir():
        return root
    raise ConfigError(f"data.root: {root / 'VOCdevkit' / 'VOC2012'} not found (give {ROOT_HINT})")


def _ids(path: Path, what: str) -> list[str]:
    """Ids of a list file: the first field of each line, as a file stem (``/JPEGImages/x.jpg`` -> ``x``)."""
    require(path, what)
    text = read_text_file(path, "data.root", kind="list of ids")
    ids = [Path(line.split()[0]).stem for line in text.splitlines() if line.strip()]
    if not ids:
        raise ConfigError(f"data.root: {path} lists no images")
    return ids


def _missing_files(paths: list[Path], what: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ConfigError(f"data.root: {missing[0]} not found ({what}; {len(missing)} of {len(paths)} missing)")


def image_labels(annotations: Path, ids: list[str]) -> np.ndarray:
    """Multi-hot foreground classes of each image (bool (N, 20)), from its ``Annotations/<id>.xml``."""
    index = {name: i - 1 for i, name in enumerate(CLASS_NAMES) if i}
    labels = np.zeros((len(ids), len(CLASS_NAMES) - 1), dtype=bool)
    for row, name in enumerate(ids):
        path = annotations / f"{name}.xml"
        try:
            tree = ET.parse(path)
        except FileNotFoundError:
            raise ConfigError(f"data.root: {path} not found ({_HINTS['Annotations']})") from None
        except ET.ParseError as exc:
            raise ConfigError(f"data.root: {path} is not valid XML ({exc})") from exc
        for obj in tree.getroot().findall("object"):
            cls = (obj.findtext("name") or "").strip()
            if cls not in index:
                raise ConfigError(f"data.root: {path} names an object {cls!r} that is not a VOC class")
            labels[row, index[cls]] = True
    return labels


# The sizes of the official release: the lists of VOC 2012 and the train_aug set of SegmentationClassAug.zip
TRAIN_LIST_SIZE, VAL_LIST_SIZE, TRAIN_AUG_SIZE = 1464, 1449, 10582


def _train_ids(base: Path, val_ids: list[str]) -> list[str]:
    """The training ids: ``train_aug.txt`` when present, else every SegmentationClassAug mask, minus
    val. Without the list, a release whose VOC 2012 lists are the official ones must give the
    official 10,582 images: fewer means a mask is missing, which would shrink the training set
    without a word."""
    masks = base / "SegmentationClassAug"
    listed = base / "ImageSets/Segmentation/train_aug.txt"
    if listed.is_file():
        ids = sorted(set(_ids(listed, "the train_aug list")))
    else:
        ids = sorted(p[:-4] for p in os.listdir(masks) if p.endswith(".png"))
    val = set(val_ids)
    ids = [i for i in ids if i not in val]
    if not ids:
        raise ConfigError(f"data.root: {masks} holds no masks of training images ({_HINTS['SegmentationClassAug']})")
    if not listed.is_file() and len(ids) != TRAIN_AUG_SIZE and len(val_ids) == VAL_LIST_SIZE:
        train = base / "ImageSets/Segmentation/train.txt"
        if train.is_file() and len(_ids(train, "the train list")) == TRAIN_LIST_SIZE:
            raise ConfigError(
                f"data.root: {masks} holds the masks of {len(ids)} training images, but train_aug (VOC 2012 + SBD) has "
                f"{TRAIN_AUG_SIZE:,}: re-extract SegmentationClassAug.zip into VOC2012/ (a mask is missing), or, to "
                f"train on another set, list its ids in {listed}"
            )
    return ids


def train_size(config: DataConfig) -> int:
    """The number of training images, from the lists and file names alone (for the workflow's dry run)."""
    base = voc_dir(dataset_root(config, ROOT_HINT))
    val = require(base / "ImageSets/Segmentation/val.txt", _HINTS["ImageSets/Segmentation/val.txt"])
    require(base / "SegmentationClassAug", _HINTS["SegmentationClassAug"])
    return len(_train_ids(base, _ids(val, _HINTS["ImageSets/Segmentation/val.txt"])))


def load_source(config: DataConfig, split: str) -> Source:
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: VOC has the splits {list(SPLITS)}")
    base = voc_dir(dataset_root(config, ROOT_HINT))
    for entry, hint in _HINTS.items():  # the whole layout, whichever split is asked for
        require(base / entry, hint)
    val_ids = _ids(base / "ImageSets/Segmentation/val.txt", _HINTS["ImageSets/Segmentation/val.txt"])
    images = base / "JPEGImages"
    if split == "val":
        ids, masks, first = val_ids, base / "SegmentationClass", None
    else:
        masks = base / "SegmentationClassAug"
        ids = _train_ids(base, val_ids)
        first = _ids(base / "ImageSets/Segmentation/train.txt", _HINTS["ImageSets/Segmentation/train.txt"])
        known = set(ids)
        outside = [i for i in first if i not in known]
        if outside:
            raise ConfigError(
                f"data.root: {len(outside)} id(s) of ImageSets/Segmentation/train.txt have no mask in {masks}, "
                f"e.g. {masks / (outside[0] + '.png')} ({_HINTS['SegmentationClassAug']})"
            )
    _missing_files([images / f"{i}.jpg" for i in ids], f"an image of the {split} split; {_HINTS['JPEGImages']}")
    _missing_files([masks / f"{i}.png" for i in ids], f"the mask of a {split} image; {_HINTS[masks.name]}")
    image_level = image_labels(base / "Annotations", ids) if split == "train" else None
    return Source(
        name=f"voc/{split}",
        ids=list(ids),
        class_names=CLASS_NAMES,
        background_classes=background_classes(config, BACKGROUND, CLASS_NAMES),
        files=[(str(images / f"{i}.jpg"), str(masks / f"{i}.png")) for i in ids],
        image_labels=image_level,
        labeled_first=first,
    )
