"""Losses of CCT as pure functions: supervised CE and annealed-bootstrapped CE, the consistency
losses between auxiliary and main predictions (MSE, KL, JS) with optional confidence masking, the
pair-wise loss of the supplementary material, and the ramp-ups."""

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


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE over (B, K, H, W) logits and (B, H, W) targets, pixels at 255 ignored, mean over the rest."""
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


class _SoftmaxMSE(torch.autograd.Function):
    """mean((softmax(a, dim=2) - t)^2) over all elements of a (B, N, K, ...), t (B, 1, K, ...).

    Written by hand because no library fuses softmax with MSE: autograd would keep softmax(a),
    p - t and the softmax backward's temporaries, each as large as the 30 auxiliary outputs (over
    0.5 GB at the paper's crop), and allocating them every step dominated a CCT step on CPU. Here
    the forward keeps nothing new, and the backward recomputes p one decoder at a time:
    d/da = p * (g - sum_k p_k g_k) with g = 2 (p - t) / numel.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float64)
        for n in range(logits.shape[1]):
            total += ((torch.softmax(logits[:, n], dim=1) - target[:, 0]) ** 2).sum(dtype=torch.float64)
        ctx.save_for_backward(logits, target)
        return (total / logits.numel()).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, target = ctx.saved_tensors
        grad = torch.empty_like(logits)
        scale = 2.0 * grad_out / logits.numel()
        for n in range(logits.shape[1]):
            p = torch.softmax(logits[:, n], dim=1)
            g = (p - target[:, 0]).mul_(scale)
            grad[:, n] = p * (g - (p * g).sum(dim=1, keepdim=True))
        return grad, None


def _confidence_mask(target_prob: torch.Tensor, threshold: float | None) -> torch.Tensor | None:
    """Bool (B, 1, H, W): pixels whose main-prediction confidence exceeds ``threshold``."""
    if threshold is None:
        return None
    return target_prob.amax(dim=1, keepdim=True) > threshold


def consistency_loss(
    aux_logits: torch.Tensor,
    main_logits: torch.Tensor,
    kind: str = "mse",
    confidence_threshold: float | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean over auxiliary decoders of the distance between each one's prediction and the main one.

    ``aux_logits`` (B, N, K, ...), ``main_logits`` (B, K, ...) with the same spatial layout (any:
    every reduction is over pixels), the latter detached here (the
    main decoder is not trained by this loss, as in the paper). ``mse``: squared error between
    softmax outputs, mean over all elements; ``kl``: KL(main || aux) per pixel; ``js``: Jensen-Shannon
    per pixel. With ``confidence_threshold``, only pixels where the main prediction is more
    confident than it count.
    """
    target = F.softmax(main_logits.detach() / temperature, dim=1).unsqueeze(1)
    mask = _confidence_mask(target[:, 0], confidence_threshold)
    if kind == "mse" and mask is None:  # the default, fused (see _SoftmaxMSE)
        return _SoftmaxMSE.apply(aux_logits, target)
    log_p = F.log_softmax(aux_logits, dim=2)
    if kind == "mse":
        per = ((log_p.exp() - target) ** 2).mean(dim=2)  # (B, N, H, W), averaged over K
    elif kind == "kl":
        per = (target * (torch.log(target.clamp_min(1e-12)) - log_p)).sum(dim=2)
    elif kind == "js":
        p = log_p.exp()
        m = 0.5 * (p + target)
        log_m = torch.log(m.clamp_min(1e-12))
        per = 0.5 * (target * (torch.log(target.clamp_min(1e-12)) - log_m)).sum(2) + 0.5 * (p * (log_p - log_m)).sum(2)
    else:
        raise ValueError(f"loss.consistency: unknown kind {kind!r}")
    if mask is None:
        return per.mean()
    mask = mask.expand_as(per)
    return (per * mask).sum() / mask.sum().clamp_min(1)


def pairwise_loss(aux_logits: torch.Tensor) -> torch.Tensor:
    """Supplementary pair-wise loss: the variance of the auxiliary softmax outputs across decoders,
    summed over classes, mean over pixels. ``aux_logits`` (B, N, K, H, W)."""
    p = F.softmax(aux_logits, dim=2)
    return ((p - p.mean(dim=1, keepdim=True)) ** 2).mean(dim=1).sum(dim=1).mean()


def weak_loss(aux_logits: torch.Tensor, pseudo_labels: torch.Tensor) -> torch.Tensor:
    """CE between every auxiliary prediction (B, N, K, *P) and pseudo labels (B, *P) (255 ignored),
    averaged over the decoders. *P is (H, W), or any pixel layout shared by both (the decoders'
    native one)."""
    b, n = aux_logits.shape[:2]
    target = pseudo_labels.unsqueeze(1).expand(b, n, *pseudo_labels.shape[1:]).flatten(0, 1)
    return cross_entropy(aux_logits.flatten(0, 1), target)
