"""Real-dataset loaders (cct/data/{voc,cityscapes,camvid,sunrgbd}.py) on small trees in the official
layouts (tests/package/layouts.py): loading, label mapping, ignore handling, and the validation errors
that name what is missing. Also the pretrained-weights error of the ResNet encoder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cct.cli import main
from cct.config import ConfigError, DataConfig, from_dict
from cct.data.base import LOADERS, Source, load_source
from cct.data.loader import AugmentedDataset
from cct.data.splits import make_split, read_list
from cct.data.transforms import train_transform

from .conftest import TINY
from .layouts import camvid_tree, cityscapes_tree, sunrgbd_tree, voc_tree


def source(dataset: str, root, split: str, **data) -> Source:
    return load_source(DataConfig(dataset=dataset, root=str(root), **data), split)


def raw(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def write_mask(path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8)).save(path)


def test_registry_names_every_dataset_of_the_config():
    from cct.config import RunConfig

    RunConfig().validate()
    assert set(LOADERS) == {"embedded", "voc", "cityscapes", "camvid", "sunrgbd"}


@pytest.mark.parametrize("dataset", ["voc", "cityscapes", "camvid", "sunrgbd"])
def test_real_datasets_need_a_root(dataset, tmp_path):
    with pytest.raises(ConfigError, match=f"data.root: not set; data.dataset '{dataset}'"):
        load_source(DataConfig(dataset=dataset), "train")
    with pytest.raises(ConfigError, match=f"data.root: {tmp_path / 'nowhere'} not found"):
        source(dataset, tmp_path / "nowhere", "train")


# --- PASCAL VOC 2012 + SBD ------------------------------------------------------------------------------

@pytest.fixture
def voc(tmp_path):
    return voc_tree(tmp_path / "data")


def test_voc_val_matches_torchvision(voc):
    from torchvision.datasets import VOCSegmentation

    ours = source("voc", voc["root"], "val")
    theirs = VOCSegmentation(str(voc["root"]), year="2012", image_set="val", download=False)
    assert len(ours) == len(theirs) == len(voc["val"]) and ours.ids == voc["val"]
    for i in range(len(ours)):
        image, mask = ours.load(i)
        tv_image, tv_mask = theirs[i]
        assert image.dtype == np.uint8 and mask.dtype == np.int64
        assert np.array_equal(image, np.asarray(tv_image))
        assert np.array_equal(mask, np.asarray(tv_mask))  # palette indices, 255 boundaries kept
        assert np.array_equal(mask, voc["masks"][ours.ids[i]])
        assert (mask == 255).any()
    assert ours.num_classes == 21 and ours.class_names[0] == "background" and ours.background_classes == [0]


def test_voc_train_is_train_aug_minus_val_with_image_labels(voc):
    train = source("voc", voc["root"], "train")
    assert train.ids == sorted(voc["train"] + voc["extra"])  # no val id, no detection-only image
    assert train.labeled_first == voc["train"]
    for i, name in enumerate(train.ids):
        image, mask = train.load(i)
        assert image.shape == (32, 48, 3)
        assert np.array_equal(mask, voc["masks"][name])  # from SegmentationClassAug
        assert train.files[i][1].endswith(f"SegmentationClassAug/{name}.png")
        present = sorted({int(v) - 1 for v in np.unique(mask) if 0 < v < 255})
        assert np.flatnonzero(train.image_labels[i]).tolist() == present  # from Annotations/<id>.xml
    assert train.image_labels.shape == (len(train), 20)


def test_voc_train_aug_list_is_used_when_present(voc):
    listed = voc["train"] + voc["extra"][:2] + voc["val"][:1]  # a listed val id is dropped
    (voc["base"] / "ImageSets/Segmentation/train_aug.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in listed))
    assert source("voc", voc["root"], "train").ids == sorted(voc["train"] + voc["extra"][:2])


@pytest.mark.parametrize("where", [".", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_root_may_be_the_parent_of_vocdevkit_vocdevkit_or_voc2012(voc, where):
    assert source("voc", voc["root"] / where, "val").ids == voc["val"]


def test_voc_label_count_of_the_train_list_is_the_train_list_and_smaller_sets_nest_in_it(voc, tmp_path, capsys):
    train = source("voc", voc["root"], "train")
    n = len(voc["train"])
    args = (train.image_labels, train.labeled_first)
    assert make_split(train.ids, n, 0, *args)[0] == voc["train"]
    assert make_split(train.ids, n, 7, *args)[0] == voc["train"]  # whatever the split seed
    previous: set[str] = set()
    for k in range(1, len(train) + 1):
        labelled = set(make_split(train.ids, k, 3, *args)[0])
        assert previous <= labelled and len(labelled) == k
        assert labelled <= set(voc["train"]) or k > n
        previous = labelled
    # `cct splits` (what the workflow runs) draws the same
    config = tmp_path / "voc.yaml"
    config.write_text(f"data: {{dataset: voc, root: {voc['root']}}}\n")
    assert main(["splits", "--config", str(config), "--n-labeled", str(n), "--split-seed", "0",
                 "--out", str(tmp_path / "s")]) == 0
    assert read_list(tmp_path / "s" / "labeled.txt", "l") == voc["train"]
    assert read_list(tmp_path / "s" / "unlabeled.txt", "u") == voc["extra"]


@pytest.mark.parametrize("missing, message", [
    ("SegmentationClassAug", "SegmentationClassAug not found (the SBD-augmented labels"),
    ("SegmentationClass", "SegmentationClass not found (the VOC 2012 masks of the val split"),
    ("JPEGImages", "JPEGImages not found"),
    ("Annotations", "Annotations not found (the VOC 2012 object annotations"),
    ("ImageSets/Segmentation/val.txt", "val.txt not found (the 1,449-image VOC 2012 val list"),
    ("ImageSets/Segmentation/train.txt", "train.txt not found (the 1,464-image VOC 2012 train list"),
])
@pytest.mark.parametrize("split", ["train", "val"])
def test_voc_validation_names_the_missing_part(voc, missing, message, split):
    path = voc["base"] / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(ConfigError) as exc:
        source("voc", voc["root"], split)
    assert str(exc.value).startswith(f"data.root: {path} not found")
    assert message in str(exc.value)


def test_voc_image_without_mask_or_mask_without_image_or_annotation(voc):
    base = voc["base"]
    (base / "SegmentationClassAug" / f"{voc['extra'][1]}.png").unlink()  # an SBD image loses its label:
    assert voc["extra"][1] not in source("voc", voc["root"], "train").ids  # it is no training image
    (base / "SegmentationClassAug" / f"{voc['train'][2]}.png").unlink()  # a train.txt image loses it:
    with pytest.raises(ConfigError, match=f"train.txt have no mask in .*{voc['train'][2]}.png"):
        source("voc", voc["root"], "train")
    (base / "SegmentationClass" / f"{voc['val'][1]}.png").unlink()
    with pytest.raises(ConfigError, match=f"data.root: {base}/SegmentationClass/{voc['val'][1]}.png not found "
                                          r"\(the mask of a val image.*1 of 3 missing\)"):
        source("voc", voc["root"], "val")
    (base / "JPEGImages" / f"{voc['val'][0]}.jpg").unlink()
    with pytest.raises(ConfigError, match=f"{base}/JPEGImages/{voc['val'][0]}.jpg not found"):
        source("voc", voc["root"], "val")
    masks = base / "SegmentationClassAug"
    shutil.copy(masks / f"{voc['train'][0]}.png", masks / f"{voc['train'][2]}.png")
    (base / "Annotations" / f"{voc['extra'][0]}.xml").unlink()
    with pytest.raises(ConfigError, match=f"{base}/Annotations/{voc['extra'][0]}.xml not found"):
        source("voc", voc["root"], "train")


def test_voc_bad_mask_value_or_object_name_is_reported_with_the_file(voc):
    base = voc["base"]
    mask_path = base / "SegmentationClassAug" / f"{voc['extra'][0]}.png"
    bad = raw(mask_path).copy()
    bad[0, 0] = 21
    write_mask(mask_path, bad)
    train = source("voc", voc["root"], "train")
    with pytest.raises(ConfigError, match=f"voc/train: {mask_path}: mask value 21 is out of range"):
        train.load(train.ids.index(voc["extra"][0]))
    xml = base / "Annotations" / f"{voc['extra'][0]}.xml"
    xml.write_text(xml.read_text().replace("<object><name>", "<object><name>unicorn", 1))
    with pytest.raises(ConfigError, match=f"{xml} names an object 'unicorn.*' that is not a VOC class"):
        source("voc", voc["root"], "train")


def test_voc_colour_mask_is_refused(voc):
    path = voc["base"] / "SegmentationClass" / f"{voc['val'][0]}.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(ConfigError, match=f"{path}: a RGB image is not a label mask"):
        source("voc", voc["root"], "val").load(0)


def test_voc_background_classes_default_and_override(voc):
    assert source("voc", voc["root"], "val", background_classes=[0, 15]).background_classes == [0, 15]
    with pytest.raises(ConfigError, match="data.background_classes"):
        source("voc", voc["root"], "val", background_classes=[21])


def test_file_backed_source_feeds_the_training_transform(voc):
    train = source("voc", voc["root"], "train", crop_size=32, base_size=40, scale_range=(0.5, 2.0))
    dataset = AugmentedDataset(
        train, train_transform(DataConfig(crop_size=32, base_size=40, scale_range=(0.5, 2.0)), 32)
    )
    images, masks = dataset.collate([dataset[(3, 1234)]])
    image, mask = images[0], masks[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (32, 32) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= set(range(21)) | {255}


def test_file_backed_stream_is_the_same_with_worker_processes(voc):
    from cct.data.loader import batch_stream

    train = source("voc", voc["root"], "train")
    transform = train_transform(DataConfig(crop_size=32), 32)
    inline = list(batch_stream(train, [0, 2, 4, 6], transform, 2, 5, "labeled", 0, 3, num_workers=0))
    workers = list(batch_stream(train, [0, 2, 4, 6], transform, 2, 5, "labeled", 0, 3, num_workers=2))
    for (x0, y0), (x1, y1) in zip(inline, workers, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_training_runs_on_a_voc_tree(voc, tmp_path):
    from cct.train import train

    config = from_dict(
        {"data": {"dataset": "voc", "root": str(voc["root"]), "n_labeled": 4}},
        TINY
        + [
            "train.iterations=2",
            "train.eval_interval=2",
            "model.aux.vat=1",
            "model.aux.dropout=1",
            "model.aux.cutout=1",
            "model.aux.context_masking=1",
            "model.aux.object_masking=1",
            "model.aux.feature_drop=1",
            "model.aux.feature_noise=1",
        ],
    )
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        metrics = train(config, tmp_path / "run")
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert metrics["n_labeled"] == 4 and metrics["n_unlabeled"] == len(voc["train"]) + len(voc["extra"]) - 4
    assert len(metrics["class_names"]) == 21 and np.isfinite(metrics["miou"])


# --- Cityscapes -----------------------------------------------------------------------------------------


@pytest.fixture
def cityscapes(tmp_path):
    return cityscapes_tree(tmp_path / "cityscapes")


def test_cityscapes_maps_label_ids_to_the_19_train_ids(cityscapes):
    from torchvision.datasets import Cityscapes

    val = source("cityscapes", cityscapes["root"], "val")
    train = source("cityscapes", cityscapes["root"], "train")
    assert train.ids == sorted(cityscapes["train"]) and val.ids == sorted(cityscapes["val"])
    assert val.num_classes == 19 and val.class_names[:3] == ("road", "sidewalk", "building")
    assert val.class_names[-1] == "bicycle"
    expected = {0: 255, 1: 255, 4: 255, 9: 255, 7: 0, 8: 1, 11: 2, 21: 8, 23: 10, 24: 11, 26: 13, 33: 18}
    for src in (train, val):
        for i, name in enumerate(src.ids):
            image, mask = src.load(i)
            raw_ids = cityscapes["masks"][name]
            assert image.shape == (32, 48, 3) and mask.dtype == np.int64
            for raw_id, train_id in expected.items():
                assert (mask[raw_ids == raw_id] == train_id).all()
    # the same images and label files as torchvision's Cityscapes
    theirs = Cityscapes(str(cityscapes["root"]), split="val", mode="fine", target_type="semantic")
    by_name = {Path(p).name: i for i, p in enumerate(theirs.images)}
    for i, (image_path, _mask_path) in enumerate(val.files):
        tv_image, tv_target = theirs[by_name[Path(image_path).name]]
        image, mask = val.load(i)
        assert np.array_equal(image, np.asarray(tv_image))
        table = {c.id: c.train_id for c in Cityscapes.classes if c.id >= 0}
        assert np.array_equal(mask, np.vectorize(table.get)(np.asarray(tv_target)))


def test_cityscapes_context_classes_are_the_stuff_classes(cityscapes):
    val = source("cityscapes", cityscapes["root"], "val")
    assert [val.class_names[c] for c in val.background_classes] == [
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "vegetation",
        "terrain",
        "sky",
    ]
    assert source("cityscapes", cityscapes["root"], "val", background_classes=[10]).background_classes == [10]
    with pytest.raises(ConfigError, match="data.background_classes"):
        source("cityscapes", cityscapes["root"], "val", background_classes=[19])


def test_cityscapes_undefined_label_id_is_reported(cityscapes):
    src = source("cityscapes", cityscapes["root"], "val")
    mask_path = Path(src.files[0][1])
    bad = raw(mask_path).copy()
    bad[3, 3] = 40
    write_mask(mask_path, bad)
    with pytest.raises(ConfigError, match=f"{mask_path}: raw label value 40 is not defined"):
        src.load(0)


def test_cityscapes_validation_names_the_missing_path(cityscapes):
    root = cityscapes["root"]
    image = root / "leftImg8bit/val/frankfurt" / f"{cityscapes['val'][0]}_leftImg8bit.png"
    mask = root / "gtFine/val/frankfurt" / f"{cityscapes['val'][0]}_gtFine_labelIds.png"
    mask.unlink()
    with pytest.raises(ConfigError, match=f"data.root: {mask} not found \\(the labels of {image}"):
        source("cityscapes", root, "val")
    shutil.rmtree(root / "gtFine" / "val")
    for split in ("train", "val"):  # the whole layout is checked whichever split is loaded
        with pytest.raises(ConfigError, match=f"data.root: {root / 'gtFine' / 'val'} not found \\(the Cityscapes fine"):
            source("cityscapes", root, split)
    for folder in ("train", "val"):
        shutil.rmtree(root / "leftImg8bit" / folder)
        (root / "leftImg8bit" / folder).mkdir()
    shutil.copytree(root / "gtFine" / "train", root / "gtFine" / "val")
    with pytest.raises(ConfigError, match=f"{root / 'leftImg8bit' / 'val'} holds no <city>/\\*_leftImg8bit.png"):
        source("cityscapes", root, "val")


# --- CamVid ---------------------------------------------------------------------------------------------


@pytest.fixture
def camvid(tmp_path):
    return camvid_tree(tmp_path / "CamVid")


def test_camvid_void_is_ignored_and_classes_kept(camvid):
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        src = source("camvid", camvid["root"], split)
        assert len(src) == n and src.ids == sorted(camvid[split])
        for i, name in enumerate(src.ids):
            image, mask = src.load(i)
            expected = camvid["masks"][(split, name)].astype(np.int64)
            expected[expected == 11] = 255
            assert np.array_equal(mask, expected) and image.shape == (36, 48, 3)
    assert (mask == 255).any()
    assert src.class_names == (
        "Sky",
        "Building",
        "Pole",
        "Road",
        "Pavement",
        "Tree",
        "SignSymbol",
        "Fence",
        "Car",
        "Pedestrian",
        "Bicyclist",
    )
    assert [src.class_names[c] for c in src.background_classes] == ["Sky", "Building", "Road", "Pavement", "Tree"]


def test_camvid_validation_names_the_missing_path(camvid):
    root = camvid["root"]
    path = root / "trainannot" / f"{camvid['train'][1]}.png"
    bad = raw(path).copy()
    bad[0, 0] = 12
    write_mask(path, bad)
    src = source("camvid", root, "train")
    with pytest.raises(ConfigError, match=f"{path}: raw label value 12 is not defined"):
        src.load(1)
    write_mask(path, bad[:-1])
    with pytest.raises(
        ConfigError, match=f"camvid/train: {path} is 48x35 but its image {root / 'train' / path.name} is 48x36"
    ):
        src.load(1)
    path.unlink()
    with pytest.raises(
        ConfigError, match=f"data.root: {path} not found \\(the mask of {root / 'train' / path.name}\\)"
    ):
        source("camvid", root, "train")
    shutil.rmtree(root / "testannot")
    with pytest.raises(ConfigError, match=f"data.root: {root / 'testannot'} not found \\(the CamVid test masks"):
        source("camvid", root, "val")
    with pytest.raises(ConfigError, match="split 'trainval'"):
        source("camvid", root, "trainval")


# --- SUN RGB-D ------------------------------------------------------------------------------------------


@pytest.fixture
def sun(tmp_path):
    return sunrgbd_tree(tmp_path / "sun")


def test_sunrgbd_unlabelled_is_ignored_and_classes_shift_by_one(sun):
    train = source("sunrgbd", sun["root"], "train")
    val = source("sunrgbd", sun["root"], "val")
    assert train.ids == sun["train"] and val.ids == sun["test"]
    assert source("sunrgbd", sun["root"], "test").files == val.files
    assert train.files[1][1].endswith("sunrgbd_train_test_labels/img-005052.png")  # test labels come first
    assert val.files[1][1].endswith("sunrgbd_train_test_labels/img-000002.png")
    for split, src in (("train", train), ("test", val)):
        for i, name in enumerate(src.ids):
            image, mask = src.load(i)
            stored = sun["masks"][(split, name)].astype(np.int64)
            assert np.array_equal(mask, np.where(stored == 0, 255, stored - 1)) and image.shape == (30, 40, 3)
    assert val.num_classes == 37 and (mask == 255).any()
    assert [val.class_names[c] for c in val.background_classes] == ["wall", "floor", "ceiling"]


def test_sunrgbd_validation_names_the_missing_path(sun):
    root = sun["root"]
    label = root / "sunrgbd_train_test_labels" / "img-005053.png"
    bad = raw(label).copy()
    bad[0, 0] = 38
    write_mask(label, bad)
    with pytest.raises(ConfigError, match=f"{label}: raw label value 38 is not defined"):
        source("sunrgbd", root, "train").load(2)
    label.unlink()
    with pytest.raises(
        ConfigError, match=f"data.root: {label} not found \\(the label of {root}/SUNRGBD-train_images/img-000003.jpg\\)"
    ):
        source("sunrgbd", root, "train")
    shutil.rmtree(root / "sunrgbd_train_test_labels")
    with pytest.raises(ConfigError, match=f"data.root: {root / 'sunrgbd_train_test_labels'} not found"):
        source("sunrgbd", root, "val")


# --- pretrained weights -------------------------------------------------------------------------------


def test_missing_pretrained_weights_name_the_exact_expected_path(tmp_path, monkeypatch):
    from cct.model.encoder import build_encoder

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    with pytest.raises(ConfigError) as exc:
        build_encoder("resnet50", True, 8, 32, True)
    message = str(exc.value)
    assert message.startswith(f"model.pretrained: weights file not found: {expected};")
    assert "IMAGENET1K_V1" in message and "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    with pytest.raises(ConfigError, match=f"weights file not found: {tmp_path / 'w.pth'}; give model.pretrained"):
        build_encoder("resnet50", str(tmp_path / "w.pth"), 8, 32, True)
