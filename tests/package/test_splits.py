"""Labelled/unlabelled splits (cct/data/splits.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cct.config import ConfigError
from cct.data import embedded
from cct.data.splits import make_split, nested_order, read_list, validate_split, write_split


@pytest.fixture(scope="module")
def train_a():
    data = embedded.generate("train", "a")
    return list(data.ids), data.image_labels()


def test_split_is_deterministic_disjoint_and_covering(train_a):
    ids, labels = train_a
    lab, unl = make_split(ids, 20, seed=3, image_labels=labels)
    assert (lab, unl) == make_split(ids, 20, seed=3, image_labels=labels)
    assert len(lab) == 20 and len(unl) == len(ids) - 20
    assert not set(lab) & set(unl)
    assert set(lab) | set(unl) == set(ids)
    # both lists in the dataset's order
    assert lab == sorted(lab, key=ids.index) and unl == sorted(unl, key=ids.index)
    assert make_split(ids, 20, seed=4, image_labels=labels)[0] != lab


def test_split_is_deterministic_across_processes(train_a):
    """No dependence on hash randomisation or global RNG state: a fixed, known first pick."""
    ids, labels = train_a
    np.random.seed(123)
    first = make_split(ids, 5, seed=0, image_labels=labels)[0]
    np.random.seed(456)
    assert make_split(ids, 5, seed=0, image_labels=labels)[0] == first


@pytest.mark.parametrize("balanced", [True, False])
def test_labelled_sets_are_nested_across_counts(train_a, balanced):
    ids, labels = train_a
    labels = labels if balanced else None
    previous = set()
    for n in (1, 5, 10, 20, 50, 100, 500):
        lab = set(make_split(ids, n, seed=1, image_labels=labels)[0])
        assert len(lab) == n and previous <= lab
        previous = lab


def test_nested_order_is_a_permutation(train_a):
    _, labels = train_a
    order = nested_order(len(labels), 0, labels)
    assert sorted(order) == list(range(len(labels)))
    assert sorted(nested_order(37, 5)) == list(range(37))


def test_split_is_class_balanced_compared_with_a_plain_shuffle(train_a):
    ids, labels = train_a
    balanced_spread, plain_spread = [], []
    for seed in range(10):
        # with 8 labelled images every one of the 8 classes is present
        first8 = nested_order(len(ids), seed, labels)[:8]
        assert labels[first8].any(axis=0).all(), f"seed {seed}: a class is missing from the 8 labelled images"
        counts = labels[nested_order(len(ids), seed, labels)[:40]].sum(0)
        plain = labels[nested_order(len(ids), seed, None)[:40]].sum(0)
        balanced_spread.append(counts.max() - counts.min())
        plain_spread.append(plain.max() - plain.min())
    assert np.mean(balanced_spread) < 0.5 * np.mean(plain_spread)
    assert max(balanced_spread) <= 8  # each image adds 2-4 classes at once, so exact balance is out of reach


def test_images_without_foreground_are_still_ordered():
    labels = np.zeros((6, 2), dtype=bool)
    labels[[1, 4], 0] = True
    labels[3, 1] = True
    order = nested_order(6, 0, labels)
    assert sorted(order) == list(range(6))
    assert set(order[:2]) in ({1, 3}, {4, 3}), "the first picks cover both classes"
    assert set(order[3:]) == {0, 2, 5}, "label-less images come last"


def test_n_labeled_out_of_range_is_rejected(train_a):
    ids, _ = train_a
    for n in (0, len(ids) + 1):
        with pytest.raises(ConfigError, match="data.n_labeled"):
            make_split(ids, n, 0)


def test_validate_split_errors_name_the_id():
    train = ["a", "b", "c", "d"]
    validate_split(["a"], ["b", "c"], train, "lists")
    with pytest.raises(ConfigError, match=r"lists: 1 labelled id\(s\) are not in the training set, e.g. 'zz'"):
        validate_split(["a", "zz"], ["b"], train, "lists")
    with pytest.raises(ConfigError, match=r"unlabelled .*'yy'"):
        validate_split(["a"], ["yy"], train, "lists")
    with pytest.raises(ConfigError, match=r"both labelled and unlabelled, e.g. 'b'"):
        validate_split(["a", "b"], ["b", "c"], train, "lists")
    with pytest.raises(ConfigError, match="labelled list is empty"):
        validate_split([], ["b"], train, "lists")


def test_read_list_and_its_errors(tmp_path):
    path = tmp_path / "labeled.txt"
    path.write_text("img1 extra/column.png\n\nimg2\n  \nimg3\n")
    assert read_list(path, "data.labeled_list") == ["img1", "img2", "img3"]
    dup = tmp_path / "dup.txt"
    dup.write_text("x\ny\nx\n")
    with pytest.raises(ConfigError, match=r"data.labeled_list: .*dup.txt lists 'x' more than once"):
        read_list(dup, "data.labeled_list")
    with pytest.raises(ConfigError, match=r"data.unlabeled_list: file not found: .*nope.txt"):
        read_list(tmp_path / "nope.txt", "data.unlabeled_list")


def test_write_split_round_trips(tmp_path, train_a):
    ids, labels = train_a
    lab, unl = make_split(ids, 10, 0, labels)
    write_split(tmp_path / "s", lab, unl)
    assert read_list(tmp_path / "s" / "labeled.txt", "l") == lab
    assert read_list(tmp_path / "s" / "unlabeled.txt", "u") == unl
