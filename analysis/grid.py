"""The experiment grid: which runs a workflow config asks for, and the cct config of each run.

Pure functions of the schema-validated workflow config (a nested mapping, see config/README.md).
``workflow/rules/common.smk`` imports them to expand the DAG; the tests import them to check the
expansion; the analysis modules import the vocabulary (settings, methods and their order).

A run is one point of datasets x settings x methods x label counts x split draws x training seeds,
stored under ``{results}/runs/{dataset}/{setting}/{method}/{labels}/split{split}/seed{seed}/``.
Its cct config is the deep merge, later winning, of

1. ``cct`` (shared by every run),
2. ``datasets.<dataset>.cct``,
3. ``settings.<setting>.cct``,
4. the method (``train.mode`` and the auxiliary decoder counts, see :func:`method_overrides`),
5. the grid point (labelled/unlabelled lists, label count, split seed, training seed).

The keys of step 5 and ``train.mode`` belong to the grid: a config that sets them in 1-3 is refused.

The ``multi_domain`` setting adds joint runs: one model over every member dataset of a pairing
(``settings.multi_domain.pairings``), stored under the pairing's name in place of a dataset key. Its
config is that of its first member (steps 1-5) with ``data.name`` set to the member's key, and each
further member as an entry of ``extra_domains`` (that member's data section, its own split lists,
the same label count and split seed); see :func:`run_config`.

Two runs of different settings can resolve to the same cct config (the ablation's ``supervised`` and
``all`` at a label count of the curve are the curve's ``supervised`` and ``cct``); the grid trains
such a config once, and the other run is an alias of it (see :func:`canonical_runs`).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from cct.config import PERTURBATIONS, AuxConfig

PAPER_AUX = dataclasses.asdict(AuxConfig())

# Settings implemented here (a new one needs an entry in SETTING_METHODS, a schema entry and a
# table/plot kind).
SETTINGS = ("label_fraction", "perturbation_ablation", "weak_labels", "multi_domain")
# the multi-domain setting's joint methods: one model over every member of a pairing
JOINT_METHODS = {"joint_supervised": "supervised", "joint_cct": "cct"}  # joint method -> its training
SETTING_METHODS = {
    "label_fraction": ("supervised", "cct"),
    "perturbation_ablation": ("supervised", *PERTURBATIONS, "all"),
    "weak_labels": ("supervised", "cct", "cct_weak"),
    "multi_domain": ("supervised", "cct", *JOINT_METHODS),
}
METHOD_ORDER = ("supervised", "cct", "cct_weak", *JOINT_METHODS, *PERTURBATIONS, "all")
# Display names (the paper's names of the perturbations, Section 3.2).
METHOD_NAMES = {
    "supervised": "Supervised",
    "cct": "CCT",
    "cct_weak": "CCT + image-level labels",
    "joint_supervised": "Supervised (joint)",
    "joint_cct": "CCT (joint)",
    "vat": "I-VAT",
    "dropout": "DropOut",
    "cutout": "G-Cutout",
    "context_masking": "Con-Msk",
    "object_masking": "Obj-Msk",
    "feature_drop": "F-Drop",
    "feature_noise": "F-Noise",
    "all": "All (CCT)",
}
SETTING_NAMES = {
    "label_fraction": "mIoU against the number of labelled images",
    "perturbation_ablation": "Per-perturbation ablation",
    "weak_labels": "Image-level labels as pseudo pixel labels for the auxiliary decoders",
    "multi_domain": "Multiple domains: one shared encoder, a main and auxiliary decoders per domain",
}

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
    "num_workers",
    "background_classes",
)

RUN_PATTERN = "{dataset}/{setting}/{method}/{labels}/split{split}/seed{seed}"
# the weak-label pipeline of a dataset and training seed, under {results}/weak/ (cam/, cams/,
# pseudo_labels/): the CAM classifier of training seed s is trained with seed s, so the spread over
# seeds includes that of the pseudo labels
WEAK_PATTERN = "{dataset}/seed{seed}"
SPLIT_PATTERN = "{dataset}/{labels}/split{split}"  # under {results}/splits/
_RUN_RE = re.compile(
    r"(?:^|/)(?P<dataset>[^/]+)/(?P<setting>[^/]+)/(?P<method>[^/]+)/(?P<labels>\d+)/split(?P<split>\d+)/seed(?P<seed>\d+)"
    r"(?:\.[A-Za-z0-9]+|/[^/]+)?$"
)


class GridError(ValueError):
    """The workflow config asks for something the grid cannot run; the message names the key."""


@dataclass(frozen=True, order=True)
class Run:
    dataset: str
    setting: str
    method: str
    labels: int
    split: int
    seed: int

    @property
    def path(self) -> str:
        """Relative run path, e.g. ``embedded/label_fraction/cct/20/split0/seed1``."""
        return RUN_PATTERN.format(**self.__dict__)

    @classmethod
    def from_wildcards(cls, wc: Any) -> "Run":
        return cls(wc.dataset, wc.setting, wc.method, int(wc.labels), int(wc.split), int(wc.seed))

    @classmethod
    def from_path(cls, path: str | Path) -> "Run":
        """Parse a run directory, a file in it (``.../seed0/metrics.json``) or a benchmark (``.../seed0.tsv``)."""
        match = _RUN_RE.search(Path(path).as_posix())
        if not match:
            raise ValueError(f"{path}: not a run path (expected .../{RUN_PATTERN}[/file])")
        g = match.groupdict()
        return cls(g["dataset"], g["setting"], g["method"], int(g["labels"]), int(g["split"]), int(g["seed"]))


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


def _get(tree: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


# --------------------------------------------------------------------------------------------------
# The grid


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
    spec = config["settings"][setting]
    counts = config["datasets"][dataset]["label_counts"]
    if setting == "perturbation_ablation":
        count = spec.get("label_count")
        return [int(count) if count is not None else min(counts)]
    if setting == "weak_labels" and not spec.get("label_counts"):
        return [min(counts)]
    return sorted({int(n) for n in (spec.get("label_counts") or counts)})


def expand_runs(config: Mapping[str, Any]) -> list[Run]:
    """Every run the config asks for, sorted; duplicates (if any) removed."""
    runs = set()
    for setting in enabled_settings(config):
        spec = config["settings"][setting]
        for method in spec["methods"]:
            if method not in SETTING_METHODS[setting]:
                raise GridError(
                    f"settings.{setting}.methods: {method!r} is not one of {list(SETTING_METHODS[setting])}"
                )
        if setting == "multi_domain":
            runs.update(multi_domain_runs(config))
            continue
        for dataset in datasets_for(config, setting):
            for labels in label_counts_for(config, setting, dataset):
                for split in config["datasets"][dataset]["split_seeds"]:
                    for seed in seeds_for(config, setting):
                        for method in spec["methods"]:
                            runs.add(Run(dataset, setting, method, int(labels), int(split), int(seed)))
    return sorted(runs)


def pairings(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """``settings.multi_domain.pairings`` (pairing name -> member dataset keys), checked: a name is
    not a dataset key (the two would share ``runs/<name>/``), a pairing has two or more distinct
    members, each a key of ``datasets``. A pairing set to null is left out."""
    spec = config["settings"].get("multi_domain") or {}
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
    counts = config["settings"]["multi_domain"].get("label_counts")
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


def multi_domain_runs(config: Mapping[str, Any]) -> set[Run]:
    """The runs of the multi-domain setting: per pairing, label count, split draw and training seed,
    each member alone (``supervised``, ``cct``; the label-count curve's runs when their configs are
    equal) and the pairing jointly (``joint_supervised``, ``joint_cct``, named by the pairing)."""
    spec = config["settings"]["multi_domain"]
    found = pairings(config)
    if not found:
        raise GridError("settings.multi_domain.pairings: the setting is enabled but names no pairing")
    runs = set()
    for name, members in found.items():
        for labels in pairing_label_counts(config, name, members):
            for split in pairing_split_seeds(config, name, members):
                for seed in seeds_for(config, "multi_domain"):
                    for method in spec["methods"]:
                        for dataset in [name] if method in JOINT_METHODS else members:
                            runs.add(Run(dataset, "multi_domain", method, int(labels), int(split), int(seed)))
    return runs


def is_joint(run: Run) -> bool:
    """A joint run of the multi-domain setting (its ``dataset`` is a pairing name)."""
    return run.method in JOINT_METHODS


def run_domains(config: Mapping[str, Any], run: Run) -> list[str]:
    """The dataset keys a run trains on: its dataset, or every member of its pairing (joint runs)."""
    if not is_joint(run):
        return [run.dataset]
    members = pairings(config).get(run.dataset)
    if members is None:
        raise GridError(f"{run.path}: {run.dataset!r} is not a pairing of settings.multi_domain.pairings")
    return members


def splits_needed(runs: Iterable[Run], config: Mapping[str, Any] | None = None) -> list[tuple[str, int, int]]:
    """(dataset, labels, split) of every split list the runs read (a joint run reads every member's;
    ``config`` names them and is needed when there are joint runs)."""
    needed = set()
    for run in runs:
        if is_joint(run) and config is None:
            raise ValueError(f"{run.path}: a joint run's split lists depend on its pairing: pass the config")
        for dataset in run_domains(config, run) if is_joint(run) else [run.dataset]:
            needed.add((dataset, run.labels, run.split))
    return sorted(needed)


# --------------------------------------------------------------------------------------------------
# cct configs


def dataset_cct(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """``cct`` merged with ``datasets.<dataset>.cct``; a real dataset (not ``embedded``) whose
    ``data.root`` is unset takes the top-level ``data_root`` (``--config data_root=/path``)."""
    tree = deep_merge(config.get("cct"), config["datasets"][dataset].get("cct"))
    data = tree.get("data") or {}
    if config.get("data_root") is not None and data.get("dataset", "embedded") != "embedded" and data.get("root") is None:
        tree = deep_merge(tree, {"data": {"root": str(config["data_root"])}})
    return tree


def base_cct(config: Mapping[str, Any], dataset: str, setting: str) -> dict[str, Any]:
    """The cct overrides shared by every run of (dataset, setting), before method and grid point."""
    return deep_merge(dataset_cct(config, dataset), config["settings"][setting].get("cct"))


def aux_counts(base: Mapping[str, Any]) -> dict[str, int]:
    """Auxiliary decoder counts of a base config: the paper's, updated by ``model.aux``."""
    found, aux = _get(base, "model.aux")
    return {**PAPER_AUX, **(aux if found and aux else {})}


def method_overrides(method: str, aux: Mapping[str, int]) -> dict[str, Any]:
    """cct keys a method sets: ``supervised`` trains the main decoder on labels only; ``cct`` and
    ``all`` are semi-supervised with every perturbation; a perturbation name keeps only its decoders."""
    if method == "supervised":
        return {"train": {"mode": "supervised"}}
    if method in ("cct", "all", "cct_weak"):  # cct_weak: the grid point adds weak.pseudo_labels
        return {"train": {"mode": "semi"}, "model": {"aux": {p: int(aux[p]) for p in PERTURBATIONS}}}
    if method in PERTURBATIONS:
        if int(aux[method]) <= 0:
            raise GridError(
                f"method {method!r}: its auxiliary decoder count (cct model.aux.{method}) is 0; "
                "the ablation needs at least one"
            )
        return {"train": {"mode": "semi"}, "model": {"aux": {p: int(aux[p]) if p == method else 0 for p in PERTURBATIONS}}}
    raise GridError(f"unknown method {method!r} (known: {list(METHOD_ORDER)})")


def run_config(config: Mapping[str, Any], run: Run, labeled_list: str | None = None,
               unlabeled_list: str | None = None, *,
               lists: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Any]:
    """The nested cct config (overrides of cct's defaults) that one run trains with.

    The split lists are ``labeled_list``/``unlabeled_list``, or ``lists[<dataset key>]`` (a mapping
    with ``labeled`` and ``unlabeled``), which a joint run needs for each member; without either the
    config has no list keys (``cct`` then draws the split itself from n_labeled and split_seed)."""
    if is_joint(run):
        return _joint_run_config(config, run, lists)
    if labeled_list is None and lists is not None and run.dataset in lists:
        labeled_list, unlabeled_list = lists[run.dataset]["labeled"], lists[run.dataset]["unlabeled"]
    base = base_cct(config, run.dataset, run.setting)
    point: dict[str, Any] = {
        "data": {"n_labeled": run.labels, "split_seed": run.split},
        "train": {"seed": run.seed},
    }
    if labeled_list is not None:
        point["data"].update(labeled_list=str(labeled_list), unlabeled_list=str(unlabeled_list))
    if run.method == "cct_weak":
        point["weak"] = {"pseudo_labels": weak_paths(config, run.dataset, run.seed)["pseudo_labels"]}
    return deep_merge(base, method_overrides(run.method, aux_counts(base)), point)


def _joint_run_config(config: Mapping[str, Any], run: Run, lists: Mapping[str, Mapping[str, str]] | None) -> dict[str, Any]:
    """A joint run: its first member's config (``cct``, ``datasets.<first>.cct``,
    ``settings.multi_domain.cct``, the method's keys, the training seed) whose ``data`` is named by
    the member's key, plus one ``extra_domains`` entry per further member: that member's data section
    (``cct.data``, ``datasets.<member>.cct.data``, ``settings.multi_domain.cct.data``), named by its
    key. Every domain gets the run's label count and split seed and its own split lists."""
    members = run_domains(config, run)
    base = base_cct(config, members[0], run.setting)

    def domain(member: str) -> dict[str, Any]:
        point: dict[str, Any] = {"name": member, "n_labeled": run.labels, "split_seed": run.split}
        if lists is not None and member in lists:
            point.update(labeled_list=str(lists[member]["labeled"]), unlabeled_list=str(lists[member]["unlabeled"]))
        return deep_merge(base_cct(config, member, run.setting).get("data"), point)

    tree = deep_merge(base, method_overrides(JOINT_METHODS[run.method], aux_counts(base)),
                      {"data": domain(members[0]), "train": {"seed": run.seed}})
    tree["extra_domains"] = [domain(member) for member in members[1:]]
    return tree


def weak_paths(config: Mapping[str, Any], dataset: str, seed: int | str) -> dict[str, str]:
    """Folders of a dataset's weak-label pipeline for one training seed (``{results}/weak/...``)."""
    root = f"{config['results']}/weak/" + WEAK_PATTERN.format(dataset=dataset, seed=seed)
    return {"root": root, "cam": f"{root}/cam", "cams": f"{root}/cams", "pseudo_labels": f"{root}/pseudo_labels"}


def cam_config(config: Mapping[str, Any], dataset: str, seed: int | str) -> dict[str, Any]:
    """The CAM config (cct.config.CamRunConfig overrides) of a dataset and training seed: the
    dataset's data section (without training-only keys), ``settings.weak_labels.cam``,
    ``datasets.<dataset>.cam``, and the seed."""
    return deep_merge(
        split_config(config, dataset),
        config["settings"].get("weak_labels", {}).get("cam"),
        config["datasets"][dataset].get("cam"),
        {"train": {"seed": int(seed)}},
    )


def weak_pipelines(runs: Iterable[Run]) -> list[tuple[str, int]]:
    """(dataset, seed) of every weak-label pipeline the runs read."""
    return sorted({(r.dataset, r.seed) for r in runs if r.method == "cct_weak"})


def split_lists(config: Mapping[str, Any], dataset: str, labels: int | str, split: int | str) -> dict[str, str]:
    """The labelled and unlabelled lists of a split, as the workflow writes them
    (``{results}/splits/{dataset}/{labels}/split{split}/{labeled,unlabeled}.txt``)."""
    split_dir = f"{config['results']}/splits/" + SPLIT_PATTERN.format(dataset=dataset, labels=labels, split=split)
    return {"labeled": f"{split_dir}/labeled.txt", "unlabeled": f"{split_dir}/unlabeled.txt"}


def run_split_lists(config: Mapping[str, Any], run: Run) -> dict[str, dict[str, str]]:
    """The split lists a run reads, per dataset key (a joint run: every member's)."""
    return {d: split_lists(config, d, run.labels, run.split) for d in run_domains(config, run)}


def workflow_run_config(config: Mapping[str, Any], run: Run) -> dict[str, Any]:
    """A run's cct config as the workflow writes it (its ``overrides.yaml``): with its split lists."""
    return run_config(config, run, lists=run_split_lists(config, run))


def canonical_runs(config: Mapping[str, Any], runs: Iterable[Run] | None = None) -> dict[Run, Run]:
    """Each run (default: every run of the grid) -> the run that trains its cct config.

    Runs whose configs (:func:`workflow_run_config`, compared whole, split list paths included) are
    equal share one training: the canonical run is the first of them in setting order (SETTINGS,
    so label_fraction first), then method order (METHOD_ORDER); every other is an alias of it, and
    the workflow copies the canonical run's results into its directory instead of training it.
    A run maps to itself when it is canonical. Equal configs imply the same dataset (its split
    paths), label count, split draw and training seed, so only runs sharing those are compared.
    """
    runs = expand_runs(config) if runs is None else list(runs)
    order = sorted(set(runs), key=lambda r: (SETTINGS.index(r.setting), METHOD_ORDER.index(r.method), r))
    canonical: dict[Run, Run] = {}
    groups: dict[tuple, list[tuple[Run, dict[str, Any]]]] = {}
    for run in order:
        tree = workflow_run_config(config, run)
        group = groups.setdefault((run.dataset, run.labels, run.split, run.seed), [])
        canonical[run] = next((first for first, first_tree in group if first_tree == tree), run)
        if canonical[run] == run:
            group.append((run, tree))
    return {run: canonical[run] for run in runs}


def canonical_run(config: Mapping[str, Any], run: Run) -> Run:
    """The run of the grid that trains ``run``'s cct config: ``run`` itself, or the run it is an
    alias of (see :func:`canonical_runs`)."""
    grid_runs = expand_runs(config)
    if run not in grid_runs:
        raise GridError(f"{run.path}: not a run of the grid")
    return canonical_runs(config, grid_runs)[run]


def split_config(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The cct config ``cct splits`` reads for a dataset: its data section without training-only keys."""
    data = dataset_cct(config, dataset).get("data", {})
    return {"data": {k: v for k, v in data.items() if k not in TRAINING_ONLY_DATA_KEYS}}


def user_split(config: Mapping[str, Any], dataset: str, labels: int, split: int) -> dict[str, Any] | None:
    """The user's list pair for (dataset, labels, split), or None when the split is drawn by ``cct splits``."""
    for entry in config["datasets"][dataset].get("user_splits") or []:
        if int(entry["labels"]) == int(labels) and int(entry.get("split", 0)) == int(split):
            return entry
    return None


# --------------------------------------------------------------------------------------------------
# Checks that run before any job starts


def check_config(config: Mapping[str, Any], validate_cct: Callable[[dict], Any] | None = None,
                 validate_cam: Callable[[dict], Any] | None = None) -> list[Run]:
    """Expand the grid and check what the schema cannot; raise GridError naming the key.

    ``validate_cct``, when given (``cct.config.from_dict``), builds each distinct run config so that
    an unknown or ill-typed cct key fails here, not in the middle of a grid; ``validate_cam`` does
    the same for the CAM configs of the weak-label setting.
    """
    places = [("cct", config.get("cct"))]
    places += [(f"datasets.{d}.cct", spec.get("cct")) for d, spec in config["datasets"].items()]
    places += [(f"settings.{s}.cct", spec.get("cct")) for s, spec in config["settings"].items()]
    for where, tree in places:
        for key in GRID_KEYS:
            if _get(tree or {}, key)[0]:
                raise GridError(
                    f"{where}.{key}: this key is set per run by the workflow (from datasets.*.label_counts, "
                    "split_seeds, seeds, settings.*.methods and the resources' threads); remove it"
                )
    for dataset, spec in config["datasets"].items():
        seen = set()
        for i, entry in enumerate(spec.get("user_splits") or []):
            where = f"datasets.{dataset}.user_splits[{i}]"
            key = (int(entry["labels"]), int(entry.get("split", 0)))
            if key in seen:
                raise GridError(f"{where}: a second list pair for labels={key[0]}, split={key[1]}")
            seen.add(key)
            for side in ("labeled", "unlabeled"):
                if not Path(entry[side]).is_file():
                    raise GridError(f"{where}.{side}: file not found: {entry[side]}")
            n = sum(1 for line in Path(entry["labeled"]).read_text().splitlines() if line.strip())
            if n != key[0]:
                raise GridError(f"{where}.labeled: {entry['labeled']} lists {n} images, but labels is {key[0]}")
    runs = expand_runs(config)
    if not runs:
        raise GridError("settings: no setting is enabled, or an enabled setting has no methods/label counts/seeds")
    if "multi_domain" in enabled_settings(config):
        check_pairings(config)
    seen_kinds = set()
    for run in runs:
        kind = (run.dataset, run.setting, run.method)
        if kind in seen_kinds:  # the grid point only adds counts, seeds and list paths
            continue
        seen_kinds.add(kind)
        members = run_domains(config, run)
        sources = ", ".join(f"datasets.{d}.cct" for d in members)
        where = f"cct config of {run.path} (from cct, {sources}, settings.{run.setting}.cct)"
        try:
            tree = workflow_run_config(config, run)  # paths only; nothing is read
            for member, data in zip(members, [tree.get("data") or {}, *tree.get("extra_domains", [])]):
                if data.get("dataset", "embedded") != "embedded" and data.get("root") is None:
                    how = (f"set datasets.{member}.cct.data.root (each dataset of a pairing has its own root: give them "
                           "in a second --configfile, see config/paper/multidomain.yaml)" if run.setting == "multi_domain"
                           else f"run with --config data_root=/path/to/it or set datasets.{member}.cct.data.root")
                    raise GridError(f"data.root is not set for the {data['dataset']!r} dataset: {how}")
            if validate_cct is not None:
                validate_cct(tree)
        except ValueError as exc:
            raise GridError(f"{where}: {exc}") from exc
    checked = set()
    for dataset, seed in weak_pipelines(runs):
        cam_places = [("settings.weak_labels.cam", config["settings"].get("weak_labels", {}).get("cam")),
                      (f"datasets.{dataset}.cam", config["datasets"][dataset].get("cam"))]
        for where, tree in cam_places:
            if _get(tree or {}, "train.seed")[0]:
                raise GridError(f"{where}.train.seed: the CAM classifier of training seed s is trained with seed s; remove it")
        if dataset in checked or validate_cam is None:
            continue
        checked.add(dataset)
        try:
            validate_cam(cam_config(config, dataset, seed))
        except ValueError as exc:
            raise GridError(
                f"CAM config of {dataset} (from datasets.{dataset}.cct.data, settings.weak_labels.cam, "
                f"datasets.{dataset}.cam): {exc}"
            ) from exc
    return runs


def check_pairings(config: Mapping[str, Any]) -> None:
    """A joint run trains one model with one model/loss/optim/train config, its first member's: the
    members of a pairing must agree on every cct section but ``data``."""
    for name, members in pairings(config).items():
        first = base_cct(config, members[0], "multi_domain")
        for member in members[1:]:
            other = base_cct(config, member, "multi_domain")
            for section in sorted((set(first) | set(other)) - {"data"}):
                if first.get(section, {}) != other.get(section, {}):
                    raise GridError(
                        f"datasets.{member}.cct.{section}: differs from datasets.{members[0]}.cct.{section}, but the "
                        f"joint runs of pairing {name!r} train one model with one {section} config: set these keys "
                        "in cct or settings.multi_domain.cct (only data may differ per dataset)"
                    )


def dump_yaml(path: str | Path, tree: Mapping[str, Any]) -> None:
    """Write a nested mapping as YAML (the run configs the train rule passes to ``cct train --config``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(tree), sort_keys=False))
