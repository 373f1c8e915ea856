"""Evaluation (cct/evaluate.py): confusion matrix, IoU, mIoU and the full-image predictor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from cct.data.base import Source
from cct.evaluate import confusion_matrix, evaluate, image_confusions, iou_from_confusion, predict_image, scores


def test_confusion_matrix_rows_are_truth_and_255_is_ignored():
    target = torch.tensor([[0, 0, 1, 1, 2, 255], [2, 2, 0, 255, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2], [2, 1, 0, 0, 1, 2]])
    cm = confusion_matrix(pred, target, 3)
    expected = torch.tensor([
        [2, 1, 0],  # truth 0: predicted 0, 1, 0
        [0, 3, 1],  # truth 1: 1, 1, 1, 2
        [1, 1, 1],  # truth 2: 0, 2, 1
    ])
    assert cm.dtype == torch.int64 and torch.equal(cm, expected)
    assert int(cm.sum()) == 10  # 12 pixels, 2 ignored


def test_iou_and_scores_from_a_hand_made_confusion_matrix():
    cm = np.array([
        [5, 1, 0, 0],
        [2, 3, 0, 1],
        [0, 0, 0, 0],  # class 2: in neither truth nor prediction -> NaN, left out of the mean
        [0, 0, 0, 0],  # class 3: only predicted (once) -> IoU 0, counted
    ])
    iou = iou_from_confusion(cm)
    assert iou[0] == pytest.approx(5 / (5 + 1 + 2))
    assert iou[1] == pytest.approx(3 / (3 + 2 + 1 + 1))
    assert math.isnan(iou[2])
    assert iou[3] == 0.0
    result = scores(cm, ("bg", "a", "b", "c"))
    assert result["miou"] == pytest.approx(100 * (5 / 8 + 3 / 7 + 0) / 3)
    assert result["per_class_iou"] == pytest.approx({"bg": 62.5, "a": 300 / 7, "b": None, "c": 0.0})
    assert result["per_class_iou"]["b"] is None
    assert result["pixel_accuracy"] == pytest.approx(100 * 8 / 12)


def test_scores_of_an_empty_matrix_are_nan():
    result = scores(np.zeros((2, 2), dtype=np.int64), ("a", "b"))
    assert math.isnan(result["miou"]) and math.isnan(result["pixel_accuracy"])


class ChannelArgmax(nn.Module):
    """A stand-in model whose logits are its input: prediction = argmax over the 3 image channels."""

    stride = 4

    def forward(self, x, domain=None):
        assert x.shape[-1] % 4 == 0 and x.shape[-2] % 4 == 0, "input padded to a multiple of the stride"
        return x


def test_predict_image_pads_to_the_stride_and_crops_back():
    image = torch.randn(2, 3, 6, 7)
    pred = predict_image(ChannelArgmax(), image, 4)
    assert pred.shape == (2, 6, 7)
    assert torch.equal(pred, image.argmax(1))
    tiny = torch.randn(1, 3, 2, 3)  # smaller than the padding: reflect is impossible, still works
    assert torch.equal(predict_image(ChannelArgmax(), tiny, 4), tiny.argmax(1))


class AllBackground(nn.Module):
    stride = 4

    def __init__(self, classes):
        super().__init__()
        self.classes = classes
        self.calls = []

    def forward(self, x, domain=None):
        self.calls.append(tuple(x.shape))
        logits = torch.zeros(x.shape[0], self.classes, *x.shape[-2:])
        logits[:, 0] = 1
        return logits


def test_evaluate_accumulates_the_confusion_matrix_over_images_of_different_sizes():
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, (8, 8)), rng.integers(0, 3, (8, 8)), rng.integers(0, 3, (6, 10))]
    masks[0][0, :4] = 255
    images = [np.zeros((*m.shape, 3), dtype=np.uint8) for m in masks]

    class Multi(Source):
        def load(self, index):
            return images[index], masks[index].astype(np.int64)

    source = Multi("toy/val", ["a", "b", "c"], ("bg", "x", "y"), [0])
    model = AllBackground(3).train()
    result = evaluate(model, source, torch.device("cpu"))
    assert model.training, "evaluate restores the training mode"
    assert model.calls == [(2, 3, 8, 8), (1, 3, 8, 12)]  # same-size images batched, others padded
    counts = [sum(int((m == c).sum()) for m in masks) for c in range(3)]
    assert result["confusion_matrix"] == [[counts[0], 0, 0], [counts[1], 0, 0], [counts[2], 0, 0]]
    total = sum(counts)
    assert result["miou"] == pytest.approx(100 * counts[0] / total / 3)
    assert result["pixel_accuracy"] == pytest.approx(100 * counts[0] / total)


def test_image_confusions_are_each_images_own_and_sum_to_evaluates_matrix():
    rng = np.random.default_rng(1)
    masks = [rng.integers(0, 3, (8, 8)), rng.integers(0, 3, (6, 10)), rng.integers(0, 3, (8, 8))]
    masks[2][:, :3] = 255
    images = [np.zeros((*m.shape, 3), dtype=np.uint8) for m in masks]

    class Multi(Source):
        def load(self, index):
            return images[index], masks[index].astype(np.int64)

    source = Multi("toy/val", ["a", "b", "c"], ("bg", "x", "y"), [0])
    per_image = image_confusions(AllBackground(3), source, torch.device("cpu"), batch_size=2)
    assert per_image.shape == (3, 3, 3) and per_image.dtype == np.int64
    for cm, mask in zip(per_image, masks, strict=True):  # every pixel predicted background, 255 ignored
        assert cm[:, 0].tolist() == [int((mask == c).sum()) for c in range(3)] and not cm[:, 1:].any()
    result = evaluate(AllBackground(3), source, torch.device("cpu"))
    assert per_image.sum(0).tolist() == result["confusion_matrix"]
