"""Labelled/unlabelled splits of a training set: deterministic, disjoint, covering, and nested.

One seeded ordering of the training images is drawn; the labelled set for N labels is its first N
images, so the set for a smaller N is always a subset of the set for a larger N (as in the paper's
VOC splits), and points on a label-count curve differ only by the added labels. Where image-level
labels exist, the ordering is class-balanced: it repeatedly takes the next image (in a seeded
shuffle) that contains the class least represented so far. A dataset may name images to label
first (``Source.labeled_first``): they head the ordering, so the VOC set of 1,464 labels is the
VOC 2012 ``train`` list and the smaller sets are nested inside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cct.config import ConfigError, read_text_file
from cct.io import atomic_write_text


def nested_order(n_images: int, seed: int, image_labels: np.ndarray | None = None) -> list[int]:
    """A permutation of range(n_images); class-balanced when ``image_labels`` (bool (N, K)) is given."""
    rng = np.random.default_rng([seed, 0x5EED])
    shuffled = rng.permutation(n_images)
    if image_labels is None or image_labels.shape[1] == 0:
        return shuffled.tolist()
    labels = image_labels[shuffled]
    counts = np.zeros(labels.shape[1], dtype=np.int64)
    taken = np.zeros(n_images, dtype=bool)
    order: list[int] = []
    # Greedy balancing: cost O(N * K) per pick would be O(N^2 K); instead keep per class a queue
    # (in shuffled order) of images containing it, and a queue of label-less images at the end.
    queues = [list(np.flatnonzero(labels[:, k])[::-1]) for k in range(labels.shape[1])]
    for _ in range(n_images):
        pick = None
        for k in np.argsort(counts, kind="stable"):
            queue = queues[k]
            while queue and taken[queue[-1]]:
                queue.pop()
            if queue:
                pick = queue.pop()
                break
        if pick is None:  # only images with no foreground class remain
            pick = int(np.flatnonzero(~taken)[0])
        taken[pick] = True
        counts += labels[pick]
        order.append(int(shuffled[pick]))
    return order


def prioritised_order(n_images: int, seed: int, image_labels: np.ndarray | None, first: list[int]) -> list[int]:
    """:func:`nested_order` of the images in ``first``, then that of the others: labelled sets of
    up to ``len(first)`` images are drawn from ``first`` only, and the set of exactly that size is it."""
    chosen = np.zeros(n_images, dtype=bool)
    chosen[first] = True
    order = []
    for pool in (np.flatnonzero(chosen), np.flatnonzero(~chosen)):
        labels = None if image_labels is None else image_labels[pool]
        order += [int(pool[i]) for i in nested_order(len(pool), seed, labels)]
    return order


def make_split(ids: list[str], n_labeled: int, seed: int, image_labels: np.ndarray | None = None,
               labeled_first: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(labelled ids, unlabelled ids), both in the dataset's order. ``labeled_first`` (a dataset's
    ``Source.labeled_first``) are the ids a labelled set takes before any other."""
    if not 0 < n_labeled <= len(ids):
        raise ConfigError(f"data.n_labeled: {n_labeled} is not in [1, {len(ids)}] (training images available)")
    if labeled_first:
        position = {name: i for i, name in enumerate(ids)}
        unknown = [name for name in labeled_first if name not in position]
        if unknown:
            raise ConfigError(f"{len(unknown)} id(s) to label first are not training images, e.g. {unknown[0]!r}")
        order = prioritised_order(len(ids), seed, image_labels, sorted({position[name] for name in labeled_first}))
    else:
        order = nested_order(len(ids), seed, image_labels)
    chosen = np.zeros(len(ids), dtype=bool)
    chosen[order[:n_labeled]] = True
    return [i for i, c in zip(ids, chosen, strict=True) if c], [i for i, c in zip(ids, chosen, strict=True) if not c]


def read_list(path: str | Path, what: str) -> list[str]:
    """The ids of a list file: the first field of every non-empty line (UTF-8 text)."""
    names = [line.split()[0] for line in read_text_file(path, what, kind="list of ids").splitlines() if line.strip()]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"{what}: {path} lists {dup!r} more than once")
    return names


def validate_split(labeled: list[str], unlabeled: list[str], train_ids: list[str], where: str) -> None:
    """Both lists must name training images, and no image may be in both."""
    known = set(train_ids)
    for name, ids in (("labelled", labeled), ("unlabelled", unlabeled)):
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ConfigError(f"{where}: {len(unknown)} {name} id(s) are not in the training set, e.g. {unknown[0]!r}")
    overlap = set(labeled) & set(unlabeled)
    if overlap:
        raise ConfigError(
            f"{where}: {len(overlap)} id(s) are both labelled and unlabelled, e.g. {sorted(overlap)[0]!r}"
        )
    if not labeled:
        raise ConfigError(f"{where}: the labelled list is empty")


def write_split(out_dir: str | Path, labeled: list[str], unlabeled: list[str]) -> None:
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "labeled.txt", "".join(f"{i}\n" for i in labeled))
    atomic_write_text(out_dir / "unlabeled.txt", "".join(f"{i}\n" for i in unlabeled))
