"""The seven perturbations of CCT (cct/model/perturbations.py): each one's defining property."""

from __future__ import annotations

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
    for trial in range(60):
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
    torch.testing.assert_close(fast.flatten(1).norm(dim=1).double(), slow.flatten(1).norm(dim=1) / 1e-12, rtol=1e-3, atol=0)
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


def test_names_expose_all_seven_perturbations():
    from cct.config import PERTURBATIONS

    assert set(P.NAMES) == set(PERTURBATIONS)
    for public in ("feature_noise", "feature_drop", "dropout", "guided_cutout", "context_masking",
                   "object_masking", "vat"):
        assert callable(getattr(P, public))


def test_cutout_with_precomputed_boxes_equals_finding_them():
    objects = torch.zeros(2, 10, 10, dtype=torch.bool)
    objects[0, 1:5, 2:7] = True
    objects[0, 7:9, 7:10] = True
    objects[1, 3:8, 0:4] = True
    boxes = P.object_boxes(objects)
    assert boxes[0] == [(slice(1, 5), slice(2, 7)), (slice(7, 9), slice(7, 10))]
    torch.manual_seed(3)
    found = P.cutout_mask(objects)
    torch.manual_seed(3)
    given = P.cutout_mask(objects, boxes=boxes)
    assert torch.equal(found, given)
