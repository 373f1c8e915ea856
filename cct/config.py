"""One typed config object per run, validated at the door.

A run's config is a tree of dataclasses. YAML files and ``--set a.b=value`` overrides are merged into
the defaults; an unknown key or a value of the wrong type raises :class:`ConfigError` naming the key.
Defaults are those of the embedded CPU benchmark; ``config/paper/*.yaml`` hold the paper's protocol.
"""

from __future__ import annotations

import dataclasses
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
    feature_noise_range: float = 0.3


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
    pairwise_w: float = 0.0  # optional pair-wise loss between aux predictions (supplementary); 0 = off


@dataclass
class OptimConfig:
    lr: float = 0.05  # the paper: 0.01 with a pretrained encoder
    momentum: float = 0.9
    weight_decay: float = 1e-4
    encoder_lr_factor: float = 1.0  # 0.1 for a pretrained encoder (the paper)
    poly_power: float = 0.9


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
        """Check value ranges and choices; raise ConfigError naming the key."""
        for i, extra in enumerate(self.extra_domains):
            _validate_data(extra, f"extra_domains[{i}].", self.model.output_stride)
        names = self.domain_names()
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise ConfigError(
                    f"extra_domains[{i - 1}].name: {name!r} is already the name of another domain; give each a "
                    f"distinct name"
                )
            if not name or "/" in name or "@" in name:
                raise ConfigError(
                    f"{'data' if i == 0 else f'extra_domains[{i - 1}]'}.name: {name!r} is not a valid domain name"
                )
        if self.extra_domains and self.weak.pseudo_labels is not None:
            raise ConfigError(
                "weak.pseudo_labels: weak labels are implemented for a single domain; remove extra_domains"
            )
        _validate_data(self.data, "data.", self.model.output_stride)
        _choice("model.encoder", self.model.encoder, ("small", "resnet50", "resnet101"))
        _choice("model.decoder", self.model.decoder, ("pixelshuffle", "bilinear"))
        _choice("model.output_stride", self.model.output_stride, (4, 8, 16))
        _choice("loss.supervised", self.loss.supervised, ("ce", "abce"))
        _choice("loss.consistency", self.loss.consistency, ("mse", "kl", "js"))
        _choice("train.mode", self.train.mode, ("supervised", "semi"))
        _choice("train.device", self.train.device, ("auto", "cpu", "cuda"))
        for key, value in [
            ("train.iterations", self.train.iterations),
            ("train.batch_size_labeled", self.train.batch_size_labeled),
            ("train.batch_size_unlabeled", self.train.batch_size_unlabeled),
            ("train.eval_interval", self.train.eval_interval),
            ("train.checkpoint_interval", self.train.checkpoint_interval),
            ("train.threads", self.train.threads),
        ]:
            if value < 1:
                raise ConfigError(f"{key}: must be >= 1, got {value}")
        for key, value in [
            ("train.batch_size_labeled", self.train.batch_size_labeled),
            ("train.batch_size_unlabeled", self.train.batch_size_unlabeled),
        ]:
            if value < 2:  # batch norm (PSP's 1x1 pooling branch) needs two samples per batch
                raise ConfigError(f"{key}: must be >= 2 (batch norm needs more than one sample), got {value}")
        for key, value in [
            ("optim.lr", self.optim.lr),
            ("loss.softmax_temp", self.loss.softmax_temp),
            ("model.perturbation.vat_eps", self.model.perturbation.vat_eps),
            ("model.perturbation.vat_xi", self.model.perturbation.vat_xi),
        ]:
            if not value > 0:
                raise ConfigError(f"{key}: must be > 0, got {value}")
        if not 0.0 <= self.loss.confidence_threshold < 1.0:
            raise ConfigError(f"loss.confidence_threshold: must be in [0, 1), got {self.loss.confidence_threshold}")
        if not 0.0 < self.model.perturbation.cutout_erase <= 1.0:
            raise ConfigError(
                f"model.perturbation.cutout_erase: must be in (0, 1], got {self.model.perturbation.cutout_erase}"
            )
        for name in PERTURBATIONS:
            if getattr(self.model.aux, name) < 0:
                raise ConfigError(f"model.aux.{name}: must be >= 0, got {getattr(self.model.aux, name)}")
        if self.train.mode == "semi" and sum(getattr(self.model.aux, name) for name in PERTURBATIONS) == 0:
            raise ConfigError("model.aux: 'semi' mode needs at least one auxiliary decoder (all counts are 0)")
        if not 0.0 <= self.model.perturbation.dropout_p < 1.0:
            raise ConfigError(
                f"model.perturbation.dropout_p: must be in [0, 1), got {self.model.perturbation.dropout_p}"
            )
        lo, hi = self.model.perturbation.feature_drop_range
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"model.perturbation.feature_drop_range: need 0 < lo <= hi <= 1, got {[lo, hi]}")
        if self.weak.pseudo_labels is not None and self.train.mode != "semi":
            raise ConfigError(
                "weak.pseudo_labels: the weak loss trains the auxiliary decoders on unlabelled images; "
                f"it needs train.mode 'semi', got {self.train.mode!r}"
            )
        if self.weak.loss_w < 0:
            raise ConfigError(f"weak.loss_w: must be >= 0, got {self.weak.loss_w}")
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
        _choice("data.dataset", self.data.dataset, ("embedded", "voc", "cityscapes", "camvid", "sunrgbd"))
        _choice("model.encoder", self.model.encoder, ("small", "resnet50", "resnet101"))
        _choice("model.output_stride", self.model.output_stride, (4, 8, 16))
        _choice("train.device", self.train.device, ("auto", "cpu", "cuda"))
        for key in ("iterations", "batch_size", "crop_size", "threads"):
            if getattr(self.train, key) < 1:
                raise ConfigError(f"train.{key}: must be >= 1, got {getattr(self.train, key)}")
        if self.train.batch_size < 2:
            raise ConfigError(f"train.batch_size: must be >= 2 (batch norm), got {self.train.batch_size}")
        if not self.train.lr > 0:
            raise ConfigError(f"train.lr: must be > 0, got {self.train.lr}")
        lo, hi = self.train.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"train.scale_range: need 0 < lo <= hi, got {[lo, hi]}")
        if not self.infer.scales or any(s <= 0 for s in self.infer.scales):
            raise ConfigError(f"infer.scales: need one or more positive scales, got {self.infer.scales}")
        p = self.pseudo
        if not 0.0 <= p.bg_threshold < p.fg_threshold <= 1.0:
            raise ConfigError(
                f"pseudo: need 0 <= bg_threshold < fg_threshold <= 1, got bg {p.bg_threshold}, fg {p.fg_threshold}"
            )
        return self


def _validate_data(data: DataConfig, prefix: str, output_stride: int) -> None:
    """Checks of one domain's data section; ``prefix`` (``data.``, ``extra_domains[0].``) names it."""
    _choice(f"{prefix}dataset", data.dataset, ("embedded", "voc", "cityscapes", "camvid", "sunrgbd"))
    for key in ("n_labeled", "crop_size"):
        if getattr(data, key) < 1:
            raise ConfigError(f"{prefix}{key}: must be >= 1, got {getattr(data, key)}")
    lo, hi = data.scale_range
    if not 0 < lo <= hi:
        raise ConfigError(f"{prefix}scale_range: need 0 < lo <= hi, got {[lo, hi]}")
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
        raise ConfigError(f"{key}: {value!r} does not match {_type_name(annotation)}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):  # a list item: a mapping over the dataclass's defaults
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        item = annotation()
        _merge(item, value, f"{key}.")
        return item
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {annotation}")


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
                raise ConfigError(f"{path}: expected a mapping, got {value!r}")
            _merge(current, value, f"{path}.")
        else:
            setattr(obj, key, _coerce(path, value, hints[key]))


def parse_override(text: str) -> dict[str, Any]:
    """``'a.b=3'`` -> ``{'a': {'b': 3}}``; the value is parsed as YAML (so ``true``, ``0.1``, ``[1, 2]`` work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    tree: dict[str, Any] = {}
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def from_dict(tree: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = (), kind: type = RunConfig):
    """Build a validated config (``kind``: RunConfig or CamRunConfig) from a nested mapping plus
    ``key=value`` overrides."""
    config = kind()
    if tree:
        if not isinstance(tree, dict):
            raise ConfigError(f"config must be a mapping, got {type(tree).__name__}")
        _merge(config, tree, "")
    for text in overrides:
        _merge(config, parse_override(text), "")
    return config.validate()


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), kind: type = RunConfig):
    """Read a YAML config file (or only defaults when ``path`` is None) and apply overrides."""
    tree = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        try:
            return from_dict(tree, overrides, kind)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    return from_dict(tree, overrides, kind)


def save_config(config: RunConfig | CamRunConfig, path: str | Path) -> None:
    from cct.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
