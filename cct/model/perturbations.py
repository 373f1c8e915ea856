"""The seven feature perturbations of CCT (Ouali et al., CVPR 2020, Sec. 3.2).

Each is a pure function of the encoder output ``z`` of shape (B, C, h, w) and, where guided, of
``objects``: a bool map (B, h, w) at z's resolution, True where the main decoder predicts an object
(a class outside the dataset's background/context classes). All return a tensor shaped like ``z``.
Randomness comes from torch's global generator, which the trainer seeds per iteration.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def feature_noise(z: torch.Tensor, uniform_range: float = 0.3) -> torch.Tensor:
    """F-Noise: ``z + z * N`` with N ~ U(-r, r) of shape (C, h, w), shared over the batch."""
    noise = torch.empty(z.shape[1:], device=z.device, dtype=z.dtype).uniform_(-uniform_range, uniform_range)
    return z + z * noise.unsqueeze(0)


def feature_drop(z: torch.Tensor, drop_range: tuple[float, float] = (0.7, 0.9)) -> torch.Tensor:
    """F-Drop: zero the positions whose channel-mean activation reaches a drawn threshold.

    Per sample, threshold = max(attention) * U(lo, hi), attention = mean of z over channels (B, 1, h, w);
    positions with attention >= threshold (the most activated regions) are set to zero.
    """
    attention = z.mean(dim=1, keepdim=True)
    peak = attention.amax(dim=(2, 3), keepdim=True)
    lo, hi = drop_range
    fraction = torch.empty_like(peak).uniform_(lo, hi)
    keep = attention < peak * fraction
    return z * keep


def dropout(z: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """DropOut: spatial (channel-wise) dropout with rate ``p``, kept channels scaled by 1/(1-p)."""
    return F.dropout2d(z, p=p, training=True)


def context_masking(z: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Con-Msk: mask the context, keep z only where the main decoder predicts an object."""
    return z * objects.unsqueeze(1).to(z.dtype)


def object_masking(z: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Obj-Msk: mask the objects, keep z only on predicted background/context."""
    return z * (~objects).unsqueeze(1).to(z.dtype)


def object_boxes(objects: torch.Tensor) -> list[list[tuple[slice, slice]]]:
    """Per sample, the bounding boxes (row slice, column slice) of the 8-connected components of
    ``objects`` (B, h, w). Labelling is done by scipy on the CPU (torch has none); the maps are at
    z's resolution, so this is cheap, and a model with several G-Cutout decoders does it once."""
    structure = np.ones((3, 3), dtype=bool)
    out = []
    for plane in objects.cpu().numpy():
        labelled, _ = ndimage.label(plane, structure=structure)
        out.append([box for box in ndimage.find_objects(labelled) if box is not None])
    return out


def cutout_mask(
    objects: torch.Tensor, erase: float = 0.4, boxes: list[list[tuple[slice, slice]]] | None = None
) -> torch.Tensor:
    """Keep-mask (B, h, w) of G-Cutout: inside each predicted object's bounding box, zero a box whose
    sides are ``erase`` times the bounding box's, placed uniformly at random within it.

    Objects are the 8-connected components of ``objects``; ``boxes`` (from :func:`object_boxes`)
    may be given to skip finding them again.
    """
    keep = torch.ones(objects.shape, dtype=torch.bool)
    for b, sample_boxes in enumerate(object_boxes(objects) if boxes is None else boxes):
        for ys, xs in sample_boxes:
            bh, bw = ys.stop - ys.start, xs.stop - xs.start
            eh, ew = max(1, round(bh * erase)), max(1, round(bw * erase))
            y0 = ys.start + int(torch.randint(0, bh - eh + 1, (1,)))
            x0 = xs.start + int(torch.randint(0, bw - ew + 1, (1,)))
            keep[b, y0 : y0 + eh, x0 : x0 + ew] = False
    return keep.to(objects.device)


def guided_cutout(
    z: torch.Tensor, objects: torch.Tensor, erase: float = 0.4, boxes: list[list[tuple[slice, slice]]] | None = None
) -> torch.Tensor:
    """G-Cutout: erase a random box covering ``erase`` of each predicted object's bounding-box sides."""
    return z * cutout_mask(objects, erase, boxes).unsqueeze(1).to(z.dtype)


def _per_sample_normalize(d: torch.Tensor) -> torch.Tensor:
    """Unit L2 norm per sample. No additive epsilon: at xi=1e-6 the gradient's norm is far below the
    1e-8 the official code adds, which then shrinks the perturbation to ~0 (official defect 11)."""
    norm = d.flatten(1).norm(dim=1).clamp_min(torch.finfo(d.dtype).tiny)
    return d / norm.view(-1, *([1] * (d.dim() - 1)))


def vat(
    z: torch.Tensor,
    decoder: Callable[[torch.Tensor], torch.Tensor],
    xi: float = 1e-6,
    eps: float = 2.0,
    iterations: int = 1,
) -> torch.Tensor:
    """I-VAT: ``z + r_adv`` where r_adv (norm ``eps`` per sample) maximises the KL between the
    decoder's predictions at z and at z + r, by ``iterations`` power iterations from a random probe.

    ``decoder`` maps (B, C, h, w) features to (B, K, ...) logits (any pixel layout). One power
    iteration takes the gradient in d of KL(p(z) || p(z + xi d)), which is xi^2 H d + O(xi^3) with
    H = J^T F J (J the decoder's Jacobian at z, F the per-pixel Fisher of the softmax). For the
    paper's xi = 1e-6 this is H d to 12 digits, so H d is computed directly, in float32: a forward-
    mode product J d, F applied per pixel, then J^T by reverse mode. (A literal finite difference
    needs float64: in float32 a 1e-6 step changes the logits by less than their rounding error. The
    float64 probe gives the same direction, cosine 1.0000, at 3x the cost; a test compares them.)
    For xi > 1e-3, where the difference from the limit matters, the finite difference is used.
    """
    z0 = z.detach()
    d = _per_sample_normalize(torch.rand_like(z0) - 0.5)
    with torch.autocast(z.device.type, enabled=False), torch.enable_grad():
        z0 = z0.float()
        d = d.float()
        for _ in range(iterations):
            d = _per_sample_normalize(_kl_probe(decoder, z0, d, xi))
    return z + (eps * d).to(z.dtype)


def _kl_probe(decoder: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, d: torch.Tensor, xi: float) -> torch.Tensor:
    """The direction of grad_d KL(p(z) || p(z + xi d)) (up to a positive factor per sample)."""
    if xi > 1e-3:
        with torch.no_grad():
            target = F.softmax(decoder(z), dim=1)
        d = d.detach().requires_grad_(True)
        distance = F.kl_div(F.log_softmax(decoder(z + xi * d), dim=1), target, reduction="sum")
        return torch.autograd.grad(distance, d)[0]
    logits, jd = torch.func.jvp(decoder, (z,), (d,))  # J d
    p = F.softmax(logits.detach(), dim=1)
    fisher_jd = p * jd - p * (p * jd).sum(1, keepdim=True)  # F J d, per pixel over the classes
    _, pullback = torch.func.vjp(decoder, z)
    return pullback(fisher_jd.detach())[0]  # J^T F J d


NAMES = {
    "vat": vat,
    "dropout": dropout,
    "cutout": guided_cutout,
    "context_masking": context_masking,
    "object_masking": object_masking,
    "feature_drop": feature_drop,
    "feature_noise": feature_noise,
}
