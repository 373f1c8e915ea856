"""Cityscapes (fine annotations), read from the official layout.

``data.root`` holds ``leftImg8bit/`` (leftImg8bit_trainvaltest.zip) and ``gtFine/``
(gtFine_trainvaltest.zip):

- ``leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png``: the images;
- ``gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png``: the label ids (0..33).

The label ids are mapped to the 19 evaluation classes ("train ids") by the table of
``torchvision.datasets.Cityscapes.classes`` (its ``train_id`` field); every other id is 255
(ignored). Splits: ``train`` (2,975 images) and ``val`` (500). An image's id is
``<city>_<seq>_<frame>``. Cityscapes has no background class: the context classes of the guided
perturbations default to its "stuff" classes (road, sidewalk, building, wall, fence, vegetation,
terrain, sky), overridable by ``data.background_classes``.
"""

from __future__ import annotations

import os

import numpy as np

from cct import IGNORE_INDEX
from cct.config import ConfigError, DataConfig
from cct.data.base import Source, background_classes, dataset_root, label_map, require

SPLITS = ("train", "val")
IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"
STUFF = ("road", "sidewalk", "building", "wall", "fence", "vegetation", "terrain", "sky")
ROOT_HINT = "the Cityscapes folder holding leftImg8bit/ and gtFine/"
_HINTS = {
    "leftImg8bit": "the Cityscapes images, from leftImg8bit_trainvaltest.zip",
    "gtFine": "the Cityscapes fine annotations, from gtFine_trainvaltest.zip",
}


def _classes():
    from torchvision.datasets import Cityscapes

    return Cityscapes.classes


def class_names() -> tuple[str, ...]:
    """The 19 evaluation classes in train-id order."""
    named = {c.train_id: c.name for c in _classes() if 0 <= c.train_id < IGNORE_INDEX}
    return tuple(named[i] for i in range(len(named)))


def id_to_train_id() -> np.ndarray:
    """Lookup table label id -> train id (255 for ids outside the 19 classes)."""
    return label_map({c.id: (c.train_id if 0 <= c.train_id < IGNORE_INDEX else IGNORE_INDEX)
                      for c in _classes() if c.id >= 0})


def palette() -> np.ndarray:
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[IGNORE_INDEX] = (255, 255, 255)
    for c in _classes():
        if 0 <= c.train_id < IGNORE_INDEX:
            colours[c.train_id] = c.color
    return colours


def train_size(config: DataConfig) -> int:
    """The number of training images, from the file names alone (for the workflow's dry run)."""
    image_dir = require(dataset_root(config, ROOT_HINT) / "leftImg8bit" / "train", _HINTS["leftImg8bit"])
    return sum(
        1
        for city in os.listdir(image_dir)
        if (image_dir / city).is_dir()
        for name in os.listdir(image_dir / city)
        if name.endswith(IMAGE_SUFFIX)
    )


def load_source(config: DataConfig, split: str) -> Source:
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: Cityscapes has the splits {list(SPLITS)} (test labels are not public)")
    root = dataset_root(config, ROOT_HINT)
    for top, hint in _HINTS.items():
        for name in SPLITS:
            require(root / top / name, hint)
    image_dir, mask_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    files, ids = [], []
    for city in sorted(os.listdir(image_dir)):
        if not (image_dir / city).is_dir():
            continue
        for name in sorted(os.listdir(image_dir / city)):
            if not name.endswith(IMAGE_SUFFIX):
                continue
            stem = name[: -len(IMAGE_SUFFIX)]
            mask = mask_dir / city / f"{stem}{MASK_SUFFIX}"
            if not mask.is_file():
                raise ConfigError(
                    f"data.root: {mask} not found (the labels of {image_dir / city / name}; {_HINTS['gtFine']})"
                )
            ids.append(stem)
            files.append((str(image_dir / city / name), str(mask)))
    if not ids:
        raise ConfigError(f"data.root: {image_dir} holds no <city>/*{IMAGE_SUFFIX} images ({_HINTS['leftImg8bit']})")
    names = class_names()
    return Source(
        name=f"cityscapes/{split}",
        ids=ids,
        class_names=names,
        background_classes=background_classes(config, [names.index(c) for c in STUFF], names),
        files=files,
        label_map=id_to_train_id(),
        palette=palette(),
    )
