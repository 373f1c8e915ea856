"""The workflow's vocabulary: its settings (what each compares, which methods it allows, how it picks
its label counts, which table and figure show it), the order and display names of the methods.

What a method *means* (the cct keys it sets) is the method package's (:mod:`cct.methods`, from the
perturbation registry); the workflow only chooses which methods a setting runs. The exceptions are
the multi-domain setting's joint methods: they are the supervised and CCT trainings over every
dataset of a pairing (:mod:`planner.multi_domain` builds their configs).

A new setting is an entry of :data:`SETTINGS_BY_NAME`, its block in
``workflow/schemas/config.schema.yaml`` (the same methods), its captions in ``workflow/report/`` and
its keys in ``config/README.md``; ``tests/workflow/test_workflow_structure.py`` checks that they
agree. A setting whose runs are not "datasets x methods x label counts x split draws x seeds" also
needs a module of its own, as ``planner.multi_domain`` and ``planner.weak_labels``.

Imports no torch: the Snakefile and the analysis scripts read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cct.methods import ABLATION, METHODS

# the multi-domain setting's joint methods: one model over every member of a pairing
JOINT_METHODS = {"joint_supervised": "supervised", "joint_cct": "cct"}  # joint method -> its training
JOINT_NAMES = {"joint_supervised": "Supervised (joint)", "joint_cct": "CCT (joint)"}

LABEL_RULES = ("all", "smallest", "one", "pairings")
TABLES = ("methods", "pairings")
FIGURES = ("curve", "bars", "pairings")


@dataclass(frozen=True)
class Setting:
    name: str  # key of config `settings`, the {setting} part of every path
    title: str  # what it compares, in words (table captions)
    methods: tuple[str, ...]  # the methods it may run (settings.<name>.methods)
    # its label counts per dataset when settings.<name>.label_counts is null: "all" (the dataset's
    # label_counts), "smallest" (the smallest of them); "one": a single count, settings.<name>.label_count
    # or the smallest; "pairings": chosen per pairing by planner.multi_domain
    labels: str
    table: str = "methods"  # "methods": a row per (dataset, method, label count); "pairings": a column per domain
    figure: str = "bars"  # "curve": mIoU against label count; "bars": a bar per method; "pairings": grouped bars

    def __post_init__(self) -> None:
        for field, value, allowed in (("labels", self.labels, LABEL_RULES), ("table", self.table, TABLES),
                                      ("figure", self.figure, FIGURES)):
            if value not in allowed:
                raise ValueError(f"setting {self.name!r}: {field}={value!r} is not one of {list(allowed)}")


SETTINGS_BY_NAME: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("label_fraction", "mIoU against the number of labelled images", ("supervised", "cct"),
                labels="all", figure="curve"),
        Setting("perturbation_ablation", "Per-perturbation ablation", ABLATION, labels="one"),
        Setting("weak_labels", "Image-level labels as pseudo pixel labels for the auxiliary decoders",
                ("supervised", "cct", "cct_weak"), labels="smallest"),
        Setting("multi_domain", "Multiple domains: one shared encoder, a main and auxiliary decoders per domain",
                ("supervised", "cct", *JOINT_METHODS), labels="pairings", table="pairings", figure="pairings"),
    )
}
# in this order: the canonical run of configs shared across settings is the first setting's
SETTINGS = tuple(SETTINGS_BY_NAME)
SETTING_METHODS = {s.name: s.methods for s in SETTINGS_BY_NAME.values()}
SETTING_NAMES = {s.name: s.title for s in SETTINGS_BY_NAME.values()}

# Tables, figures and the choice of a canonical run list methods in this order.
METHOD_ORDER = ("supervised", "cct", "cct_weak", *JOINT_METHODS, *ABLATION[1:])
# Display names: the method package's (the paper's names of the perturbations), and the joint ones.
METHOD_NAMES = {**{name: method.display for name, method in METHODS.items()}, **JOINT_NAMES}

if not set(METHOD_ORDER) == set(METHODS) | set(JOINT_METHODS) == set(METHOD_NAMES):
    raise RuntimeError(f"METHOD_ORDER {METHOD_ORDER} and cct.methods.METHODS {list(METHODS)} disagree")


def setting_of(name: str) -> Setting:
    """The setting ``name``; ValueError naming the known ones otherwise."""
    try:
        return SETTINGS_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown setting {name!r} (known: {list(SETTINGS)})") from None
