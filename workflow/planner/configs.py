"""The workflow config, read: what a setting selects (datasets, training seeds, label counts) and the
layers of a run's cct config before its grid point (``cct``, ``datasets.<d>.cct``,
``settings.<s>.cct``, the method's keys). Shared by :mod:`planner.grid` and the special settings'
modules (:mod:`planner.multi_domain`, :mod:`planner.weak_labels`).

Pure functions of the schema-validated workflow config (a nested mapping, see config/README.md).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from cct import methods
from cct.model.perturbations import REGISTRY
from planner.layout import Layout
from planner.vocabulary import METHOD_ORDER, SETTINGS, setting_of

# The paper's auxiliary decoder counts (2 vat, 6 dropout, 6 cutout, 2 context_masking, 2 object_masking,
# 6 feature_drop, 6 feature_noise): cct's defaults, changed by model.aux in the cct mappings.
PAPER_AUX = {name: p.paper_count for name, p in REGISTRY.items()}

# cct keys the workflow sets for every run from the grid point; refused in the config's cct mappings.
GRID_KEYS = (
    "data.labeled_list",
    "data.unlabeled_list",
    "data.n_labeled",
    "data.split_seed",
    "train.seed",
    "train.mode",
    "train.threads",
    "weak.pseudo_labels",
    "data.name",
    "extra_domains",
)
# data.* keys that change how images are fed to training but not which images exist; they are left
# out of a dataset's split config so that changing them does not redraw (and rerun) every split.
TRAINING_ONLY_DATA_KEYS = (
    "labeled_list",
    "unlabeled_list",
    "n_labeled",
    "split_seed",
    "crop_size",
    "base_size",
    "scale_range",
    "flip",
    "pad_fill",
    "num_workers",
    "background_classes",
)


class GridError(ValueError):
    """The workflow config asks for something the grid cannot run; the message names the key."""


def deep_merge(*mappings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge nested mappings left to right (a later value wins; mappings merge key by key)."""
    out: dict[str, Any] = {}
    for mapping in mappings:
        for key, value in (mapping or {}).items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = deep_merge(out[key], value)
            elif isinstance(value, Mapping):
                out[key] = deep_merge(value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def get_key(tree: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """(found, value) of a dotted key (``train.seed``) in a nested mapping."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


# --------------------------------------------------------------------------------------------------
# What a setting selects


def enabled_settings(config: Mapping[str, Any]) -> list[str]:
    return [s for s in SETTINGS if config["settings"][s]["enabled"]]


def datasets_for(config: Mapping[str, Any], setting: str) -> list[str]:
    chosen = config["settings"][setting].get("datasets") or list(config["datasets"])
    for name in chosen:
        if name not in config["datasets"]:
            raise GridError(
                f"settings.{setting}.datasets: {name!r} is not a key of datasets ({sorted(config['datasets'])})"
            )
    return list(chosen)


def seeds_for(config: Mapping[str, Any], setting: str) -> list[int]:
    return list(config["settings"][setting].get("seeds") or config["seeds"])


def label_counts_for(config: Mapping[str, Any], setting: str, dataset: str) -> list[int]:
    """A setting's label counts on a dataset, by its rule (:attr:`planner.vocabulary.Setting.labels`)."""
    spec = config["settings"][setting]
    counts = config["datasets"][dataset]["label_counts"]
    rule = setting_of(setting).labels
    if rule == "one":
        count = spec.get("label_count")
        return [int(count) if count is not None else min(counts)]
    if rule == "smallest" and not spec.get("label_counts"):
        return [min(counts)]
    if rule == "pairings":
        raise ValueError(f"{setting}: its label counts are chosen per pairing (planner.multi_domain)")
    return sorted({int(n) for n in (spec.get("label_counts") or counts)})


# --------------------------------------------------------------------------------------------------
# The layers of a run's cct config


def dataset_cct(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """``cct`` merged with ``datasets.<dataset>.cct``, then what the workflow prepares for it
    (:mod:`planner.prepare`): a real dataset (not ``embedded``) whose ``data.root`` is unset takes the
    top-level ``data_root`` (``--config data_root=/path``), an embedded one the folder of the scenes
    the workflow writes once; ``datasets.<dataset>.pretrained`` sets ``model.pretrained`` to that
    encoder's checkpoint."""
    tree = deep_merge(config.get("cct"), config["datasets"][dataset].get("cct"))
    data = tree.get("data") or {}
    real = data.get("dataset", "embedded") != "embedded"
    if config.get("data_root") is not None and real and data.get("root") is None:
        tree = deep_merge(tree, {"data": {"root": str(config["data_root"])}})
    encoder = config["datasets"][dataset].get("pretrained")
    if encoder is not None:
        tree = deep_merge(tree, {"model": {"pretrained": Layout.of(config).pretrained_file("checkpoint.pt", encoder)}})
    tree["data"] = with_embedded_root(config, tree.get("data"))
    return tree


def with_embedded_root(config: Mapping[str, Any], data: Mapping[str, Any] | None) -> dict[str, Any]:
    """A data section, reading the embedded scenes the workflow writes once when it is embedded
    without a root (the same bytes a run would generate, without its 12 s)."""
    data = dict(data or {})
    if data.get("dataset", "embedded") == "embedded" and data.get("root") is None:
        data["root"] = Layout.of(config).embedded_dir()
    return data


def base_cct(config: Mapping[str, Any], dataset: str, setting: str, method: str | None = None) -> dict[str, Any]:
    """The cct overrides of (dataset, setting), before the method's keys and the grid point.

    Given a supervised ``method``, the setting's ``model.aux`` is left out: a supervised run builds
    auxiliary decoders it never trains, so the counts a setting gives its semi-supervised runs (the
    ablation's paper counts) would only make the same training a second, different config. Its
    runs then equal the other settings' and are aliases of them (:func:`planner.grid.canonical_runs`).
    """
    setting_cct = config["settings"][setting].get("cct")
    if method is not None and methods.get(method).mode == "supervised" and get_key(setting_cct, "model.aux")[0]:
        setting_cct = copy.deepcopy(setting_cct)
        del setting_cct["model"]["aux"]
    return deep_merge(dataset_cct(config, dataset), setting_cct)


def split_config(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The cct config ``cct splits`` reads for a dataset: its data section without training-only keys."""
    data = dataset_cct(config, dataset).get("data", {})
    return {"data": {k: v for k, v in data.items() if k not in TRAINING_ONLY_DATA_KEYS}}


def aux_counts(base: Mapping[str, Any]) -> dict[str, int]:
    """Auxiliary decoder counts of a base config: the paper's, updated by ``model.aux``."""
    found, aux = get_key(base, "model.aux")
    return {**PAPER_AUX, **(aux if found and aux else {})}


def run_aux(config: Mapping[str, Any], setting: str, method: str, base: Mapping[str, Any]) -> dict[str, int]:
    """The auxiliary decoder counts a run of ``method`` in ``setting`` is built from: those of its
    base config (:func:`aux_counts`), and for a perturbation trained alone the setting's
    ``alone_aux`` count of it where the setting gives one. The embedded ablation gives each kind
    alone six decoders, while its ``all`` run keeps the base counts (one per kind) and
    so is the curve's CCT."""
    aux = aux_counts(base)
    if len(methods.get(method).perturbations) == 1:
        aux.update(config["settings"][setting].get("alone_aux") or {})
    return aux


def method_overrides(method: str, aux: Mapping[str, int]) -> dict[str, Any]:
    """cct keys a method sets (:func:`cct.methods.overrides`): ``supervised`` trains the main decoder
    on labels only; ``cct``, ``all`` and ``cct_weak`` are semi-supervised with every perturbation (the
    grid point adds ``cct_weak``'s pseudo labels); a perturbation name keeps only its decoders."""
    if method not in methods.METHODS:
        raise GridError(f"unknown method {method!r} (known: {list(METHOD_ORDER)})")
    try:
        return methods.overrides(method, aux)
    except ValueError as exc:  # a perturbation alone whose count is 0
        raise GridError(str(exc)) from exc
