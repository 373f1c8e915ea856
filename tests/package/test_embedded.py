"""The embedded dataset (cct/data/embedded.py) and the source layer (cct/data/base.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from cct.config import ConfigError, DataConfig
from cct.data import embedded
from cct.data.base import check_mask, default_palette, load_source

# generate() is cached; its undecorated function regenerates for real
_generate = embedded.generate.__wrapped__


def digest(data) -> str:
    return hashlib.sha256(data.images.tobytes() + data.masks.tobytes()).hexdigest()


def test_same_seed_gives_the_same_bytes_and_another_seed_other_bytes():
    a = _generate("val", "a", 0, 12)
    b = _generate("val", "a", 0, 12)
    assert a is not b and digest(a) == digest(b) and a.ids == b.ids
    assert digest(_generate("val", "a", 1, 12)) != digest(a)
    assert digest(_generate("train", "a", 0, 12)) != digest(a)
    # image i does not depend on how many images are generated
    first = _generate("val", "a", 0, 5)
    assert np.array_equal(first.images, a.images[:5]) and np.array_equal(first.masks, a.masks[:5])


@pytest.mark.parametrize("domain", ["a", "b"])
def test_shapes_dtypes_and_classes(domain):
    val = embedded.generate("val", domain)
    train = embedded.generate("train", domain)
    assert val.images.shape == (200, 64, 64, 3) and val.images.dtype == np.uint8
    assert val.masks.shape == (200, 64, 64) and val.masks.dtype == np.uint8
    assert len(train.ids) == 1000 and len(set(train.ids) | set(val.ids)) == 1200
    assert len(val.class_names) - 1 >= 8 and val.class_names[0] == "background"
    assert val.masks.max() <= len(val.class_names) - 1
    # every class occurs, and every image holds at least one object
    assert set(np.unique(val.masks)) == set(range(len(val.class_names)))
    assert all((m > 0).any() for m in val.masks)
    assert not val.images.flags.writeable and not val.masks.flags.writeable


@pytest.mark.parametrize("domain", ["a", "b"])
def test_image_level_labels_match_the_masks(domain):
    data = embedded.generate("val", domain)
    labels = data.image_labels()
    assert labels.shape == (200, len(data.class_names) - 1) and labels.dtype == bool
    for mask, row in zip(data.masks, labels, strict=True):
        assert set(np.flatnonzero(row) + 1) == set(np.unique(mask)) - {0}


def test_two_domains_share_part_of_their_classes():
    a, b = embedded.class_names("a"), embedded.class_names("b")
    shared = set(a[1:]) & set(b[1:])
    assert len(shared) >= 2, "the domains share classes"
    assert set(a[1:]) - shared and set(b[1:]) - shared, "and each has classes of its own"
    va, vb = embedded.generate("val", "a"), embedded.generate("val", "b")
    for name in shared:  # a shared class occurs in both domains' data, under each domain's index
        assert (va.masks == a.index(name)).any() and (vb.masks == b.index(name)).any()
    # the domains look different: light versus dark backgrounds
    bright_a = va.images[va.masks == 0].mean()
    bright_b = vb.images[vb.masks == 0].mean()
    assert bright_a > bright_b + 60


def test_unknown_domain_and_split_are_rejected():
    with pytest.raises(ValueError, match="domain"):
        embedded.class_names("c")
    with pytest.raises(ValueError, match="split"):
        _generate("test", "a", 0, 1)


@pytest.mark.parametrize("domain", ["a", "b"])
def test_class_is_not_decidable_from_pixel_colour(domain):
    """Colour-only classifiers fitted on 400 training scenes stay near chance on validation objects:
    the per-class mean colours nearly coincide, and neither a nearest-centroid nor a colour-histogram
    (8x8x8 bins, the Bayes classifier of quantised colour) rule gets far above the majority class."""
    train, val = embedded.generate("train", domain), embedded.generate("val", domain)
    x = train.images[:400].reshape(-1, 3).astype(np.float64)
    y = train.masks[:400].ravel()
    fg = y > 0
    x, y = x[fg], y[fg]
    classes = np.arange(1, len(train.class_names))
    centroids = np.stack([x[y == k].mean(0) for k in classes])
    spread = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1).max()
    assert spread < 30, f"class mean colours differ by {spread:.1f} / 255"

    xv = val.images.reshape(-1, 3).astype(np.float64)
    yv = val.masks.ravel()
    xv, yv = xv[yv > 0], yv[yv > 0]
    nearest = classes[((xv[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]
    assert (nearest == yv).mean() < 0.3

    def bins(v):
        q = (v // 32).astype(int)
        return q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2]

    hist = np.zeros((512, len(train.class_names)))
    np.add.at(hist, (bins(x), y), 1)
    assert (hist[bins(xv)].argmax(1) == yv).mean() < 0.3


def test_load_source_gives_the_common_form_and_background_setting():
    source = load_source(DataConfig(), "val")
    image, mask = source.load(3)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert mask.shape == (64, 64) and mask.dtype == np.int64
    assert source.num_classes == 9 and len(source) == 200 and source.background_classes == [0]
    assert source.image_labels.shape == (200, 8)
    assert load_source(DataConfig(background_classes=[0, 2]), "train").background_classes == [0, 2]
    assert load_source(DataConfig(domain="b"), "val").class_names == embedded.class_names("b")
    assert source.subset(["a_val_00002", "a_val_00000"], "what") == [2, 0]
    with pytest.raises(ConfigError, match="what: 1 id.*'nope'"):
        source.subset(["a_val_00002", "nope"], "what")


def test_load_source_rejects_unknown_domain_and_dataset():
    with pytest.raises(ConfigError, match="data.domain"):
        load_source(DataConfig(domain="z"), "val")
    with pytest.raises(ConfigError, match="data.dataset"):
        load_source(DataConfig(dataset="voc"), "val")


def test_check_mask_names_the_image_and_the_value():
    check_mask(np.array([[0, 8], [255, 3]]), 9, "img.png")
    with pytest.raises(ConfigError, match=r"img.png: mask value 9 is out of range \(classes 0..8, 255 ignored\)"):
        check_mask(np.array([[0, 9], [255, 3]]), 9, "img.png")
    with pytest.raises(ConfigError, match="other.png: mask value -1 is out of range"):
        check_mask(np.array([[0, -1]]), 9, "other.png")
    with pytest.raises(ConfigError, match="mask value 254"):
        check_mask(np.array([[254]]), 21, "voc.png")


def test_default_palette_is_the_voc_colour_map():
    palette = default_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[15].tolist() == [192, 128, 128]  # VOC "person"
    assert palette[255].tolist() == [255, 255, 255]


def test_background_classes_outside_the_dataset_are_rejected():
    with pytest.raises(ConfigError, match="data.background_classes"):
        load_source(DataConfig(background_classes=[0, 42]), "val")
