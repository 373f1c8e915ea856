"""Evaluation: mIoU and per-class IoU from a confusion matrix, single scale, full images.

Images are padded (reflect) to a multiple of the output stride, predicted whole, and cropped back,
as the official trainer's validation does; pixels labelled 255 are ignored. The mIoU averages the
classes that occur in the ground truth or the prediction (a class absent from both is NaN).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cct import IGNORE_INDEX
from cct.data.base import Source
from cct.data.transforms import normalize, to_tensors

PROTOCOL = "single scale, full image"


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 (K, K), rows = ground truth, columns = prediction; target 255 ignored."""
    valid = target != IGNORE_INDEX
    index = target[valid] * num_classes + pred[valid]
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN), NaN where the class is in neither truth nor prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou_from_iou(iou: np.ndarray) -> float:
    """The mean of the per-class IoU over the classes present (non-NaN), in percent; NaN if none is."""
    return float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else float("nan")


def scores(cm: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """mIoU, per-class IoU and pixel accuracy, in percent."""
    iou = iou_from_confusion(cm)
    total = np.asarray(cm).sum()
    return {
        "miou": miou_from_iou(iou),
        "per_class_iou": {n: (None if np.isnan(v) else float(v * 100)) for n, v in zip(class_names, iou, strict=True)},
        "pixel_accuracy": float(np.trace(cm) / total * 100) if total else float("nan"),
    }


@torch.no_grad()
def predict_image(model, image: torch.Tensor, stride: int, domain: str | None = None) -> torch.Tensor:
    """Normalised (B, 3, H, W) -> argmax (B, H, W), padding to a multiple of ``stride``."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        image = F.pad(image, (0, pw, 0, ph), mode=mode)
    logits = model(image, domain)
    return logits[..., :h, :w].argmax(1)


@torch.no_grad()
def image_confusions(model, source: Source, device: torch.device, batch_size: int = 16,
                     domain: str | None = None) -> np.ndarray:
    """int64 (N, K, K): the confusion matrix of each of ``source``'s N images (same-size images are
    batched); their sum is :func:`evaluate`'s matrix, and resampling them gives a score's spread
    over the images (``benchmarks/gain_precision.py``)."""
    was_training = model.training
    model.eval()
    norm = normalize()
    k = source.num_classes
    out: list[torch.Tensor] = []
    batch: list[tuple[torch.Tensor, torch.Tensor]] = []

    def flush() -> None:
        images = torch.stack([b[0] for b in batch]).to(device)
        masks = torch.stack([b[1] for b in batch])
        pred = predict_image(model, images, model.stride, domain).cpu()
        out.extend(confusion_matrix(p, m, k) for p, m in zip(pred, masks, strict=True))
        batch.clear()

    for i in range(len(source)):
        image, mask = to_tensors(*source.load(i))
        item = (norm(image), mask)
        if batch and (item[0].shape != batch[0][0].shape or len(batch) == batch_size):
            flush()
        batch.append(item)
    if batch:
        flush()
    model.train(was_training)
    return torch.stack(out).numpy() if out else np.zeros((0, k, k), dtype=np.int64)


def evaluate(model, source: Source, device: torch.device, batch_size: int = 16, domain: str | None = None) -> dict:
    """Scores of ``model`` on every image of ``source`` (same-size images are batched)."""
    cm = image_confusions(model, source, device, batch_size, domain).sum(0)
    result = scores(cm, source.class_names)
    result["confusion_matrix"] = cm.tolist()
    return result
