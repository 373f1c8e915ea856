"""Joint image/mask augmentation on torchvision.transforms.v2: random rescale, random crop padded
with 255 in the mask (ignored) and 0 in the image, horizontal flip; ImageNet normalisation."""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from cct import IGNORE_INDEX
from cct.config import DataConfig

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """uint8 (H, W, 3), int64 (H, W) -> tv_tensors Image (3, H, W) uint8 and Mask (H, W) int64."""
    return tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1)), tv_tensors.Mask(
        torch.from_numpy(np.array(mask))
    )


class RandomLongSideResize(v2.Transform):
    """Resize so that the long side is a uniform random integer in [lo, hi] (the official protocol:
    long side in [0.5, 2.0] x base_size); masks are resized with nearest neighbours by v2."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def make_params(self, flat_inputs: list) -> dict:
        return {"size": int(torch.randint(self.lo, self.hi + 1, ()).item())}

    def transform(self, inpt, params: dict):
        return self._call_kernel(v2.functional.resize, inpt, size=None, max_size=params["size"], antialias=True)


def normalize() -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


def train_transform(config: DataConfig, image_size: int) -> v2.Compose:
    """Random scale of the long side in ``scale_range`` x base size (base: ``data.base_size``, or
    ``image_size``, the images' long side), crop ``crop_size`` (padding: 0 in the image, 255 in
    the mask), flip."""
    base = config.base_size or image_size
    lo, hi = config.scale_range
    steps = [
        RandomLongSideResize(int(base * lo), int(base * hi)),
        v2.RandomCrop(config.crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
    ]
    if config.flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, normalize()])
