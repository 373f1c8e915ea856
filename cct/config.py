"""One typed config object per run, validated at the door.

A run's config is a tree of dataclasses. YAML files and ``--set a.b=value`` overrides are merged into
the defaults; an unknown key or a value of the wrong type raises :class:`ConfigError` naming the key.
Defaults are those of the embedded CPU benchmark; ``config/paper/*.yaml`` hold the paper's protocol.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cct.model.perturbations import PERTURBATIONS, REGISTRY


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names it."""


@dataclass
class DataConfig:
    dataset: str = "embedded"  # embedded | voc | cityscapes | camvid | sunrgbd
    root: str | None = None  # dataset root; embedded: a folder written by `cct embedded` (None: generate in the run)
    domain: str = "a"  # embedded dataset: visual domain (a | b)
    n_labeled: int = 20  # labelled images, used when labeled_list is None
    split_seed: int = 0
    labeled_list: str | None = None  # file of labelled ids (one per line), e.g. from `cct splits`
    unlabeled_list: str | None = None
    crop_size: int = 48  # square training crop (px)
    base_size: int | None = None  # long side before random scaling; None = keep the native size
    scale_range: tuple[float, float] = (0.75, 1.5)  # random rescale factors of base_size
    pad_fill: str = "zero"  # padding of a crop larger than the image: zero (black) | mean (mean pixel, official)
    flip: bool = True
    num_workers: int = 0  # DataLoader worker processes (0 = in the main process)
    # classes that count as background/context for the guided perturbations; None = dataset default
    background_classes: list[int] | None = None
    # the domain's key: names its decoder set in the model and its scores in metrics.json;
    # None = "main" for `data`, the dataset's name for an extra domain (embedded: embedded_<domain>)
    name: str | None = None


# Number of auxiliary decoders per perturbation: a field per registry entry, the paper's count as
# its default (2 vat, 6 dropout, 6 cutout, 2 context_masking, 2 object_masking, 6 feature_drop,
# 6 feature_noise).
AuxConfig = dataclasses.make_dataclass(
    "AuxConfig", [(p.name, int, field(default=p.paper_count)) for p in REGISTRY.values()]
)
AuxConfig.__module__ = __name__
AuxConfig.__doc__ = "Number of auxiliary decoders per perturbation (paper: 2/6/6/2/2/6/6)."


@dataclass
class PerturbationConfig:
    """Paper defaults of the seven perturbations."""

    vat_xi: float = 1e-6
    vat_eps: float = 2.0
    vat_iterations: int = 1
    dropout_p: float = 0.5
    cutout_erase: float = 0.4  # side of the erased box as a fraction of the object's box side
    feature_drop_range: tuple[float, float] = (0.7, 0.9)
    # F-Drop's U(lo, hi) draw of the threshold fraction: one per sample, or one per batch (the official)
    feature_drop_draw: str = "sample"  # sample | batch
    feature_noise_range: float = 0.3
    # G-Cutout boxes only the predicted objects of at least this many pixels at z's resolution
    # (0: every object; the official code skips contours of 50 or fewer points, see docs/fidelity.md)
    cutout_min_size: int = 0


@dataclass
class ModelConfig:
    encoder: str = "small"  # small | resnet50 | resnet101
    pretrained: bool | str = False  # False | True (torch hub cache) | path to a .pth state dict
    output_stride: int = 4  # 8 for the paper's ResNets; 4 or 8 for `small`
    width: int = 32  # small encoder: channels of its first stage
    psp: bool = True
    decoder: str = "bilinear"  # pixelshuffle (the paper's) | bilinear (1x1 conv + bilinear; trains from scratch)
    aux: AuxConfig = field(default_factory=AuxConfig)
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)


@dataclass
class LossConfig:
    supervised: str = "ce"  # ce | abce
    abce_final_threshold: float = 0.9
    abce_rampup: float = 0.4  # fraction of training over which the ab-CE threshold anneals
    consistency: str = "mse"  # mse | kl | js
    unsupervised_w: float = 30.0
    rampup: float = 0.1  # fraction of iterations of the sigmoid ramp-up of unsupervised_w
    confidence_masking: bool = False
    confidence_threshold: float = 0.5
    softmax_temp: float = 1.0
    # optional pair-wise loss between aux predictions (supplementary; the official aux_constraint_w,
    # added unramped to the optimised loss); 0 = off
    pairwise_w: float = 0.0
    # decoders the pair-wise loss compares, drawn at random each step; 0 = all (the official: 8)
    pairwise_decoders: int = 0


@dataclass
class OptimConfig:
    lr: float = 0.05  # the paper: 0.01 with a pretrained encoder
    momentum: float = 0.9
    weight_decay: float = 1e-4
    encoder_lr_factor: float = 1.0  # 0.1 for a pretrained encoder (the paper)
    poly_power: float = 0.9
    # A joint run (extra_domains) sums its domains' losses, so the shared backbone's gradient is the
    # sum of theirs. "mean" divides the backbone's rate (the one encoder_lr_factor scales) by the
    # number of domains: it steps as far as in a single-domain run, and joint against alone compares
    # the data, not the step size. "sum" keeps the rate (the paper is silent; the official code has
    # no joint training). No effect on a single-domain run.
    joint_backbone: str = "sum"


@dataclass
class TrainConfig:
    mode: str = "semi"  # supervised | semi
    iterations: int = 1000
    seed: int = 0
    batch_size_labeled: int = 8
    batch_size_unlabeled: int = 8
    eval_interval: int = 250
    checkpoint_interval: int = 100
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 1  # torch intra-op threads
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    # torch.compile the encoder and the main decoder (the decoder bank and losses are already fused
    # by hand); pays off on GPUs over long runs: the first steps spend minutes compiling
    compile: bool = False
    progress: bool = True


@dataclass
class WeakConfig:
    """Image-level labels as pseudo pixel labels for the auxiliary decoders (paper Sec. 3.4)."""

    pseudo_labels: str | None = None  # folder of <id>.png written by `cct pseudo-labels`; None = off
    loss_w: float = 0.4  # weakly_loss_w (paper 0.4), ramped up with the unsupervised weight


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    weak: WeakConfig = field(default_factory=WeakConfig)
    # further domains trained jointly with `data` (paper Sec. 3.5): one shared encoder, a decoder
    # set per domain over its own classes, every domain's batches in every iteration
    extra_domains: list[DataConfig] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @property
    def domains(self) -> list[DataConfig]:
        """Every domain's data config, `data` first."""
        return [self.data, *self.extra_domains]

    def domain_names(self) -> list[str]:
        """The domains' keys (see ``DataConfig.name``), in the order of :attr:`domains`."""
        names = [self.data.name or "main"]
        for d in self.extra_domains:
            names.append(d.name or (f"embedded_{d.domain}" if d.dataset == "embedded" else d.dataset))
        return names

    def validate(self) -> "RunConfig":
        """Check value ranges and choices; raise ConfigError naming the key and what would be valid."""
        for i, extra in enumerate(self.extra_domains):
            _validate_data(extra, f"extra_domains[{i}].", self.model.output_stride)
        names = self.domain_names()
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise ConfigError(
                    f"extra_domains[{i - 1}].name: {name!r} is already the name of another domain; give each a "
                    f"distinct name"
                )
            if not name or "/" in name or "@" in name or "\0" in name:
                raise ConfigError(
                    f"{'data' if i == 0 else f'extra_domains[{i - 1}]'}.name: {name!r} is not a valid domain name"
                )
        if self.extra_domains and self.weak.pseudo_labels is not None:
            raise ConfigError(
                "weak.pseudo_labels: weak labels are implemented for a single domain; remove extra_domains"
            )
        _validate_data(self.data, "data.", self.model.output_stride)
        m, p, lc, oc, tc = self.model, self.model.perturbation, self.loss, self.optim, self.train
        _choice("model.encoder", m.encoder, ("small", "resnet50", "resnet101"))
        _choice("model.decoder", m.decoder, ("pixelshuffle", "bilinear"))
        _choice("model.output_stride", m.output_stride, (4, 8, 16))
        _pretrained("model.pretrained", m.pretrained)
        _in_range("model.width", m.width, 1, MAX_WIDTH, why=WIDTH_WHY)
        _choice("loss.supervised", lc.supervised, ("ce", "abce"))
        _choice("loss.consistency", lc.consistency, ("mse", "kl", "js"))
        _choice("train.mode", tc.mode, ("supervised", "semi"))
        _choice("train.device", tc.device, ("auto", "cpu", "cuda"))
        _in_range("train.iterations", tc.iterations, 1)
        _in_range("train.eval_interval", tc.eval_interval, 1)
        _in_range("train.checkpoint_interval", tc.checkpoint_interval, 1)
        _in_range("train.threads", tc.threads, 1, MAX_THREADS)
        _in_range("train.seed", tc.seed, 0, MAX_SEED)
        for key in ("batch_size_labeled", "batch_size_unlabeled"):
            # batch norm (PSP's 1x1 pooling branch) needs two samples per batch
            _in_range(f"train.{key}", getattr(tc, key), 2, MAX_BATCH, why_low="batch norm needs two samples")
        _positive("optim.lr", oc.lr)
        _in_range("optim.momentum", oc.momentum, 0.0, 1.0, hi_open=True)
        _in_range("optim.weight_decay", oc.weight_decay, 0.0)
        _in_range("optim.encoder_lr_factor", oc.encoder_lr_factor, 0.0)
        _in_range("optim.poly_power", oc.poly_power, 0.0)
        _choice("optim.joint_backbone", oc.joint_backbone, ("sum", "mean"))
        _in_range("loss.unsupervised_w", lc.unsupervised_w, 0.0)
        _in_range("loss.rampup", lc.rampup, 0.0, 1.0, why="a fraction of train.iterations")
        _in_range("loss.abce_final_threshold", lc.abce_final_threshold, 0.0, 1.0, lo_open=True)
        _in_range("loss.abce_rampup", lc.abce_rampup, 0.0, 1.0, why="a fraction of train.iterations")
        _in_range("loss.confidence_threshold", lc.confidence_threshold, 0.0, 1.0, hi_open=True)
        _positive("loss.softmax_temp", lc.softmax_temp)
        _in_range("loss.pairwise_w", lc.pairwise_w, 0.0)
        _in_range("loss.pairwise_decoders", lc.pairwise_decoders, 0)
        if lc.pairwise_decoders == 1:
            raise ConfigError("loss.pairwise_decoders: 1 decoder has no pair-wise variance; give 0 (all) or >= 2")
        _positive("model.perturbation.vat_eps", p.vat_eps)
        _positive("model.perturbation.vat_xi", p.vat_xi)
        _in_range("model.perturbation.vat_iterations", p.vat_iterations, 0, 10)
        _in_range("model.perturbation.dropout_p", p.dropout_p, 0.0, 1.0, hi_open=True)
        _in_range("model.perturbation.cutout_erase", p.cutout_erase, 0.0, 1.0, lo_open=True)
        _in_range("model.perturbation.cutout_min_size", p.cutout_min_size, 0)
        _in_range("model.perturbation.feature_noise_range", p.feature_noise_range, 0.0)
        _choice("model.perturbation.feature_drop_draw", p.feature_drop_draw, ("sample", "batch"))
        lo, hi = p.feature_drop_range
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"model.perturbation.feature_drop_range: need 0 < lo <= hi <= 1, got {[lo, hi]}")
        for name in PERTURBATIONS:
            _in_range(f"model.aux.{name}", getattr(m.aux, name), 0, MAX_AUX, why=AUX_WHY)
        if tc.mode == "semi" and sum(getattr(m.aux, name) for name in PERTURBATIONS) == 0:
            raise ConfigError("model.aux: 'semi' mode needs at least one auxiliary decoder (all counts are 0)")
        if self.weak.pseudo_labels is not None and tc.mode != "semi":
            raise ConfigError(
                "weak.pseudo_labels: the weak loss trains the auxiliary decoders on unlabelled images; "
                f"it needs train.mode 'semi', got {tc.mode!r}"
            )
        _path("weak.pseudo_labels", self.weak.pseudo_labels)
        _in_range("weak.loss_w", self.weak.loss_w, 0.0)
        return self


# --------------------------------------------------------------------------------------------------
# The CAM classifier that turns image-level labels into pseudo pixel labels (`cct cam ...`)


@dataclass
class CamModelConfig:
    encoder: str = "small"  # small | resnet50 | resnet101 (the paper: resnet50, ImageNet)
    pretrained: bool | str = False
    output_stride: int = 4  # the paper: 16 (strides 2, 2, 2, 1); small: 4 or 8
    width: int = 32  # small encoder only


@dataclass
class CamTrainConfig:
    iterations: int = 3000  # the paper: 5 epochs (3310 iterations on VOC)
    batch_size: int = 16
    # whole embedded scenes (64 px), shrunk at most: a crop could cut out a labelled object
    crop_size: int = 64  # the paper: 512
    scale_range: tuple[float, float] = (0.75, 1.0)  # random rescale of the long side (the paper: 320-640 px)
    lr: float = 0.1  # backbone (the paper's)
    classifier_lr_factor: float = 10.0  # the paper: classifier at 10x (1.0)
    momentum: float = 0.9  # the paper (IRN's PolyOptimizer): 0
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    seed: int = 0
    device: str = "auto"
    threads: int = 1


@dataclass
class CamInferConfig:
    scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])
    flip: bool = True


@dataclass
class PseudoConfig:
    fg_threshold: float = 0.30  # a class's normalised CAM above this: that class
    bg_threshold: float = 0.05  # every present class's CAM below this: background
    # (between the two: 255, ignored; the paper's dense CRF refinement is not applied, see cct/weak)


@dataclass
class CamRunConfig:
    """One CAM classifier: trained on the image-level labels of ``data``'s training split."""

    data: DataConfig = field(default_factory=DataConfig)
    model: CamModelConfig = field(default_factory=CamModelConfig)
    train: CamTrainConfig = field(default_factory=CamTrainConfig)
    infer: CamInferConfig = field(default_factory=CamInferConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def validate(self) -> "CamRunConfig":
        """Check value ranges and choices; raise ConfigError naming the key and what would be valid."""
        _validate_data(self.data, "data.", 1)
        m, tc = self.model, self.train
        _choice("model.encoder", m.encoder, ("small", "resnet50", "resnet101"))
        _choice("model.output_stride", m.output_stride, (4, 8, 16))
        _pretrained("model.pretrained", m.pretrained)
        _in_range("model.width", m.width, 1, MAX_WIDTH, why=WIDTH_WHY)
        _choice("train.device", tc.device, ("auto", "cpu", "cuda"))
        _in_range("train.iterations", tc.iterations, 1)
        _in_range("train.batch_size", tc.batch_size, 2, MAX_BATCH, why_low="batch norm needs two samples")
        _in_range("train.crop_size", tc.crop_size, 1, MAX_CROP, why=CROP_WHY)
        _in_range("train.threads", tc.threads, 1, MAX_THREADS)
        _in_range("train.seed", tc.seed, 0, MAX_SEED)
        _positive("train.lr", tc.lr)
        _in_range("train.classifier_lr_factor", tc.classifier_lr_factor, 0.0)
        _in_range("train.momentum", tc.momentum, 0.0, 1.0, hi_open=True)
        _in_range("train.weight_decay", tc.weight_decay, 0.0)
        _in_range("train.poly_power", tc.poly_power, 0.0)
        _scale_range("train.scale_range", tc.scale_range)
        if not self.infer.scales or any(not 0 < s <= MAX_SCALE for s in self.infer.scales):
            raise ConfigError(
                f"infer.scales: need one or more scales in (0, {MAX_SCALE}], got {self.infer.scales}"
            )
        p = self.pseudo
        if not 0.0 <= p.bg_threshold < p.fg_threshold <= 1.0:
            raise ConfigError(
                f"pseudo: need 0 <= bg_threshold < fg_threshold <= 1, got bg {p.bg_threshold}, fg {p.fg_threshold}"
            )
        return self


# Upper bounds of sizes and counts: beyond them a run cannot fit a machine (it would be killed for
# memory with no message) or the value is a typo. Each is far above what the paper or the embedded
# benchmark uses.
MAX_CROP = 2048  # the longest image side of any supported dataset (Cityscapes, 2048x1024); crop 4000 needs > 20 GB
CROP_WHY = "a crop larger than the largest image of any supported dataset (Cityscapes: 2048 px) is padding"
MAX_BASE = 8192
MAX_SCALE = 4.0  # the paper rescales by at most 2
MAX_WIDTH = 256  # the small encoder's z then has 512 channels, the paper's ResNet-50 + PSP output
WIDTH_WHY = "the small encoder's z has 2 x width channels; 256 gives the 512 of the paper's ResNet-50 + PSP"
MAX_AUX = 64  # per perturbation; the paper uses at most 6
AUX_WHY = "auxiliary decoders per perturbation; the paper uses at most 6 (memory grows with the count)"
MAX_BATCH = 1024
MAX_THREADS = 1024
MAX_WORKERS = 64
MAX_SEED = 2**63 - 1  # torch's and numpy's seeds: non-negative 64-bit


def _in_range(key: str, value: Any, lo: Any = None, hi: Any = None, *, lo_open: bool = False, hi_open: bool = False,
              why: str | None = None, why_low: str | None = None) -> None:
    """``value`` in [lo, hi] (open where said; None: unbounded); ConfigError naming the key and the range."""
    low_ok = lo is None or (value > lo if lo_open else value >= lo)
    high_ok = hi is None or (value < hi if hi_open else value <= hi)
    if low_ok and high_ok:
        return
    if hi is None:
        want = f"> {lo}" if lo_open else f">= {lo}"
    else:
        want = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    reason = why if not high_ok else why_low
    raise ConfigError(f"{key}: must be {want}, got {_show(value)}" + (f" ({reason})" if reason else ""))


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")


def _scale_range(key: str, value: tuple[float, float]) -> None:
    lo, hi = value
    if not 0 < lo <= hi <= MAX_SCALE:
        raise ConfigError(f"{key}: need 0 < lo <= hi <= {MAX_SCALE}, got {[lo, hi]}")


def _path(key: str, value: str | None) -> None:
    """A path key: None (unset) or a non-empty string without NUL bytes."""
    if value is not None and (not value.strip() or "\0" in value):
        raise ConfigError(f"{key}: {value!r} is not a path; give a path or null")


def _pretrained(key: str, value: bool | str) -> None:
    if isinstance(value, str):
        _path(key, value)


def _validate_data(data: DataConfig, prefix: str, output_stride: int) -> None:
    """Checks of one domain's data section; ``prefix`` (``data.``, ``extra_domains[0].``) names it."""
    _choice(f"{prefix}dataset", data.dataset, ("embedded", "voc", "cityscapes", "camvid", "sunrgbd"))
    if not data.domain or "\0" in data.domain:
        raise ConfigError(f"{prefix}domain: {data.domain!r} is not a domain name")
    for key in ("root", "labeled_list", "unlabeled_list"):
        _path(f"{prefix}{key}", getattr(data, key))
    _in_range(f"{prefix}n_labeled", data.n_labeled, 1)
    _in_range(f"{prefix}split_seed", data.split_seed, 0, MAX_SEED)
    _in_range(f"{prefix}crop_size", data.crop_size, 1, MAX_CROP, why=CROP_WHY)
    if data.base_size is not None:
        _in_range(f"{prefix}base_size", data.base_size, 1, MAX_BASE)
    _in_range(f"{prefix}num_workers", data.num_workers, 0, MAX_WORKERS)
    _scale_range(f"{prefix}scale_range", data.scale_range)
    _choice(f"{prefix}pad_fill", data.pad_fill, ("zero", "mean"))
    if data.background_classes is not None:
        bad = [c for c in data.background_classes if not 0 <= c < 255]
        if bad:
            raise ConfigError(f"{prefix}background_classes: {bad} are not class indices (0..254)")
    if data.crop_size % output_stride:
        raise ConfigError(
            f"{prefix}crop_size: {data.crop_size} is not a multiple of model.output_stride={output_stride}"
        )
    if (data.labeled_list is None) != (data.unlabeled_list is None):
        raise ConfigError(f"{prefix}labeled_list and {prefix}unlabeled_list: give both or neither")


def _choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` to ``annotation`` where lossless, else raise ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        # bool before int/float: YAML `true` must stay a bool in `bool | str`
        for option in sorted(args, key=lambda a: a is not bool):
            try:
                return _coerce(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {_show(value)} does not match {_type_name(annotation)}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {_show(value)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        if origin is tuple:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):  # a list item: a mapping over the dataclass's defaults
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_show(value)}")
        item = annotation()
        _merge(item, value, f"{key}.")
        return item
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {_show(value)}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float's range
                raise ConfigError(f"{key}: {_show(value)} is too large for a number") from None
            if not math.isfinite(number):
                raise ConfigError(f"{key}: must be a finite number, got {value}")
            return number
        if isinstance(value, str) and _looks_numeric(value):
            if not math.isfinite(float(value)):  # 'nan', 'inf': text YAML does not read as numbers
                raise ConfigError(f"{key}: must be a finite number, got {_show(value)}")
            raise ConfigError(
                f"{key}: expected a number, got the text {_show(value)} (YAML reads a number like 1e-3 as text: "
                "write it with a dot, 1.0e-3, or as 0.001)"
            )
        raise ConfigError(f"{key}: expected a number, got {_show(value)}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {_show(value)}")
    raise ConfigError(f"{key}: unsupported type {annotation}")


def _show(value: Any, limit: int = 80) -> str:
    """repr of a value for a one-line message, shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "")


def _merge(obj: Any, updates: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {path!r} (valid here: {sorted(names)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a mapping, got {_show(value)}")
            _merge(current, value, f"{path}.")
        else:
            setattr(obj, key, _coerce(path, value, hints[key]))


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: construct_mapping names it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text -> Python objects (safe: no code, no custom tags); ConfigError naming ``where``."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise ConfigError(f"{where}: not valid YAML ({message})") from exc
    except RecursionError:
        raise ConfigError(f"{where}: not valid YAML (nested too deeply)") from None


def parse_override(text: str) -> dict[str, Any]:
    """``'a.b=3'`` -> ``{'a': {'b': 3}}``; the value is parsed as YAML (so ``true``, ``0.1``, ``[1, 2]`` work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    value = parse_yaml(raw, f"override {text!r}: the value") if raw.strip() else None
    tree: dict[str, Any] = {}
    node = tree
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: {key.strip()!r} is not a config key (e.g. train.iterations)")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {text!r}: {key.strip()!r} is not a config key")
    node[parts[-1]] = value
    return tree


def from_dict(tree: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = (), kind: type = RunConfig):
    """Build a validated config (``kind``: RunConfig or CamRunConfig) from a nested mapping plus
    ``key=value`` overrides."""
    config = kind()
    if tree is not None:
        if not isinstance(tree, dict):
            raise ConfigError(f"config must be a mapping of keys, got {type(tree).__name__}")
        _merge(config, tree, "")
    for text in overrides:
        _merge(config, parse_override(text), "")
    return config.validate()


MAX_CONFIG_BYTES = 1 << 20  # a run config is a few kB


def read_text_file(path: str | Path, what: str, max_bytes: int | None = None, kind: str = "file") -> str:
    """The UTF-8 text of a file the user gave (a config, a list of ids); ConfigError naming ``what``
    and the file when it is missing, a folder, not a regular file, larger than ``max_bytes``,
    unreadable or not UTF-8 text."""
    path = Path(path)
    if not path.exists():
        missing = f"config file not found: {path}" if what == "config file" else f"{what}: file not found: {path}"
        raise ConfigError(missing)
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a folder; give a {kind}")
    if not path.is_file():
        raise ConfigError(f"{what}: {path} is not a regular file; give a {kind}")
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise ConfigError(f"{what}: {path} has {size} bytes, too many for a {kind}")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: {path} cannot be read ({exc.strerror or exc})") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what}: {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None


def read_config_file(path: str | Path) -> Any:
    """The parsed YAML of a config file; ConfigError naming the file when it is missing, not a regular
    file, unreadable, not UTF-8, not YAML, or holds no keys (an empty file would silently mean the
    defaults)."""
    text = read_text_file(path, "config file", MAX_CONFIG_BYTES, "YAML config file (a few kB)")
    tree = parse_yaml(text, str(path))
    if tree is None:
        raise ConfigError(
            f"{path}: the file holds no keys (empty or only comments); give the keys to change, or leave --config "
            "out to use the defaults"
        )
    return tree


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), kind: type = RunConfig):
    """Read a YAML config file (or only defaults when ``path`` is None) and apply overrides."""
    if path is None:
        return from_dict(None, overrides, kind)
    tree = read_config_file(path)
    try:
        return from_dict(tree, overrides, kind)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def save_config(config: RunConfig | CamRunConfig, path: str | Path) -> None:
    from cct.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
