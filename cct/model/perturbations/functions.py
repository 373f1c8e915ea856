"""The seven feature perturbations of CCT (Ouali et al., CVPR 2020, Sec. 3.2), and their builders
(one per entry of the registry, :mod:`cct.model.perturbations`).

Each is a pure function of the encoder output ``z`` of shape (B, C, h, w) and, where guided, of
``objects``: a bool map (B, h, w) at z's resolution, True where the main decoder predicts an object
(a class outside the dataset's background/context classes). All return a tensor shaped like ``z``.
Randomness comes from torch's global generator, which the trainer seeds per iteration.

G-Cutout works on the map's device, in tensors: :func:`object_boxes` labels the 8-connected
components of ``objects`` (B, h, w) and returns their bounding boxes as ``(boxes, valid)``, long
(B, M, 4) as (y0, x0, y1, x1) with exclusive ends and bool (B, M); :func:`cutout_mask` erases one
random box per valid box. Differences from the official code (docs/fidelity.md): it takes OpenCV's
external contours (``cv2.findContours`` with ``RETR_EXTERNAL``, ``CHAIN_APPROX_SIMPLE``) of the object
map at the image's resolution and boxes only contours of more than 50 points, so a component lying
inside a hole of another gets no box, and neither does an object whose compressed contour is short
(an axis-aligned rectangle of any size has 4 points); here every 8-connected component at z's
resolution gets a box, nested or not, unless it has fewer than ``min_size`` pixels.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def feature_noise(z: torch.Tensor, uniform_range: float = 0.3) -> torch.Tensor:
    """F-Noise: ``z + z * N`` with N ~ U(-r, r) of shape (C, h, w), shared over the batch."""
    noise = torch.empty(z.shape[1:], device=z.device, dtype=z.dtype).uniform_(-uniform_range, uniform_range)
    return z + z * noise.unsqueeze(0)


def feature_drop_mask(z: torch.Tensor, drop_range: tuple[float, float] = (0.7, 0.9),
                      draw: str = "sample") -> torch.Tensor:
    """Keep-mask (B, 1, h, w) of F-Drop, in z's dtype: per sample, threshold = max(attention) *
    U(lo, hi), attention = mean of z over channels; positions with attention >= threshold (the most
    activated regions) are dropped (0), the rest kept (1). ``draw``: the U(lo, hi) fraction is drawn
    per sample ("sample"), or once for the batch ("batch", the official ``np.random.uniform``)."""
    attention = z.mean(dim=1, keepdim=True)
    peak = attention.amax(dim=(2, 3), keepdim=True)
    lo, hi = drop_range
    shape = peak.shape if draw == "sample" else (1, 1, 1, 1)
    fraction = torch.empty(shape, dtype=peak.dtype, device=peak.device).uniform_(lo, hi)
    return (attention < peak * fraction).to(z.dtype)


def feature_drop(z: torch.Tensor, drop_range: tuple[float, float] = (0.7, 0.9), draw: str = "sample") -> torch.Tensor:
    """F-Drop: zero the positions whose channel-mean activation reaches a drawn threshold (see
    :func:`feature_drop_mask`)."""
    return z * feature_drop_mask(z, drop_range, draw)


def dropout_mask(z: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Channel-dropout multipliers (B, C) for z (B, C, h, w), in z's dtype: 0 with probability
    ``p``, else 1/(1-p) (spatial dropout, as ``F.dropout2d``)."""
    keep = torch.empty(z.shape[:2], device=z.device, dtype=z.dtype).bernoulli_(1 - p)
    return keep.div_(1 - p)  # p < 1 (validated by the config)


def dropout(z: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """DropOut: spatial (channel-wise) dropout with rate ``p``, kept channels scaled by 1/(1-p)."""
    return z * dropout_mask(z, p)[:, :, None, None]


def context_masking(z: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Con-Msk: mask the context, keep z only where the main decoder predicts an object."""
    return z * objects.unsqueeze(1).to(z.dtype)


def object_masking(z: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Obj-Msk: mask the objects, keep z only on predicted background/context."""
    return z * (~objects).unsqueeze(1).to(z.dtype)


def object_boxes(objects: torch.Tensor, min_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding boxes of the 8-connected components of ``objects`` (B, h, w) bool, on its device.
    Components of fewer than ``min_size`` pixels keep their slot and box but are not ``valid``
    (``model.perturbation.cutout_min_size``: G-Cutout leaves them alone).

    Returns ``(boxes, valid)``: ``boxes`` long (B, M, 4) as (y0, x0, y1, x1) with exclusive ends,
    ``valid`` bool (B, M). M is the largest number of components of any sample of the batch (0 when
    no sample has an object); sample b's components fill ``boxes[b, :count_b]`` (``valid`` True),
    the rest are (0, 0, 0, 0) with ``valid`` False. Components come in the order of their smallest
    flat (row-major) index, which is the order of scipy's ``ndimage.label`` + ``find_objects``.

    Labelling is done in torch, on the map's device, with no per-pixel or per-box host work. Each
    object pixel holds a parent, initially its own flat index; a round (1) takes the minimum of the
    parents over the pixel's 3x3 neighbourhood of object pixels (separable: 4 elementwise minima on
    shifted views, cheaper on the CPU than one ``F.max_pool2d``, which would also need float codes),
    (2) hooks: lowers the parent of the pixel's parent to that minimum (``scatter_reduce`` amin), and
    (3) pointer-jumps: parent <- parent[parent]. Parents stay pixels of the same component and only
    decrease, so a round that changes nothing means every component points at its smallest index,
    which gives scipy's order and each box's y0 directly.
    Why hooking and jumping rather than plain 3x3 propagation: propagation alone needs as many rounds
    as the component's longest geodesic path (780 for a 40x40 serpentine, 8128 at 128x128); with
    pointer jumping alone still 42 / 131; with hooking as well 9 / 13 (square spirals 9 / 12, a 40x40
    random map 6, smooth blob maps 4): about logarithmic (the Shiloach-Vishkin / FastSV scheme).
    Convergence is checked every ``_CHECK_EVERY`` = 4 rounds (the state is monotone, so equal to the
    state 4 rounds earlier means each of those rounds was a no-op); with the one for M, that is 2-5
    host syncs per call at these sizes.
    """
    objects = objects.bool()
    batch, h, w = objects.shape
    n = h * w
    device = objects.device
    flat = torch.arange(n, device=device)
    obj = objects.reshape(batch, n)
    parent = flat.expand(batch, n)  # background pixels point at themselves throughout
    background_n = torch.where(obj, 0, n)  # lifts background parents to n, out of the minima
    background_self = torch.where(obj, 0, flat)  # keeps a background pixel's ``low`` >= its index
    while True:
        before = parent
        for _ in range(_CHECK_EVERY):
            # min parent over the 3x3 object neighbourhood (and self); background: in [index, n]
            low = _min3x3(torch.maximum(parent, background_n).view(batch, h, w), fill=n).view(batch, n)
            low = torch.maximum(low, background_self)
            hooked = torch.minimum(parent, low)
            hooked.scatter_reduce_(1, parent, low, "amin")
            parent = hooked.gather(1, hooked)
        if torch.equal(parent, before):
            break
    root = torch.where(obj, parent, n)  # smallest flat index of the pixel's component (n: background)
    is_root = obj & (root == flat)
    # y0 is the root's row (the smallest flat index has the smallest row); the rest by amax per root
    row, col = flat // w, flat % w
    extent = torch.stack([row, col, -col], dim=-1).expand(batch, n, 3)
    per_root = torch.zeros(batch, n + 1, 3, dtype=torch.long, device=device)
    per_root.scatter_reduce_(1, root.unsqueeze(-1).expand(batch, n, 3), extent, "amax", include_self=False)
    per_root = per_root[:, :n]
    all_boxes = torch.stack([row.expand(batch, n), -per_root[..., 2], per_root[..., 0] + 1, per_root[..., 1] + 1], -1)
    count = is_root.sum(dim=1)
    m = int(count.max()) if batch else 0
    # compact the roots, in flat order, into slots 0..count-1; non-roots go to a discarded slot m
    slot = torch.where(is_root, is_root.cumsum(dim=1) - 1, m)
    boxes = torch.zeros(batch, m + 1, 4, dtype=torch.long, device=device)
    boxes.scatter_(1, slot.unsqueeze(-1).expand(batch, n, 4), torch.where(is_root.unsqueeze(-1), all_boxes, 0))
    valid = torch.arange(m, device=device) < count.unsqueeze(1)
    if min_size > 0:  # pixels per component, at its root's slot
        size = torch.zeros(batch, n + 1, dtype=torch.long, device=device)
        size.scatter_add_(1, root, torch.ones_like(root))
        per_slot = torch.zeros(batch, m + 1, dtype=torch.long, device=device)
        per_slot.scatter_(1, slot, torch.where(is_root, size[:, :n], 0))
        valid &= per_slot[:, :m] >= min_size
    return boxes[:, :m], valid


_CHECK_EVERY = 4
"""Labelling rounds of :func:`object_boxes` between convergence checks (each a host sync)."""


def _min3x3(grid: torch.Tensor, fill: int) -> torch.Tensor:
    """Minimum over each position's 3x3 neighbourhood of an integer (B, h, w) tensor, ``fill`` beyond
    the border; separable (rows, then columns): 4 elementwise minima on shifted views."""
    padded = F.pad(grid, (1, 1, 1, 1), value=fill)
    rows = torch.minimum(torch.minimum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    return torch.minimum(torch.minimum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])


def cutout_mask(
    objects: torch.Tensor, erase: float = 0.4, boxes: tuple[torch.Tensor, torch.Tensor] | None = None,
    min_size: int = 0,
) -> torch.Tensor:
    """Keep-mask (B, h, w) bool of G-Cutout, on ``objects``' device: inside each predicted object's
    bounding box, False on a box whose sides are ``max(1, round(erase * side))`` (round half to even,
    as Python's round), placed uniformly at random within the bounding box; True elsewhere.

    Objects are the 8-connected components of ``objects`` (B, h, w) of at least ``min_size`` pixels;
    ``boxes``, the ``(boxes, valid)`` pair from :func:`object_boxes`, may be given to skip finding
    them again. The offsets are
    one ``torch.rand`` draw (B, M, 2) on the device, ``floor(u * (side - e + 1))``, so the global
    generator's seed fixes the mask. No host sync here (beyond :func:`object_boxes`, when called).
    The mask is ``any`` over the boxes of (row in box) & (column in box), computed as a (B, h, M) x
    (B, M, w) product of 0/1 matrices, > 0: memory O(B M (h + w)) instead of O(B M h w). The terms
    are non-negative, so the > 0 test is exact in any float precision (e.g. under autocast).
    """
    box, valid = object_boxes(objects, min_size) if boxes is None else boxes
    batch, h, w = objects.shape
    device = objects.device
    side = box[..., 2:] - box[..., :2]  # (B, M, 2): heights, widths
    size = torch.round(side.to(torch.float64) * erase).long().clamp_min(1)  # float64: Python's product
    span = side - size + 1  # number of allowed offsets
    offset = (torch.rand(side.shape, device=device) * span).floor().long()
    start = box[..., :2] + torch.minimum(offset, span - 1)  # guard u * span rounding up to span
    stop = start + size
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    in_rows = (rows >= start[..., :1]) & (rows < stop[..., :1]) & valid.unsqueeze(-1)  # (B, M, h)
    in_cols = (cols >= start[..., 1:]) & (cols < stop[..., 1:])  # (B, M, w)
    erased = torch.bmm(in_rows.transpose(1, 2).float(), in_cols.float()) > 0
    return ~erased


def guided_cutout(
    z: torch.Tensor,
    objects: torch.Tensor,
    erase: float = 0.4,
    boxes: tuple[torch.Tensor, torch.Tensor] | None = None,
    min_size: int = 0,
) -> torch.Tensor:
    """G-Cutout: erase a random box covering ``erase`` of each predicted object's bounding-box sides.

    ``z`` (B, C, h, w), ``objects`` (B, h, w) bool, ``boxes`` and ``min_size`` as for :func:`cutout_mask`.
    """
    return z * cutout_mask(objects, erase, boxes, min_size).unsqueeze(1).to(z.dtype)


def _per_sample_normalize(d: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Unit L2 norm per sample and group: d (B, G*C, ...) is normalised over each (b, g) slice of
    its C channels. No additive epsilon: at xi=1e-6 the gradient's norm is far below the 1e-8 the
    official code adds, which then shrinks the perturbation to ~0 (official defect 11)."""
    flat = d.reshape(d.shape[0], groups, -1)
    norm = flat.norm(dim=2, keepdim=True).clamp_min(torch.finfo(d.dtype).tiny)
    return (flat / norm).view_as(d)


def vat(
    z: torch.Tensor,
    decoder: Callable[[torch.Tensor], torch.Tensor],
    xi: float = 1e-6,
    eps: float = 2.0,
    iterations: int = 1,
    groups: int | None = None,
    fisher: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """I-VAT: ``z + r_adv`` where r_adv (norm ``eps`` per sample) maximises the KL between the
    decoder's predictions at z and at z + r, by ``iterations`` power iterations from a random probe.

    ``decoder`` maps (B, C, h, w) features to (B, K, ...) logits (any pixel layout). With ``groups``
    = G, the I-VAT of G decoders in one pass: z (B, G*C, h, w) holds their inputs (the features
    repeated G times), ``decoder`` maps it to (B, G, K, ...), and every (sample, decoder) gets its
    own random probe and its own r_adv of norm ``eps`` (the same as G separate calls, up to the
    order in which the probes are drawn).

    One power iteration takes the gradient in d of KL(p(z) || p(z + xi d)), which is xi^2 H d +
    O(xi^3) with H = J^T F J (J the decoder's Jacobian at z, F the per-pixel Fisher of the softmax).
    For the paper's xi = 1e-6 this is H d to 12 digits, so H d is computed directly, in float32: a
    forward-mode product J d, F applied per pixel, then J^T by reverse mode. (A literal finite
    difference needs float64: in float32 a 1e-6 step changes the logits by less than their rounding
    error. The float64 probe gives the same direction, cosine 1.0000, at 3x the cost; a test
    compares them.) For xi > 1e-3, where the difference from the limit matters, the finite
    difference is used. ``fisher``: a function ``(z, d) -> J^T F J d`` that computes H d for the
    same decoder(s) by other means (e.g. :meth:`cct.model.decoders.DecoderBank.fisher_product`, in
    chunks); used at small xi instead of the generic forward and reverse passes through ``decoder``.
    """
    g = groups or 1
    class_dim = 1 if groups is None else 2
    z0 = z.detach()
    d = _per_sample_normalize(torch.rand_like(z0) - 0.5, g)
    with torch.autocast(z.device.type, enabled=False), torch.enable_grad():
        z0 = z0.float()
        d = d.float()
        for _ in range(iterations):
            small = fisher is not None and xi <= _FINITE_XI
            probe = fisher(z0, d) if small else _kl_probe(decoder, z0, d, xi, class_dim)
            d = _per_sample_normalize(probe, g)
    return z + (eps * d).to(z.dtype)


_FINITE_XI = 1e-3
"""I-VAT's xi above which the probe is the KL's finite difference, at or below it its xi -> 0 limit."""


def _kl_probe(
    decoder: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, d: torch.Tensor, xi: float, class_dim: int = 1
) -> torch.Tensor:
    """The direction of grad_d KL(p(z) || p(z + xi d)) (up to a positive factor per sample and
    decoder); the decoder's logits have their classes along ``class_dim``."""
    if xi > _FINITE_XI:
        with torch.no_grad():
            target = F.softmax(decoder(z), dim=class_dim)
        d = d.detach().requires_grad_(True)
        distance = F.kl_div(F.log_softmax(decoder(z + xi * d), dim=class_dim), target, reduction="sum")
        return torch.autograd.grad(distance, d)[0]
    logits, jd = torch.func.jvp(decoder, (z,), (d,))  # J d
    p = F.softmax(logits.detach(), dim=class_dim)
    fisher_jd = p * jd - p * (p * jd).sum(class_dim, keepdim=True)  # F J d, per pixel over the classes
    _, pullback = torch.func.vjp(decoder, z)
    return pullback(fisher_jd.detach())[0]  # J^T F J d


# --------------------------------------------------------------------------------------------------
# Builders: each registry entry's perturbation for a run of G decoders, in the form its ``applies``
# names (see the package docstring). Random draws happen here, in the registry's order.


class Context:
    """What the builders of one step read: ``z`` (B, C, h, w); ``config`` (PerturbationConfig);
    ``objects`` (B, h, w) bool, the main prediction's objects at z's resolution (guided kinds only);
    ``decode_group(v, decoders)`` the auxiliary decoders ``decoders`` (a slice) on v (B, G*C, h, w)
    (I-VAT); ``fisher_product(v, d, decoders)`` their J^T F J d in chunks, or None (I-VAT)."""

    def __init__(self, z: torch.Tensor, config, objects: torch.Tensor | None = None,
                 decode_group: Callable | None = None, fisher_product: Callable | None = None) -> None:
        self.z, self.config, self.objects = z, config, objects
        self.decode_group, self.fisher_product = decode_group, fisher_product
        self._boxes: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def boxes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`object_boxes` of ``objects``, found once per step."""
        if self._boxes is None:
            self._boxes = object_boxes(self.objects, getattr(self.config, "cutout_min_size", 0))
        return self._boxes


BUILDERS: dict[str, Callable[[Context, slice], torch.Tensor]] = {}


def builder(name: str):
    """Register the builder of the registry entry ``name``."""

    def register(fn):
        BUILDERS[name] = fn
        return fn

    return register


def _count(decoders: slice) -> int:
    return decoders.stop - decoders.start


@builder("vat")
def _vat(ctx: Context, decoders: slice) -> torch.Tensor:
    """All I-VAT decoders in one pass: (B, G*C, h, w)."""
    cfg, n = ctx.config, _count(decoders)
    fisher = None  # the generic probe through the decoders, or in chunks:
    if ctx.fisher_product is not None:
        fisher = lambda v, d: ctx.fisher_product(v, d, decoders)  # noqa: E731
    return vat(ctx.z.repeat(1, n, 1, 1), lambda v: ctx.decode_group(v, decoders), cfg.vat_xi, cfg.vat_eps,
               cfg.vat_iterations, groups=n, fisher=fisher)


@builder("feature_noise")
def _feature_noise(ctx: Context, decoders: slice) -> torch.Tensor:
    return torch.cat([feature_noise(ctx.z, ctx.config.feature_noise_range) for _ in range(_count(decoders))], dim=1)


@builder("dropout")
def _dropout(ctx: Context, decoders: slice) -> torch.Tensor:
    return torch.stack([dropout_mask(ctx.z, ctx.config.dropout_p) for _ in range(_count(decoders))], dim=1)


def _pixels(ctx: Context, masks: list[torch.Tensor]) -> torch.Tensor:
    """G keep-masks (B, 1, h, w) -> (B, G, 1, h, w) in z's dtype."""
    return torch.stack(masks, dim=1).to(ctx.z.dtype)


@builder("cutout")
def _cutout(ctx: Context, decoders: slice) -> torch.Tensor:
    erase = ctx.config.cutout_erase
    return _pixels(ctx, [cutout_mask(ctx.objects, erase, ctx.boxes).unsqueeze(1) for _ in range(_count(decoders))])


@builder("context_masking")
def _context_masking(ctx: Context, decoders: slice) -> torch.Tensor:
    return _pixels(ctx, [ctx.objects.unsqueeze(1)] * _count(decoders))


@builder("object_masking")
def _object_masking(ctx: Context, decoders: slice) -> torch.Tensor:
    return _pixels(ctx, [(~ctx.objects).unsqueeze(1)] * _count(decoders))


@builder("feature_drop")
def _feature_drop(ctx: Context, decoders: slice) -> torch.Tensor:
    cfg = ctx.config
    return _pixels(ctx, [feature_drop_mask(ctx.z, cfg.feature_drop_range, cfg.feature_drop_draw)
                         for _ in range(_count(decoders))])
