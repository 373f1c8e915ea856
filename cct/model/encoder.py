"""Encoders: a torchvision ResNet dilated to output stride 8 with a PSP module (the paper), and a
small from-scratch encoder for CPU runs (the embedded default). Both map (B, 3, H, W) images to
``z`` of shape (B, out_channels, H/stride, W/stride)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cct.config import ConfigError
from cct.io import first_line, read_checkpoint


class PSPModule(nn.Module):
    """Pyramid pooling (Zhao et al., 2017): pool to each bin size, 1x1 conv to C/len(bins),
    upsample, concatenate with the input and fuse with a 3x3 conv (+BN, ReLU, Dropout2d 0.1)."""

    def __init__(self, in_channels: int, out_channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        branch = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, branch, 1, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels + branch * len(bins), out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) for s in self.stages]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


def _resnet_weights_file(name: str) -> tuple[Path, str]:
    """Where torchvision's hub cache keeps ``name``'s ImageNet weights, and their URL."""
    import torchvision  # here, not at the top: importing it takes seconds, and the small encoder needs none of it

    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name, weights.url


def load_pretrained(backbone: nn.Module, name: str, pretrained: bool | str) -> None:
    """Load ImageNet weights from a file or the torch hub cache; never download inside a job."""
    if pretrained is False:
        return
    if pretrained is True:
        path, url = _resnet_weights_file(name)
        how = (f"download it once with: python -c \"import torchvision; torchvision.models.{name}"
               f"(weights='IMAGENET1K_V1')\" (or fetch {url} to that path)")
    else:
        path, how = Path(pretrained), "give model.pretrained as the path of a torchvision ResNet state dict"
    if not path.is_file():
        raise ConfigError(f"model.pretrained: weights file not found: {path}; {how}")
    state = read_checkpoint(path, "model.pretrained", f"{name} state dict")
    state = {k: v for k, v in state.items() if not (isinstance(k, str) and k.startswith("fc."))}
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError) as exc:  # shapes that do not fit
        raise ConfigError(f"model.pretrained: {path} does not match {name} ({first_line(exc)})") from exc
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ConfigError(
            f"model.pretrained: {path} does not match {name} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def resnet_backbone(name: str, pretrained: bool | str, output_stride: int) -> nn.Sequential:
    """torchvision ResNet-50/101 without its pooling and fc: (B, 3, H, W) -> (B, 2048, H/os, W/os),
    layer3/4 dilated (output stride 8) or layer4 only (16)."""
    dilation = {8: [False, True, True], 16: [False, False, True]}.get(output_stride)
    if dilation is None:
        raise ConfigError(f"model.output_stride: {output_stride} is not supported by {name} (use 8 or 16)")
    import torchvision

    net = torchvision.models.get_model(name, weights=None, replace_stride_with_dilation=dilation)
    load_pretrained(net, name, pretrained)
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)


class ResNetEncoder(nn.Module):
    """torchvision ResNet-50/101, layer3/4 dilated (output stride 8) or layer4 only (16), + PSP -> 512 channels."""

    out_channels = 512

    def __init__(self, name: str = "resnet50", pretrained: bool | str = False, output_stride: int = 8) -> None:
        super().__init__()
        self.backbone = resnet_backbone(name, pretrained, output_stride)
        self.psp = PSPModule(2048, self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.psp(self.backbone(x))


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(channels, channels, dilation=dilation),
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class SmallEncoder(nn.Module):
    """A ResNet-like encoder for CPU runs: two stride-2 stages (output stride 4), a third stride-2
    stage for stride 8, then dilated residual blocks for context and a light PSP module.
    ``width`` w gives stages of w, 2w and 2w channels; z has 2w channels."""

    def __init__(self, width: int = 32, output_stride: int = 4, psp: bool = True) -> None:
        super().__init__()
        if output_stride not in (4, 8):
            raise ConfigError(
                f"model.output_stride: {output_stride} is not supported by the small encoder (use 4 or 8)"
            )
        c = 2 * width
        layers: list[nn.Module] = [
            _conv_bn(3, width, stride=2),
            _Residual(width),
            _conv_bn(width, c, stride=2),
            _Residual(c),
        ]
        if output_stride == 8:
            layers += [_conv_bn(c, c, stride=2)]
        layers += [_Residual(c, dilation=2), _Residual(c, dilation=4)]
        self.backbone = nn.Sequential(*layers)
        self.psp = PSPModule(c, c, bins=(1, 2, 4)) if psp else nn.Identity()
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.psp(self.backbone(x))


def load_encoder_checkpoint(encoder: nn.Module, path: str, parts: tuple[str, ...] | None = None) -> None:
    """Initialise ``encoder`` from a ``cct train`` checkpoint (its ``encoder.*`` weights, or only the
    submodules ``parts``, e.g. ``("backbone",)`` for a network without the PSP module): how the
    embedded benchmark stands in for ImageNet pretraining (an encoder trained by the workflow)."""
    if not Path(path).is_file():
        raise ConfigError(
            f"model.pretrained: checkpoint not found: {path}; for the small encoder give the checkpoint.pt of a "
            "`cct train` run with the same model.width and model.output_stride"
        )
    state = read_checkpoint(path, "model.pretrained", "cct train checkpoint")
    model = state.get("model", state)
    if not isinstance(model, dict):
        raise ConfigError(f"model.pretrained: {path} holds no weights (a {type(model).__name__})")
    weights = {k[len("encoder.") :]: v for k, v in model.items() if isinstance(k, str) and k.startswith("encoder.")}
    if parts is not None:
        weights = {k: v for k, v in weights.items() if k.split(".", 1)[0] in parts}
    try:
        encoder.load_state_dict(weights)
    except (RuntimeError, TypeError) as exc:
        why = first_line(exc).rstrip(".")
        raise ConfigError(
            f"model.pretrained: {path} does not fit this encoder ({why}; its run's model.width, "
            "model.output_stride and model.psp must be this run's)"
        ) from exc


def build_encoder(name: str, pretrained: bool | str, output_stride: int, width: int, psp: bool) -> nn.Module:
    if name == "small":
        if pretrained is True:
            raise ConfigError(
                "model.pretrained: the small encoder has no ImageNet weights; give a cct checkpoint path or false"
            )
        encoder = SmallEncoder(width, output_stride, psp)
        if pretrained:
            load_encoder_checkpoint(encoder, pretrained)
        return encoder
    if not psp:
        raise ConfigError(f"model.psp: the {name} encoder always uses the PSP module (the paper's)")
    return ResNetEncoder(name, pretrained, output_stride)
