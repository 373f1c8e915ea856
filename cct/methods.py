"""The methods an experiment compares, as the cct keys each one sets.

A method is a way of training one run: the supervised baseline, CCT with every perturbation, CCT
with one perturbation alone (the paper's per-perturbation ablation, Figure 4), CCT with image-level
labels. The workflow (``workflow/planner``) chooses which methods a setting runs and supplies what a
method needs from outside the run (the pseudo labels' folder of ``cct_weak``); what a method *means*
is defined here, from the perturbation registry. No torch import: the workflow and the analysis
scripts read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cct.model.perturbations import PERTURBATIONS, REGISTRY


@dataclass(frozen=True)
class Method:
    name: str
    display: str  # the name tables and figures print
    mode: str  # train.mode: supervised | semi
    perturbations: tuple[str, ...]  # the perturbations whose auxiliary decoders it trains
    weak: bool = False  # trains the auxiliary decoders on pseudo labels from image-level labels too


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("supervised", "Supervised", "supervised", ()),
        Method("cct", "CCT", "semi", PERTURBATIONS),
        Method("cct_weak", "CCT + image-level labels", "semi", PERTURBATIONS, weak=True),
        # the ablation: each perturbation alone, and all of them (the same training as cct)
        *(Method(p.name, p.display, "semi", (p.name,)) for p in REGISTRY.values()),
        Method("all", "All (CCT)", "semi", PERTURBATIONS),
    )
}
ABLATION: tuple[str, ...] = ("supervised", *PERTURBATIONS, "all")
"""The per-perturbation ablation's methods: the baseline, each perturbation alone, all together."""


def get(name: str) -> Method:
    """The method ``name``; ValueError naming the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (known: {list(METHODS)})") from None


def overrides(name: str, aux: Mapping[str, int]) -> dict[str, Any]:
    """The cct keys method ``name`` sets: ``train.mode`` and, for a semi-supervised method, every
    ``model.aux`` count: ``aux``'s (the base counts of the run's config) for the perturbations it
    trains, 0 for the others. A supervised method leaves the counts alone (its auxiliary decoders
    are built and never trained, so a checkpoint has the same keys either way). ValueError when a
    perturbation the method trains has a base count of 0 (its ablation bar would be no run at all)."""
    method = get(name)
    if method.mode == "supervised":
        return {"train": {"mode": "supervised"}}
    for p in method.perturbations:
        if int(aux[p]) <= 0 and len(method.perturbations) == 1:
            raise ValueError(
                f"method {name!r}: its auxiliary decoder count (cct model.aux.{p}) is 0; the ablation needs at "
                f"least one"
            )
    counts = {p: int(aux[p]) if p in method.perturbations else 0 for p in PERTURBATIONS}
    return {"train": {"mode": "semi"}, "model": {"aux": counts}}
