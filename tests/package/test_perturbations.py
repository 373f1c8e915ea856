"""The seven perturbations of CCT (cct/model/perturbations.py): each one's defining property."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cct.model import perturbations as P
from cct.model.decoders import DecoderBank


def positive_z(b=2, c=6, h=8, w=8):
    """Encoder outputs are post-ReLU, so non-negative; strictly positive here so ratios are defined."""
    return torch.rand(b, c, h, w) + 0.5


# --- F-Noise -----------------------------------------------------------------------------------------

def test_feature_noise_is_multiplicative_uniform_noise_shared_over_the_batch():
    z = positive_z(b=3, c=16, h=12, w=12)
    out = P.feature_noise(z, uniform_range=0.3)
    assert out.shape == z.shape
    ratio = (out - z) / z  # = N
    # one noise tensor of shape (C, h, w), identical for every sample of the batch
    torch.testing.assert_close(ratio[1], ratio[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(ratio[2], ratio[0], rtol=0, atol=1e-5)
    assert ratio.abs().max() <= 0.3 + 1e-5
    # it is noise over the whole range, not a constant: 2304 draws of U(-0.3, 0.3)
    n = ratio[0]
    assert n.min() < -0.28 and n.max() > 0.28
    assert abs(float(n.mean())) < 0.02
    assert n.unique().numel() > 2000


def test_feature_noise_range_is_the_argument_and_draws_differ():
    z = positive_z()
    a = (P.feature_noise(z, 0.05) - z) / z
    assert a.abs().max() <= 0.05 + 1e-6 and a.abs().max() > 0.04
    b = (P.feature_noise(z, 0.05) - z) / z
    assert not torch.allclose(a, b)


# --- F-Drop ------------------------------------------------------------------------------------------

def test_feature_drop_zeroes_exactly_the_positions_above_a_threshold_in_0_7_to_0_9_of_the_max():
    fractions_lo, fractions_hi = [], []
    for _trial in range(60):
        b, c, h, w = 2, 4, 10, 10
        # attention = channel mean; make it take 100 distinct, evenly spread values per sample
        z = positive_z(b, c, h, w)
        attention_target = torch.randperm(h * w).float().view(1, h, w).expand(b, h, w) / (h * w) + 0.01
        z = z / z.mean(dim=1, keepdim=True) * attention_target.unsqueeze(1)
        attention = z.mean(dim=1)
        out = P.feature_drop(z, (0.7, 0.9))
        zeroed = (out == 0).all(dim=1)
        kept = (out == z).all(dim=1)
        assert bool((zeroed ^ kept).all()), "each position is either zeroed in every channel or untouched"
        for s in range(b):
            a, peak = attention[s], attention[s].max()
            dropped_att, kept_att = a[zeroed[s]], a[kept[s]]
            assert zeroed[s].flatten()[a.flatten().argmax()], "the most activated position is always dropped"
            # zeroed set is an upper set of the attention: one threshold separates it from the kept set
            assert dropped_att.min() > kept_att.max()
            assert dropped_att.min() >= 0.7 * peak - 1e-6
            assert kept_att.max() < 0.9 * peak + 1e-6
            fractions_lo.append(float(kept_att.max() / peak))
            fractions_hi.append(float(dropped_att.min() / peak))
    # the threshold is drawn over the whole [0.7, 0.9] range, not fixed
    assert min(fractions_hi) < 0.73 and max(fractions_lo) > 0.87


def test_feature_drop_threshold_is_drawn_per_sample():
    z = (positive_z(b=1, c=2, h=16, w=16) * torch.linspace(0.01, 1, 256).view(1, 1, 16, 16)).expand(8, -1, -1, -1)
    zeroed = (P.feature_drop(z) == 0).all(dim=1).flatten(1).sum(1)
    # identical attention in every sample, so different counts mean different thresholds
    assert zeroed.unique().numel() > 1


# --- DropOut -----------------------------------------------------------------------------------------

def test_dropout_drops_whole_channels_and_scales_the_rest_by_two():
    z = positive_z(b=4, c=256, h=3, w=3)
    out = P.dropout(z, p=0.5)
    per_channel_zero = (out == 0).all(dim=(2, 3))
    per_channel_scaled = torch.isclose(out, 2 * z).all(dim=(2, 3))
    assert bool((per_channel_zero ^ per_channel_scaled).all())
    rate = per_channel_zero.float().mean().item()  # 1024 Bernoulli(0.5) draws
    assert 0.42 < rate < 0.58
    # channels are dropped independently per sample
    assert not torch.equal(per_channel_zero[0], per_channel_zero[1])


def test_dropout_rate_is_the_argument():
    z = positive_z(b=4, c=256, h=2, w=2)
    out = P.dropout(z, p=0.2)
    dropped = (out == 0).all(dim=(2, 3)).float().mean().item()
    assert 0.13 < dropped < 0.27
    kept = ~(out == 0).all(dim=(2, 3))
    torch.testing.assert_close(out[kept], z[kept] / 0.8)


# --- Con-Msk / Obj-Msk -------------------------------------------------------------------------------

def objects_example():
    objects = torch.zeros(2, 8, 8, dtype=torch.bool)
    objects[0, 1:4, 2:6] = True
    objects[1, 5:8, 0:2] = True
    objects[1, 0, 7] = True
    return objects


def test_context_masking_keeps_only_object_positions():
    z, objects = positive_z(), objects_example()
    out = P.context_masking(z, objects)
    nonzero = (out != 0).any(dim=1)
    assert torch.equal(nonzero, objects)
    for s in range(2):
        torch.testing.assert_close(out[s][:, objects[s]], z[s][:, objects[s]], rtol=0, atol=0)


def test_object_masking_is_the_complement_of_context_masking():
    z, objects = positive_z(), objects_example()
    out = P.object_masking(z, objects)
    assert torch.equal((out != 0).any(dim=1), ~objects)
    torch.testing.assert_close(out + P.context_masking(z, objects), z, rtol=0, atol=0)


# --- G-Cutout ----------------------------------------------------------------------------------------

def erased_boxes(keep: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of every 8-connected erased region of a 2-D keep mask, checking each is a box."""
    from scipy import ndimage

    labelled, _ = ndimage.label(~keep.numpy(), structure=np.ones((3, 3)))
    boxes = []
    for sl in ndimage.find_objects(labelled):
        ys, xs = sl
        region = ~keep.numpy()[ys, xs]
        assert region.all(), "each erased region is a full rectangle"
        boxes.append((ys.start, ys.stop, xs.start, xs.stop))
    return sorted(boxes)


def test_cutout_mask_erases_one_box_of_40_percent_inside_each_object_bounding_box():
    objects = torch.zeros(1, 40, 40, dtype=torch.bool)
    objects[0, 2:12, 3:13] = True  # 10x10 square -> 4x4 box
    objects[0, 20:35, 25:33] = True  # 15 tall x 8 wide -> round(6.0)=6 x round(3.2)=3
    # a ring (hollow) with bounding box rows 20..29, cols 2..13 (10 x 12) -> 4 x round(4.8)=5
    objects[0, 20:30, 2:14] = True
    objects[0, 23:27, 5:11] = False
    for _ in range(30):
        keep = P.cutout_mask(objects, erase=0.4)
        assert keep.shape == objects.shape and keep.dtype == torch.bool
        boxes = erased_boxes(keep[0])
        assert len(boxes) == 3
        by_object = {}
        for y0, y1, x0, x1 in boxes:
            if y1 <= 12:
                assert 2 <= y0 and y1 <= 12 and 3 <= x0 and x1 <= 13
                by_object["square"] = (y1 - y0, x1 - x0)
            elif x0 >= 25:
                assert 20 <= y0 and y1 <= 35 and 25 <= x0 and x1 <= 33
                by_object["tall"] = (y1 - y0, x1 - x0)
            else:
                assert 20 <= y0 and y1 <= 30 and 2 <= x0 and x1 <= 14
                by_object["ring"] = (y1 - y0, x1 - x0)
        assert by_object == {"square": (4, 4), "tall": (6, 3), "ring": (4, 5)}
        assert int((~keep).sum()) == 16 + 18 + 20  # nothing erased outside the boxes


def test_cutout_box_position_is_uniform_within_the_bounding_box():
    objects = torch.zeros(1, 12, 12, dtype=torch.bool)
    objects[0, 1:11, 1:11] = True  # 10x10 -> 4x4 box, top-left corner in rows/cols 1..7
    corners = set()
    for _ in range(400):
        (y0, _, x0, _), = erased_boxes(P.cutout_mask(objects)[0])
        corners.add((y0, x0))
    assert {y for y, _ in corners} == set(range(1, 8))
    assert {x for _, x in corners} == set(range(1, 8))


def test_cutout_uses_8_connected_objects_and_at_least_one_pixel():
    objects = torch.zeros(2, 10, 10, dtype=torch.bool)
    # sample 0: two 3x3 squares touching at a corner are one object (bounding box 6x6 -> 2x2 box)
    objects[0, 0:3, 0:3] = True
    objects[0, 3:6, 3:6] = True
    # sample 1: two single pixels far apart: two objects, each erased entirely (max(1, round(0.4)))
    objects[1, 1, 1] = True
    objects[1, 8, 7] = True
    keep = P.cutout_mask(objects)
    (y0, y1, x0, x1), = erased_boxes(keep[0])
    assert (y1 - y0, x1 - x0) == (2, 2) and 0 <= y0 and y1 <= 6 and 0 <= x0 and x1 <= 6
    assert erased_boxes(keep[1]) == [(1, 2, 1, 2), (8, 9, 7, 8)]


def test_cutout_mask_without_objects_keeps_everything():
    assert bool(P.cutout_mask(torch.zeros(2, 5, 5, dtype=torch.bool)).all())


def test_guided_cutout_applies_the_mask_to_every_channel():
    z = positive_z(b=1, c=5, h=12, w=12)
    objects = torch.zeros(1, 12, 12, dtype=torch.bool)
    objects[0, 2:7, 2:12] = True  # 5x10 -> box 2x4
    torch.manual_seed(3)
    out = P.guided_cutout(z, objects)
    torch.manual_seed(3)
    keep = P.cutout_mask(objects)
    torch.testing.assert_close(out, z * keep.unsqueeze(1), rtol=0, atol=0)
    assert int((out == 0).all(dim=1).sum()) == 8


def scipy_boxes(objects: torch.Tensor) -> list[list[tuple[int, int, int, int]]]:
    """The reference: per sample, (y0, x0, y1, x1) of scipy's 8-connected components, in label order."""
    from scipy import ndimage

    out = []
    for plane in objects.numpy():
        labelled, _ = ndimage.label(plane, structure=np.ones((3, 3), dtype=bool))
        out.append([(ys.start, xs.start, ys.stop, xs.stop) for ys, xs in ndimage.find_objects(labelled)])
    return out


def torch_boxes(objects: torch.Tensor) -> list[list[tuple[int, int, int, int]]]:
    """P.object_boxes as lists, after checking the (boxes, valid) layout: valid boxes form a prefix
    of each sample's row, M is the largest count, invalid rows are zero."""
    boxes, valid = P.object_boxes(objects)
    assert boxes.dtype == torch.long and valid.dtype == torch.bool
    assert boxes.device == objects.device and valid.device == objects.device
    batch = objects.shape[0]
    assert boxes.shape == (batch, valid.shape[1], 4)
    counts = valid.sum(dim=1)
    assert valid.shape[1] == (int(counts.max()) if batch else 0)
    assert torch.equal(valid, torch.arange(valid.shape[1]) < counts.unsqueeze(1))
    assert bool((boxes[~valid] == 0).all())
    return [[tuple(int(v) for v in box) for box in boxes[s][valid[s]]] for s in range(batch)]


@pytest.mark.parametrize("density", [0.05, 0.2, 0.4, 0.55, 0.7, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_object_boxes_equal_scipy_on_random_maps(density, seed):
    generator = torch.Generator().manual_seed(seed)
    objects = torch.rand(3, 23, 31, generator=generator) < density
    reference = scipy_boxes(objects)
    assert torch_boxes(objects) == reference
    if density <= 0.4:
        assert max(len(r) for r in reference) > 5  # many components, and counts differ over the batch


def serpentine(h: int, w: int) -> torch.Tensor:
    """One 1-pixel-wide path: full rows 0, 2, 4, ... joined alternately at the right and left ends."""
    m = torch.zeros(h, w, dtype=torch.bool)
    m[0::2] = True
    for k, r in enumerate(range(1, h, 2)):
        m[r, w - 1 if k % 2 == 0 else 0] = True
    return m


def spiral(n: int) -> torch.Tensor:
    """A square spiral path from the corner inwards, its arms one pixel apart."""
    m = torch.zeros(n, n, dtype=torch.bool)
    y = x = 0
    m[0, 0] = True
    lengths = [n - 1, n - 1, n - 1] + [length for k in range(n - 3, 0, -2) for length in (k, k)]
    for step, length in enumerate(lengths):
        dy, dx = [(0, 1), (1, 0), (0, -1), (-1, 0)][step % 4]
        for _ in range(length):
            y, x = y + dy, x + dx
            m[y, x] = True
    return m


def test_object_boxes_on_long_single_components():
    """Components whose geodesic path is hundreds of pixels long (3x3 propagation alone would need
    781 rounds for the 40x40 serpentine); transposed and flipped so the smallest index is at either
    end of the path, and a non-contiguous view."""
    snake, turn = serpentine(40, 40), spiral(40)
    assert int(snake.sum()) == 20 * 40 + 20 and int(turn.sum()) > 700
    maps = [snake, snake.T, snake.flip(0), snake.flip(1).T, turn, turn.flip(0), turn.T.flip(1)]
    objects = torch.stack(maps)
    reference = scipy_boxes(objects)
    assert all(r == [(0, 0, 40, 40)] for r in reference)
    assert torch_boxes(objects) == reference
    assert torch_boxes(snake.T.unsqueeze(0)) == [[(0, 0, 40, 40)]]  # a non-contiguous view
    # a 128 x 128 serpentine and spiral (the largest z maps)
    big = torch.stack([serpentine(128, 128), spiral(128)])
    assert torch_boxes(big) == scipy_boxes(big) == [[(0, 0, 128, 128)]] * 2


def test_object_boxes_of_empty_and_full_maps():
    boxes, valid = P.object_boxes(torch.zeros(2, 7, 9, dtype=torch.bool))
    assert boxes.shape == (2, 0, 4) and valid.shape == (2, 0)
    assert torch_boxes(torch.ones(2, 7, 9, dtype=torch.bool)) == [[(0, 0, 7, 9)]] * 2
    # one empty sample beside a full one
    objects = torch.zeros(2, 5, 6, dtype=torch.bool)
    objects[1] = True
    assert torch_boxes(objects) == [[], [(0, 0, 5, 6)]]


def test_object_boxes_use_8_connectivity():
    objects = torch.zeros(4, 9, 9, dtype=torch.bool)
    objects[0] = torch.eye(9, dtype=torch.bool)  # diagonal: one component
    objects[1] = torch.eye(9, dtype=torch.bool).flip(1)  # anti-diagonal
    objects[2] = (torch.arange(9).view(-1, 1) + torch.arange(9)) % 2 == 0  # checkerboard: one
    objects[3, 1, 1] = objects[3, 3, 2] = True  # a knight's move apart: two
    objects[3, 6, 6] = objects[3, 7, 7] = objects[3, 8, 6] = True  # a V of diagonal steps: one
    expected = [[(0, 0, 9, 9)], [(0, 0, 9, 9)], [(0, 0, 9, 9)], [(1, 1, 2, 2), (3, 2, 4, 3), (6, 6, 9, 8)]]
    assert scipy_boxes(objects) == expected
    assert torch_boxes(objects) == expected


def test_object_boxes_order_and_batch_with_different_counts():
    objects = torch.zeros(3, 10, 12, dtype=torch.bool)
    # sample 0: a U whose right arm starts higher than its left (the component's smallest index is
    # the right arm's top) beside a blob first met later in row-major order but started earlier
    objects[0, 2:8, 1] = objects[0, 7, 1:5] = objects[0, 1:8, 5] = True
    objects[0, 4:6, 8:11] = True
    objects[0, 0, 10] = True
    # sample 1: empty; sample 2: a ring with a component inside its hole (both get a box here;
    # the official code's external contours would skip the inner one)
    objects[2, 1:9, 1:9] = True
    objects[2, 3:7, 3:7] = False
    objects[2, 4:6, 4] = True
    expected = [[(0, 10, 1, 11), (1, 1, 8, 6), (4, 8, 6, 11)], [], [(1, 1, 9, 9), (4, 4, 6, 5)]]
    assert scipy_boxes(objects) == expected
    assert torch_boxes(objects) == expected


@pytest.mark.parametrize(
    "height, width, erase",
    [(10, 10, 0.4), (5, 15, 0.5), (15, 7, 0.3), (1, 6, 0.4), (9, 2, 0.25), (8, 12, 1.0)],
)
def test_cutout_erases_round_side_times_erase_at_every_offset_inside_the_box(height, width, erase):
    """One rectangular object at (2, 3): the erased region is exactly one eh x ew rectangle with
    eh = max(1, round(height * erase)) (Python's round: 2.5 -> 2, 4.5 -> 4), inside the object, and
    over many seeds its corner takes every allowed offset, roughly equally often."""
    objects = torch.zeros(1, height + 5, width + 6, dtype=torch.bool)
    objects[0, 2 : 2 + height, 3 : 3 + width] = True
    eh, ew = max(1, round(height * erase)), max(1, round(width * erase))
    corners = {}
    draws = 300
    for seed in range(draws):
        torch.manual_seed(seed)
        keep = P.cutout_mask(objects, erase=erase)
        assert keep.shape == objects.shape and keep.dtype == torch.bool
        (y0, y1, x0, x1), = erased_boxes(keep[0])
        assert (y1 - y0, x1 - x0) == (eh, ew)
        assert int((~keep).sum()) == eh * ew
        assert 2 <= y0 and y1 <= 2 + height and 3 <= x0 and x1 <= 3 + width
        corners[(y0 - 2, x0 - 3)] = corners.get((y0 - 2, x0 - 3), 0) + 1
    rows = [sum(c for (dy, _), c in corners.items() if dy == k) for k in range(height - eh + 1)]
    cols = [sum(c for (_, dx), c in corners.items() if dx == k) for k in range(width - ew + 1)]
    assert sum(rows) == sum(cols) == draws  # no offset outside the allowed range
    for counts in (rows, cols):
        expected = draws / len(counts)
        assert min(counts) > 0.4 * expected and max(counts) < 1.7 * expected, counts


def test_cutout_half_ties_round_to_even():
    objects = torch.zeros(1, 12, 12, dtype=torch.bool)
    objects[0, 0:5, 0:7] = True  # 5 * 0.5 = 2.5 -> 2, 7 * 0.5 = 3.5 -> 4
    (y0, y1, x0, x1), = erased_boxes(P.cutout_mask(objects, erase=0.5)[0])
    assert (y1 - y0, x1 - x0) == (2, 4)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cutout_erases_only_inside_the_boxes_and_at_least_its_rectangle_in_each(seed):
    generator = torch.Generator().manual_seed(seed)
    objects = torch.rand(4, 20, 24, generator=generator) < 0.25
    objects[1] = False  # a sample without objects
    torch.manual_seed(seed)
    keep = P.cutout_mask(objects, erase=0.4)
    assert bool(keep[1].all())
    for s, sample_boxes in enumerate(scipy_boxes(objects)):
        union = torch.zeros(20, 24, dtype=torch.bool)
        for y0, x0, y1, x1 in sample_boxes:
            union[y0:y1, x0:x1] = True
            eh, ew = max(1, round((y1 - y0) * 0.4)), max(1, round((x1 - x0) * 0.4))
            assert int((~keep[s, y0:y1, x0:x1]).sum()) >= eh * ew
        assert not bool((~keep[s] & ~union).any()), "an erased pixel outside every bounding box"
        assert int((~keep[s]).sum()) <= sum(
            max(1, round((y1 - y0) * 0.4)) * max(1, round((x1 - x0) * 0.4)) for y0, x0, y1, x1 in sample_boxes
        )


def test_cutout_mask_is_a_function_of_the_seed():
    objects = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(5)) < 0.3
    torch.manual_seed(11)
    first = P.cutout_mask(objects)
    torch.manual_seed(11)
    again = P.cutout_mask(objects)
    torch.manual_seed(12)
    other = P.cutout_mask(objects)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not bool(first.all())


def test_cutout_with_precomputed_boxes_equals_finding_them():
    objects = torch.zeros(2, 10, 10, dtype=torch.bool)
    objects[0, 1:5, 2:7] = True
    objects[0, 7:9, 7:10] = True
    objects[1, 3:8, 0:4] = True
    boxes, valid = P.object_boxes(objects)
    assert boxes.tolist() == [[[1, 2, 5, 7], [7, 7, 9, 10]], [[3, 0, 8, 4], [0, 0, 0, 0]]]
    assert valid.tolist() == [[True, True], [True, False]]
    torch.manual_seed(3)
    found = P.cutout_mask(objects)
    torch.manual_seed(3)
    given = P.cutout_mask(objects, boxes=(boxes, valid))
    assert torch.equal(found, given)
    z = positive_z(b=2, c=3, h=10, w=10)
    torch.manual_seed(3)
    torch.testing.assert_close(P.guided_cutout(z, objects, 0.4, (boxes, valid)), z * found.unsqueeze(1), rtol=0, atol=0)


# --- I-VAT -------------------------------------------------------------------------------------------

def kl_between(decoder, z, z_perturbed) -> float:
    with torch.no_grad():
        p = F.softmax(decoder(z.double()), dim=1)
        return F.kl_div(F.log_softmax(decoder(z_perturbed.double()), dim=1), p, reduction="batchmean").item()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vat_perturbation_has_norm_eps_and_is_adversarial_at_the_paper_xi(seed):
    torch.manual_seed(seed)
    bank = DecoderBank(16, 4, 2, 1)

    def decoder(v):
        return bank.decode_one(v, 0)

    z = torch.randn(2, 16, 4, 4).relu() + 0.1
    out = P.vat(z, decoder, xi=1e-6, eps=2.0)
    assert out.shape == z.shape and out.dtype == z.dtype
    norms = (out - z).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((2,), 2.0), rtol=1e-4, atol=0)
    adversarial = kl_between(decoder, z, out)
    random_kls = []
    for _ in range(20):
        d = torch.randn_like(z)
        d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 2.0
        random_kls.append(kl_between(decoder, z, z + d))
    assert adversarial > 2 * max(random_kls)
    # no gradient reaches the decoder's weights from the probe
    assert all(p.grad is None for p in bank.parameters())


@pytest.mark.parametrize("upsampling", ["pixelshuffle", "bilinear"])
def test_vat_direction_is_the_small_xi_limit_of_the_float64_finite_difference(upsampling):
    """The probe computes H d (H = J^T F J) in float32; a literal float64 finite difference of the
    KL at the paper's xi = 1e-6 points the same way (one power iteration from the same start)."""
    torch.manual_seed(0)
    bank = DecoderBank(32, 5, 4, 1, upsampling)

    def decoder(v):
        return bank.decode_one(v, 0, native=True)

    z = torch.randn(2, 32, 6, 6).relu() + 0.05
    d = P._per_sample_normalize(torch.rand_like(z) - 0.5)
    fast = P._kl_probe(decoder, z, d, xi=1e-6)
    z64, d64 = z.double(), d.double().requires_grad_(True)
    target = F.softmax(decoder(z64), dim=1).detach()
    distance = F.kl_div(F.log_softmax(decoder(z64 + 1e-6 * d64), dim=1), target, reduction="sum")
    (slow,) = torch.autograd.grad(distance, d64)
    # the finite difference is xi^2 H d: rescaled (cosine_similarity clamps norms below 1e-8)
    cosine = F.cosine_similarity(fast.flatten(1).double(), slow.flatten(1) / 1e-12, dim=1)
    assert (cosine > 0.9999).all(), cosine
    torch.testing.assert_close(fast.flatten(1).norm(dim=1).double(), slow.flatten(1).norm(dim=1) / 1e-12,
                               rtol=1e-3, atol=0)
    # a large xi takes the finite difference itself, in float32
    big = P._kl_probe(decoder, z, d, xi=0.5)
    assert big.shape == z.shape and big.dtype == torch.float32


def test_vat_output_passes_gradients_to_z_unchanged():
    bank = DecoderBank(8, 3, 2, 1)
    z = (torch.rand(1, 8, 4, 4) + 0.1).requires_grad_(True)
    out = P.vat(z, lambda v: bank.decode_one(v, 0))
    (out * torch.arange(out.numel()).view_as(out)).sum().backward()
    torch.testing.assert_close(z.grad, torch.arange(z.numel()).view_as(z).float())


def test_vat_eps_scales_the_perturbation():
    bank = DecoderBank(8, 3, 2, 1)
    z = torch.rand(3, 8, 4, 4) + 0.1
    out = P.vat(z, lambda v: bank.decode_one(v, 0), xi=1e-6, eps=0.5)
    torch.testing.assert_close((out - z).flatten(1).norm(dim=1), torch.full((3,), 0.5), rtol=1e-4, atol=0)


@pytest.mark.parametrize("upsampling", ["pixelshuffle", "bilinear"])
def test_vat_of_several_decoders_in_one_pass_equals_one_call_per_decoder(upsampling, monkeypatch):
    """groups=G: the I-VAT of G decoders from one grouped pass equals G single-decoder calls started
    from the same probes (each of norm eps per sample)."""
    torch.manual_seed(0)
    bank = DecoderBank(8, 3, 4, 3, upsampling)
    z = torch.rand(2, 8, 5, 5) + 0.1
    probes = torch.rand(2, 3 * 8, 5, 5)
    monkeypatch.setattr(torch, "rand_like", lambda t: probes.clone())
    grouped = P.vat(z.repeat(1, 3, 1, 1), lambda v: bank.decode_group(v, slice(0, 3), native=True), groups=3)
    assert grouped.shape == (2, 24, 5, 5)
    for g in range(3):
        monkeypatch.setattr(torch, "rand_like", lambda t, g=g: probes[:, g * 8 : (g + 1) * 8].clone())
        single = P.vat(z, lambda v, g=g: bank.decode_one(v, g, native=True))
        torch.testing.assert_close(grouped[:, g * 8 : (g + 1) * 8], single, rtol=1e-5, atol=1e-6)
        norms = (grouped[:, g * 8 : (g + 1) * 8] - z).flatten(1).norm(dim=1)
        torch.testing.assert_close(norms, torch.full((2,), 2.0), rtol=1e-4, atol=0)


@pytest.mark.parametrize("upscale, chunk_elements", [(8, 1), (8, 3000), (8, None), (2, 1), (1, None)])
def test_fisher_product_in_chunks_equals_the_generic_probe(upscale, chunk_elements):
    """DecoderBank.fisher_product (J d forward with the values, J^T back through the same ReLU
    masks, chunk by chunk of base rows) gives the probe of torch.func's jvp + vjp, for a group of
    decoders inside the bank, whatever the chunk size."""
    torch.manual_seed(0)
    bank = DecoderBank(12, 5, upscale, 4)
    x = torch.randn(2, 3 * 12, 7, 6).relu()
    d = torch.randn_like(x)
    heads = slice(1, 4)
    fast = bank.fisher_product(x, d, heads, chunk_elements)
    generic = P._kl_probe(lambda v: bank.decode_group(v, heads, native=True), x, d, xi=1e-6, class_dim=2)
    assert fast.shape == x.shape
    torch.testing.assert_close(fast, generic, rtol=1e-5, atol=1e-5 * generic.abs().max().item())
    # each decoder's probe depends on its own input and direction only
    d2 = d.clone()
    d2[:, :12] = 0
    changed = bank.fisher_product(x, d2, heads, chunk_elements)
    torch.testing.assert_close(changed[:, 12:], fast[:, 12:], rtol=1e-5, atol=1e-6 * generic.abs().max().item())
    assert changed[:, :12].abs().max() == 0


@pytest.mark.parametrize("upscale", [4, 2])
def test_fisher_product_of_bilinear_decoders_equals_the_generic_probe(upscale):
    """Bilinear decoders' closed form (their classifier and the interpolation, transposed) gives the
    probe of torch.func's jvp + vjp too, for a group of decoders inside the bank."""
    torch.manual_seed(0)
    bank = DecoderBank(12, 5, upscale, 4, "bilinear")
    bank.classifier_bias.data.normal_()  # the bias moves the softmax, not J
    x = torch.randn(2, 3 * 12, 7, 6).relu()
    d = torch.randn_like(x)
    heads = slice(1, 4)
    fast = bank.fisher_product(x, d, heads)
    generic = P._kl_probe(lambda v: bank.decode_group(v, heads, native=True), x, d, xi=1e-6, class_dim=2)
    assert fast.shape == x.shape
    torch.testing.assert_close(fast, generic, rtol=1e-5, atol=1e-5 * generic.abs().max().item())


def test_the_model_gives_i_vat_the_banks_fisher_product_for_both_decoders(monkeypatch):
    from .test_model import NO_AUX, small_model

    seen = []
    real_vat = P.functions.vat
    monkeypatch.setattr(P.functions, "vat", lambda *a, **k: seen.append(k.get("fisher")) or real_vat(*a, **k))
    for decoder in ("bilinear", "pixelshuffle"):
        model = small_model(dict(NO_AUX, vat=1, feature_noise=1), decoder=decoder)
        z = torch.rand(2, model.encoder.out_channels, 4, 4)
        model._perturb(z, torch.randn(2, model._head(None).num_classes, 16, 16), None)
    assert len(seen) == 2 and all(callable(f) for f in seen)


def test_vat_with_the_fisher_product_equals_vat_through_the_decoder(monkeypatch):
    """P.vat(fisher=...) at the paper's xi gives the perturbation of the generic probe (same draws);
    at a large xi, where the finite difference is taken, ``fisher`` is not used."""
    torch.manual_seed(0)
    bank = DecoderBank(8, 3, 8, 2)
    z = (torch.rand(2, 8, 5, 5) + 0.1).repeat(1, 2, 1, 1)
    probes = torch.rand(2, 16, 5, 5)
    monkeypatch.setattr(torch, "rand_like", lambda t: probes.clone())
    decoder = lambda v: bank.decode_group(v, slice(0, 2), native=True)  # noqa: E731
    fisher = lambda v, d: bank.fisher_product(v, d, slice(0, 2))  # noqa: E731
    for iterations in (1, 2):
        plain = P.vat(z, decoder, iterations=iterations, groups=2)
        folded = P.vat(z, decoder, iterations=iterations, groups=2, fisher=fisher)
        torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-6)

    def refuse(v, d):
        raise AssertionError("fisher used at a large xi")

    assert P.vat(z, decoder, xi=0.5, groups=2, fisher=refuse).shape == z.shape


def test_registry_holds_the_seven_perturbations_of_the_paper_each_with_a_builder():
    from cct.config import PERTURBATIONS, AuxConfig

    assert PERTURBATIONS == (
        "vat",
        "dropout",
        "cutout",
        "context_masking",
        "object_masking",
        "feature_drop",
        "feature_noise",
    )
    assert {n: P.REGISTRY[n].paper_count for n in PERTURBATIONS} == dataclasses.asdict(AuxConfig())
    assert sum(p.paper_count for p in P.REGISTRY.values()) == 30  # the official config's 30 decoders
    assert {n for n, p in P.REGISTRY.items() if p.guided} == {"cutout", "context_masking", "object_masking"}
    assert set(P.functions.BUILDERS) == set(PERTURBATIONS)
    for public in (
        "feature_noise",
        "feature_drop",
        "dropout",
        "guided_cutout",
        "context_masking",
        "object_masking",
        "vat",
    ):
        assert callable(getattr(P, public))


def test_an_unknown_perturbation_raises_instead_of_training_as_another():
    with pytest.raises(ValueError, match="unknown perturbation 'blur'"):
        P.get("blur")
    with pytest.raises(ValueError, match="applies"):
        P.Perturbation("blur", "Blur", 1, guided=False, applies="image")
