"""The weak-label setting: per dataset and training seed s, a CAM classifier trained with seed s on
the image-level labels, its class activation maps and the pseudo pixel labels thresholded from them
(the pipeline's folders: :meth:`planner.layout.Layout.weak_paths`); a method that learns from pseudo
labels (``cct_weak``, :attr:`cct.methods.Method.weak`) reads those of its dataset and seed, so the
spread over seeds includes that of the pseudo labels. With ``settings.weak_labels.cam_seed`` set,
each dataset has one pipeline instead, trained with that seed, and the runs of every training seed
read its pseudo labels (as the paper trains one CAM classifier).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from cct.methods import METHODS
from planner import prepare
from planner.configs import GridError, dataset_cct, deep_merge, get_key, split_config
from planner.layout import Layout, Run


def needs_pseudo_labels(method: str) -> bool:
    return method in METHODS and METHODS[method].weak


def pipeline_seed(config: Mapping[str, Any], seed: int | str) -> int:
    """The seed of the weak-label pipeline whose pseudo labels the runs of training seed ``seed`` read:
    ``settings.weak_labels.cam_seed`` when set (one pipeline shared by every seed), else ``seed``."""
    shared = config["settings"].get("weak_labels", {}).get("cam_seed")
    return int(seed) if shared is None else int(shared)


def pseudo_labels(config: Mapping[str, Any], dataset: str, seed: int | str) -> str:
    """The pseudo labels' folder that the runs of a dataset and training seed read."""
    return Layout.of(config).weak_paths(dataset, pipeline_seed(config, seed))["pseudo_labels"]


def run_keys(config: Mapping[str, Any], run: Run) -> dict[str, Any]:
    """The cct keys of a run's grid point that the weak-label pipeline supplies (none for a method
    that does not learn from pseudo labels)."""
    if not needs_pseudo_labels(run.method):
        return {}
    return {"weak": {"pseudo_labels": pseudo_labels(config, run.dataset, run.seed)}}


def pipelines(config: Mapping[str, Any], runs: Iterable[Run]) -> list[tuple[str, int]]:
    """(dataset, seed) of every weak-label pipeline the runs read (see :func:`pipeline_seed`)."""
    return sorted({(r.dataset, pipeline_seed(config, r.seed)) for r in runs if needs_pseudo_labels(r.method)})


def cam_config(config: Mapping[str, Any], dataset: str, seed: int | str) -> dict[str, Any]:
    """The CAM config (cct.config.CamRunConfig overrides) of a dataset's pipeline of seed ``seed``: the
    dataset's data section (without training-only keys), the encoder its runs start from (its
    backbone initialises the CAM classifier's, as the paper's CAM network starts from ImageNet
    weights), ``settings.weak_labels.cam``, ``datasets.<dataset>.cam``, and the seed."""
    pretrained = get_key(dataset_cct(config, dataset), "model.pretrained")[1]
    return deep_merge(
        split_config(config, dataset),
        {"model": {"pretrained": pretrained}} if isinstance(pretrained, str) else None,
        config["settings"].get("weak_labels", {}).get("cam"),
        config["datasets"][dataset].get("cam"),
        {"train": {"seed": int(seed)}},
    )


def check(config: Mapping[str, Any], runs: Iterable[Run], validate_cam: Callable[[dict], Any] | None = None) -> None:
    """Before any job: the CAM overrides leave the seed to the workflow, and (``validate_cam``, when
    given) each dataset's CAM config builds."""
    checked = set()
    for dataset, seed in pipelines(config, runs):
        cam_places = [("settings.weak_labels.cam", config["settings"].get("weak_labels", {}).get("cam")),
                      (f"datasets.{dataset}.cam", config["datasets"][dataset].get("cam"))]
        for where, tree in cam_places:
            if get_key(tree or {}, "train.seed")[0]:
                raise GridError(
                    f"{where}.train.seed: the CAM classifier of training seed s is trained with seed s; remove it "
                    "(settings.weak_labels.cam_seed trains one with a given seed for every training seed)"
                )
        if dataset in checked:
            continue
        checked.add(dataset)
        cam = cam_config(config, dataset, seed)
        _check_cam_architecture(config, dataset, cam)
        if validate_cam is None:
            continue
        try:
            validate_cam(cam)
        except ValueError as exc:
            raise GridError(
                f"CAM config of {dataset} (from datasets.{dataset}.cct.data, settings.weak_labels.cam, "
                f"datasets.{dataset}.cam): {exc}"
            ) from exc


def _check_cam_architecture(config: Mapping[str, Any], dataset: str, cam: Mapping[str, Any]) -> None:
    """A CAM classifier that starts from the dataset's pretrained encoder must have its backbone
    (``model.encoder`` and ``model.width``; the stride changes no weight's shape): else its job would
    stop after the grid's trainings started."""
    name = prepare.encoder_of(config, dataset)
    if name is None:
        return
    from cct.config import CamModelConfig

    differs = prepare.architecture_difference(config, name, cam.get("model") or {}, CamModelConfig(),
                                              ("encoder", "width"))
    if differs:
        key, theirs, ours = differs
        raise GridError(
            f"settings.weak_labels.cam.model.{key} (or datasets.{dataset}.cam): {ours!r}, but the CAM classifier "
            f"starts from the pretrained encoder of dataset {dataset!r}, whose {key} is {theirs!r}"
        )
