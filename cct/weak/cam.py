"""The class-activation-map (CAM) classifier of the weak-label setting (paper Sec. 3.4).

A backbone without PSP, a bias-free 1x1 classifier over the foreground classes and global average
pooling (Zhou et al., 2016), trained with a multi-label soft-margin loss on image-level labels.
Because the classifier is linear, GAP then classify equals classify then GAP: the logits are the
mean of the class activation maps. At inference the maps of several scales and their horizontal
flips are summed at the image's resolution, restricted to the classes the image is known to
contain, and each is normalised by its maximum (the official pipeline, which follows IRN; Ahn et al.
2019). ``cct cam train`` and ``cct cam infer`` are the two entry points.

CAMs are stored per image as ``<id>.npz``: ``classes`` int64 (n,) dataset class indices of the
present foreground classes, ``cams`` uint8 (n, H, W) normalised maps x 255 (1/255 is far below the
thresholds' precision; float maps of the VOC training set would take ~6 GB).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cct import engine
from cct.config import CamModelConfig, CamRunConfig, ConfigError, save_config
from cct.data.base import Source, load_source
from cct.data.loader import AugmentedDataset, IterationBatchSampler
from cct.data.transforms import normalize, to_tensors, train_transform
from cct.io import atomic_torch_save, atomic_write_json, check_replaceable_dir, first_line, read_checkpoint
from cct.model.encoder import SmallEncoder, load_encoder_checkpoint, resnet_backbone
from cct.optim import SGD

log = logging.getLogger("cct.cam")


class CamNet(nn.Module):
    """Backbone + 1x1 classifier. ``forward(x)`` (B, 3, H, W) -> logits (B, C) over the C foreground
    classes; ``cams(x)`` -> ReLU'd maps (B, C, H/os, W/os)."""

    def __init__(self, config: CamModelConfig, num_foreground: int) -> None:
        super().__init__()
        if config.encoder == "small":
            if config.pretrained is True:
                raise ConfigError(
                    "model.pretrained: the small encoder has no ImageNet weights; give a cct checkpoint path or false"
                )
            self.backbone = SmallEncoder(config.width, config.output_stride, psp=False)
            if config.pretrained:  # a `cct train` checkpoint: its encoder's backbone (no PSP here)
                load_encoder_checkpoint(self.backbone, config.pretrained, parts=("backbone",))
            channels = self.backbone.out_channels
            self.frozen_bn = False
        else:
            self.backbone = resnet_backbone(config.encoder, config.pretrained, config.output_stride)
            channels = 2048
            # with ImageNet weights the official CAM network keeps batch-norm statistics and the
            # stem fixed (batches of 16 crops would only blur them)
            self.frozen_bn = bool(config.pretrained)
            if self.frozen_bn:
                for p in self.backbone[0].parameters():
                    p.requires_grad_(False)
        self.classifier = nn.Conv2d(channels, num_foreground, 1, bias=False)
        self.stride = config.output_stride

    def train(self, mode: bool = True) -> "CamNet":
        super().train(mode)
        if self.frozen_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x)).mean((2, 3))

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.classifier(self.backbone(x)))

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return [p for p in self.backbone.parameters() if p.requires_grad], list(self.classifier.parameters())


def foreground_labels(source: Source) -> np.ndarray:
    """bool (N, K-1): the image-level labels of ``source``; ConfigError when it has none."""
    if source.image_labels is None:
        raise ConfigError(f"data.dataset: {source.name} has no image-level labels (weak labels need them)")
    if list(source.background_classes) != [0]:
        raise ConfigError(
            f"data.background_classes: weak labels need class 0 as the only background class ({source.name} has "
            f"{source.background_classes})"
        )
    return source.image_labels


class _ImageLevel(AugmentedDataset):
    """Item (index, aug seed) -> (augmented image uint8 (3, h, w), multi-hot labels float (K-1,));
    batches of normalised images float32 (B, 3, h, w) and labels (B, K-1)."""

    def __init__(self, source: Source, transform) -> None:
        super().__init__(source, transform, labels=False)  # the masks are not read: the same crops

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        image, _ = super().__getitem__(key)
        return image, torch.from_numpy(self.source.image_labels[key[0]].astype(np.float32))

    def collate(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images(items), torch.stack([labels for _, labels in items])


@torch.no_grad()
def image_level_accuracy(model: CamNet, source: Source, device: torch.device) -> dict[str, float]:
    """Multi-label decisions (logit > 0) against the classes present in the masks of ``source``."""
    model.eval()
    norm, k = normalize(), model.classifier.out_channels
    correct = exact = 0
    for i in range(len(source)):
        image, mask = to_tensors(*source.load(i))
        logits = model(norm(image)[None].to(device))[0].cpu()
        present = torch.zeros(k, dtype=torch.bool)
        values = mask.unique()
        values = values[(values > 0) & (values <= k)]
        present[values - 1] = True
        hits = (logits > 0) == present
        correct += int(hits.sum())
        exact += int(hits.all())
    model.train()
    n = max(len(source), 1)
    return {"val_label_accuracy": 100.0 * correct / (n * k), "val_exact_match": 100.0 * exact / n}


# Keys of a CAM config that change how it executes but not its numbers (see cct.train._EXECUTION_KEYS:
# the device type is compared through the state's execution record; train.threads changes the numbers).
_EXECUTION_KEYS = {("train", "device"), ("data", "num_workers")}


def train_cam(config: CamRunConfig, out_dir: str | Path, resume_dir: str | Path | None = None, *,
              stale: str = "refuse", watch_pid: int | None = None) -> dict:
    """Train the CAM classifier on every training image's image-level labels; write ``config.yaml``,
    ``checkpoint.pt`` and ``metrics.json`` under ``out_dir`` (resume state in ``resume_dir``; ``stale``
    and ``watch_pid`` as for :func:`cct.train.train`)."""
    out_dir, tc = Path(out_dir), config.train
    device = engine.setup(tc.device, tc.threads).device
    config_dict = config.to_dict()
    resume = engine.ResumeState(
        Path(resume_dir or out_dir / "resume"), config_dict, stale=stale, execution={"device": device.type},
        identity=lambda c: engine.numeric_identity(c, _EXECUTION_KEYS),
    )
    resume.prepare()  # a stale state is refused before the data is read
    try:
        source = load_source(config.data, "train")
        labels = foreground_labels(source)
        val = load_source(config.data, "val")
        val.check(range(len(val)), "the validation set")  # read at the end: checked now
        torch.manual_seed(tc.seed)
        model = CamNet(config.model, labels.shape[1]).to(device)
        backbone, head = model.parameter_groups()
        base_lrs = [tc.lr, tc.lr * tc.classifier_lr_factor]
        optimizer = SGD([{"params": backbone}, {"params": head}], lr=tc.lr, momentum=tc.momentum,
                        weight_decay=tc.weight_decay)
        start, history = resume.load(model, optimizer, device)
        batches = _batches(config, source, start)
        losses = engine.LossLog(every=50, total=tc.iterations, hint=engine.DIVERGED.format(key="train.lr"))

        model.train()
        with engine.StopFlag(watch_pid) as stop:
            for i, (x, y) in enumerate(batches, start=start):
                engine.seed_step(tc.seed, i, device)
                engine.set_poly_lr(optimizer, base_lrs, i, tc.iterations, tc.poly_power)
                loss = F.multilabel_soft_margin_loss(model(x.to(device)), y.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step = i + 1
                means = losses.add({"loss": loss}, step)
                if means is not None:
                    history.append({"iteration": step, **means})
                stopping = stop.stopping
                if stopping or step % 200 == 0:
                    resume.save(model, optimizer, step, history)
                if stopping:
                    resume.release()
                    raise engine.Interrupted(
                        f"{stop.reason} at iteration {step}; state saved to {resume.path} (the same command resumes "
                        "from it)"
                    )
        val = image_level_accuracy(model, val, device)
        metrics = {
            **val,
            "final_loss": history[-1]["loss"] if history else None,
            "history": history,
            "iterations": tc.iterations,
            "n_images": len(source),
            "class_names": list(source.class_names),
            "wall_time_s": resume.wall_time(),
            "cpu_time_s": resume.cpu_time(),
            "attempts": resume.attempts(tc.iterations),
            "device": str(device),
            "config": config_dict,
            "versions": engine.versions(),
        }
        save_config(config, out_dir / "config.yaml")
        atomic_torch_save(
            {"model": model.state_dict(), "config": config_dict, "class_names": list(source.class_names)},
            out_dir / "checkpoint.pt",
        )
        atomic_write_json(out_dir / "metrics.json", metrics)
        if start < tc.iterations:
            resume.save(model, optimizer, tc.iterations, history)
        resume.finish()
        return metrics
    finally:
        resume.release()  # the resume folder's lock, whatever happened


def _batches(config: CamRunConfig, source: Source, start: int) -> DataLoader:
    """Augmented crops of every training image with its image-level labels, by iteration from ``start``."""
    tc = config.train
    data = dataclasses.replace(config.data, crop_size=tc.crop_size, scale_range=tc.scale_range)
    transform = train_transform(data, max(source.load(0)[0].shape[:2]))
    sampler = IterationBatchSampler(list(range(len(source))), tc.batch_size, tc.seed, "labeled", start, tc.iterations)
    dataset = _ImageLevel(source, transform)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate, num_workers=config.data.num_workers)


def load_cam(path: str | Path) -> tuple[CamNet, CamRunConfig]:
    """(model in eval mode, its config) from a ``cct cam train`` checkpoint."""
    from cct.config import from_dict

    state = read_checkpoint(path, kind="cct CAM checkpoint")
    try:
        config = from_dict(state["config"], kind=CamRunConfig)
        config.model.pretrained = False  # the checkpoint holds the weights
        model = CamNet(config.model, len(state["class_names"]) - 1)
        model.load_state_dict(state["model"])
    except Exception as exc:  # foreign files raise many types
        raise ConfigError(f"--checkpoint: {path} is not a cct CAM checkpoint ({first_line(exc)})") from exc
    return model.eval(), config


@torch.no_grad()
def cam_maps(
    model: CamNet, image: torch.Tensor, classes: torch.Tensor, scales: list[float], flip: bool
) -> torch.Tensor:
    """Normalised CAMs of one image.

    ``image``: normalised (3, H, W); ``classes``: int64 (n,) foreground indices (0-based, into the
    classifier's outputs) of the classes the image contains. Returns float (n, H, W) in [0, 1]: per
    class, the sum over scales (and flips) of the ReLU'd map upsampled to (H, W), divided by its
    maximum (an all-zero map stays zero).
    """
    h, w = image.shape[-2:]
    total = image.new_zeros((len(classes), h, w))
    if len(classes) == 0:
        return total
    stride = model.stride
    for scale in scales:
        size = (max(stride, round(h * scale / stride) * stride), max(stride, round(w * scale / stride) * stride))
        x = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        maps = model.cams(batch)[:, classes]
        if flip:
            maps = maps[:1] + maps[1:].flip(-1)
        total += F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)[0]
    peak = total.flatten(1).amax(1).clamp_min(1e-5)
    return total / peak[:, None, None]


def id_filename(image_id: str) -> str:
    """A file name for an image id (ids of nested datasets hold '/')."""
    return image_id.replace("/", "__")


def infer_cams(checkpoint: str | Path, out_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """CAMs of every training image for its known classes -> ``out_dir/<id>.npz`` and ``cams.json``.

    Written into ``out_dir.partial`` and renamed when complete: a cut job leaves no half folder."""
    from cct.config import from_dict

    out_dir = check_replaceable_dir(out_dir, "cams.json", "--out")
    model, config = load_cam(checkpoint)
    if overrides:
        config = from_dict(config.to_dict(), overrides, kind=CamRunConfig)
    device = engine.pick_device(config.train.device)
    torch.set_num_threads(config.train.threads)
    model.to(device)
    source = load_source(config.data, "train")
    labels = foreground_labels(source)
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    norm = normalize()
    t0 = time.perf_counter()
    for i, image_id in enumerate(source.ids):
        image, _ = to_tensors(*source.load(i))
        present = np.flatnonzero(labels[i])
        maps = cam_maps(
            model, norm(image).to(device), torch.from_numpy(present).to(device), config.infer.scales, config.infer.flip
        )
        quantised = (maps * 255).round().to(torch.uint8).cpu().numpy()
        np.savez_compressed(partial / f"{id_filename(image_id)}.npz", classes=present + 1, cams=quantised)
    summary = {
        "n_images": len(source),
        "scales": config.infer.scales,
        "flip": config.infer.flip,
        "checkpoint": str(checkpoint),
        "wall_time_s": time.perf_counter() - t0,
        "config": config.to_dict(),
    }
    atomic_write_json(partial / "cams.json", summary)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    return summary


def read_cams(path: str | Path, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(classes int64 (n,), cams float32 (n, H, W) in [0, 1]) from one ``<id>.npz``; ConfigError naming
    the file when it is missing, not such a file, or (``num_classes`` K given) names classes outside
    1..K-1."""
    try:
        with np.load(path, allow_pickle=False) as data:
            classes, cams = data["classes"], data["cams"]
            if classes.ndim != 1 or cams.ndim != 3 or len(classes) != len(cams):
                raise ValueError(f"classes {classes.shape} and cams {cams.shape} do not match")
            if classes.dtype.kind not in "iu" or cams.dtype != np.uint8:
                raise ValueError(f"classes of type {classes.dtype}, cams of type {cams.dtype}")
            classes = classes.astype(np.int64)
    except FileNotFoundError:
        raise ConfigError(f"--cams: CAM file not found: {path}") from None
    except Exception as exc:  # a file of the user's: np.load raises many types (or yields an array, not an npz)
        raise ConfigError(f"--cams: {path} is not a CAM file of `cct cam infer` ({first_line(exc)})") from exc
    if num_classes is not None and ((classes < 1) | (classes >= num_classes)).any():
        raise ConfigError(
            f"--cams: {path} names classes {classes.tolist()}, not foreground classes 1..{num_classes - 1}"
        )
    return classes, cams.astype(np.float32) / 255.0
