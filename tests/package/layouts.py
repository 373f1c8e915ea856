"""Small dataset trees in the official on-disk layouts, written with PIL (no download): PASCAL VOC
2012 + SBD, Cityscapes, CamVid (SegNet layout) and SUN RGB-D (RGB release). Each writer returns what
it wrote (ids per split and the raw masks), so tests can check what a loader reads.

Also a command line, for a VOC-layout tree to run the paper configuration on (CPU or GPU smoke runs):

    python tests/package/layouts.py voc DIR [--train 1464 --extra 200 --val 20 --size 96x128]

Only numpy and PIL are imported here, so the file runs as a script as well as a test helper.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from cct.data.base import default_palette

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_palette() -> list[int]:
    """The VOC colour map as a flat PIL palette (the indices are what the loaders read)."""
    return default_palette(256).flatten().tolist()


def scene(rng: np.random.Generator, size: tuple[int, int], values: list[int], fill: int,
          boundary: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A noise image (at least 4x4) with 1-2 coloured rectangles, and its mask: ``fill`` outside the rectangles,
    a value drawn from ``values`` inside each, and (if given) a 1-pixel ``boundary`` around them."""
    h, w = size
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.full((h, w), fill, dtype=np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        value = int(rng.choice(values))
        y0, x0 = int(rng.integers(1, max(2, h // 2))), int(rng.integers(1, max(2, w // 2)))
        y1, x1 = int(rng.integers(min(y0 + 4, h - 2), h - 1)), int(rng.integers(min(x0 + 4, w - 2), w - 1))
        if boundary is not None:
            mask[y0 - 1:y1 + 1, x0 - 1:x1 + 1] = boundary
        mask[y0:y1, x0:x1] = value
        image[y0:y1, x0:x1] = (np.array([37, 91, 151]) * (value + 1)) % 256
    return image, mask


def _save_mask(mask: np.ndarray, path: Path, palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(mask, mode="L")
    if palette is not None:
        img = img.convert("P")
        img.putpalette(palette)
        # convert("P") of an L image keeps the values as indices; check, the test trees must be exact
        assert np.array_equal(np.asarray(img), mask)
    img.save(path)


def _save_image(image: np.ndarray, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **kwargs)


def _voc_xml(name: str, classes: list[int], size: tuple[int, int]) -> str:
    objects = "".join(
        f"<object><name>{VOC_CLASSES[c]}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>{size[1]}</xmax><ymax>{size[0]}</ymax></bndbox>"
        "<part><name>head</name></part></object>"
        for c in classes
    )
    return (f"<annotation><folder>VOC2012</folder><filename>{name}.jpg</filename><size><width>{size[1]}</width>"
            f"<height>{size[0]}</height><depth>3</depth></size><segmented>1</segmented>{objects}</annotation>\n")


def voc_tree(root: str | Path, train: int = 6, extra: int = 4, val: int = 3, size: tuple[int, int] = (32, 48),
             seed: int = 0) -> dict:
    """``root/VOCdevkit/VOC2012`` with ``train`` images in train.txt, ``extra`` SBD-only training images,
    ``val`` images in val.txt, and two detection-only images (no mask, as in the real release).

    SegmentationClass (palette PNGs with 255 boundaries) covers train and val; SegmentationClassAug
    (greyscale PNGs) covers train, extra and val; Annotations name the classes of each mask."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "VOCdevkit" / "VOC2012"
    ids = {
        "train": [f"2007_{i:06d}" for i in range(train)],
        "extra": [f"2008_{i:06d}" for i in range(extra)],
        "val": [f"2009_{i:06d}" for i in range(val)],
        "detection": ["2010_000000", "2010_000001"],
    }
    masks = {}
    palette = voc_palette()
    for group, names in ids.items():
        for name in names:
            image, mask = scene(rng, size, list(range(1, 21)), 0, boundary=255)
            _save_image(image, base / "JPEGImages" / f"{name}.jpg", quality=95)
            present = sorted(int(v) for v in np.unique(mask) if 0 < v < 255)
            (base / "Annotations").mkdir(parents=True, exist_ok=True)
            (base / "Annotations" / f"{name}.xml").write_text(_voc_xml(name, present, size))
            if group == "detection":
                continue
            masks[name] = mask
            if group in ("train", "val"):
                _save_mask(mask, base / "SegmentationClass" / f"{name}.png", palette)
            _save_mask(mask, base / "SegmentationClassAug" / f"{name}.png")
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids[split]))
    (lists / "trainval.txt").write_text("".join(f"{i}\n" for i in ids["train"] + ids["val"]))
    return {"root": Path(root), "base": base, **ids, "masks": masks}


def cityscapes_tree(root: str | Path, cities: dict[str, list[str]] | None = None, per_city: int = 2,
                    size: tuple[int, int] = (32, 48), seed: int = 0) -> dict:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and ``gtFine/<split>/<city>/*_gtFine_labelIds.png``
    (raw label ids 0..33), plus the colour and instance PNGs the release also holds."""
    rng = np.random.default_rng(seed)
    cities = cities or {"train": ["aachen", "bochum"], "val": ["frankfurt"], "test": ["berlin"]}
    root = Path(root)
    out: dict = {"root": root, "masks": {}}
    for split, names in cities.items():
        out[split] = []
        for city in names:
            for k in range(per_city):
                stem = f"{city}_{k:06d}_{19 + k:06d}"
                image, mask = scene(rng, size, [7, 8, 11, 21, 23, 24, 26, 33, 9, 1, 4], 0)
                _save_image(image, root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                gt = root / "gtFine" / split / city
                _save_mask(mask, gt / f"{stem}_gtFine_labelIds.png")
                _save_image(np.zeros((*size, 3), dtype=np.uint8), gt / f"{stem}_gtFine_color.png")
                _save_mask(mask, gt / f"{stem}_gtFine_instanceIds.png")
                out[split].append(stem)
                out["masks"][stem] = mask
    return out


def camvid_tree(root: str | Path, sizes: dict[str, int] | None = None, size: tuple[int, int] = (36, 48),
                seed: int = 0) -> dict:
    """``<split>/<name>.png`` and ``<split>annot/<name>.png`` (values 0..10, 11 = void) for train, val, test."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": 4, "val": 2, "test": 3}
    root = Path(root)
    out: dict = {"root": root, "masks": {}}
    for split, n in sizes.items():
        out[split] = []
        for k in range(n):
            name = f"0001TP_{split[:2]}{k:04d}"
            image, mask = scene(rng, size, list(range(12)), 11)
            _save_image(image, root / split / f"{name}.png")
            _save_mask(mask, root / f"{split}annot" / f"{name}.png")
            out[split].append(name)
            out["masks"][(split, name)] = mask
    return out


def sunrgbd_tree(root: str | Path, train: int = 4, test: int = 3, size: tuple[int, int] = (30, 40),
                 seed: int = 0) -> dict:
    """``SUNRGBD-train_images/img-NNNNNN.jpg``, ``SUNRGBD-test_images/img-NNNNNN.jpg`` and
    ``sunrgbd_train_test_labels/img-NNNNNN.png`` (values 0..37; test labels first, training labels
    from img-005051 on, as in the release)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    out: dict = {"root": root, "masks": {}}
    splits = (("train", "SUNRGBD-train_images", train, 5050), ("test", "SUNRGBD-test_images", test, 0))
    for split, folder, n, offset in splits:
        out[split] = []
        for k in range(1, n + 1):
            image, mask = scene(rng, size, list(range(1, 38)), 0)
            _save_image(image, root / folder / f"img-{k:06d}.jpg", quality=95)
            _save_mask(mask, root / "sunrgbd_train_test_labels" / f"img-{k + offset:06d}.png")
            out[split].append(f"img-{k:06d}")
            out["masks"][(split, f"img-{k:06d}")] = mask
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write a small dataset tree in an official layout")
    parser.add_argument("dataset", choices=["voc", "cityscapes", "camvid", "sunrgbd"])
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=None, help="voc: images in train.txt; sunrgbd: training images")
    parser.add_argument("--extra", type=int, default=None, help="voc: SBD-only training images")
    parser.add_argument("--val", type=int, default=None, help="voc: images in val.txt")
    parser.add_argument("--size", default=None, help="HxW of every image (default 32x48)")
    args = parser.parse_args(argv)
    kwargs = {}
    if args.size:
        h, w = (int(v) for v in args.size.lower().split("x"))
        kwargs["size"] = (h, w)
    if args.dataset == "voc":
        for key in ("train", "extra", "val"):
            if getattr(args, key) is not None:
                kwargs[key] = getattr(args, key)
        tree = voc_tree(args.out, **kwargs)
        print(f"{tree['base']}: {len(tree['train'])} train, {len(tree['extra'])} SBD-only, {len(tree['val'])} val")
        return
    if args.dataset == "sunrgbd" and args.train is not None:
        kwargs["train"] = args.train
    writer = {"cityscapes": cityscapes_tree, "camvid": camvid_tree, "sunrgbd": sunrgbd_tree}[args.dataset]
    writer(args.out, **kwargs)
    print(f"{args.dataset} tree -> {args.out}")


if __name__ == "__main__":
    main()
