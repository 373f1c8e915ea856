"""The training augmentation (cct/data/transforms.py) equals torchvision.transforms.v2's pipeline on
the same seeds, draws only from the generator it is given, and keeps masks valid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cct import IGNORE_INDEX
from cct.config import DataConfig
from cct.data.transforms import normalize, to_tensors, train_transform


def _v2_reference(config: DataConfig, image_size: int):
    """The pipeline as torchvision.transforms.v2 spells it, drawing from the global generator."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    class RandomLongSideResize(v2.Transform):
        def __init__(self, lo: int, hi: int) -> None:
            super().__init__()
            self.lo, self.hi = lo, hi

        def make_params(self, flat_inputs):
            return {"size": int(torch.randint(self.lo, self.hi + 1, ()).item())}

        def transform(self, inpt, params):
            return self._call_kernel(v2.functional.resize, inpt, size=None, max_size=params["size"], antialias=True)

    base = config.base_size or image_size
    lo, hi = config.scale_range
    steps = [
        RandomLongSideResize(int(base * lo), int(base * hi)),
        v2.RandomCrop(config.crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
    ]
    if config.flip:
        steps.append(v2.RandomHorizontalFlip())
    pipeline = v2.Compose(
        [*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )

    def apply(image: np.ndarray, mask: np.ndarray, seed: int):
        torch.manual_seed(seed)
        x = tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        y = tv_tensors.Mask(torch.from_numpy(np.array(mask)))
        x, y = pipeline(x, y)
        return x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)

    return apply


def _scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, 9, (h, w)).astype(np.int64)
    mask[rng.random((h, w)) < 0.05] = IGNORE_INDEX
    return image, mask


@pytest.mark.parametrize(
    "h, w, crop, scale, base, flip",
    [
        (64, 64, 48, (0.75, 1.5), None, True),  # the embedded default
        (64, 64, 32, (0.5, 0.6), None, True),  # downscaled below the crop: padding
        (48, 80, 40, (0.5, 2.0), 60, True),  # landscape, base_size
        (90, 50, 64, (1.0, 1.0), None, False),  # portrait, no rescale, no flip
    ],
)
def test_training_crops_equal_torchvision_v2_on_the_same_seeds(h, w, crop, scale, base, flip):
    config = DataConfig(crop_size=crop, scale_range=scale, base_size=base, flip=flip)
    ours, reference = train_transform(config, max(h, w)), _v2_reference(config, max(h, w))
    for seed in range(12):
        image, mask = _scene(h, w, seed)
        x, y = ours(*to_tensors(image, mask), torch.Generator().manual_seed(seed))
        rx, ry = reference(image, mask, seed)
        assert x.shape == (3, crop, crop) and y.shape == (crop, crop)
        assert torch.equal(x, rx), f"image differs at seed {seed}"
        assert torch.equal(y, ry), f"mask differs at seed {seed}"


def test_crops_draw_only_from_their_generator_and_keep_masks_valid():
    config = DataConfig(crop_size=32, scale_range=(0.4, 1.5))
    transform = train_transform(config, 64)
    image, mask = _scene(64, 64, 0)
    state = torch.get_rng_state()
    first = transform(*to_tensors(image, mask), torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state), "the global generator was used"
    again = transform(*to_tensors(image, mask), torch.Generator().manual_seed(5))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    seen = set()
    for seed in range(30):
        _, y = transform(*to_tensors(image, mask), torch.Generator().manual_seed(seed))
        seen.update(torch.unique(y).tolist())
    assert seen <= set(range(9)) | {IGNORE_INDEX} and IGNORE_INDEX in seen  # nearest resizing, padding ignored


def test_normalize_is_imagenet_normalisation_of_scaled_pixels():
    image = torch.tensor([[[0, 255]], [[128, 64]], [[255, 0]]], dtype=torch.uint8)
    out = normalize()(image)
    expected = (image.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(3, 1, 1)
    torch.testing.assert_close(out, expected)
