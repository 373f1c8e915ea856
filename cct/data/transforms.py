"""Joint image/mask augmentation of the training crops, and the normalisation of every image.

Training crops: a random rescale of the long side, a random crop padded with 0 (``data.pad_fill:
zero``; or the mean pixel, ``mean``, the official code's) in the image and 255 (ignored) in the
mask, a horizontal flip, then ImageNet normalisation (by the loader, once per batch:
``cct.data.loader.AugmentedDataset.collate``). These are the operations of
``torchvision.transforms.v2`` (``Resize(max_size=...)`` with antialiasing, ``RandomCrop(
pad_if_needed=True)``, ``RandomHorizontalFlip``, ``ToDtype``, ``Normalize``) on the same torch
kernels, with the same random draws in the same order (a test checks them equal to v2's on the same
seeds), written out here for two reasons: v2 draws from torch's global generator, so every sample
needed a global reseed (milliseconds each, most of the loader's time), whereas here each sample
draws from a ``torch.Generator`` of its own; and importing torchvision takes about 3 s per process
(it imports torch._dynamo), a sizeable share of a short embedded run.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cct import IGNORE_INDEX
from cct.config import DataConfig

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def to_image(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8 (3, H, W), a view of the H, W, 3 copy (as torchvision's ``to_image``)."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (H, W, 3), int64 (H, W) -> uint8 (3, H, W) (:func:`to_image`) and int64 (H, W)."""
    return to_image(image), torch.from_numpy(np.array(mask))


def normalize():
    """uint8 (..., 3, H, W) -> float32 (..., 3, H, W): scaled to [0, 1], minus the ImageNet mean, over
    its std (one crop, or a batch of them: an element-wise map, the same floats either way)."""
    mean = torch.tensor(MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(-1, 1, 1)

    def apply(image: torch.Tensor) -> torch.Tensor:
        scaled = image.to(torch.float32).mul_(1.0 / 255)
        return scaled.sub(mean).div_(std)

    return apply


def _native_uint8_bilinear() -> bool:
    """Whether bilinear resizing runs on uint8 directly (torch's vectorised kernel on AVX2/AVX512
    and aarch64 CPUs), as torchvision decides; else in float32, rounded back."""
    import platform

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def _resized_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with the long side ``long_side``, the short side scaled and truncated (torchvision's rule)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short = int(long_side * short / long)
    return (long_side, new_short) if width <= height else (new_short, long_side)


def _resize_image(x: torch.Tensor, size: tuple[int, int], native: bool) -> torch.Tensor:
    """Bilinear, antialiased resize of an image x (C, H, W) as torchvision's ``resize_image`` does
    (same dtype paths and memory layout)."""
    c, h, w = x.shape
    numel = x.numel()
    x = x.reshape(-1, c, h, w)
    strides = x.stride()
    if x.is_contiguous(memory_format=torch.channels_last) and x.shape[0] == 1 and numel != strides[0]:
        x = x.as_strided((1, c, h, w), [numel, *strides[1:]])  # keeps the output channels_last (torch #68430)
    dtype = x.dtype
    cast = not (dtype in (torch.float32, torch.float64) or (dtype == torch.uint8 and native))
    if cast:
        x = x.to(torch.float32)
    x = F.interpolate(x, size=list(size), mode="bilinear", align_corners=False, antialias=True)
    if cast:
        if dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
            x = x.round_()
        x = x.to(dtype)
    return x.reshape(c, *size)


class TrainTransform:
    """The training crop of one (image uint8 (3, H, W), mask int64 (H, W)) pair -> (float32 (3, s, s),
    int64 (s, s)) with s = ``data.crop_size``: long side rescaled to a uniform integer in
    [lo, hi] x base (base: ``data.base_size``, or ``image_size``, the images' long side), cropped at a
    uniformly drawn position (padded first where smaller than the crop), flipped with probability
    1/2 (``data.flip``), normalised. Every draw comes from ``generator``."""

    def __init__(self, config: DataConfig, image_size: int) -> None:
        base = config.base_size or image_size
        self.lo, self.hi = int(base * config.scale_range[0]), int(base * config.scale_range[1])
        self.crop, self.flip = config.crop_size, config.flip
        # the colour of the padding of a crop larger than the image: black, or the mean pixel (the official)
        fill = None if config.pad_fill == "zero" else [round(m * 255) for m in MEAN]
        self.fill = None if fill is None else torch.tensor(fill, dtype=torch.uint8)
        self.normalize = normalize()
        self.native = _native_uint8_bilinear()

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator):
        image, mask = self.geometric(image, mask.to(torch.uint8), generator)
        return self.normalize(image), mask.to(torch.int64)

    def geometric(self, image: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator):
        """The crop without the normalisation: image uint8 (3, H, W) and mask uint8 (H, W), or None
        for an image whose labels are never read -> uint8 (3, s, s) and uint8 (s, s) or None. The
        random draws are the same with or without a mask, so an image is cropped alike either way.
        Masks travel as uint8 (class indices below 255, and 255 ignored): nearest resizing copies
        pixels, so it is exact in any dtype, and uint8 needs no float round trip."""
        long_side = int(torch.randint(self.lo, self.hi + 1, (), generator=generator).item())
        size = _resized_size(*image.shape[-2:], long_side)
        if size != tuple(image.shape[-2:]):
            image = _resize_image(image, size, self.native)
            if mask is not None:
                mask = F.interpolate(mask[None, None], size=list(size), mode="nearest")[0, 0]
        image, mask = self._random_crop(image, mask, generator)
        if self.flip and torch.rand(1, generator=generator) < 0.5:
            image, mask = image.flip(-1), None if mask is None else mask.flip(-1)
        return image, mask

    def _random_crop(self, image: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator):
        h, w = image.shape[-2:]
        # where smaller than the crop, pad both sides by the shortfall (torchvision's pad_if_needed)
        dy, dx = max(self.crop - h, 0), max(self.crop - w, 0)
        if dy or dx:
            if self.fill is None:
                image = F.pad(image, (dx, dx, dy, dy), value=0)
            else:  # per channel: the mean pixel
                canvas = self.fill.to(image.dtype).view(-1, 1, 1).expand(image.shape[0], h + 2 * dy, w + 2 * dx)
                canvas = canvas.clone()
                canvas[:, dy : dy + h, dx : dx + w] = image
                image = canvas
            mask = None if mask is None else F.pad(mask, (dx, dx, dy, dy), value=IGNORE_INDEX)
            h, w = h + 2 * dy, w + 2 * dx
        top = int(torch.randint(0, h - self.crop + 1, size=(), generator=generator)) if h > self.crop else 0
        left = int(torch.randint(0, w - self.crop + 1, size=(), generator=generator)) if w > self.crop else 0
        return (image[..., top : top + self.crop, left : left + self.crop],
                None if mask is None else mask[..., top : top + self.crop, left : left + self.crop])


def train_transform(config: DataConfig, image_size: int) -> TrainTransform:
    """The training transform of a domain (see :class:`TrainTransform`)."""
    return TrainTransform(config, image_size)
