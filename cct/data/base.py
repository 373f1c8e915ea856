"""The shared dataset layer: a *source* is an indexed collection of (image, mask) pairs of one
split of one dataset, in the common form ``uint8 (H, W, 3)`` image and ``int64 (H, W)`` mask with
255 ignored. Dataset families (``embedded.py``, and real datasets) only implement sources."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cct import IGNORE_INDEX
from cct.config import ConfigError, DataConfig


@dataclass
class Source:
    """One split of a dataset. ``load(i)`` -> (image uint8 (H, W, 3), mask int64 (H, W))."""

    name: str
    ids: list[str]
    class_names: tuple[str, ...]
    background_classes: list[int]
    arrays: tuple[np.ndarray, np.ndarray] | None = None  # in-memory images (N, H, W, 3), masks (N, H, W)
    image_labels: np.ndarray | None = None  # bool (N, K-1) classes present (foreground), if known
    palette: np.ndarray = field(default_factory=lambda: default_palette(256))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        images, masks = self.arrays
        mask = masks[index].astype(np.int64)
        check_mask(mask, self.num_classes, f"{self.name}: {self.ids[index]}")
        return images[index], mask

    def subset(self, ids: list[str], what: str) -> list[int]:
        """Indices of ``ids``; an unknown id raises ConfigError naming ``what`` (the list) and the id."""
        position = {name: i for i, name in enumerate(self.ids)}
        missing = [name for name in ids if name not in position]
        if missing:
            raise ConfigError(f"{what}: {len(missing)} id(s) not in the {self.name} training set, e.g. {missing[0]!r}")
        return [position[name] for name in ids]


def check_mask(mask: np.ndarray, num_classes: int, where: str) -> None:
    """Every mask value must be a class index or 255; raise ConfigError naming the image otherwise."""
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any() or (mask < 0).any():
        value = int(mask[bad][0]) if bad.any() else int(mask.min())
        raise ConfigError(f"{where}: mask value {value} is out of range (classes 0..{num_classes - 1}, 255 ignored)")


def default_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), uint8 (n, 3); 255 maps to white."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    palette[IGNORE_INDEX] = (255, 255, 255)
    return palette


def load_source(config: DataConfig, split: str) -> Source:
    """The ``split`` ("train" or "val") of the dataset named in ``config``."""
    if config.dataset == "embedded":
        from cct.data import embedded

        if config.domain not in embedded.DOMAINS:
            raise ConfigError(f"data.domain: {config.domain!r} is not one of {sorted(embedded.DOMAINS)}")
        data = embedded.generate(split, config.domain)
        background = [0] if config.background_classes is None else config.background_classes
        bad = [c for c in background if not 0 <= c < len(data.class_names)]
        if bad:
            raise ConfigError(f"data.background_classes: {bad} not in 0..{len(data.class_names) - 1} ({config.dataset})")
        return Source(
            name=f"embedded-{config.domain}/{split}",
            ids=list(data.ids),
            class_names=data.class_names,
            background_classes=background,
            arrays=(data.images, data.masks),
            image_labels=data.image_labels(),
        )
    raise ConfigError(f"data.dataset: {config.dataset!r} has no loader in this version (available: embedded)")
