"""Decoders (cct/model/decoders.py), encoders and the CCT model (cct/model/cct.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cct.config import PERTURBATIONS, AuxConfig, ConfigError, ModelConfig, from_dict
from cct.model.cct import CCT
from cct.model.decoders import DecoderBank, bilinear_upsample, icnr_
from cct.model.encoder import build_encoder


def reference_decoder(x, classifier, up_weights, up_biases):
    """One decoder written out: conv1x1 (no bias), then per stage conv1x1 + ReLU + PixelShuffle(2)."""
    y = F.conv2d(x, classifier)
    for w, b in zip(up_weights, up_biases, strict=True):
        y = F.pixel_shuffle(F.relu(F.conv2d(y, w, b)), 2)
    return y


def reference_bilinear(x, classifier, bias, scale):
    """The bilinear decoder written out: conv1x1 with bias, then F.interpolate."""
    y = F.conv2d(x, classifier, bias)
    return F.interpolate(y, scale_factor=scale, mode="bilinear", align_corners=False) if scale > 1 else y


@pytest.mark.parametrize("upsampling", ["pixelshuffle", "bilinear"])
@pytest.mark.parametrize("upscale", [1, 2, 4])
def test_decoder_bank_equals_separate_decoders(upscale, upsampling):
    c, k, count = 6, 5, 3
    bank = DecoderBank(c, k, upscale, count, upsampling)
    with torch.no_grad():  # random biases, so a mix-up of decoders' biases would show
        for b in bank.up_biases:
            b.normal_()
        if bank.classifier_bias is not None:
            bank.classifier_bias.normal_()
    x = torch.randn(2, count * c, 3, 4)
    out = bank(x)
    assert out.shape == (2, count, k, 3 * upscale, 4 * upscale)

    def block(t, i, per):
        return t[i * per : (i + 1) * per]

    for i in range(count):
        xi = x[:, i * c : (i + 1) * c]
        if upsampling == "pixelshuffle":
            assert len(bank.up_weights) == int(math.log2(upscale)) and bank.classifier_bias is None
            ref = reference_decoder(
                xi,
                block(bank.classifier, i, k),
                [block(w, i, 4 * k) for w in bank.up_weights],
                [block(b, i, 4 * k) for b in bank.up_biases],
            )
        else:
            assert len(bank.up_weights) == 0
            ref = reference_bilinear(xi, block(bank.classifier, i, k), block(bank.classifier_bias, i, k), upscale)
        torch.testing.assert_close(out[:, i], ref, rtol=1e-5, atol=1e-5)
        # the same decoder alone, as the VAT probe runs it
        torch.testing.assert_close(bank.decode_one(xi, i), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bank.decode_one(xi.double(), i), ref.double(), rtol=1e-5, atol=1e-5)
        # and a single-decoder bank holding decoder i's weights
        single = DecoderBank(c, k, upscale, 1, upsampling)
        with torch.no_grad():
            single.classifier.copy_(block(bank.classifier, i, k))
            if upsampling == "bilinear":
                single.classifier_bias.copy_(block(bank.classifier_bias, i, k))
            for ws, bs, w, b in zip(single.up_weights, single.up_biases, bank.up_weights, bank.up_biases, strict=True):
                ws.copy_(block(w, i, 4 * k))
                bs.copy_(block(b, i, 4 * k))
        torch.testing.assert_close(single(xi)[:, 0], out[:, i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bilinear_upsample_matches_f_interpolate(scale, dtype):
    x = torch.randn(2, 3, 5, 7, dtype=dtype, requires_grad=True)
    out = bilinear_upsample(x, scale)
    ref = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    (grad,) = torch.autograd.grad(out, x, g)
    (grad_ref,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(grad, grad_ref)


def test_decoder_bank_rejects_an_unknown_upsampling():
    with pytest.raises(ValueError, match="model.decoder"):
        DecoderBank(4, 3, 2, 1, "nearest")


def test_decoder_bank_decoders_are_independently_initialised():
    k = 4
    bank = DecoderBank(8, k, 2, 3)
    blocks = bank.classifier.detach().split(k)
    assert not torch.allclose(blocks[0], blocks[1]) and not torch.allclose(blocks[1], blocks[2])


def test_decoder_bank_rejects_a_non_power_of_two_upscale():
    with pytest.raises(ValueError, match="power of two"):
        DecoderBank(4, 3, 3, 1)


@pytest.mark.parametrize("upscale", [2, 4])
def test_icnr_init_gives_equal_sub_pixels_with_zero_bias(upscale):
    bank = DecoderBank(5, 3, upscale, 2, "pixelshuffle")
    with torch.no_grad():
        for b in bank.up_biases:
            b.zero_()
    out = bank(torch.randn(2, 10, 4, 4))
    low = out[..., ::upscale, ::upscale]
    nearest = low.repeat_interleave(upscale, dim=-2).repeat_interleave(upscale, dim=-1)
    torch.testing.assert_close(out, nearest, rtol=0, atol=0)
    assert out.abs().sum() > 0


def test_icnr_repeats_each_kernel_over_its_four_sub_pixels():
    w = torch.empty(12, 3, 1, 1)
    icnr_(w, scale=2)
    groups = w.view(3, 4, 3)
    for j in range(1, 4):
        assert torch.equal(groups[:, j], groups[:, 0])
    assert not torch.equal(groups[0, 0], groups[1, 0])


# --- encoders -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [4, 8])
def test_small_encoder_output_stride_and_channels(stride):
    enc = build_encoder("small", False, stride, 8, True).eval()
    z = enc(torch.randn(2, 3, 32, 48))
    assert z.shape == (2, 16, 32 // stride, 48 // stride) and enc.out_channels == 16
    assert bool((z >= 0).all())  # post-ReLU features, as the perturbations assume


def test_resnet50_encoder_is_dilated_to_output_stride_8_with_psp():
    enc = build_encoder("resnet50", False, 8, 32, True).eval()
    with torch.no_grad():
        z = enc(torch.randn(1, 3, 48, 32))
    assert z.shape == (1, 512, 6, 4)
    assert hasattr(enc, "psp")


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_every_encoder_the_config_accepts_builds_or_is_rejected_by_name(name):
    try:
        config = from_dict({"model": {"encoder": name, "output_stride": 8}, "data": {"crop_size": 32}})
    except ConfigError as exc:
        assert "model.encoder" in str(exc)
        return
    try:
        enc = build_encoder(config.model.encoder, False, 8, config.model.width, True).eval()
    except ConfigError as exc:
        assert name in str(exc) or "model.encoder" in str(exc)
        return
    with torch.no_grad():
        z = enc(torch.randn(1, 3, 32, 32))
    assert z.shape[-2:] == (4, 4) and z.shape[1] == enc.out_channels


def test_small_encoder_has_no_pretrained_weights():
    with pytest.raises(ConfigError, match="model.pretrained"):
        build_encoder("small", True, 4, 8, True)


def test_missing_pretrained_weights_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="weights file not found"):
        build_encoder("resnet50", str(tmp_path / "none.pth"), 8, 32, True)


# --- the CCT model ------------------------------------------------------------------------------------

def small_model(aux: dict, background=(0,), classes=5, stride=4, decoder="bilinear") -> CCT:
    config = ModelConfig(encoder="small", width=8, output_stride=stride, aux=AuxConfig(**aux), decoder=decoder)
    return CCT(config, {"main": classes}, {"main": list(background)})


NO_AUX = {name: 0 for name in PERTURBATIONS}


def test_aux_decoder_kinds_follow_the_config_order_and_counts():
    aux = dict(vat=1, dropout=2, cutout=0, context_masking=1, object_masking=0, feature_drop=3, feature_noise=1)
    model = small_model(aux)
    head = model.heads["main"]
    assert head.kinds == ["vat", "dropout", "dropout", "context_masking", "feature_drop", "feature_drop",
                          "feature_drop", "feature_noise"]
    assert head.aux.count == 8 and head.main.count == 1


def test_paper_default_has_30_aux_decoders():
    head = small_model({}).heads["main"]
    assert len(head.kinds) == 30
    assert {k: head.kinds.count(k) for k in PERTURBATIONS} == dict(
        vat=2, dropout=6, cutout=6, context_masking=2, object_masking=2, feature_drop=6, feature_noise=6)


@pytest.mark.parametrize("decoder", ["pixelshuffle", "bilinear"])
@pytest.mark.parametrize("stride", [4, 8])
def test_output_shapes(stride, decoder):
    model = small_model(dict(NO_AUX, vat=1, dropout=1, cutout=1, context_masking=1, object_masking=1,
                             feature_drop=1, feature_noise=1), classes=6, stride=stride, decoder=decoder).eval()
    for bank in (model.heads["main"].main, model.heads["main"].aux):
        stages = math.log2(stride) if decoder == "pixelshuffle" else 0
        assert bank.upsampling == decoder and len(bank.up_weights) == stages
    x = torch.randn(2, 3, 32, 40)
    logits = model(x)
    assert logits.shape == (2, 6, 32, 40)
    z = model.encoder(x)
    assert z.shape == (2, 16, 32 // stride, 40 // stride)
    aux = model.auxiliary(z, logits)
    assert aux.shape == (2, 7, 6, 32, 40)
    torch.testing.assert_close(model.decode(z), logits)


def test_model_without_aux_decoders_refuses_auxiliary():
    model = small_model(NO_AUX)
    assert model.heads["main"].aux is None
    z = torch.rand(1, 16, 4, 4)
    with pytest.raises(ValueError, match="no auxiliary decoders"):
        model.auxiliary(z, torch.randn(1, 5, 16, 16))


def logits_for(pred: torch.Tensor, classes: int) -> torch.Tensor:
    """Logits (B, K, H, W) whose argmax is ``pred`` (B, H, W)."""
    return F.one_hot(pred, classes).permute(0, 3, 1, 2).float() * 5 + torch.rand(
        pred.shape[0], classes, *pred.shape[1:]
    )


def test_objects_map_respects_background_classes():
    model = small_model(NO_AUX, background=(0, 2), classes=4)
    pred = torch.randint(0, 4, (2, 16, 16))
    objects = model.objects_map(logits_for(pred, 4), (4, 4))
    expected = pred[:, ::4, ::4]  # nearest downsampling by 4
    assert torch.equal(objects, (expected != 0) & (expected != 2))
    # same prediction, default background [0]: class 2 now counts as an object
    objects0 = small_model(NO_AUX, background=(0,), classes=4).objects_map(logits_for(pred, 4), (4, 4))
    assert torch.equal(objects0, expected != 0)


@pytest.mark.parametrize("size", [(4, 4), (5, 3), (16, 16), (7, 11)])
def test_objects_map_is_the_nearest_resized_argmax_of_the_full_map(size):
    """objects_map picks z's pixels before the argmax (cheaper); the result is that of the argmax of
    every pixel, nearest-resized, for any size ratio."""
    model = small_model(NO_AUX, background=(0,), classes=5)
    logits = torch.randn(3, 5, 16, 16)
    full = F.interpolate(logits.argmax(1, keepdim=True).float(), size=size, mode="nearest")[:, 0].long()
    assert torch.equal(model.objects_map(logits, size), full != 0)


def test_guided_perturbations_follow_the_main_prediction():
    """Con-Msk on an all-background prediction feeds zeros to its decoder; Obj-Msk feeds z unchanged.
    Class 2 is background here (a per-dataset setting, not class 0 hard-coded)."""
    model = small_model(dict(NO_AUX, context_masking=1, object_masking=1), background=(0, 2), classes=4).eval()
    z = torch.rand(2, 16, 4, 4) + 0.1
    all_background = logits_for(torch.full((2, 16, 16), 2), 4)
    aux = model.auxiliary(z, all_background)
    bank = model.heads["main"].aux
    torch.testing.assert_close(aux[:, 0], bank.decode_one(torch.zeros_like(z), 0))
    torch.testing.assert_close(aux[:, 1], bank.decode_one(z, 1))
    # with objects everywhere the roles swap
    all_objects = logits_for(torch.full((2, 16, 16), 3), 4)
    aux = model.auxiliary(z, all_objects)
    torch.testing.assert_close(aux[:, 0], bank.decode_one(z, 0))
    torch.testing.assert_close(aux[:, 1], bank.decode_one(torch.zeros_like(z), 1))


def test_vat_decoder_uses_its_own_weights():
    model = small_model(dict(NO_AUX, vat=1, feature_noise=1)).eval()
    z = torch.rand(1, 16, 4, 4) + 0.1
    main_logits = torch.randn(1, 5, 16, 16)
    torch.manual_seed(5)
    aux = model.auxiliary(z, main_logits)
    bank = model.heads["main"].aux
    torch.manual_seed(5)
    from cct.model import perturbations as P

    z_adv = P.vat(z, lambda v: bank.decode_one(v, 0))
    torch.testing.assert_close(aux[:, 0], bank.decode_one(z_adv, 0))


def test_aux_gradients_reach_the_encoder_but_not_the_main_decoder_through_the_guide():
    model = small_model(dict(NO_AUX, cutout=1, feature_noise=1))
    x = torch.randn(2, 3, 16, 16)
    z = model.encoder(x)
    logits = model.decode(z)
    model.auxiliary(z, logits).sum().backward()
    assert all(p.grad is None for p in model.heads["main"].main.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_parameter_groups_split_backbone_from_the_rest():
    model = small_model({})
    backbone, rest = model.parameter_groups()
    ids_b, ids_r = {id(p) for p in backbone}, {id(p) for p in rest}
    assert not ids_b & ids_r
    assert ids_b | ids_r == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.encoder.psp.parameters()} <= ids_r


def test_one_decoder_set_per_domain_with_its_own_background():
    config = ModelConfig(encoder="small", width=8, aux=AuxConfig(**dict(NO_AUX, context_masking=1)))
    model = CCT(config, {"a": 4, "b": 3}, {"a": [0], "b": [0, 1]}).eval()
    x = torch.randn(1, 3, 16, 16)
    assert model(x).shape == (1, 4, 16, 16) and model(x, "a").shape == (1, 4, 16, 16)
    assert model(x, "b").shape == (1, 3, 16, 16)
    pred = torch.tensor([[0, 1], [2, 1]]).repeat_interleave(8, 0).repeat_interleave(8, 1)[None]
    assert torch.equal(
        model.objects_map(logits_for(pred, 4), (2, 2), "a"), torch.tensor([[[False, True], [True, True]]])
    )
    pred_b = pred.clamp(max=2)
    assert torch.equal(
        model.objects_map(logits_for(pred_b, 3), (2, 2), "b"), torch.tensor([[[False, False], [True, False]]])
    )


@pytest.mark.parametrize("key", ["train.batch_size_labeled", "train.batch_size_unlabeled"])
def test_batch_size_one_is_rejected_or_trains(key):
    try:
        config = from_dict(None, [f"{key}=1", "model.width=8"])
    except ConfigError as exc:
        assert key in str(exc)
        return
    model = CCT(config.model, {"main": 9}, {"main": [0]}).train()
    model(torch.randn(1, 3, 32, 32)).sum().backward()


@pytest.mark.parametrize("upscale", [2, 4, 8])
def test_native_layout_is_a_permutation_of_the_pixelshuffle_output(upscale):
    """The aux decoders' native layout holds the same logits as PixelShuffle's image, in another
    order, and to_native maps a full-resolution map into exactly that order."""
    torch.manual_seed(0)
    bank = DecoderBank(6, 3, upscale, 2, "pixelshuffle")
    x = torch.randn(2, 12, 3, 5)
    image, native = bank(x), bank(x, native=True)
    assert native.shape == (2, 2, 3, upscale**2, 3, 5)
    torch.testing.assert_close(bank.to_image(native), image)
    torch.testing.assert_close(bank.to_native(image), native)
    # a per-pixel reduction gives the same value in both layouts
    torch.testing.assert_close(native.softmax(2).square().mean(), image.softmax(2).square().mean())


def test_small_encoder_loads_the_encoder_of_a_cct_checkpoint(tmp_path):
    """model.pretrained=<checkpoint.pt> initialises the small encoder from a cct run (the embedded
    stand-in for ImageNet pretraining); a missing file or another width fails at the door."""
    from cct.config import ConfigError, from_dict
    from cct.model.encoder import build_encoder

    torch.manual_seed(0)
    cfg = from_dict(None, ["model.width=8"])
    source_model = CCT(cfg.model, {"main": 9}, {"main": [0]})
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": source_model.state_dict()}, path)
    encoder = build_encoder("small", str(path), cfg.model.output_stride, 8, True)
    for name, value in encoder.state_dict().items():
        torch.testing.assert_close(value, source_model.encoder.state_dict()[name])
    with pytest.raises(ConfigError, match="model.pretrained: checkpoint not found"):
        build_encoder("small", str(tmp_path / "missing.pt"), 4, 8, True)
    with pytest.raises(ConfigError, match="does not fit this encoder"):
        build_encoder("small", str(path), 4, 16, True)
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        build_encoder("small", True, 4, 8, True)


def _objective_terms(bank: DecoderBank, main: torch.Tensor, pseudo: torch.Tensor, kind: str, threshold):
    """The training loop's loss terms (consistency, weak CE, pair-wise) as an Objective."""
    from cct import losses

    target = F.softmax(bank.to_native(main), dim=1).unsqueeze(1)
    mask = losses.confidence_mask(target, threshold)
    pseudo = bank.to_native(pseudo.unsqueeze(1))[:, 0]

    def terms(aux, rows):
        at = (..., rows, slice(None))
        parts = [
            losses.consistency_sums(aux, target[at], kind, None if mask is None else mask[at]),
            losses.weak_sums(aux, pseudo[at]),
            losses.pairwise_sums(aux),
        ]
        return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])

    return terms


@pytest.mark.parametrize("upsampling, upscale", [("pixelshuffle", 8), ("pixelshuffle", 2), ("bilinear", 4)])
@pytest.mark.parametrize("kind, threshold", [("mse", None), ("mse", 0.3), ("kl", None), ("js", 0.3), ("mse", 1.0)])
@pytest.mark.parametrize("chunk_elements", [1, 2000, None])
def test_chunked_objective_equals_the_materialised_losses(upsampling, upscale, kind, threshold, chunk_elements):
    """DecoderBank.objective (chunks of base rows, forward and backward at once) gives the values
    and gradients of the losses on the full outputs, for every loss term and chunk size (one base
    row per chunk; a size that does not divide the rows; all rows at once). Threshold 1.0 keeps no
    pixel: the consistency term is then 0 with zero gradient."""
    torch.manual_seed(0)
    count, c, k, h, w = 3, 6, 5, 5, 4
    bank = DecoderBank(c, k, upscale, count, upsampling)
    with torch.no_grad():
        for b in bank.up_biases:
            b.normal_()
    x = torch.randn(2, count * c, h, w)
    main = torch.randn(2, k, h * upscale, w * upscale)
    pseudo = torch.randint(0, k, (2, h * upscale, w * upscale))
    pseudo[:, :3] = 255
    terms = _objective_terms(bank, main, pseudo, kind, threshold)
    weights = torch.tensor([1.0, 0.4, 0.1])

    def run(chunked: bool):
        xx = x.clone().requires_grad_(True)
        bank.zero_grad()
        if chunked:
            values = bank.objective(xx, terms, chunk_elements)
        else:
            sums, counts = terms(bank(xx, native=True), slice(None))
            values = sums / counts.clamp_min(1)
        (values * weights).sum().backward()
        return values.detach(), xx.grad, [p.grad for p in bank.parameters()]

    ref, got = run(False), run(True)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-8)
    for g, r in zip(got[2], ref[2], strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-8)
    if threshold == 1.0:
        assert ref[0][0].item() == 0.0
    else:
        assert ref[0][0].item() > 0.0
    assert ref[1].abs().sum() > 0


def test_chunked_objective_never_holds_a_full_resolution_output():
    """The point of the chunks: with 1 base row per chunk, the largest tensor the objective
    allocates is one row's outputs, not the whole map (checked through a saved-tensor hook that
    sees every tensor autograd keeps)."""
    torch.manual_seed(0)
    count, c, k, h, w, upscale = 4, 6, 5, 8, 8, 8
    bank = DecoderBank(c, k, upscale, count)
    target = torch.full((2, 1, k, upscale**2, h, w), 1.0 / k)

    def terms(aux, rows):
        from cct import losses

        total, n = losses.consistency_sums(aux, target[..., rows, :])
        return total[None], n[None]

    largest = 0

    def pack(t):
        nonlocal largest
        largest = max(largest, t.numel())
        return t

    x = torch.randn(2, count * c, h, w, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        bank.objective(x, terms, chunk_elements=1).sum().backward()
    full = 2 * count * k * (h * upscale) * (w * upscale)
    assert 0 < largest <= full // h
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("decoder, stride", [("pixelshuffle", 4), ("bilinear", 4), ("pixelshuffle", 8)])
def test_auxiliary_objective_with_folded_perturbations_equals_the_materialised_decoders(decoder, stride):
    """CCT.auxiliary_objective never builds the perturbed copies of z for the masking and dropout
    decoders (masks and channel scales folded into the classifiers): same seed, same loss values
    and the same gradients for z and every parameter as the decoders run on auxiliary_inputs and
    reduced on their full outputs; every perturbation, objects present and absent."""
    aux = dict(vat=2, dropout=2, cutout=2, context_masking=1, object_masking=1, feature_drop=2, feature_noise=2)
    torch.manual_seed(0)
    model = small_model(aux, classes=5, stride=stride, decoder=decoder).train()
    bank = model.heads["main"].aux
    with torch.no_grad():
        if bank.classifier_bias is not None:
            bank.classifier_bias.normal_()
    z = torch.rand(2, model.encoder.out_channels, 6, 5) + 0.05
    size = (6 * stride, 5 * stride)
    main = torch.randn(2, 5, *size)
    main[1, 0] += 10.0  # sample 1: background everywhere (no object, no box)
    pseudo = torch.randint(0, 5, (2, *size))
    terms = _objective_terms(bank, main, pseudo, "mse", None)
    weights = torch.tensor([1.0, 0.4, 0.1])

    def run(folded: bool):
        zz = z.clone().requires_grad_(True)
        model.zero_grad()
        torch.manual_seed(7)
        if folded:
            values = model.auxiliary_objective(zz, main, terms)
        else:
            sums, counts = terms(model.auxiliary(zz, main, native=True), slice(None))
            values = sums / counts.clamp_min(1)
        (values * weights).sum().backward()
        return values.detach(), zz.grad, {n: p.grad for n, p in bank.named_parameters()}

    ref, got = run(False), run(True)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-8)
    for name, g in got[2].items():
        torch.testing.assert_close(g, ref[2][name], rtol=1e-5, atol=1e-8, msg=name)
    assert ref[1].abs().sum() > 0


@pytest.mark.parametrize("upsampling, upscale", [("pixelshuffle", 8), ("pixelshuffle", 2), ("bilinear", 4)])
def test_batched_decoders_have_the_gradients_of_the_decoders_run_one_by_one(upsampling, upscale):
    """The batched bank against `count` single-decoder banks holding each decoder's weights (the
    official one-by-one loop): the same gradients for the inputs and every decoder's parameters,
    to 1e-5 relative in float32."""
    torch.manual_seed(0)
    count, c, k = 3, 6, 4
    bank = DecoderBank(c, k, upscale, count, upsampling)
    with torch.no_grad():
        for b in [*bank.up_biases, *([bank.classifier_bias] if bank.classifier_bias is not None else [])]:
            b.normal_()
    x = torch.randn(2, count * c, 3, 4, requires_grad=True)
    g = torch.randn(2, count, k, 3 * upscale, 4 * upscale)
    (bank(x) * g).sum().backward()
    singles, xs = [], []
    for i in range(count):
        single = DecoderBank(c, k, upscale, 1, upsampling)
        with torch.no_grad():
            for name, p in single.named_parameters():
                per = p.shape[0]
                p.copy_(dict(bank.named_parameters())[name][i * per : (i + 1) * per])
        xi = x.detach()[:, i * c : (i + 1) * c].clone().requires_grad_(True)
        (single(xi)[:, 0] * g[:, i]).sum().backward()
        singles.append(single)
        xs.append(xi)
    torch.testing.assert_close(x.grad, torch.cat([xi.grad for xi in xs], dim=1), rtol=1e-5, atol=1e-6)
    for name, p in bank.named_parameters():
        one_by_one = torch.cat([dict(s.named_parameters())[name].grad for s in singles])
        torch.testing.assert_close(p.grad, one_by_one, rtol=1e-5, atol=1e-5, msg=name)
