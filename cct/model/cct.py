"""The CCT model: a shared encoder, and per domain a main decoder plus auxiliary decoders, each fed
a perturbed version of the encoder output (paper Sec. 3). A single-domain model is one domain."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cct.config import AuxConfig, ModelConfig, PerturbationConfig
from cct.model.decoders import DecoderBank, Objective
from cct.model.encoder import build_encoder
from cct.model.perturbations import PERTURBATIONS, REGISTRY, Perturbation
from cct.model.perturbations.functions import Context


class DecoderSet(nn.Module):
    """One domain's decoders: the main decoder and ``sum(aux counts)`` auxiliary decoders, ordered
    by perturbation in the registry's order (:mod:`cct.model.perturbations`)."""

    def __init__(self, in_channels: int, num_classes: int, upscale: int, aux: AuxConfig, upsampling: str) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.main = DecoderBank(in_channels, num_classes, upscale, 1, upsampling)
        self.kinds: list[str] = [name for name in PERTURBATIONS for _ in range(getattr(aux, name))]
        self.aux = DecoderBank(in_channels, num_classes, upscale, len(self.kinds), upsampling) if self.kinds else None


class DomainBatchNorm(nn.Module):
    """Batch norm with shared affine parameters and running statistics kept per domain.

    In a multi-domain model every forward pass carries one domain's batch, so training normalises
    each domain by its own batch statistics; one set of running averages would blend the domains and
    evaluation would normalise every domain with statistics of neither (measured on the embedded
    domains: about 4.5 mIoU lost per domain). ``domain`` (set by :meth:`CCT.use_domain`) selects the
    statistics a forward pass updates (training) or uses (evaluation). Input (N, C, ...)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, domains: list[str]) -> None:
        super().__init__()
        self.eps, self.momentum, self.num_features = bn.eps, bn.momentum, bn.num_features
        self.weight, self.bias = bn.weight, bn.bias
        self.domains = list(domains)
        for d in self.domains:  # each starts from the wrapped layer's statistics (pretrained ones)
            self.register_buffer(f"running_mean_{d}", bn.running_mean.detach().clone())
            self.register_buffer(f"running_var_{d}", bn.running_var.detach().clone())
            self.register_buffer(f"num_batches_tracked_{d}", bn.num_batches_tracked.detach().clone())
        self.domain = self.domains[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = getattr(self, f"running_mean_{self.domain}"), getattr(self, f"running_var_{self.domain}")
        momentum = self.momentum
        if self.training:
            tracked = getattr(self, f"num_batches_tracked_{self.domain}")
            tracked.add_(1)
            if momentum is None:  # cumulative average, as nn.BatchNorm2d
                momentum = 1.0 / float(tracked)
        return F.batch_norm(x, mean, var, self.weight, self.bias, self.training, momentum or 0.0, self.eps)


def _domain_batchnorm(module: nn.Module, domains: list[str]) -> None:
    """Replace every batch-norm layer below ``module`` by a DomainBatchNorm, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, DomainBatchNorm(child, domains))
        else:
            _domain_batchnorm(child, domains)


class CCT(nn.Module):
    """Encoder + decoder sets keyed by domain.

    ``forward(x)`` -> main logits (B, K, H, W) at the input resolution (H, W multiples of the stride).
    """

    def __init__(
        self,
        config: ModelConfig,
        num_classes: dict[str, int],
        background_classes: dict[str, list[int]],
    ) -> None:
        super().__init__()
        self.encoder = build_encoder(config.encoder, config.pretrained, config.output_stride, config.width, config.psp)
        self.stride = config.output_stride
        self.perturbation: PerturbationConfig = config.perturbation
        self.heads = nn.ModuleDict(
            {
                d: DecoderSet(self.encoder.out_channels, k, self.stride, config.aux, config.decoder)
                for d, k in num_classes.items()
            }
        )
        for d, classes in background_classes.items():
            self.register_buffer(f"background_{d}", torch.tensor(classes, dtype=torch.long), persistent=False)
        self.default_domain = next(iter(num_classes))
        if len(num_classes) > 1:  # the shared encoder keeps batch-norm statistics per domain
            _domain_batchnorm(self.encoder, list(num_classes))

    def _head(self, domain: str | None) -> DecoderSet:
        return self.heads[domain or self.default_domain]

    def use_domain(self, domain: str | None) -> None:
        """Select the encoder's batch-norm statistics of ``domain`` (a multi-domain model; a no-op
        for one domain). ``forward`` calls it; code that calls ``encoder`` directly calls it first."""
        name = domain or self.default_domain
        if name not in self.heads:
            raise KeyError(f"unknown domain {name!r} (this model's: {list(self.heads)})")
        if len(self.heads) > 1:
            for m in self.encoder.modules():
                if isinstance(m, DomainBatchNorm):
                    m.domain = name

    def decode(self, z: torch.Tensor, domain: str | None = None) -> torch.Tensor:
        """Main decoder on z (B, C, h, w) -> logits (B, K, h*s, w*s)."""
        return self._head(domain).main(z)[:, 0]

    def forward(self, x: torch.Tensor, domain: str | None = None) -> torch.Tensor:
        self.use_domain(domain)
        return self.decode(self.encoder(x), domain)

    def objects_map(self, main_logits: torch.Tensor, size: tuple[int, int], domain: str | None = None) -> torch.Tensor:
        """Bool (B, h, w): the main prediction's argmax, nearest-resized to z's size, outside background."""
        # nearest resizing picks pixels, which commutes with the per-pixel argmax: picking first
        # takes the argmax of z's pixels only, not of every full-resolution pixel
        pred = F.interpolate(main_logits, size=size, mode="nearest").argmax(1)
        background = getattr(self, f"background_{domain or self.default_domain}")
        return ~torch.isin(pred, background)

    def to_native(self, logits: torch.Tensor, domain: str | None = None) -> torch.Tensor:
        """A full-resolution map (B, K, H, W) in the decoders' native layout (see DecoderBank)."""
        return self._head(domain).main.to_native(logits)

    def _perturbation_runs(self, head: DecoderSet) -> list[tuple[Perturbation, slice]]:
        """The auxiliary decoders as runs of one perturbation: [(its registry entry, slice of
        decoder indices)], in the registry's order."""
        runs, start = [], 0
        for kind in PERTURBATIONS:
            n = head.kinds.count(kind)
            if n:
                runs.append((REGISTRY[kind], slice(start, start + n)))
                start += n
        return runs

    def _perturb(self, z: torch.Tensor, main_logits: torch.Tensor, domain: str | None):
        """Per run of decoders of one perturbation, in the decoders' order, ``(decoders, applies, t)``:
        the slice of their indices and what the perturbation does to z, in the form its registry
        entry's ``applies`` names (``"input"``: t (B, G*C, h, w) the perturbed features of its G
        decoders; ``"channels"``: t (B, G, C) a per-sample channel scale; ``"pixels"``: t (B, G, 1,
        h, w) a per-pixel mask). Random draws happen here, in this order, so every consumer of the
        list sees the same perturbations."""
        head = self._head(domain)
        if head.aux is None:
            raise ValueError("this model has no auxiliary decoders (all model.aux counts are 0)")
        runs = self._perturbation_runs(head)
        objects = None
        if any(spec.guided for spec, _ in runs):
            objects = self.objects_map(main_logits.detach(), z.shape[-2:], domain)
        bank = head.aux
        context = Context(
            z, self.perturbation, objects,
            decode_group=lambda v, decoders: bank.decode_group(v, decoders, native=True),  # KL per pixel: any layout
            fisher_product=bank.fisher_product,
        )
        return [(decoders, spec.applies, spec.build(context, decoders)) for spec, decoders in runs]

    def auxiliary_inputs(self, z: torch.Tensor, main_logits: torch.Tensor, domain: str | None = None) -> torch.Tensor:
        """Every auxiliary decoder's perturbation of z (B, C, h, w), stacked along channels in the
        decoders' order -> (B, N_aux * C, h, w).

        ``main_logits`` (B, K, H, W) is the main decoder's prediction on the same images; it guides
        G-Cutout, Con-Msk and Obj-Msk (detached: the guide carries no gradient).
        """
        parts = []
        for _, how, t in self._perturb(z, main_logits, domain):
            if how == "input":
                parts.append(t)
            elif how == "channels":
                parts.append((z.unsqueeze(1) * t[..., None, None]).flatten(1, 2))
            else:  # "pixels"
                parts.append((z.unsqueeze(1) * t).flatten(1, 2))
        return torch.cat(parts, dim=1)

    def auxiliary(
        self, z: torch.Tensor, main_logits: torch.Tensor, domain: str | None = None, native: bool = False
    ) -> torch.Tensor:
        """All auxiliary decoders on their perturbations of z -> logits (B, N_aux, K, H, W), or with
        ``native`` in the decoders' native layout (compare with ``to_native(main_logits)``: same
        pixels in another order, without the final rearrangement of 30 full-resolution maps).
        ``main_logits`` as in :meth:`auxiliary_inputs`."""
        return self._head(domain).aux(self.auxiliary_inputs(z, main_logits, domain), native=native)

    def auxiliary_objective(
        self, z: torch.Tensor, main_logits: torch.Tensor, terms: Objective, domain: str | None = None
    ) -> torch.Tensor:
        """Loss terms (T,) of the auxiliary decoders on their perturbations of z, reduced by
        ``terms`` over native-layout outputs without materialising them: the same values and
        gradients as ``terms(auxiliary(z, main_logits, native=True), slice(None))`` taken as sums /
        counts (see :meth:`DecoderBank.objective`), at a fraction of the memory traffic.

        The perturbed features are never built either, except for I-VAT and F-Noise, which change
        every value of z: a mask commutes with the decoders' 1x1 classifiers (W (z * m) = (W z) * m,
        m per pixel) and channel dropout folds into their weights, so those decoders read z itself
        (:meth:`DecoderBank.linear`), and the 30 copies of z and their gradients (0.2 GB each at the
        paper's crop) are never allocated.
        """
        bank = self._head(domain).aux
        parts = []
        for heads, how, t in self._perturb(z, main_logits, domain):
            if how == "input":
                parts.append(bank.linear(t, heads))
            elif how == "channels":
                parts.append(bank.linear(z, heads, shared=True, channel_scale=t))
            else:  # "pixels"
                parts.append(bank.linear(z, heads, shared=True) * t)
        return bank.objective_from_linear(torch.cat(parts, dim=1), terms)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, the rest): the paper trains a pretrained backbone at a 10x lower rate;
        the PSP module and the decoders are new and take the full rate."""
        backbone = list(self.encoder.backbone.parameters())
        ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if id(p) not in ids]


def build_model(
    config: ModelConfig,
    num_classes: dict[str, int],
    background_classes: dict[str, list[int]],
    seed: int | None = None,
) -> CCT:
    """The CCT model of ``config`` with a decoder set per domain (``num_classes``: domain -> K,
    ``background_classes``: domain -> its background/context classes), its weights initialised from
    torch's generator seeded with ``seed`` (None: as it is). The one place a CCT model is built:
    the trainer, checkpoint loading and the benchmark call it."""
    if seed is not None:
        torch.manual_seed(seed)
    return CCT(config, num_classes, background_classes)
