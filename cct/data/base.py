"""The shared dataset layer: a *source* is an indexed collection of (image, mask) pairs of one
split of one dataset, in the common form ``uint8 (H, W, 3)`` image and ``int64 (H, W)`` mask with
255 ignored. Dataset families (``embedded.py``, and real datasets) only implement sources."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cct import IGNORE_INDEX
from cct.config import ConfigError, DataConfig


@dataclass
class Source:
    """One split of a dataset. ``load(i)`` -> (image uint8 (H, W, 3), mask int64 (H, W)).

    Images live either in memory (``arrays``) or on disk (``files``: one (image path, mask path)
    pair per id, read lazily with PIL). A file-backed mask holds the dataset's raw label values;
    ``label_map`` (int64, indexed by raw value) turns them into class indices or 255, and -1 marks
    a raw value the dataset does not define. Without ``label_map`` the raw values are the classes.
    """

    name: str
    ids: list[str]
    class_names: tuple[str, ...]
    background_classes: list[int]
    arrays: tuple[np.ndarray, np.ndarray] | None = None  # in-memory images (N, H, W, 3), masks (N, H, W)
    image_labels: np.ndarray | None = None  # bool (N, K-1) classes present (foreground), if known
    palette: np.ndarray = field(default_factory=lambda: default_palette(256))
    files: list[tuple[str, str]] | None = None  # on-disk (image, mask) paths, one pair per id
    label_map: np.ndarray | None = None  # raw mask value -> class index / 255 (-1: undefined value)
    # ids the dataset's protocol labels first: a drawn labelled set takes them before any other
    # image (VOC: the 1,464-image `train` list inside the 10,582-image train_aug set)
    labeled_first: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = self.image(index)
        if self.files is not None:
            return image, self._file_mask(index, (image.shape[1], image.shape[0]))
        mask = self.arrays[1][index].astype(np.int64)
        check_mask(mask, self.num_classes, f"{self.name}: {self.ids[index]}")
        return image, mask

    def image(self, index: int) -> np.ndarray:
        """The image uint8 (H, W, 3) alone: a sample whose labels are never read (the unlabelled
        stream), so its mask file is neither decoded nor checked."""
        return read_image(self.files[index][0]) if self.files is not None else self.arrays[0][index]

    def _file_mask(self, index: int, image_size: tuple[int, int]) -> np.ndarray:
        """The class mask of a file-backed sample whose image is ``image_size`` (w, h), checked."""
        image_path, mask_path = self.files[index]
        mask = read_mask(mask_path)
        if (mask.shape[1], mask.shape[0]) != tuple(image_size):
            raise ConfigError(
                f"{self.name}: {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
                f"{image_size[0]}x{image_size[1]}"
            )
        if self.label_map is not None:
            mask = apply_label_map(mask, self.label_map, f"{self.name}: {mask_path}")
        check_mask(mask, self.num_classes, f"{self.name}: {mask_path}")
        return mask

    def check(self, indices, what: str) -> int:
        """Check the masks of the samples ``indices`` (their values, and for files their size against
        the image's header and the image's format) without decoding images; ConfigError naming the
        first bad file, and ``what`` (e.g. "data.labeled_list"). Returns the number of labelled
        (not 255) pixels. One pass over the masks: run before training, so a bad mask stops a run at
        its start rather than at the first evaluation."""
        indices = list(indices)
        if self.files is None:
            masks = self.arrays[1]
            labelled = 0
            for start in range(0, len(indices), 256):
                chunk = np.asarray(masks[indices[start:start + 256]])
                bad = (chunk >= self.num_classes) & (chunk != IGNORE_INDEX)
                if bad.any() or (chunk < 0).any():
                    first = indices[start + int(np.flatnonzero((bad | (chunk < 0)).reshape(len(chunk), -1).any(1))[0])]
                    try:
                        check_mask(masks[first].astype(np.int64), self.num_classes, f"{self.name}: {self.ids[first]}")
                    except ConfigError as exc:
                        raise ConfigError(f"{what}: {exc}") from None
                labelled += int((chunk != IGNORE_INDEX).sum())
            return labelled
        labelled = 0
        for i in indices:
            try:
                mask = self._file_mask(i, image_size(self.files[i][0]))
            except ConfigError as exc:
                raise ConfigError(f"{what}: {exc}") from None
            labelled += int((mask != IGNORE_INDEX).sum())
        return labelled

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


MAX_IMAGE_PIXELS = 4096 * 4096
"""Images above this size are refused: twice the largest image of any supported dataset's (Cityscapes,
2048 x 1024) on each side; a photo of hundreds of megapixels would be decoded, then run out of
memory in the model with no message."""


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB (greyscale and palette images are converted)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ConfigError(
                    f"image {path} is {width}x{height}: more than {MAX_IMAGE_PIXELS // 10**6} megapixels; resize it"
                )
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise ConfigError(f"image file not found: {path}") from None
    except (OSError, Image.DecompressionBombError, ValueError) as exc:  # OSError: UnidentifiedImageError too
        raise ConfigError(f"cannot read image {path} ({exc})") from exc


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file from its header (nothing decoded); ConfigError naming the file
    when it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise ConfigError(f"image file not found: {path}") from None
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as exc:
        raise ConfigError(f"cannot read image {path} ({exc})") from exc


def read_mask(path: str | Path) -> np.ndarray:
    """A label PNG as int64 (H, W) of its raw values: palette indices ('P'), grey levels ('L') or
    16/32-bit integers ('I;16', 'I'). A colour (RGB) mask is refused: it holds no indices."""
    from PIL import Image

    try:
        with Image.open(path) as mask:
            if mask.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise ConfigError(
                    f"{path}: a {mask.mode} image is not a label mask (expected a palette or greyscale PNG of "
                    f"class values)"
                )
            return np.asarray(mask).astype(np.int64)
    except FileNotFoundError:
        raise ConfigError(f"mask file not found: {path}") from None
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ConfigError(f"cannot read mask {path} ({exc})") from exc


def label_map(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """A lookup table raw value -> class for ``Source.label_map``; values not in ``mapping`` are -1."""
    table = np.full(size, -1, dtype=np.int64)
    for raw, cls in mapping.items():
        table[raw] = cls
    return table


def apply_label_map(mask: np.ndarray, table: np.ndarray, where: str) -> np.ndarray:
    """Map raw mask values through ``table``; an undefined raw value raises ConfigError naming it."""
    if mask.size and (mask.min() < 0 or mask.max() >= len(table)):
        value = int(mask.min() if mask.min() < 0 else mask.max())
        raise ConfigError(f"{where}: raw label value {value} is not defined for this dataset")
    mapped = table[mask]
    if (mapped < 0).any():
        raise ConfigError(f"{where}: raw label value {int(mask[mapped < 0][0])} is not defined for this dataset")
    return mapped


def require(path: Path, what: str, key: str = "data.root") -> Path:
    """``path`` must exist; else ConfigError "data.root: PATH not found (WHAT)"."""
    if not path.exists():
        raise ConfigError(f"{key}: {path} not found ({what})")
    return path


def dataset_root(config: DataConfig, what: str) -> Path:
    """The configured ``data.root`` as a Path; ConfigError when it is unset or does not exist."""
    if config.root is None:
        raise ConfigError(f"data.root: not set; data.dataset {config.dataset!r} reads its files from disk: give {what}")
    return require(Path(config.root).expanduser(), what)


def background_classes(config: DataConfig, default: list[int], class_names: tuple[str, ...]) -> list[int]:
    """``data.background_classes`` (validated against the dataset) or the dataset's default."""
    background = list(default) if config.background_classes is None else list(config.background_classes)
    bad = [c for c in background if not 0 <= c < len(class_names)]
    if bad:
        raise ConfigError(f"data.background_classes: {bad} not in 0..{len(class_names) - 1} ({config.dataset})")
    return background


def _load_embedded(config: DataConfig, split: str) -> Source:
    from cct.data import embedded

    if config.domain not in embedded.DOMAINS:
        raise ConfigError(f"data.domain: {config.domain!r} is not one of {sorted(embedded.DOMAINS)}")
    if split not in embedded.SPLIT_SIZES:
        raise ConfigError(f"split {split!r}: the embedded dataset has the splits {list(embedded.SPLIT_SIZES)}")
    # written once by `cct embedded` (the workflow), or generated here
    data = embedded.read(config.root, split, config.domain) if config.root else embedded.generate(split, config.domain)
    return Source(
        name=f"embedded-{config.domain}/{split}",
        ids=list(data.ids),
        class_names=data.class_names,
        background_classes=background_classes(config, [0], data.class_names),
        arrays=(data.images, data.masks),
        image_labels=data.image_labels(),
    )


def _lazy(module: str) -> Callable[[DataConfig, str], Source]:
    """``module.load_source``, imported on first use (the dataset modules import this one)."""

    def load(config: DataConfig, split: str) -> Source:
        return importlib.import_module(module).load_source(config, split)

    load.__qualname__ = load.__name__ = f"{module}.load_source"
    return load


# data.dataset -> loader(config, split) -> Source
LOADERS: dict[str, Callable[[DataConfig, str], Source]] = {
    "embedded": _load_embedded,
    "voc": _lazy("cct.data.voc"),
    "cityscapes": _lazy("cct.data.cityscapes"),
    "camvid": _lazy("cct.data.camvid"),
    "sunrgbd": _lazy("cct.data.sunrgbd"),
}


def train_size(config: DataConfig) -> int:
    """The number of images of the training split of ``config``'s dataset, counted from file names and
    lists without reading an image (the workflow's dry run checks label counts against it);
    ConfigError when the dataset's root is missing."""
    if config.dataset == "embedded":
        from cct.data import embedded

        if config.domain not in embedded.DOMAINS:
            raise ConfigError(f"data.domain: {config.domain!r} is not one of {sorted(embedded.DOMAINS)}")
        return embedded.SPLIT_SIZES["train"]
    if config.dataset not in LOADERS:
        raise ConfigError(f"data.dataset: {config.dataset!r} has no loader (available: {', '.join(LOADERS)})")
    return importlib.import_module(f"cct.data.{config.dataset}").train_size(config)


def load_source(config: DataConfig, split: str) -> Source:
    """The ``split`` ("train" or "val") of the dataset named in ``config``."""
    loader = LOADERS.get(config.dataset)
    if loader is None:
        raise ConfigError(f"data.dataset: {config.dataset!r} has no loader (available: {', '.join(LOADERS)})")
    return loader(config, split)
