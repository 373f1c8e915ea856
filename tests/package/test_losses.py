"""Losses (cct/losses.py) against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from cct import losses as L


def logit(p: float) -> float:
    """Two-class logits [logit(p), 0] give softmax [p, 1 - p]."""
    return math.log(p / (1 - p))


# --- ramp-ups -----------------------------------------------------------------------------------------

def test_sigmoid_rampup_values():
    assert L.sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert L.sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert L.sigmoid_rampup(25, 100) == pytest.approx(math.exp(-5 * 0.75**2))
    assert L.sigmoid_rampup(100, 100) == 1.0
    assert L.sigmoid_rampup(250, 100) == 1.0
    assert L.sigmoid_rampup(-5, 100) == pytest.approx(math.exp(-5))
    assert L.sigmoid_rampup(3, 0) == 1.0
    values = [L.sigmoid_rampup(i, 100) for i in range(101)]
    assert values == sorted(values)


def test_unsupervised_weight_ramps_w_u_over_the_first_10_percent():
    assert L.unsupervised_weight(0, 1000, 30.0, 0.1) == pytest.approx(30 * math.exp(-5))
    assert L.unsupervised_weight(50, 1000, 30.0, 0.1) == pytest.approx(30 * math.exp(-1.25))
    assert L.unsupervised_weight(100, 1000, 30.0, 0.1) == pytest.approx(30.0)
    assert L.unsupervised_weight(999, 1000, 30.0, 0.1) == pytest.approx(30.0)
    assert L.unsupervised_weight(0, 1000, 30.0, 0.0) == 30.0


def test_abce_threshold_anneals_from_one_over_k_towards_final():
    k, final = 9, 0.9
    assert L.abce_threshold(0, 1000, k, final, 0.4) == pytest.approx(1 / 9)
    assert L.abce_threshold(200, 1000, k, final, 0.4) == pytest.approx(1 / 9 + (final - 1 / 9) * (1 - math.exp(-2.5)))
    end = 1 / 9 + (final - 1 / 9) * (1 - math.exp(-5))
    assert L.abce_threshold(400, 1000, k, final, 0.4) == pytest.approx(end)
    assert L.abce_threshold(1000, 1000, k, final, 0.4) == pytest.approx(end)
    assert final - end < 0.01
    values = [L.abce_threshold(i, 1000, k, final, 0.4) for i in range(0, 1001, 10)]
    assert values == sorted(values)


# --- supervised losses --------------------------------------------------------------------------------

def test_cross_entropy_ignores_255():
    logits = torch.tensor([[2.0, 0.0, 0.0], [9.0, -3.0, 1.0], [0.0, 1.0, 3.0]]).T.reshape(1, 3, 1, 3)
    target = torch.tensor([[[0, 255, 2]]])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(math.exp(3) / (1 + math.e + math.exp(3)))) / 2
    assert L.cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)


def two_class_logits(probs: list[list[float]]) -> torch.Tensor:
    """(B, 2, 1, N) logits whose class-0 probabilities are ``probs`` (B lists of N)."""
    a = torch.tensor([[logit(p) for p in row] for row in probs], dtype=torch.float64)
    return torch.stack([a, torch.zeros_like(a)], dim=1).unsqueeze(2)


def test_abce_keeps_only_pixels_whose_true_class_probability_is_below_the_threshold():
    probs = [0.1, 0.3, 0.5, 0.7, 0.9]
    logits = two_class_logits([probs])
    target = torch.zeros(1, 1, 5, dtype=torch.long)
    loss = L.annealed_bootstrapped_ce(logits, target, threshold=0.6)
    assert loss.item() == pytest.approx(-(math.log(0.1) + math.log(0.3) + math.log(0.5)) / 3)
    loss = L.annealed_bootstrapped_ce(logits, target, threshold=0.95)
    assert loss.item() == pytest.approx(-sum(math.log(p) for p in probs) / 5)


def test_abce_uses_the_true_class_probability_and_ignores_255():
    logits = two_class_logits([[0.1, 0.3, 0.8, 0.95]])  # class-0 probabilities
    target = torch.tensor([[[255, 0, 1, 1]]])  # true-class probs: ignored, 0.3, 0.2, 0.05
    loss = L.annealed_bootstrapped_ce(logits, target, threshold=0.25)
    assert loss.item() == pytest.approx(-(math.log(0.2) + math.log(0.05)) / 2)


def test_abce_keeps_at_least_min_kept_hardest_pixels():
    logits = two_class_logits([[0.6, 0.95, 0.7, 0.99]])
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    # nothing is below 0.5: the hardest min_kept pixels are kept
    assert L.annealed_bootstrapped_ce(logits, target, 0.5).item() == pytest.approx(-math.log(0.6))
    assert L.annealed_bootstrapped_ce(logits, target, 0.5, min_kept=2).item() == pytest.approx(
        -(math.log(0.6) + math.log(0.7)) / 2)
    # min_kept counts per image of the batch: 2 images x 1 -> the 2 hardest pixels of the batch
    logits2 = two_class_logits([[0.6, 0.95], [0.7, 0.99]])
    target2 = torch.zeros(2, 1, 2, dtype=torch.long)
    assert L.annealed_bootstrapped_ce(logits2, target2, 0.5).item() == pytest.approx(
        -(math.log(0.6) + math.log(0.7)) / 2)


def test_abce_all_ignored_is_zero_with_a_gradient_path():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = L.annealed_bootstrapped_ce(logits, torch.full((1, 2, 2), 255), 0.5)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None


# --- consistency losses -------------------------------------------------------------------------------
# B=1, N=2 decoders, K=2 classes, 1x2 pixels.
# main: pixel 0 [0.5, 0.5], pixel 1 [0.75, 0.25]
# aux decoder 0: pixel 0 [0.8, 0.2], pixel 1 [0.5, 0.5]; decoder 1: pixel 0 [0.2, 0.8], pixel 1 [0.9, 0.1]
T = [[0.5, 0.5], [0.75, 0.25]]
P = [[[0.8, 0.2], [0.5, 0.5]], [[0.2, 0.8], [0.9, 0.1]]]


def main_logits(requires_grad=False):
    m = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]]).view(1, 2, 1, 2)  # [class, pixel]
    return m.clone().requires_grad_(requires_grad)


def aux_logits(requires_grad=True):
    a = torch.tensor([[[math.log(4), 0.0], [0.0, 0.0]], [[0.0, math.log(9)], [math.log(4), 0.0]]])
    return a.view(1, 2, 2, 1, 2).clone().requires_grad_(requires_grad)  # (B, N, K, H, W)


def kl(t, p):
    """The official KL per pixel: KL(main || aux) over the classes, divided by K (kl_div's mean)."""
    return sum(ti * math.log(ti / pi) for ti, pi in zip(t, p, strict=True)) / len(t)


def js(t, p):
    """The official "JS" per pixel: (KL(M || aux) + KL(M || main + 1e-5)) / 2 over the classes, / K."""
    m = [(a + b) / 2 for a, b in zip(t, p, strict=True)]
    kl_aux = sum(mi * math.log(mi / pi) for mi, pi in zip(m, p, strict=True))
    kl_main = sum(mi * math.log(mi / (ti + 1e-5)) for mi, ti in zip(m, t, strict=True))
    return 0.5 * (kl_aux + kl_main) / len(t)


def per_pixel(fn):
    return [[fn(T[px], P[n][px]) for px in range(2)] for n in range(2)]


def mse(t, p):
    return sum((a - b) ** 2 for a, b in zip(t, p, strict=True)) / 2  # mean over the K=2 classes


def test_hand_made_inputs_are_what_the_comments_say():
    torch.testing.assert_close(torch.softmax(main_logits(), 1)[0, :, 0].T, torch.tensor(T))
    torch.testing.assert_close(torch.softmax(aux_logits(False), 2)[0, :, :, 0].permute(0, 2, 1), torch.tensor(P))


@pytest.mark.parametrize("kind,fn", [("mse", mse), ("kl", kl), ("js", js)])
def test_consistency_loss_matches_the_formula(kind, fn):
    expected = sum(sum(row) for row in per_pixel(fn)) / 4
    loss = L.consistency_loss(aux_logits(), main_logits(), kind)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_mse_value_by_hand():
    # squared errors: 2*0.3^2 + 2*0.25^2 + 2*0.3^2 + 2*0.15^2 = 0.53 over 8 elements
    assert L.consistency_loss(aux_logits(), main_logits(), "mse").item() == pytest.approx(0.06625, rel=1e-5)


@pytest.mark.parametrize("kind", ["mse", "kl", "js"])
@pytest.mark.parametrize("threshold", [None, 0.6])
def test_main_prediction_gets_no_gradient(kind, threshold):
    aux, main = aux_logits(), main_logits(requires_grad=True)
    loss = L.consistency_loss(aux, main, kind, threshold)
    loss.backward()
    assert main.grad is None or bool((main.grad == 0).all())
    assert aux.grad is not None and aux.grad.abs().sum() > 0


@pytest.mark.parametrize("kind,fn", [("mse", mse), ("kl", kl), ("js", js)])
def test_confidence_masking_keeps_only_confident_pixels(kind, fn):
    # main confidence: pixel 0 -> 0.5, pixel 1 -> 0.75; threshold 0.6 keeps pixel 1 only
    values = per_pixel(fn)
    expected = (values[0][1] + values[1][1]) / 2
    loss = L.consistency_loss(aux_logits(), main_logits(), kind, confidence_threshold=0.6)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # what the aux decoders predict at the unconfident pixel does not matter
    aux = aux_logits(False).clone()
    aux[..., 0] = torch.randn(1, 2, 2, 1) * 5
    assert L.consistency_loss(aux, main_logits(), kind, confidence_threshold=0.6).item() == pytest.approx(loss.item())


def test_confidence_threshold_zero_equals_no_masking_and_one_masks_everything():
    for kind in ("mse", "kl", "js"):
        assert L.consistency_loss(aux_logits(), main_logits(), kind, 0.0).item() == pytest.approx(
            L.consistency_loss(aux_logits(), main_logits(), kind).item(), rel=1e-6)
        assert L.consistency_loss(aux_logits(), main_logits(), kind, 1.0).item() == 0.0


def test_softmax_temp_divides_the_supervised_logits_as_the_official_ce():
    logits, target = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3))
    target[0, 0, 0] = 255
    torch.testing.assert_close(L.cross_entropy(logits, target, 2.0), L.cross_entropy(logits / 2, target))
    assert L.cross_entropy(logits, target, 1.0).item() == L.cross_entropy(logits, target).item()


# The official functions (yassouali/CCT, utils/losses.py), restated with F.kl_div and F.mse_loss as there.
def official_kl(inputs, targets):
    return torch.nn.functional.kl_div(torch.log_softmax(inputs, dim=1), targets, reduction="mean")


def official_js(inputs, targets):
    f = torch.nn.functional
    m = (f.softmax(inputs, dim=1) + targets) * 0.5
    return (f.kl_div(f.log_softmax(inputs, dim=1), m, reduction="mean")
            + f.kl_div(torch.log(targets + 1e-5), m, reduction="mean")) * 0.5


def official_mse(inputs, targets):
    return torch.nn.functional.mse_loss(torch.softmax(inputs, dim=1), targets, reduction="mean")


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("kind,official", [("mse", official_mse), ("kl", official_kl), ("js", official_js)])
def test_consistency_kinds_equal_the_official_functions_in_value_and_gradient(kind, official):
    """The official trainer averages its loss over the N decoders' outputs (each (B, K, H, W)):
    ``sum(loss(u, softmax(main)) for u) / N``; ours must be the same number and gradient, so that a
    loss.consistency ablation at the paper's w_u compares losses on the official scale."""
    torch.manual_seed(1)
    aux = (torch.randn(2, 3, 5, 4, 6, dtype=torch.float64) * 3).requires_grad_(True)
    main = torch.randn(2, 5, 4, 6, dtype=torch.float64) * 3
    ours = L.consistency_loss(aux, main, kind)
    target = torch.softmax(main, 1)
    reference = sum(official(aux[:, n], target) for n in range(aux.shape[1])) / aux.shape[1]
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(torch.autograd.grad(ours, aux)[0], torch.autograd.grad(reference, aux)[0])


def test_consistency_loss_is_zero_when_aux_agrees_with_main():
    main = torch.randn(2, 4, 3, 3)
    aux = main.unsqueeze(1).repeat(1, 3, 1, 1, 1)
    for kind in ("mse", "kl"):
        assert L.consistency_loss(aux, main, kind).item() == pytest.approx(0.0, abs=1e-6)
    # the official JS takes log(main + 1e-5): about -1e-5 per class where the two agree
    assert L.consistency_loss(aux, main, "js").item() == pytest.approx(0.0, abs=1e-4)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_kl_and_js_are_on_the_scale_of_mse_not_k_times_it():
    """The issue's case: our KL was K times the official one and our JS 14.7x; at w_u = 30 an
    ablation compared losses 21x apart. With K = 21 classes all three are now of one order."""
    torch.manual_seed(0)
    aux, main = torch.randn(2, 4, 21, 8, 8), torch.randn(2, 21, 8, 8)
    values = {kind: L.consistency_loss(aux, main, kind).item() for kind in ("mse", "kl", "js")}
    for kind in ("kl", "js"):
        assert values["mse"] / 10 < values[kind] < values["mse"] * 10, values


def test_unknown_consistency_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown kind"):
        L.consistency_loss(aux_logits(), main_logits(), "l1")


# --- pair-wise and weak losses ------------------------------------------------------------------------

def test_pairwise_loss_by_hand_and_zero_when_aux_agree():
    # pixel 0: [0.8, 0.2] vs [0.2, 0.8] -> var 0.09 per class, sum 0.18
    # pixel 1: [0.5, 0.5] vs [0.9, 0.1] -> var 0.04 per class, sum 0.08; mean 0.13
    assert L.pairwise_loss(aux_logits()).item() == pytest.approx(0.13, rel=1e-5)
    same = torch.randn(2, 1, 4, 3, 3).repeat(1, 5, 1, 1, 1)
    assert L.pairwise_loss(same).item() == pytest.approx(0.0, abs=1e-7)


def test_weak_loss_is_the_ce_of_every_aux_decoder_against_the_pseudo_labels():
    pseudo = torch.tensor([[[0, 255]]])  # only pixel 0 counts, label 0: probs 0.8 (dec 0), 0.2 (dec 1)
    loss = L.weak_loss(aux_logits(), pseudo)
    assert loss.item() == pytest.approx(-(math.log(0.8) + math.log(0.2)) / 2, rel=1e-5)
    pseudo = torch.tensor([[[1, 0]]])  # dec 0: 0.2, 0.5; dec 1: 0.8, 0.9
    loss = L.weak_loss(aux_logits(), pseudo)
    assert loss.item() == pytest.approx(-(math.log(0.2) + math.log(0.5) + math.log(0.8) + math.log(0.9)) / 4, rel=1e-5)


@pytest.mark.parametrize("at_once", [True, False], ids=["one-pass", "per-decoder"])
def test_fused_softmax_mse_matches_autograd_reference_value_and_gradient(at_once, monkeypatch):
    """Both forms of the fused loss: gradient with the value (small inputs, chunks) and the
    per-decoder recomputation (large inputs)."""
    monkeypatch.setattr(L, "_FUSED_AT_ONCE", 1 << 30 if at_once else 0)
    torch.manual_seed(0)
    aux = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    main = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    fused = L.consistency_loss(aux, main, "mse")
    reference = ((aux.softmax(2) - main.softmax(1).unsqueeze(1)) ** 2).mean()
    torch.testing.assert_close(fused, reference)
    (g_fused,) = torch.autograd.grad(fused, aux)
    (g_ref,) = torch.autograd.grad(reference, aux)
    torch.testing.assert_close(g_fused, g_ref)
    assert torch.autograd.gradcheck(lambda a: L.consistency_loss(a, main, "mse"), (aux,))


def test_every_chunk_of_the_decoders_objective_takes_the_one_pass_fused_loss():
    """The one-pass form of the fused MSE (gradient with the value) covers the largest default chunk
    of DecoderBank.objective, CPU and GPU; only materialised full stacks take the per-decoder loop."""
    from cct.model.decoders import CHUNK_ELEMENTS

    assert L._FUSED_AT_ONCE >= max(CHUNK_ELEMENTS.values())
