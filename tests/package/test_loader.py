"""Iteration-indexed batches (cct/data/loader.py) and the joint augmentation (cct/data/transforms.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cct.config import DataConfig
from cct.data.base import Source
from cct.data.loader import AugmentedDataset, IterationBatchSampler, batch_stream
from cct.data.transforms import MEAN, STD, to_tensors, train_transform

POOL = list(range(100, 110))  # indices into a dataset, not 0..n-1, to catch pool/position mix-ups


def test_batch_is_a_pure_function_of_the_iteration():
    fresh = IterationBatchSampler(POOL, 3, seed=7, stream="labeled", start=0, stop=50)
    resumed = IterationBatchSampler(POOL, 3, seed=7, stream="labeled", start=23, stop=50)
    first_pass = list(fresh)
    assert len(first_pass) == 50
    assert list(resumed) == first_pass[23:]
    # and in any query order (the permutation cache must not matter)
    shuffled = IterationBatchSampler(POOL, 3, seed=7, stream="labeled", start=0, stop=50)
    for i in [40, 3, 17, 0, 49, 3, 28]:
        assert shuffled.batch(i) == first_pass[i]


def test_each_pass_covers_the_pool_exactly_once_and_passes_are_reshuffled():
    sampler = IterationBatchSampler(POOL, 3, seed=0, stream="labeled", start=0, stop=20)
    slots = [index for batch in sampler for index, _ in batch]  # 60 slots = 6 passes over 10 images
    passes = [slots[p * 10 : (p + 1) * 10] for p in range(6)]
    for p in passes:
        assert sorted(p) == POOL
    assert len({tuple(p) for p in passes}) == 6, "every pass has its own order"
    assert passes[0] != POOL


def test_augmentation_seeds_differ_per_slot_iteration_stream_and_run_seed():
    a = IterationBatchSampler(POOL, 4, seed=0, stream="labeled", start=0, stop=30)
    seeds = [s for batch in a for _, s in batch]
    assert len(set(seeds)) == len(seeds)
    b = IterationBatchSampler(POOL, 4, seed=0, stream="unlabeled", start=0, stop=30)
    c = IterationBatchSampler(POOL, 4, seed=1, stream="labeled", start=0, stop=30)
    assert not set(seeds) & {s for batch in b for _, s in batch}
    assert [i for batch in c for i, _ in batch] != [i for batch in a for i, _ in batch]


def test_unknown_stream_is_rejected():
    with pytest.raises(KeyError):
        IterationBatchSampler(POOL, 2, 0, "weak", 0, 1)


def toy_source(n=4, size=40):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = rng.integers(0, 3, (n, size, size), dtype=np.uint8)
    return Source("toy/train", [f"t{i}" for i in range(n)], ("bg", "x", "y"), [0], arrays=(images, masks))


def test_augmented_item_depends_only_on_index_and_seed():
    source = toy_source()
    dataset = AugmentedDataset(source, train_transform(DataConfig(crop_size=32), 40))
    torch.manual_seed(1)
    state = torch.get_rng_state()
    x1, y1 = dataset[(2, 12345)]
    assert torch.equal(torch.get_rng_state(), state), "the global generator is left as it was"
    torch.manual_seed(99)  # and does not matter
    x2, y2 = dataset[(2, 12345)]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (3, 32, 32) and x1.dtype == torch.uint8  # normalised per batch, by collate
    assert y1.shape == (32, 32) and y1.dtype == torch.uint8
    others = [dataset[(2, s)] for s in range(6)]
    assert any(not torch.equal(x1, x) for x, _ in others)


def test_a_batch_is_its_crops_transformed_one_by_one():
    """collate's batch-level normalisation and uint8 masks give, to the bit, what the whole
    transform gives each crop (float32 normalised image, int64 mask), and an unlabelled stream the
    same images with all-255 masks."""
    source = toy_source(size=40)
    transform = train_transform(DataConfig(crop_size=32, scale_range=(0.5, 1.5)), 40)
    keys = [(i % 4, 1000 + i) for i in range(6)]
    labelled = AugmentedDataset(source, transform)
    images, masks = labelled.collate([labelled[k] for k in keys])
    assert images.dtype == torch.float32 and masks.dtype == torch.int64
    for b, (index, seed) in enumerate(keys):
        image, mask = transform(*to_tensors(*source.load(index)), torch.Generator().manual_seed(seed))
        assert torch.equal(images[b], image) and torch.equal(masks[b], mask)
    assert (masks == 255).any() and (masks < 3).any(), "the scales drawn pad some crops"
    unlabelled = AugmentedDataset(source, transform, labels=False)
    assert all(unlabelled[k][1] is None for k in keys)
    images_u, masks_u = unlabelled.collate([unlabelled[k] for k in keys])
    assert torch.equal(images_u, images)
    assert masks_u.dtype == torch.int64 and bool((masks_u == 255).all())


def test_masks_travel_as_uint8_so_a_labelled_stream_refuses_over_255_classes():
    source = toy_source()
    many = Source("many/train", source.ids, tuple(f"c{i}" for i in range(300)), [0], arrays=source.arrays)
    transform = train_transform(DataConfig(crop_size=32), 40)
    with pytest.raises(ValueError, match="many/train: 300 classes; at most 255"):
        AugmentedDataset(many, transform)
    unlabelled = AugmentedDataset(many, transform, labels=False)
    images, masks = unlabelled.collate([unlabelled[(0, 1)]])
    assert images.shape == (1, 3, 32, 32) and bool((masks == 255).all())  # no mask read: nothing to refuse


def test_labelled_images_are_re_augmented_on_every_pass():
    """Official defect 3: itertools.cycle replays the first pass's batches. Here a 2-image pool seen
    over 8 iterations of batch 2 shows each image under 8 different augmentations."""
    source = toy_source(n=2)
    transform = train_transform(DataConfig(crop_size=32), 40)
    stream = batch_stream(source, [0, 1], transform, 2, seed=0, stream="labeled", start=0, stop=8)
    batches = list(stream)
    assert len(batches) == 8
    crops = [x for images, _ in batches for x in images]
    distinct = {tuple(c.flatten()[:64].tolist()) for c in crops}
    assert len(distinct) == 16


def test_stream_resumed_mid_run_yields_the_same_tensors():
    source = toy_source()
    transform = train_transform(DataConfig(crop_size=32), 40)
    full = list(batch_stream(source, [0, 1, 2, 3], transform, 3, 5, "unlabeled", 0, 6))
    tail = list(batch_stream(source, [0, 1, 2, 3], transform, 3, 5, "unlabeled", 4, 6))
    for (xa, ya), (xb, yb) in zip(full[4:], tail, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_crop_is_padded_with_255_in_the_mask_and_0_in_the_image():
    source = toy_source(n=1, size=40)
    # fixed scale 0.75: the short side becomes 30, cropped to 32 -> 32*32 - 30*30 padded pixels
    config = DataConfig(crop_size=32, scale_range=(0.75, 0.75), flip=False)
    dataset = AugmentedDataset(source, train_transform(config, 40))
    x, y = (t[0] for t in dataset.collate([dataset[(0, 3)]]))
    padded = y == 255
    assert int(padded.sum()) == 32 * 32 - 30 * 30
    black = torch.tensor([-m / s for m, s in zip(MEAN, STD, strict=True)]).view(3, 1)
    torch.testing.assert_close(x[:, padded], black.expand(3, int(padded.sum())))
    assert set(torch.unique(y[~padded]).tolist()) <= {0, 1, 2}


def test_flip_flips_image_and_mask_together():
    image = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    image[0, :, :8] = 255  # a white band on the left, labelled 1
    mask = np.zeros((1, 32, 32), dtype=np.uint8)
    mask[0, :, :8] = 1
    source = Source("toy", ["t0"], ("bg", "x"), [0], arrays=(image, mask))
    config = DataConfig(crop_size=32, scale_range=(1.0, 1.0), flip=True)
    dataset = AugmentedDataset(source, train_transform(config, 32))
    flipped = 0
    for seed in range(20):
        x, y = (t[0] for t in dataset.collate([dataset[(0, seed)]]))
        white = x[0] > 0
        assert torch.equal(white, y == 1)
        flipped += int(bool(y[:, -1].all()))
    assert 3 <= flipped <= 17


def test_stream_is_the_same_with_worker_processes():
    source = toy_source()
    transform = train_transform(DataConfig(crop_size=32), 40)
    inline = list(batch_stream(source, [0, 1, 2, 3], transform, 2, 3, "labeled", 0, 4, num_workers=0))
    workers = list(batch_stream(source, [0, 1, 2, 3], transform, 2, 3, "labeled", 0, 4, num_workers=2))
    for (xa, ya), (xb, yb) in zip(inline, workers, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
