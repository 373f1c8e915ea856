"""SUN RGB-D, 37 classes, RGB only, in the layout of its RGB release for semantic segmentation
(ankurhanda/sunrgbd-meta-data, the release most 2D segmentation work uses): three archives
extracted side by side in ``data.root``:

- ``SUNRGBD-train_images/img-000001.jpg`` .. ``img-005285.jpg`` (SUNRGBD-train_images.tgz);
- ``SUNRGBD-test_images/img-000001.jpg`` .. ``img-005050.jpg`` (SUNRGBD-test_images.tgz);
- ``sunrgbd_train_test_labels/img-000001.png`` .. ``img-010335.png`` (sunrgbd_train_test_labels.tar.gz):
  the labels of the 5,050 test images first, then those of the 5,285 training images, so training
  image ``img-k`` has the label ``img-(5050+k)`` and test image ``img-k`` the label ``img-k``.

Mask values: 0 = unlabelled -> 255 (ignored), 1..37 -> classes 0..36 (the order of ``seg37list.mat``
of the SUN RGB-D toolbox). Splits: ``train`` (5,285 images) and ``val`` = the 5,050 test images (SUN
RGB-D has no separate validation set; ``test`` is accepted as another name for it). Context classes
of the guided perturbations: wall, floor and ceiling.
"""

from __future__ import annotations

import os

from cct import IGNORE_INDEX
from cct.config import ConfigError, DataConfig
from cct.data.base import Source, background_classes, dataset_root, label_map, require

CLASS_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
    "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor_mat", "clothes", "ceiling", "books",
    "fridge", "tv", "paper", "towel", "shower_curtain", "box", "whiteboard", "person", "night_stand", "toilet", "sink",
    "lamp", "bathtub", "bag",
)
CONTEXT = ("wall", "floor", "ceiling")
N_TEST = 5050  # label files img-000001 .. img-005050 are the test set's; training labels follow
SPLITS = {"train": "SUNRGBD-train_images", "val": "SUNRGBD-test_images", "test": "SUNRGBD-test_images"}
LABELS = "sunrgbd_train_test_labels"
ROOT_HINT = ("the folder holding SUNRGBD-train_images/, SUNRGBD-test_images/ and sunrgbd_train_test_labels/ "
             "(the RGB release of ankurhanda/sunrgbd-meta-data)")


def _is_image(name: str) -> bool:
    stem, ext = os.path.splitext(name)
    return ext.lower() in (".jpg", ".jpeg", ".png") and stem.startswith("img-") and stem[4:].isdigit()


def train_size(config: DataConfig) -> int:
    """The number of training images, from the file names alone (for the workflow's dry run)."""
    image_dir = require(dataset_root(config, ROOT_HINT) / SPLITS["train"], ROOT_HINT)
    return sum(1 for n in os.listdir(image_dir) if _is_image(n))


def load_source(config: DataConfig, split: str) -> Source:
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: SUN RGB-D has the splits {list(SPLITS)} (val is the test set)")
    root = dataset_root(config, ROOT_HINT)
    for folder in (*sorted(set(SPLITS.values())), LABELS):
        require(root / folder, ROOT_HINT)
    image_dir, mask_dir = root / SPLITS[split], root / LABELS
    offset = 0 if SPLITS[split] == SPLITS["val"] else N_TEST
    ids, files = [], []
    for name in sorted(os.listdir(image_dir)):
        if not _is_image(name):
            continue
        stem = os.path.splitext(name)[0]
        mask = mask_dir / f"img-{int(stem[4:]) + offset:06d}.png"
        if not mask.is_file():
            raise ConfigError(f"data.root: {mask} not found (the label of {image_dir / name})")
        ids.append(stem)
        files.append((str(image_dir / name), str(mask)))
    if not ids:
        raise ConfigError(f"data.root: {image_dir} holds no img-NNNNNN.jpg images ({ROOT_HINT})")
    table = label_map({0: IGNORE_INDEX, **{i + 1: i for i in range(len(CLASS_NAMES))}})
    return Source(
        name=f"sunrgbd/{'train' if split == 'train' else 'test'}",
        ids=ids,
        class_names=CLASS_NAMES,
        background_classes=background_classes(config, [CLASS_NAMES.index(c) for c in CONTEXT], CLASS_NAMES),
        files=files,
        label_map=table,
    )
