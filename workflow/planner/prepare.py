"""What the workflow prepares once and many runs read: the embedded dataset's scenes, and encoders
pretrained by the workflow.

- **Embedded scenes.** Generating a domain's 1,200 scenes takes about 12 s, so a job writes each
  domain once (``cct embedded``) and every embedded data section that sets no ``data.root`` reads
  them (its ``data.root`` becomes the folder; the bytes are those a run would generate).
- **Pretrained encoders** (``pretrained.<name>``): a ``cct train`` run whose encoder initialises the
  runs of every dataset that names it (``datasets.<d>.pretrained: <name>``, which sets their
  ``model.pretrained`` and their CAM classifier's). The embedded benchmark's stand-in for the
  paper's ImageNet-pretrained encoder. Its config is the top-level ``cct.model`` section (so its
  architecture is the runs') under ``pretrained.<name>.cct``.
"""

from __future__ import annotations

from typing import Any, Mapping

from cct.config import ModelConfig
from planner.configs import GridError, dataset_cct, deep_merge, with_embedded_root
from planner.layout import Layout

ARCHITECTURE_KEYS = ("encoder", "width", "output_stride", "psp")
"""Model keys a pretrained encoder and the runs initialised from it must share."""


def encoders(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``pretrained`` (name -> its spec)."""
    return dict(config.get("pretrained") or {})


def encoder_of(config: Mapping[str, Any], dataset: str) -> str | None:
    """The pretrained encoder a dataset's runs start from, or None; GridError for an unknown name."""
    name = config["datasets"][dataset].get("pretrained")
    if name is not None and name not in encoders(config):
        raise GridError(
            f"datasets.{dataset}.pretrained: {name!r} is not a key of pretrained ({sorted(encoders(config))})"
        )
    return name


def checkpoint(config: Mapping[str, Any], name: str) -> str:
    return Layout.of(config).pretrained_file("checkpoint.pt", name)


def encoder_config(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The cct config of pretrained encoder ``name``: ``cct.model``, then ``pretrained.<name>.cct``,
    its data section reading the workflow's embedded scenes."""
    if name not in encoders(config):
        raise GridError(f"pretrained: no encoder named {name!r} ({sorted(encoders(config))})")
    tree = deep_merge({"model": (config.get("cct") or {}).get("model") or {}}, encoders(config)[name].get("cct"))
    tree["data"] = with_embedded_root(config, tree.get("data"))
    return tree


def inputs(config: Mapping[str, Any], tree: Mapping[str, Any]) -> list[str]:
    """The prepared files a cct config reads: the embedded scenes of each data section that reads
    the workflow's folder, and a pretrained encoder's checkpoint."""
    layout, files = Layout.of(config), []
    for data in [tree.get("data") or {}, *(tree.get("extra_domains") or [])]:
        if data.get("dataset", "embedded") == "embedded" and data.get("root") == layout.embedded_dir():
            files += layout.embedded_files(data.get("domain", "a"))
    pretrained = (tree.get("model") or {}).get("pretrained")
    if isinstance(pretrained, str) and pretrained in {checkpoint(config, n) for n in encoders(config)}:
        files.append(pretrained)
    return files


def check(config: Mapping[str, Any], datasets: list[str], validate_cct=None) -> None:
    """Before any job: every named encoder exists, builds (``validate_cct``), and has the architecture
    of the runs it initialises."""
    for name in encoders(config):
        tree = encoder_config(config, name)
        if validate_cct is not None:
            try:
                validate_cct(tree)
            except ValueError as exc:
                raise GridError(f"pretrained.{name}.cct: {exc}") from exc
    for dataset in datasets:
        name = encoder_of(config, dataset)
        if name is None:
            continue
        runs_model = dataset_cct(config, dataset).get("model") or {}
        differs = architecture_difference(config, name, runs_model, ModelConfig(), ARCHITECTURE_KEYS)
        if differs:
            key, ours, theirs = differs
            raise GridError(
                f"pretrained.{name}.cct.model.{key}: {ours!r}, but the runs of dataset {dataset!r} it "
                f"initialises have {theirs!r}; an encoder only initialises its own architecture"
            )


def architecture_difference(
    config: Mapping[str, Any], name: str, model: Mapping[str, Any], defaults: Any, keys: tuple[str, ...]
) -> tuple[str, Any, Any] | None:
    """The first of ``keys`` on which encoder ``name`` and ``model`` (a model section whose unset keys
    take ``defaults``' values) differ, as (key, the encoder's value, the model's); None if they agree."""
    encoder_model, own = encoder_config(config, name).get("model") or {}, ModelConfig()
    for key in keys:
        ours, theirs = encoder_model.get(key, getattr(own, key)), model.get(key, getattr(defaults, key))
        if ours != theirs:
            return key, ours, theirs
    return None
