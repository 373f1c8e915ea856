"""The weak-label setting: CAM classifier, pseudo labels (threshold rule, quality, files), the weak
loss, training on pseudo labels, and the `cct cam` / `cct pseudo-labels` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cct import IGNORE_INDEX, losses
from cct.config import CamModelConfig, CamRunConfig, ConfigError, from_dict
from cct.data.base import Source, load_source, read_mask
from cct.weak.cam import CamNet, cam_maps, foreground_labels, read_cams
from cct.weak.pseudo import make_pseudo_labels, pseudo_label, with_pseudo_labels, write_png

from .conftest import run_cct


def small_cam(num_fg: int = 5, stride: int = 4) -> CamNet:
    return CamNet(CamModelConfig(encoder="small", width=8, output_stride=stride), num_fg).eval()


# ------------------------------------------------------------------------------------------------
# CAM network


def test_cam_shapes_and_gap_equals_mean_of_maps():
    model = small_cam(num_fg=5, stride=4)
    x = torch.randn(2, 3, 32, 48)
    logits = model(x)
    assert logits.shape == (2, 5)
    maps = model.cams(x)
    assert maps.shape == (2, 5, 8, 12) and (maps >= 0).all()
    # the classifier is linear: GAP then classify = classify then GAP (the pre-ReLU maps' mean)
    raw = model.classifier(model.backbone(x))
    torch.testing.assert_close(logits, raw.mean((2, 3)))


def test_cam_maps_restricted_to_classes_normalised_and_flip_equivariant():
    torch.manual_seed(1)
    model = small_cam(num_fg=6)
    image = torch.randn(3, 40, 36)
    every = cam_maps(model, image, torch.arange(6), [1.0, 0.5, 1.5], flip=True)
    assert every.shape == (6, 40, 36)
    peaks = every.flatten(1).amax(1)
    assert torch.all(((peaks - 1).abs() < 1e-5) | (peaks == 0))
    assert every.min() >= 0
    # restriction: only the asked classes, each the same map as without restriction
    some = cam_maps(model, image, torch.tensor([4, 1]), [1.0, 0.5, 1.5], flip=True)
    assert some.shape == (2, 40, 36)
    torch.testing.assert_close(some, every[[4, 1]])
    # maps of the flipped image are the flipped maps (the flip average makes them equivariant)
    flipped = cam_maps(model, image.flip(-1), torch.arange(6), [1.0, 0.5, 1.5], flip=True)
    torch.testing.assert_close(flipped, every.flip(-1), atol=1e-5, rtol=1e-4)
    # no known class: no map
    assert cam_maps(model, image, torch.tensor([], dtype=torch.long), [1.0], flip=True).shape == (0, 40, 36)


def test_foreground_labels_need_image_labels_and_background_zero():
    source = Source(
        "toy", ["a"], ("bg", "x"), [0], arrays=(np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 4, 4), np.uint8))
    )
    with pytest.raises(ConfigError, match="no image-level labels"):
        foreground_labels(source)
    source.image_labels = np.ones((1, 1), dtype=bool)
    source.background_classes = [0, 1]
    with pytest.raises(ConfigError, match="background_classes"):
        foreground_labels(source)


# ------------------------------------------------------------------------------------------------
# Pseudo labels


def test_threshold_rule_on_hand_made_cams():
    # pixels:          0     1     2     3      4     5     6
    cams = np.array([[0.90, 0.20, 0.04, 0.30, 0.05, 0.31, 0.60], [0.50, 0.35, 0.01, 0.10, 0.02, 0.31, 0.70]])[
        :, None, :
    ]  # (2 classes, 1, 7)
    label = pseudo_label(cams, np.array([3, 7]), fg_threshold=0.30, bg_threshold=0.05)
    assert label.shape == (1, 7)
    # 0: class 3 wins; 1: class 7 above fg; 2: all <= bg -> background; 3: max exactly at fg -> ignored;
    # 4: max exactly at bg -> background; 5: a tie goes to the first listed class; 6: class 7 wins
    assert label[0].tolist() == [3, 7, 0, IGNORE_INDEX, 0, 3, 7]
    # an image with no foreground class is all background
    assert (pseudo_label(np.zeros((0, 2, 3)), np.array([], dtype=int), 0.3, 0.05) == 0).all()


def _perfect_cams(source: Source, directory) -> None:
    """CAMs equal to the ground truth's class masks (1 on the class, 0 elsewhere)."""
    directory.mkdir()
    labels = foreground_labels(source)
    for i, image_id in enumerate(source.ids):
        mask = source.load(i)[1]
        classes = np.flatnonzero(labels[i]) + 1
        cams = (
            np.stack([(mask == c) for c in classes]).astype(np.uint8) * 255
            if len(classes)
            else np.zeros((0, *mask.shape), np.uint8)
        )
        np.savez_compressed(directory / f"{image_id}.npz", classes=classes, cams=cams)


def test_pseudo_labels_from_perfect_cams_score_100_and_roundtrip(tmp_path):
    config = from_dict({}, kind=CamRunConfig)
    source = load_source(config.data, "train")
    _perfect_cams(source, tmp_path / "cams")
    summary = make_pseudo_labels(config, tmp_path / "cams", tmp_path / "pseudo")
    assert summary["n_images"] == len(source) == 1000
    assert summary["miou"] == pytest.approx(100.0) and summary["ignored_fraction"] == pytest.approx(0.0)
    assert json.loads((tmp_path / "pseudo" / "summary.json").read_text())["miou"] == pytest.approx(100.0)
    assert not (tmp_path / "pseudo.partial").exists()
    np.testing.assert_array_equal(read_mask(tmp_path / "pseudo" / f"{source.ids[7]}.png"), source.load(7)[1])
    classes, cams = read_cams(tmp_path / "cams" / f"{source.ids[7]}.npz")
    assert cams.dtype == np.float32 and cams.max() <= 1.0 and len(classes) == len(cams)


def test_pseudo_label_quality_counts_ignored_pixels(tmp_path):
    """Halve every CAM: with fg 0.6 nothing is foreground, background stays -> fg pixels ignored."""
    config = from_dict({"pseudo": {"fg_threshold": 0.6, "bg_threshold": 0.05}}, kind=CamRunConfig)
    source = load_source(config.data, "train")
    _perfect_cams(source, tmp_path / "cams")
    for path in (tmp_path / "cams").iterdir():
        with np.load(path) as data:
            classes, cams = data["classes"], data["cams"]
        np.savez_compressed(path, classes=classes, cams=(cams // 2).astype(np.uint8))
    summary = make_pseudo_labels(config, tmp_path / "cams", tmp_path / "pseudo")
    masks = np.stack([source.load(i)[1] for i in range(len(source))])
    assert summary["ignored_fraction"] == pytest.approx(100.0 * (masks > 0).mean())
    assert summary["per_class_iou"]["background"] == pytest.approx(100.0)


def test_missing_cam_file_is_named(tmp_path):
    (tmp_path / "cams").mkdir()
    with pytest.raises(ConfigError, match="CAM file not found: .*a_train_00000.npz"):
        make_pseudo_labels(from_dict({}, kind=CamRunConfig), tmp_path / "cams", tmp_path / "pseudo")


def test_with_pseudo_labels_replaces_masks_of_the_given_images(tmp_path):
    images = np.zeros((3, 4, 4, 3), np.uint8)
    masks = np.ones((3, 4, 4), np.uint8)
    source = Source("toy", ["x0", "x1", "x2"], ("bg", "a", "b"), [0], arrays=(images, masks))
    for name, value in (("x1", 2), ("x2", 0)):
        write_png(tmp_path / f"{name}.png", np.full((4, 4), value))
    pseudo = with_pseudo_labels(source, tmp_path, [1, 2])
    assert (pseudo.load(1)[1] == 2).all() and (pseudo.load(2)[1] == 0).all()
    assert (pseudo.load(0)[1] == IGNORE_INDEX).all()  # not an unlabelled image: nothing to learn
    assert (source.load(1)[1] == 1).all()  # the original is untouched
    with pytest.raises(
        ConfigError, match=r"weak.pseudo_labels: 1 unlabelled image\(s\) have no pseudo label, e.g. .*x0.png"
    ):
        with_pseudo_labels(source, tmp_path, [0, 1])
    with pytest.raises(ConfigError, match="not a directory"):
        with_pseudo_labels(source, tmp_path / "nope", [1])


# ------------------------------------------------------------------------------------------------
# The weak loss and training


def test_weak_loss_matches_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 2, 5, dtype=torch.float64)  # (B, N decoders, K, H, W)
    target = torch.randint(0, 4, (2, 2, 5))
    target[0, 0, :3] = IGNORE_INDEX
    log_p = torch.log_softmax(logits, dim=2).numpy()
    t = target.numpy()
    per_decoder = []
    for n in range(3):
        values = [
            -log_p[b, n, t[b, i, j], i, j]
            for b in range(2)
            for i in range(2)
            for j in range(5)
            if t[b, i, j] != IGNORE_INDEX
        ]
        per_decoder.append(np.mean(values))
    assert float(losses.weak_loss(logits, target)) == pytest.approx(np.mean(per_decoder), rel=1e-10)


def test_weak_config_needs_semi_and_nonnegative_weight():
    with pytest.raises(ConfigError, match="weak.pseudo_labels: .*train.mode 'semi'"):
        from_dict({"train": {"mode": "supervised"}, "weak": {"pseudo_labels": "x"}})
    with pytest.raises(ConfigError, match="weak.loss_w"):
        from_dict({"weak": {"loss_w": -1}})


def test_cam_config_is_validated_naming_the_key():
    with pytest.raises(ConfigError, match="pseudo: need 0 <= bg_threshold < fg_threshold"):
        from_dict({"pseudo": {"fg_threshold": 0.1, "bg_threshold": 0.2}}, kind=CamRunConfig)
    with pytest.raises(ConfigError, match="infer.scales"):
        from_dict({"infer": {"scales": []}}, kind=CamRunConfig)
    with pytest.raises(ConfigError, match="unknown config key 'train.mode'"):
        from_dict({"train": {"mode": "semi"}}, kind=CamRunConfig)


def _truth_as_pseudo(tmp_path) -> str:
    source = load_source(from_dict({}).data, "train")
    directory = tmp_path / "pseudo"
    directory.mkdir()
    for i, image_id in enumerate(source.ids):
        write_png(directory / f"{image_id}.png", source.load(i)[1])
    return str(directory)


def test_training_with_pseudo_labels_logs_the_weak_loss_and_changes_the_run(tmp_path):
    from cct.train import train

    pseudo = _truth_as_pseudo(tmp_path)
    common = [
        "train.iterations=4",
        "train.eval_interval=4",
        "train.batch_size_labeled=2",
        "train.batch_size_unlabeled=2",
        "model.width=8",
        "data.n_labeled=10",
        "train.progress=false",
        "loss.rampup=0",
    ]
    weak = train(from_dict({}, common + [f"weak.pseudo_labels={pseudo}"]), tmp_path / "weak")
    plain = train(from_dict({}, common), tmp_path / "plain")
    assert weak["n_weak"] == weak["n_unlabeled"] == 990 and plain["n_weak"] == 0
    assert weak["history"][-1]["loss_weak"] > 0 and "loss_weak" not in plain["history"][-1]
    assert weak["config"]["weak"] == {"pseudo_labels": pseudo, "loss_w": 0.4}
    # the weak loss changes the gradients: same seed, other weights
    a = torch.load(tmp_path / "weak" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)["model"]
    assert not torch.equal(a["encoder.backbone.0.0.weight"], b["encoder.backbone.0.0.weight"])
    # weight 0: the same run as without pseudo labels (same batches, same numerics)
    zero = train(from_dict({}, common + [f"weak.pseudo_labels={pseudo}", "weak.loss_w=0"]), tmp_path / "zero")
    assert zero["miou"] == plain["miou"]


def test_weak_loss_on_native_layout_equals_image_layout():
    """The training loop compares aux outputs and pseudo labels in the decoders' native (sub-pixel)
    layout; the loss must equal the one on full-resolution images."""
    from cct.config import ModelConfig
    from cct.model.cct import CCT

    model = CCT(ModelConfig(width=8, decoder="pixelshuffle", output_stride=4), {"main": 4}, {"main": [0]})
    z = torch.randn(2, model.encoder.out_channels, 6, 5)
    logits = model.decode(z)
    aux_native = model.auxiliary(z, logits, native=True)
    target = torch.randint(0, 4, (2, 24, 20))
    target[:, :3] = IGNORE_INDEX
    native = losses.weak_loss(aux_native, model.to_native(target.unsqueeze(1))[:, 0])
    image = losses.weak_loss(model.heads["main"].aux.to_image(aux_native), target)
    torch.testing.assert_close(native, image)


# ------------------------------------------------------------------------------------------------
# The commands


@pytest.mark.slow
def test_cam_commands_end_to_end(tmp_path):
    out = tmp_path / "cam"
    proc = run_cct(
        "cam",
        "train",
        "--set",
        "train.iterations=20",
        "train.batch_size=4",
        "model.width=8",
        "--out",
        str(out),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        0 <= metrics["val_label_accuracy"] <= 100
        and metrics["iterations"] == 20
        and metrics["config"]["train"]["seed"] == 0
    )
    # its own CPU count, from the process's start (the runtime table's source)
    cpu = metrics["cpu_time_s"]
    assert cpu > 0 and cpu == pytest.approx(metrics["attempts"][-1]["cpu_s"], abs=0.01)
    proc = run_cct(
        "cam",
        "infer",
        "--checkpoint",
        str(out / "checkpoint.pt"),
        "--set",
        "infer.scales=[1.0]",
        "--out",
        str(tmp_path / "cams"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    source = load_source(from_dict({}).data, "train")
    labels = foreground_labels(source)
    classes, cams = read_cams(tmp_path / "cams" / f"{source.ids[3]}.npz")
    assert classes.tolist() == (np.flatnonzero(labels[3]) + 1).tolist()  # only the image's own classes
    assert cams.shape == (len(classes), 64, 64)
    proc = run_cct(
        "pseudo-labels",
        "--checkpoint",
        str(out / "checkpoint.pt"),
        "--cams",
        str(tmp_path / "cams"),
        "--out",
        str(tmp_path / "pseudo"),
        "--summary",
        str(tmp_path / "summary.json"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "pseudo").glob("*.png"))) == 1000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0 <= summary["miou"] <= 100 and 0 <= summary["ignored_fraction"] <= 100
    label = read_mask(tmp_path / "pseudo" / f"{source.ids[3]}.png")
    assert set(np.unique(label)) <= {0, IGNORE_INDEX, *classes.tolist()}
    # errors name what is wrong
    proc = run_cct("pseudo-labels", "--cams", str(tmp_path / "nope"), "--out", str(tmp_path / "p2"))
    assert proc.returncode == 2 and "give --config" in proc.stderr
    proc = run_cct("cam", "infer", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "c2"))
    assert proc.returncode == 2 and "missing.pt" in proc.stderr
