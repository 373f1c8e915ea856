"""The perturbations of CCT (Ouali et al., CVPR 2020, Sec. 3.2): their registry.

Each entry says what the rest of the suite needs to know of a perturbation: its key (the config's
``model.aux.<name>`` count and the ablation's method name), the paper's name, the number of
auxiliary decoders the paper gives it, whether it reads the main decoder's prediction (guided), and
how it reaches its decoders (``applies``):

- ``"input"``: the decoders read perturbed features, (B, G*C, h, w) for G decoders;
- ``"channels"``: a per-sample channel scale of z, (B, G, C), folded into the decoders' weights;
- ``"pixels"``: a per-pixel mask of z, (B, G, 1, h, w), applied after the decoders' 1x1 classifier
  (a mask commutes with it).

The order of the registry is the order of the auxiliary decoders in a model and of the random
draws in a step. ``AuxConfig`` (the counts, paper defaults), the ablation's methods
(:mod:`cct.methods`) and the model's dispatch (:mod:`cct.model.cct`) derive from it.

The math lives in :mod:`cct.model.perturbations.functions`, one builder per entry (registered with
``@builder(name)``). This module imports no torch, so the workflow and the analysis scripts read the
registry without paying torch's import (seconds per job). Adding a perturbation: its entry here, its
function and builder in ``functions.py``, its hyper-parameters in ``cct.config.PerturbationConfig``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

APPLIES = ("input", "channels", "pixels")


@dataclass(frozen=True)
class Perturbation:
    name: str  # key: model.aux.<name>, the ablation's method "<name> alone"
    display: str  # the paper's name
    paper_count: int  # auxiliary decoders of this kind in the paper (the official config)
    guided: bool  # reads the main decoder's prediction (the objects map)
    applies: str  # one of APPLIES

    def __post_init__(self) -> None:
        if self.applies not in APPLIES:
            raise ValueError(f"perturbation {self.name!r}: applies={self.applies!r} is not one of {list(APPLIES)}")

    def build(self, context: Any, decoders: slice):
        """This perturbation for ``decoders`` (a slice of the auxiliary decoders), in the form
        ``applies`` names, from ``context`` (:class:`cct.model.perturbations.functions.Context`)."""
        return _functions().BUILDERS[self.name](context, decoders)


REGISTRY: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation("vat", "I-VAT", 2, guided=False, applies="input"),
        Perturbation("dropout", "DropOut", 6, guided=False, applies="channels"),
        Perturbation("cutout", "G-Cutout", 6, guided=True, applies="pixels"),
        Perturbation("context_masking", "Con-Msk", 2, guided=True, applies="pixels"),
        Perturbation("object_masking", "Obj-Msk", 2, guided=True, applies="pixels"),
        Perturbation("feature_drop", "F-Drop", 6, guided=False, applies="pixels"),
        Perturbation("feature_noise", "F-Noise", 6, guided=False, applies="input"),
    )
}
PERTURBATIONS: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> Perturbation:
    """The registry entry of ``name``; ValueError naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown perturbation {name!r} (known: {list(REGISTRY)})") from None


def _functions():
    return importlib.import_module("cct.model.perturbations.functions")


def __getattr__(name: str) -> Any:
    """The functions (``vat``, ``cutout_mask``, ...) as attributes of this package, imported (with
    torch) on first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_functions(), name)
