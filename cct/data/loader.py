"""Iteration-indexed, reproducible batches.

Training draws batches by iteration number, not by epoch: the labelled and unlabelled streams each
walk through seeded per-pass permutations, and every sample carries its own augmentation seed
derived from (run seed, stream, iteration, slot). So batch ``i`` is the same whether a run is
fresh or resumed at iteration ``i``, the same with any number of DataLoader workers, and each pass
over a small labelled set is reshuffled and re-augmented (unlike ``itertools.cycle``, which
replays the first pass; official defect 3).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cct import IGNORE_INDEX
from cct.data.base import Source
from cct.data.transforms import to_image

_STREAMS = {"labeled": 1, "unlabeled": 2}


class AugmentedDataset(Dataset):
    """Wraps a Source; item (index, aug_seed) -> the augmented crop, image uint8 (3, s, s) and mask
    uint8 (s, s), the augmentation drawn from a generator seeded with aug_seed (the global generator
    is untouched). Without ``labels`` the mask is None and no mask file is read (an unlabelled
    stream, whose ground truth is never used: the same draws, so the same images). ``collate``
    makes the batch the trainer sees."""

    def __init__(self, source: Source, transform, labels: bool = True) -> None:
        if labels and source.num_classes > IGNORE_INDEX:  # the crops' masks are uint8, 255 the ignored label
            raise ValueError(f"{source.name}: {source.num_classes} classes; at most {IGNORE_INDEX} are supported")
        self.source, self.transform, self.labels = source, transform, labels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        index, seed = key
        generator = torch.Generator().manual_seed(seed)
        if not self.labels:
            return self.transform.geometric(to_image(self.source.image(index)), None, generator)[0], None
        image, mask = self.source.load(index)
        # one copy of the mask, straight to the uint8 the crop carries (see TrainTransform.geometric)
        return self.transform.geometric(to_image(image), torch.from_numpy(mask.astype(np.uint8)), generator)

    def collate(self, items: list[tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Items -> (images float32 (B, 3, s, s) normalised, masks int64 (B, s, s); all 255 without
        labels). Normalising the stacked batch gives the same floats as normalising each crop (an
        element-wise map), in four tensor operations per batch instead of four per image."""
        images = self.images(items)
        if not self.labels:
            masks = torch.full((len(items), *images.shape[-2:]), IGNORE_INDEX, dtype=torch.int64)
        else:
            masks = torch.stack([mask for _, mask in items]).to(torch.int64)
        return images, masks

    def images(self, items: list[tuple]) -> torch.Tensor:
        """The items' uint8 crops (first of each pair) -> float32 (B, 3, s, s), normalised."""
        return self.transform.normalize(torch.stack([item[0] for item in items]))


class IterationBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for iterations ``start`` .. ``stop - 1``, a batch of (index into ``pool``, aug seed)."""

    def __init__(self, pool: list[int], batch_size: int, seed: int, stream: str, start: int, stop: int) -> None:
        self.pool, self.batch_size, self.seed = np.asarray(pool), batch_size, seed
        self.stream, self.start, self.stop = _STREAMS[stream], start, stop
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = np.random.default_rng([self.seed, self.stream, epoch]).permutation(len(self.pool))
        return self._cache[epoch]

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        n = len(self.pool)
        first = iteration * self.batch_size
        out = []
        for slot in range(self.batch_size):
            epoch, offset = divmod(first + slot, n)
            index = int(self.pool[self._permutation(epoch)[offset]])
            aug_seed = int(np.random.default_rng([self.seed, self.stream, iteration, slot]).integers(2**62))
            out.append((index, aug_seed))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for iteration in range(self.start, self.stop):
            yield self.batch(iteration)


def batch_stream(
    source: Source, pool: list[int], transform, batch_size: int, seed: int, stream: str, start: int, stop: int,
    num_workers: int = 0, pin_memory: bool = False, labels: bool = True,
) -> DataLoader:
    sampler = IterationBatchSampler(pool, batch_size, seed, stream, start, stop)
    dataset = AugmentedDataset(source, transform, labels)
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=dataset.collate, num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=False,
    )
