"""The multi-domain setting: pairings of datasets and their joint runs.

A pairing (``settings.multi_domain.pairings``: name -> two or more dataset keys) is trained jointly,
one model over every member, by the joint methods (``joint_supervised``, ``joint_cct``: supervised
and CCT over several domains), whose runs are stored under the pairing's name in place of a dataset
key; each member is also trained alone (``supervised``, ``cct``), and those runs are the label-count
curve's when their configs are equal.

A joint run's config is that of its first member (``cct``, ``datasets.<first>.cct``,
``settings.multi_domain.cct``, the method's keys, the training seed) with ``data.name`` set to the
member's key, and each further member as an entry of ``extra_domains`` (that member's data section,
its own split lists, the same label count and split seed).
"""

from __future__ import annotations

from typing import Any, Mapping

from planner.configs import GridError, aux_counts, base_cct, deep_merge, method_overrides, seeds_for
from planner.layout import Run
from planner.vocabulary import JOINT_METHODS

SETTING = "multi_domain"


def pairings(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """``settings.multi_domain.pairings`` (pairing name -> member dataset keys), checked: a name is
    not a dataset key (the two would share ``runs/<name>/``), a pairing has two or more distinct
    members, each a key of ``datasets``. A pairing set to null is left out."""
    spec = config["settings"].get(SETTING) or {}
    out: dict[str, list[str]] = {}
    for name, members in (spec.get("pairings") or {}).items():
        if members is None:  # dropped (a later --configfile removing a pairing of an earlier one)
            continue
        where = f"settings.multi_domain.pairings.{name}"
        if name in config["datasets"]:
            raise GridError(
                f"{where}: {name!r} is also a key of datasets; a pairing's joint runs live under runs/{name}/, "
                "where that dataset's runs live: give the pairing another name"
            )
        members = list(members or [])
        if len(members) < 2:
            raise GridError(f"{where}: a pairing needs at least two datasets, got {members}")
        for member in members:
            if member not in config["datasets"]:
                raise GridError(f"{where}: {member!r} is not a key of datasets ({sorted(config['datasets'])})")
        if len(set(members)) != len(members):
            raise GridError(f"{where}: a dataset is listed twice ({members}); a pairing joins distinct datasets")
        out[str(name)] = members
    return out


def pairing_label_counts(config: Mapping[str, Any], name: str, members: list[str]) -> list[int]:
    """Label counts (per domain) of a pairing: ``settings.multi_domain.label_counts``, or, when that
    is null, the smallest count that every member lists in its ``label_counts``."""
    counts = config["settings"][SETTING].get("label_counts")
    if counts:
        return sorted({int(n) for n in counts})
    common = set.intersection(*({int(n) for n in config["datasets"][m]["label_counts"]} for m in members))
    if not common:
        raise GridError(
            f"settings.multi_domain.label_counts: null takes the smallest label count that every member of "
            f"pairing {name!r} ({members}) lists in datasets.<d>.label_counts, and they share none; "
            "give settings.multi_domain.label_counts"
        )
    return [min(common)]


def pairing_split_seeds(config: Mapping[str, Any], name: str, members: list[str]) -> list[int]:
    """Split draws of a pairing: the split seeds every member has (in its first member's order)."""
    others = [set(config["datasets"][m]["split_seeds"]) for m in members[1:]]
    seeds = [int(s) for s in config["datasets"][members[0]]["split_seeds"] if all(s in o for o in others)]
    if not seeds:
        raise GridError(
            f"settings.multi_domain.pairings.{name}: its datasets {members} share no split seed "
            "(datasets.<d>.split_seeds); the joint runs draw each member's split with the same seed"
        )
    return seeds


def runs(config: Mapping[str, Any]) -> set[Run]:
    """The runs of the setting: per pairing, label count, split draw and training seed, each member
    alone (``supervised``, ``cct``) and the pairing jointly (``joint_supervised``, ``joint_cct``,
    named by the pairing)."""
    spec = config["settings"][SETTING]
    found = pairings(config)
    if not found:
        raise GridError("settings.multi_domain.pairings: the setting is enabled but names no pairing")
    out = set()
    for name, members in found.items():
        for labels in pairing_label_counts(config, name, members):
            for split in pairing_split_seeds(config, name, members):
                for seed in seeds_for(config, SETTING):
                    for method in spec["methods"]:
                        for dataset in [name] if method in JOINT_METHODS else members:
                            out.add(Run(dataset, SETTING, method, int(labels), int(split), int(seed)))
    return out


def is_joint(run: Run) -> bool:
    """A joint run of the multi-domain setting (its ``dataset`` is a pairing name)."""
    return run.method in JOINT_METHODS


def domains(config: Mapping[str, Any], run: Run) -> list[str]:
    """The dataset keys a run trains on: its dataset, or every member of its pairing (joint runs)."""
    if not is_joint(run):
        return [run.dataset]
    members = pairings(config).get(run.dataset)
    if members is None:
        raise GridError(f"{run.path}: {run.dataset!r} is not a pairing of settings.multi_domain.pairings")
    return members


def joint_run_config(config: Mapping[str, Any], run: Run,
                     lists: Mapping[str, Mapping[str, str]] | None) -> dict[str, Any]:
    """A joint run's cct config: its first member's config (``cct``, ``datasets.<first>.cct``,
    ``settings.multi_domain.cct``, the method's keys, the training seed) whose ``data`` is named by
    the member's key, plus one ``extra_domains`` entry per further member: that member's data section
    (``cct.data``, ``datasets.<member>.cct.data``, ``settings.multi_domain.cct.data``), named by its
    key. Every domain gets the run's label count and split seed and its own split lists
    (``lists[<member>]``, a mapping with ``labeled`` and ``unlabeled``, when given)."""
    members = domains(config, run)
    base = base_cct(config, members[0], run.setting, JOINT_METHODS[run.method])

    def domain(member: str) -> dict[str, Any]:
        point: dict[str, Any] = {"name": member, "n_labeled": run.labels, "split_seed": run.split}
        if lists is not None and member in lists:
            point.update(labeled_list=str(lists[member]["labeled"]), unlabeled_list=str(lists[member]["unlabeled"]))
        return deep_merge(base_cct(config, member, run.setting).get("data"), point)

    tree = deep_merge(base, method_overrides(JOINT_METHODS[run.method], aux_counts(base)),
                      {"data": domain(members[0]), "train": {"seed": run.seed}})
    tree["extra_domains"] = [domain(member) for member in members[1:]]
    return tree


def check_pairings(config: Mapping[str, Any]) -> None:
    """A joint run trains one model with one model/loss/optim/train config, its first member's: the
    members of a pairing must agree on every cct section but ``data``."""
    for name, members in pairings(config).items():
        first = base_cct(config, members[0], SETTING)
        for member in members[1:]:
            other = base_cct(config, member, SETTING)
            for section in sorted((set(first) | set(other)) - {"data"}):
                if first.get(section, {}) != other.get(section, {}):
                    raise GridError(
                        f"datasets.{member}.cct.{section}: differs from datasets.{members[0]}.cct.{section}, but the "
                        f"joint runs of pairing {name!r} train one model with one {section} config: set these keys "
                        "in cct or settings.multi_domain.cct (only data may differ per dataset)"
                    )


def missing_root_hint(member: str) -> str:
    """How to give a member's data root (a data_root for all does not fit several real datasets)."""
    return (f"set datasets.{member}.cct.data.root (each dataset of a pairing has its own root: give them "
            "in a second --configfile, see config/paper/multidomain.yaml)")
