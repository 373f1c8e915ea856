"""Losses of CCT as pure functions: supervised CE and annealed-bootstrapped CE, the consistency
losses between auxiliary and main predictions (MSE, KL, JS) with optional confidence masking, the
pair-wise loss of the supplementary material, and the ramp-ups.

The losses over auxiliary outputs also come as ``*_sums`` -> (sum, count), the loss being sum /
count: both add over disjoint sets of pixels, so the training loop can evaluate them chunk by chunk
of the decoders' output (:meth:`cct.model.decoders.DecoderBank.objective`) and never hold all 30
full-resolution outputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cct import IGNORE_INDEX


def sigmoid_rampup(iteration: int, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = clip(iteration / length, 0, 1) (Laine & Aila, 2017); 1 if length == 0."""
    if length <= 0:
        return 1.0
    t = min(max(iteration / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def unsupervised_weight(iteration: int, total: int, final_w: float, rampup: float) -> float:
    """w_u at ``iteration``: ``final_w`` ramped up with a sigmoid over the first ``rampup`` of ``total``."""
    return final_w * sigmoid_rampup(iteration, rampup * total)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """CE over (B, K, H, W) logits and (B, H, W) targets, pixels at 255 ignored, mean over the rest.
    ``temperature`` divides the logits (``loss.softmax_temp``: the official ``CE_loss``'s)."""
    if temperature != 1.0:
        logits = logits / temperature
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


def abce_threshold(iteration: int, total: int, num_classes: int, final: float = 0.9, rampup: float = 0.4) -> float:
    """ab-CE threshold: from 1/K to ``final`` along 1 - exp(-5 t), t = iteration / (rampup * total)."""
    length = rampup * total
    t = 1.0 if length <= 0 else min(iteration / length, 1.0)
    start = 1.0 / num_classes
    return start + (final - start) * (1.0 - math.exp(-5.0 * t))


def annealed_bootstrapped_ce(
    logits: torch.Tensor, target: torch.Tensor, threshold: float, min_kept: int = 1
) -> torch.Tensor:
    """ab-CE: CE over the labelled pixels whose predicted probability of the true class is below
    ``threshold`` (the hard ones); at least ``min_kept * B`` pixels of the batch are kept (the
    hardest), as the official implementation does."""
    valid = target != IGNORE_INDEX
    safe = torch.where(valid, target, torch.zeros_like(target))
    prob = F.softmax(logits, dim=1).gather(1, safe.unsqueeze(1))[:, 0][valid]
    loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")[valid]
    if prob.numel() == 0:
        return logits.sum() * 0.0
    kth = min(min_kept * logits.shape[0], prob.numel()) - 1
    floor = prob.kthvalue(kth + 1).values if kth >= 0 else prob.new_tensor(0.0)
    keep = (prob < threshold) | (prob <= floor)
    return loss[keep].mean()


class _SoftmaxSquaredError(torch.autograd.Function):
    """sum((softmax(a, dim=2) - t)^2) over all elements of a (B, N, K, ...), t (B, 1, K, ...).

    Written by hand because no library fuses softmax with a squared error: autograd would keep
    softmax(a), p - t and the softmax backward's temporaries, and redo the softmax in the backward.
    d/da = p * (g - sum_k p_k g_k) with g = 2 (p - t). Up to :data:`_FUSED_AT_ONCE` elements (a
    chunk of :meth:`cct.model.decoders.DecoderBank.objective`, or small outputs) the gradient is
    computed with the value, from the same p, and kept: one softmax instead of two and a few
    vectorised passes that stay in cache. Larger inputs (the 30 full-resolution outputs of a
    materialised stack) keep nothing new in the forward and recompute p one decoder at a time in
    the backward, so that no further tensor of their size is allocated.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.numel() <= _FUSED_AT_ONCE:
            p = torch.softmax(logits, dim=2)
            d = p - target
            total = torch.linalg.vecdot(d.flatten(), d.flatten())
            ctx.grad = p.mul_(d.sub_((p * d).sum(dim=2, keepdim=True)))  # half the gradient
            return total
        total = logits.new_zeros((), dtype=torch.float64)
        for n in range(logits.shape[1]):
            total += ((torch.softmax(logits[:, n], dim=1) - target[:, 0]) ** 2).sum(dtype=torch.float64)
        ctx.grad = None
        ctx.save_for_backward(logits, target)
        return total.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        if ctx.grad is not None:
            return ctx.grad * (2.0 * grad_out), None
        logits, target = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for n in range(logits.shape[1]):
            p = torch.softmax(logits[:, n], dim=1)
            g = (p - target[:, 0]).mul_(2.0 * grad_out)
            grad[:, n] = p * (g - (p * g).sum(dim=1, keepdim=True))
        return grad, None


_FUSED_AT_ONCE = 64 << 20
"""Inputs of :class:`_SoftmaxSquaredError` up to this many elements are done in one vectorised pass:
at least the largest chunk of :meth:`cct.model.decoders.DecoderBank.objective` (its GPU chunk), so
that every chunk takes the one-pass form."""


def confidence_mask(target_prob: torch.Tensor, threshold: float | None) -> torch.Tensor | None:
    """Bool (B, 1, *P): pixels whose main-prediction confidence exceeds ``threshold``; target_prob
    (B, 1, K, *P) (None without a threshold)."""
    if threshold is None:
        return None
    return target_prob.amax(dim=2) > threshold


def consistency_sums(
    aux_logits: torch.Tensor, target_prob: torch.Tensor, kind: str = "mse", mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of the consistency distances: the loss is sum / count, and both add over disjoint
    sets of pixels (so the loss can be accumulated over chunks of the image).

    ``aux_logits`` (B, N, K, *P), ``target_prob`` (B, 1, K, *P) the main decoder's softmax, ``mask``
    (B, 1, *P) or None, *P any pixel layout shared by all three. Each kind is the official
    implementation's (``softmax_{mse,kl,js}_loss`` of yassouali/CCT, ``utils/losses.py``), a mean over
    every element (pixels and classes), so the three are on the scale the paper's w_u = 30 was tuned on:

    - ``mse``: squared error between the auxiliary and main softmax outputs;
    - ``kl``: ``F.kl_div(log_softmax(aux), target, reduction="mean")``: KL(main || aux) per pixel,
      divided by K (a mean over classes);
    - ``js``: with M = (softmax(aux) + target) / 2, the mean of ``kl_div(log_softmax(aux), M)`` and
      ``kl_div(log(target + 1e-5), M)``: (KL(M || aux) + KL(M || main)) / 2 per pixel, divided by K
      (the official formula, not the Jensen-Shannon divergence KL(aux || M) + KL(main || M)).

    With ``mask`` (confidence masking) each is the mean over the masked pixels (the official MSE's;
    see docs/fidelity.md for the official KL's and JS's).
    """
    if kind == "mse" and mask is None:  # every element counts: the fused form
        return _SoftmaxSquaredError.apply(aux_logits, target_prob), aux_logits.new_full((), float(aux_logits.numel()))
    k = aux_logits.shape[2]
    log_p = F.log_softmax(aux_logits, dim=2)
    if kind == "mse":
        per = ((log_p.exp() - target_prob) ** 2).mean(dim=2)  # (B, N, *P), averaged over K
    elif kind == "kl":  # kl_div(input, target) = target * (log target - input), 0 where target = 0
        per = (torch.xlogy(target_prob, target_prob) - target_prob * log_p).sum(dim=2) / k
    elif kind == "js":
        m = 0.5 * (log_p.exp() + target_prob)
        m_log_m = torch.xlogy(m, m)
        kl_aux = (m_log_m - m * log_p).sum(dim=2)
        kl_main = (m_log_m - m * torch.log(target_prob + 1e-5)).sum(dim=2)
        per = 0.5 * (kl_aux + kl_main) / k
    else:
        raise ValueError(f"loss.consistency: unknown kind {kind!r}")
    if mask is None:
        return per.sum(), per.new_full((), float(per.numel()))
    mask = mask.expand_as(per)
    return (per * mask).sum(), mask.sum().to(per.dtype)


def consistency_loss(
    aux_logits: torch.Tensor,
    main_logits: torch.Tensor,
    kind: str = "mse",
    confidence_threshold: float | None = None,
) -> torch.Tensor:
    """Mean over auxiliary decoders of the distance between each one's prediction and the main one.

    ``aux_logits`` (B, N, K, ...), ``main_logits`` (B, K, ...) with the same spatial layout (any:
    every reduction is over pixels), the latter detached here (the main decoder is not trained by
    this loss, as in the paper). ``kind`` as in :func:`consistency_sums`. With
    ``confidence_threshold``, only pixels where the main prediction is more confident than it count;
    if none is, the loss is 0. (``loss.softmax_temp`` does not apply here: as in the official code it
    divides the supervised logits, see :func:`cross_entropy`.)
    """
    target = F.softmax(main_logits.detach(), dim=1).unsqueeze(1)
    total, count = consistency_sums(aux_logits, target, kind, confidence_mask(target, confidence_threshold))
    return total / count.clamp_min(1)


def pairwise_sums(aux_logits: torch.Tensor, decoders: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of the supplementary pair-wise loss over the pixels of ``aux_logits`` (B, N, K, *P):
    the variance of the decoders' softmax outputs, summed over classes. ``decoders``: the indices of
    the decoders it compares (the official ``pair_wise_loss`` takes 8 at random), default all."""
    if decoders is not None:
        aux_logits = aux_logits.index_select(1, decoders)
    p = F.softmax(aux_logits, dim=2)
    per = ((p - p.mean(dim=1, keepdim=True)) ** 2).mean(dim=1).sum(dim=1)  # (B, *P)
    return per.sum(), per.new_full((), float(per.numel()))


def pairwise_loss(aux_logits: torch.Tensor) -> torch.Tensor:
    """Supplementary pair-wise loss: the variance of the auxiliary softmax outputs across decoders,
    summed over classes, mean over pixels. ``aux_logits`` (B, N, K, *P)."""
    total, count = pairwise_sums(aux_logits)
    return total / count


def weak_sums(aux_logits: torch.Tensor, pseudo_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of the CE between every auxiliary prediction (B, N, K, *P) and pseudo labels
    (B, *P) (255 ignored): the weak loss is sum / count, both add over disjoint pixel sets."""
    b, n = aux_logits.shape[:2]
    target = pseudo_labels.unsqueeze(1).expand(b, n, *pseudo_labels.shape[1:]).flatten(0, 1)
    total = F.cross_entropy(aux_logits.flatten(0, 1), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (target != IGNORE_INDEX).sum().to(total.dtype)


def weak_loss(aux_logits: torch.Tensor, pseudo_labels: torch.Tensor) -> torch.Tensor:
    """CE between every auxiliary prediction (B, N, K, *P) and pseudo labels (B, *P) (255 ignored),
    averaged over the decoders and labelled pixels. *P is (H, W), or any pixel layout shared by both
    (the decoders' native one)."""
    total, count = weak_sums(aux_logits, pseudo_labels)
    return total / count.clamp_min(1)
