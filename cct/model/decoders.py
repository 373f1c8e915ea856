"""The CCT decoders: a 1x1 conv to class scores, then sub-pixel (PixelShuffle) upsampling x2 per stage.

All decoders of a model share one architecture (paper Sec. 3.1): ``conv1x1(C_z -> K)`` without bias,
then ``log2(stride)`` stages of ``conv1x1(K -> 4K) -> ReLU -> PixelShuffle(2)`` with ICNR init (as
the official implementation). :class:`DecoderBank` holds ``count`` such decoders with independent
weights and runs them all at once as grouped convolutions: one kernel launch per stage instead of
one per decoder, same arithmetic as running them one by one.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def icnr_(weight: torch.Tensor, scale: int = 2) -> None:
    """ICNR init (Aitken et al., 2017) of a (out=K*s^2, in, 1, 1) conv feeding PixelShuffle(s):
    every sub-pixel of an output channel starts equal, so the shuffle begins free of checkerboard."""
    out_channels, in_channels = weight.shape[:2]
    base = torch.empty(out_channels // scale**2, in_channels, *weight.shape[2:])
    nn.init.kaiming_normal_(base, nonlinearity="relu")
    with torch.no_grad():
        weight.copy_(base.repeat_interleave(scale**2, dim=0))


def _grouped_1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
    """A grouped 1x1 convolution as one batched matmul: (B, G*Cin, h, w) -> (B, G*Cout, h, w).

    Same arithmetic as ``F.conv2d(x, weight, bias, groups=G)``; written as a matmul because CPU
    backends run grouped convolutions group by group through a slow path."""
    b, _, h, w = x.shape
    out_total = weight.shape[0]
    wg = weight.view(groups, out_total // groups, -1)  # (G, Cout, Cin)
    y = torch.matmul(wg, x.reshape(b, groups, -1, h * w))  # (B, G, Cout, h*w)
    y = y.reshape(b, out_total, h, w)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def _interpolation_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation with align_corners=False, read off
    F.interpolate applied to the identity, so the result matches it exactly."""
    eye = torch.eye(n_in, device=device, dtype=dtype)[None, None]
    return F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)[0, 0]


def bilinear_upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)`` as two matmuls
    with the separable interpolation matrices: (..., h, w) -> (..., h*s, w*s). On CPU its backward
    is several times faster than upsample_bilinear2d's, and it is what dominates 30 aux decoders."""
    h, w = x.shape[-2:]
    rows = _interpolation_matrix(h, h * scale, x.device, x.dtype)
    cols = _interpolation_matrix(w, w * scale, x.device, x.dtype)
    return rows @ x @ cols.T


def _stage(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One sub-pixel stage of G decoders in the native layout (see :meth:`DecoderBank._upsample`):
    (B, G, K, S, P) -> (B, G, K, 4S, P). ``weight`` (G*4K, K, 1, 1); with ``bias`` (G*4K,) the
    stage itself, ReLU included; without, its linear part alone (a tangent's or a gradient's
    ReLU mask is the caller's)."""
    b, groups, k, s, p = u.shape
    y = torch.matmul(weight.view(groups, 4 * k, k), u.reshape(b, groups, k, s * p))
    if bias is not None:  # in place: neither matmul's nor add's backward needs y, and relu's needs only its output
        y = y.add_(bias.view(1, groups, 4 * k, 1)).relu_()
    return y.view(b, groups, k, 4 * s, p)


CHUNK_ELEMENTS = {"cpu": 4 << 20, "cuda": 64 << 20}
"""Default output values per chunk of :meth:`DecoderBank.objective`: on CPU the chunk then stays in
cache; on GPU a chunk is large enough to fill the device."""

Objective = Callable[[torch.Tensor, slice], tuple[torch.Tensor, torch.Tensor]]
"""``terms(logits, rows) -> (sums (T,), counts (T,))``: see :meth:`DecoderBank.objective`."""


class _ChunkedObjective(torch.autograd.Function):
    """The sub-pixel stages and the loss terms over chunks of base-grid rows, each chunk's forward
    and backward done at once, so no full-resolution tensor is ever allocated.

    Written by hand because no library fuses a chain of per-pixel layers with a loss in tiles
    (torch.utils.checkpoint still materialises whole layers). The 30 auxiliary outputs at the
    paper's crop are over 0.5 GB per step: allocating and streaming them and their softmax and
    gradient temporaries through memory cost more than all the decoders' arithmetic. Per chunk,
    ``torch.autograd.grad`` gives each term's gradient with respect to the chunk's stem output and
    the stage parameters; they are kept (stem-sized, small) and scaled in :meth:`backward` by the
    incoming gradient over the term's total count.
    """

    @staticmethod
    def forward(ctx, stem, upsample, terms, rows, n_stages, *params):
        # stem (B, G, K, h, w); params = stage weights then stage biases
        b, g, k, h, w = stem.shape
        wanted = [i for i, need in enumerate((ctx.needs_input_grad[0], *ctx.needs_input_grad[5:])) if need]
        sums = counts = None
        grads: list[list[torch.Tensor | None]] = []
        for r0 in range(0, h, rows):
            span = slice(r0, min(r0 + rows, h))
            with torch.enable_grad():
                piece = stem[:, :, :, span].detach().requires_grad_(ctx.needs_input_grad[0])
                leaves = [p.detach().requires_grad_(ctx.needs_input_grad[5 + i]) for i, p in enumerate(params)]
                out = upsample(piece.reshape(b, g, k, 1, -1), leaves[:n_stages], leaves[n_stages:])
                s, c = terms(out.view(b, g, k, -1, span.stop - span.start, w), span)
            if sums is None:
                sums, counts = s.detach().clone(), c.detach().clone().to(s.dtype)
                grads = [[None] * (1 + len(params)) for _ in range(s.numel())]
                picks = torch.eye(s.numel(), dtype=s.dtype, device=s.device)  # one term at a time, no host copy
            else:
                sums += s.detach()
                counts += c.detach()
            inputs = [(piece, *leaves)[i] for i in wanted]
            for t in range(s.numel() if inputs and s.requires_grad else 0):
                got = torch.autograd.grad(s, inputs, picks[t], retain_graph=t + 1 < s.numel(), allow_unused=True)
                for i, grad in zip(wanted, got, strict=True):
                    if grad is None:
                        continue
                    if i == 0:  # the stem's chunk: place it in a stem-sized buffer
                        if grads[t][0] is None:
                            grads[t][0] = torch.zeros_like(stem)
                        grads[t][0][:, :, :, span] = grad.view(b, g, k, -1, w)
                    else:
                        grads[t][i] = grad if grads[t][i] is None else grads[t][i] + grad
        ctx.grads, ctx.counts = grads, counts.clamp_min(1)
        return sums / ctx.counts

    @staticmethod
    def backward(ctx, grad_out):
        scale = grad_out / ctx.counts
        total: list[torch.Tensor | None] = [None] * len(ctx.grads[0])
        for t, per_term in enumerate(ctx.grads):
            for i, grad in enumerate(per_term):
                if grad is not None:
                    total[i] = grad * scale[t] if total[i] is None else total[i] + grad * scale[t]
        ctx.grads = None
        return (total[0], None, None, None, None, *total[1:])


class DecoderBank(nn.Module):
    """``count`` independent upsampling decoders evaluated together.

    ``upsampling="pixelshuffle"`` is the paper's decoder. ``"bilinear"`` is a 1x1 conv with bias
    followed by bilinear upsampling: the embedded CPU benchmark uses it because the paper's decoder,
    whose ReLUs act on class-score channels, does not train from scratch there (classes die at a
    zero logit; measured in docs/method.md), while with a pretrained encoder it does.

    Input (B, count * C_z, h, w): the decoders' inputs stacked along channels (decoder k reads
    channels [k*C_z, (k+1)*C_z)). Output (B, count, K, h*s, w*s) logits, s = ``upscale``.
    """

    def __init__(
        self, in_channels: int, num_classes: int, upscale: int, count: int, upsampling: str = "pixelshuffle"
    ) -> None:
        super().__init__()
        if upscale < 1 or upscale & (upscale - 1):
            raise ValueError(f"upscale must be a power of two, got {upscale}")
        if upsampling not in ("pixelshuffle", "bilinear"):
            raise ValueError(f"model.decoder: unknown upsampling {upsampling!r}")
        self.in_channels, self.num_classes, self.count = in_channels, num_classes, count
        self.upscale, self.upsampling = upscale, upsampling
        self.stages = int(math.log2(upscale)) if upsampling == "pixelshuffle" else 0
        k = num_classes
        self.classifier = nn.Parameter(torch.empty(count * k, in_channels, 1, 1))
        for i in range(count):
            nn.init.kaiming_normal_(self.classifier.data[i * k : (i + 1) * k], nonlinearity="relu")
        self.classifier_bias = nn.Parameter(torch.zeros(count * k)) if upsampling == "bilinear" else None
        self.up_weights = nn.ParameterList()
        self.up_biases = nn.ParameterList()
        for _ in range(self.stages):
            w = torch.empty(count * 4 * k, k, 1, 1)
            for i in range(count):
                icnr_(w[i * 4 * k : (i + 1) * 4 * k])
            bias = torch.empty(count * 4 * k).uniform_(-1 / math.sqrt(k), 1 / math.sqrt(k))
            self.up_weights.append(nn.Parameter(w))
            self.up_biases.append(nn.Parameter(bias))

    def _take(self, t: torch.Tensor, per: int, select: slice | None, dtype: torch.dtype) -> torch.Tensor:
        """The rows of a stacked parameter that belong to the decoders in ``select`` (all if None)."""
        t = t if select is None else t[select.start * per : select.stop * per]
        return t.to(dtype)

    def linear(
        self, x: torch.Tensor, select: slice | None = None, *, shared: bool = False,
        channel_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The 1x1 classifiers of the decoders ``select`` (all if None), without their bias ->
        (B, G, K, h, w).

        ``x`` is (B, G*C_z, h, w), decoder g reading channels [g*C_z, (g+1)*C_z); or with ``shared``
        one (B, C_z, h, w) that every decoder reads (one matmul, no copies). ``channel_scale``
        (B, G, C_z), with ``shared``: decoder g reads x's channels scaled per sample, folded into
        its weights (W (x * s) = (W * s) x), as channel dropout needs. A per-pixel mask m of the
        input commutes too: W (x * m) = (W x) * m, which callers apply to the result; the bias,
        added by :meth:`from_linear` and :meth:`objective_from_linear`, comes after it.
        """
        k, c = self.num_classes, self.in_channels
        weight = self._take(self.classifier, k, select, x.dtype)  # (G*K, C, 1, 1)
        groups = weight.shape[0] // k
        b, _, h, w = x.shape
        if not shared:
            return _grouped_1x1(x, weight, None, groups).unflatten(1, (groups, k))
        if channel_scale is None:
            return _grouped_1x1(x, weight, None, 1).unflatten(1, (groups, k))
        scaled = weight.view(1, groups, k, c) * channel_scale.unsqueeze(2)  # (B, G, K, C)
        return torch.matmul(scaled.view(b, groups * k, c), x.reshape(b, c, h * w)).view(b, groups, k, h, w)

    def from_linear(self, y: torch.Tensor, select: slice | None = None, native: bool = False) -> torch.Tensor:
        """The rest of the decoders ``select`` after :meth:`linear`: bias, upsampling ->
        (B, G, K, H, W), or with ``native`` the layout of :meth:`to_native`."""
        b, groups, k, h, w = y.shape
        if self.classifier_bias is not None:
            y = y + self._take(self.classifier_bias, k, select, y.dtype).view(1, groups, k, 1, 1)
        if self.upsampling == "bilinear":
            return bilinear_upsample(y, self.upscale)
        u = self._upsample(y.reshape(b, groups, k, 1, h * w), *self._stage_params(select, y.dtype))
        u = u.view(b, groups, k, -1, h, w)
        if self.stages == 0:  # upscale 1: native and image layouts coincide
            return u[:, :, :, 0]
        return u if native else self.to_image(u)

    def _upsample(self, u: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> torch.Tensor:
        """The sub-pixel stages in the native layout: (B, G, K, 1, P) -> (B, G, K, 4^n, P), for any
        number P of low-resolution pixels (each stage acts on every pixel alone). ``weights[j]`` is
        stage j's (G*4K, K, 1, 1) kernel, ``biases[j]`` its (G*4K,) bias, already selected and cast.

        A 1x1 conv commutes with PixelShuffle, so no data moves between stages: stage j's output
        channel c*4 + a (a = the sub-pixel PixelShuffle would send it to) is viewed as (c, a), and a
        becomes the slowest part of the sub-pixel axis S. :meth:`to_image` then gives
        PixelShuffle's exact arrangement; per-pixel losses skip it.
        """
        for weight, bias in zip(weights, biases, strict=True):
            u = _stage(u, weight, bias)
        return u

    def _stage_params(self, select: slice | None, dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        k = self.num_classes
        weights = [self._take(w, 4 * k, select, dtype) for w in self.up_weights]
        return weights, [self._take(b, 4 * k, select, dtype) for b in self.up_biases]

    def _run(self, x: torch.Tensor, groups: int, select: slice | None = None, native: bool = False) -> torch.Tensor:
        """(B, G*C_z, h, w) -> (B, G, K, H, W), or with ``native`` the layout of :meth:`to_native`."""
        return self.from_linear(self.linear(x, select), select, native)

    def objective(self, x: torch.Tensor, terms: Objective, chunk_elements: int | None = None) -> torch.Tensor:
        """Every decoder on x (B, count*C_z, h, w), reduced by ``terms`` to loss values (T,), without
        keeping the decoders' full-resolution outputs.

        ``terms(out, rows)`` gets native-layout logits ``out`` (B, count, K, 4^n, r, w) of the base-grid
        rows ``rows`` (a slice of h) and returns ``(sums, counts)``, each (T,), that add over disjoint
        row ranges; the result is ``sums / counts`` over all rows. With pixel-shuffle decoders every
        output pixel depends on one base pixel, so the rows are run in chunks of at most
        ``chunk_elements`` output values (default: :data:`CHUNK_ELEMENTS`), each forward and backward
        at once (:class:`_ChunkedObjective`). Bilinear
        decoders mix neighbouring rows: they run whole, with ``rows`` = all rows, in image layout.
        Values and gradients equal those of ``terms(self(x, native=True), slice(None))``.
        """
        return self.objective_from_linear(self.linear(x), terms, chunk_elements)

    def objective_from_linear(
        self, y: torch.Tensor, terms: Objective, chunk_elements: int | None = None
    ) -> torch.Tensor:
        """:meth:`objective` from the classifiers' outputs ``y`` (B, count, K, h, w) of :meth:`linear`
        (for callers that fold perturbations into the classifiers)."""
        if self.upsampling == "bilinear" or self.stages == 0:
            sums, counts = terms(self.from_linear(y, native=True), slice(None))
            return sums / counts.clamp_min(1)
        stem = y  # the pixel-shuffle decoders' classifiers have no bias
        rows = self._chunk_rows(stem, chunk_elements)
        weights, biases = self._stage_params(None, stem.dtype)
        return _ChunkedObjective.apply(stem, self._upsample, terms, rows, len(weights), *weights, *biases)

    def _chunk_rows(self, stem: torch.Tensor, chunk_elements: int | None) -> int:
        """Base rows per chunk of the stages run on ``stem`` (B, G, K, h, w): as many as keep a
        chunk's output within ``chunk_elements`` values (default :data:`CHUNK_ELEMENTS`), at least one."""
        b, groups, k, h, w = stem.shape
        if chunk_elements is None:
            chunk_elements = CHUNK_ELEMENTS["cuda" if stem.is_cuda else "cpu"]
        return max(1, min(h, chunk_elements // (b * groups * k * 4**self.stages * w)))

    def fisher_product(
        self, x: torch.Tensor, d: torch.Tensor, select: slice, chunk_elements: int | None = None
    ) -> torch.Tensor:
        """J^T F J d for the decoders ``select`` at inputs x, direction d, both (B, G*C_z, h, w) as in
        :meth:`decode_group` -> (B, G*C_z, h, w): J the decoders' Jacobian, F the softmax's Fisher
        per output pixel (``diag(p) - p p^T`` over the classes). I-VAT's probe at small xi
        (:func:`cct.model.perturbations.vat`).

        Pixel-shuffle decoders are piecewise linear in their stem, so J d runs forward with the
        values (the stem of d, each stage's weights without bias, masked by where the value's ReLU is
        open) and J^T back through the same masks: over chunks of base rows as :meth:`objective`
        does, so no full-resolution tensor is allocated, and one forward pass instead of the three
        that ``torch.func.jvp`` + ``vjp`` take (written by hand for that reason; tested equal to
        them). Bilinear decoders are linear in their input: J d is their classifier (without bias)
        upsampled, and J^T the transposed interpolation and classifier, in closed form
        (:meth:`_bilinear_fisher_product`; ``torch.func`` would also import torch._dynamo, seconds
        of a short run's start).
        """
        if self.upsampling == "bilinear":
            return self._bilinear_fisher_product(x, d, select)
        groups = select.stop - select.start
        with torch.no_grad():
            stem, stem_d = self.linear(x, select), self.linear(d, select)  # (B, G, K, h, w)
            b, _, k, h, w = stem.shape
            weights, biases = self._stage_params(select, x.dtype)
            rows = self._chunk_rows(stem, chunk_elements)
            back = torch.empty_like(stem)
            for r0 in range(0, h, rows):
                span = slice(r0, min(r0 + rows, h))
                u = stem[:, :, :, span].reshape(b, groups, k, 1, -1)
                t = stem_d[:, :, :, span].reshape(b, groups, k, 1, -1)
                shut = []  # where each stage's ReLU is closed: its output 0 (its derivative 0, as autograd's at 0)
                for weight, bias in zip(weights, biases, strict=True):
                    u = _stage(u, weight, bias)
                    shut.append(u == 0)
                    t = _stage(t, weight, None).masked_fill_(shut[-1], 0)
                prob = torch.softmax(u, dim=2)
                v = t.sub_((prob * t).sum(dim=2, keepdim=True)).mul_(prob)  # F J d, per pixel
                for weight, closed in zip(reversed(weights), reversed(shut), strict=True):  # J^T: each stage transposed
                    g = v.masked_fill_(closed, 0).reshape(b, groups, 4 * k, -1)
                    v = torch.matmul(weight.view(groups, 4 * k, k).transpose(1, 2), g).view(
                        b, groups, k, v.shape[3] // 4, -1
                    )
                back[:, :, :, span] = v.view(b, groups, k, -1, w)
            # J^T through the classifiers: decoder g's (K, C) weights transposed, per group
            weight = self._take(self.classifier, k, select, x.dtype).view(groups, k, -1)
            return torch.matmul(weight.transpose(1, 2), back.reshape(b, groups, k, h * w)).view_as(x)

    def _bilinear_fisher_product(self, x: torch.Tensor, d: torch.Tensor, select: slice) -> torch.Tensor:
        """:meth:`fisher_product` of bilinear decoders: J d = up(W d) with up the bilinear upsampling
        (``rows @ . @ cols^T``, :func:`bilinear_upsample`), F J d per output pixel, then J^T v =
        W^T (rows^T v cols)."""
        groups = select.stop - select.start
        with torch.no_grad():
            logits = self.from_linear(self.linear(x, select), select)  # (B, G, K, H, W)
            jd = bilinear_upsample(self.linear(d, select), self.upscale)
            prob = torch.softmax(logits, dim=2)
            v = jd.sub_((prob * jd).sum(dim=2, keepdim=True)).mul_(prob)  # F J d, per pixel
            h, w = x.shape[-2:]
            rows = _interpolation_matrix(h, h * self.upscale, x.device, x.dtype)
            cols = _interpolation_matrix(w, w * self.upscale, x.device, x.dtype)
            back = rows.T @ v @ cols  # the upsampling's adjoint: (B, G, K, h, w)
            b, k = back.shape[0], self.num_classes
            weight = self._take(self.classifier, k, select, x.dtype).view(groups, k, -1)
            return torch.matmul(weight.transpose(1, 2), back.reshape(b, groups, k, h * w)).view_as(x)

    def to_image(self, u: torch.Tensor) -> torch.Tensor:
        """Native (..., K, 4^n, h, w) -> (..., K, h*2^n, w*2^n), as n PixelShuffle(2) stages place it."""
        n = self.stages
        if n == 0 or self.upsampling == "bilinear":
            return u
        lead = u.shape[:-3]
        h, w = u.shape[-2:]
        d = len(lead)
        v = u.reshape(*lead, *([2, 2] * n), h, w)  # sub-pixel axes i_n, j_n, ..., i_1, j_1 (newest first)
        i_axes = [d + 2 * (n - k) for k in range(1, n + 1)]  # i_1 .. i_n
        j_axes = [a + 1 for a in i_axes]
        order = [*range(d), d + 2 * n, *i_axes, d + 2 * n + 1, *j_axes]
        return v.permute(order).reshape(*lead, h << n, w << n)

    def to_native(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_image`: a full-resolution map (..., K, H, W) in the decoders' native
        layout, so that per-pixel losses can compare it with native outputs."""
        n = self.stages
        if n == 0 or self.upsampling == "bilinear":
            return t
        lead = t.shape[:-2]
        h, w = t.shape[-2] >> n, t.shape[-1] >> n
        d = len(lead)
        v = t.reshape(*lead, h, *([2] * n), w, *([2] * n))  # h, i_1..i_n, w, j_1..j_n
        order = list(range(d))
        for k in range(n, 0, -1):
            order += [d + k, d + n + 1 + k]
        order += [d, d + n + 1]
        return v.permute(order).reshape(*lead, 4**n, h, w)

    def forward(self, x: torch.Tensor, native: bool = False) -> torch.Tensor:
        """(B, count*C_z, h, w) -> (B, count, K, H, W) logits (native layout if asked)."""
        return self._run(x, self.count, native=native)

    def decode_group(self, x: torch.Tensor, select: slice, native: bool = False) -> torch.Tensor:
        """The decoders ``select`` (a slice of indices) on their inputs stacked along channels,
        (B, G*C_z, h, w) -> (B, G, K, ...) (native layout if asked)."""
        return self._run(x, select.stop - select.start, select, native)

    def decode_one(self, x: torch.Tensor, index: int, native: bool = False) -> torch.Tensor:
        """Decoder ``index`` alone on (B, C_z, h, w) -> (B, K, ...), in x's dtype (a float64 check of the VAT probe)."""
        return self.decode_group(x, slice(index, index + 1), native)[:, 0]
