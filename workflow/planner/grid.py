"""The experiment grid: which runs a workflow config asks for, and the cct config of each run.

Pure functions of the schema-validated workflow config (a nested mapping, see config/README.md).
``workflow/rules/common.smk`` calls them to expand the DAG; the tests call them to check the
expansion.

A run (:class:`planner.layout.Run`) is one point of datasets x settings x methods x label counts x
split draws x training seeds. Its cct config is the deep merge, later winning, of

1. ``cct`` (shared by every run),
2. ``datasets.<dataset>.cct``,
3. ``settings.<setting>.cct`` (without its ``model.aux`` for a supervised method: :func:`planner.configs.base_cct`),
4. the method (``train.mode`` and the auxiliary decoder counts, :func:`cct.methods.overrides`; a
   perturbation alone at the setting's ``alone_aux`` count of it, :func:`planner.configs.run_aux`),
5. the grid point (labelled/unlabelled lists, label count, split seed, training seed; the pseudo
   labels of a method that learns from them, :mod:`planner.weak_labels`).

The keys of step 5 and ``train.mode`` belong to the grid: a config that sets them in 1-3 is refused.
The multi-domain setting's joint runs train one model over several datasets (:mod:`planner.multi_domain`).

Two runs of different settings can resolve to the same cct config (at a label count of the curve the
ablation's ``supervised`` is the curve's ``supervised``, whatever decoder counts the ablation gives
its other runs, :func:`planner.configs.base_cct`; its ``all`` is the curve's ``cct`` when only its
perturbations alone get other counts, ``alone_aux``); the grid trains such a config once, and the
other run is an alias of it (see :func:`canonical_runs`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from planner import multi_domain, prepare, weak_labels
from planner.configs import (
    GRID_KEYS,
    GridError,
    base_cct,
    dataset_cct,
    datasets_for,
    deep_merge,
    enabled_settings,
    get_key,
    label_counts_for,
    method_overrides,
    run_aux,
    seeds_for,
)
from planner.layout import Layout, Run
from planner.vocabulary import METHOD_ORDER, SETTING_METHODS, SETTINGS


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
        if setting == multi_domain.SETTING:
            runs.update(multi_domain.runs(config))
            continue
        for dataset in datasets_for(config, setting):
            for labels in label_counts_for(config, setting, dataset):
                for split in config["datasets"][dataset]["split_seeds"]:
                    for seed in seeds_for(config, setting):
                        for method in spec["methods"]:
                            runs.add(Run(dataset, setting, method, int(labels), int(split), int(seed)))
    return sorted(runs)


def run_domains(config: Mapping[str, Any] | None, run: Run) -> list[str]:
    """The dataset keys a run trains on: its dataset, or every member of its pairing (joint runs)."""
    return multi_domain.domains(config, run) if multi_domain.is_joint(run) else [run.dataset]


def splits_needed(runs: Iterable[Run], config: Mapping[str, Any] | None = None) -> list[tuple[str, int, int]]:
    """(dataset, labels, split) of every split list the runs read (a joint run reads every member's;
    ``config`` names them and is needed when there are joint runs)."""
    needed = set()
    for run in runs:
        if multi_domain.is_joint(run) and config is None:
            raise ValueError(f"{run.path}: a joint run's split lists depend on its pairing: pass the config")
        for dataset in run_domains(config, run):
            needed.add((dataset, run.labels, run.split))
    return sorted(needed)


def run_split_lists(config: Mapping[str, Any], run: Run) -> dict[str, dict[str, str]]:
    """The split lists a run reads, per dataset key (a joint run: every member's)."""
    layout = Layout.of(config)
    return {d: layout.split_lists(d, run.labels, run.split) for d in run_domains(config, run)}


# --------------------------------------------------------------------------------------------------
# cct configs


def run_config(config: Mapping[str, Any], run: Run, labeled_list: str | None = None,
               unlabeled_list: str | None = None, *,
               lists: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Any]:
    """The nested cct config (overrides of cct's defaults) that one run trains with.

    The split lists are ``labeled_list``/``unlabeled_list``, or ``lists[<dataset key>]`` (a mapping
    with ``labeled`` and ``unlabeled``), which a joint run needs for each member; without either the
    config has no list keys (``cct`` then draws the split itself from n_labeled and split_seed)."""
    if multi_domain.is_joint(run):
        return multi_domain.joint_run_config(config, run, lists)
    if labeled_list is None and lists is not None and run.dataset in lists:
        labeled_list, unlabeled_list = lists[run.dataset]["labeled"], lists[run.dataset]["unlabeled"]
    base = base_cct(config, run.dataset, run.setting, run.method)
    point: dict[str, Any] = {
        "data": {"n_labeled": run.labels, "split_seed": run.split},
        "train": {"seed": run.seed},
    }
    if labeled_list is not None:
        point["data"].update(labeled_list=str(labeled_list), unlabeled_list=str(unlabeled_list))
    point.update(weak_labels.run_keys(config, run))
    aux = run_aux(config, run.setting, run.method, base)
    return deep_merge(base, method_overrides(run.method, aux), point)


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


def user_split(config: Mapping[str, Any], dataset: str, labels: int, split: int) -> dict[str, Any] | None:
    """The user's list pair for (dataset, labels, split), or None when the split is drawn by ``cct splits``."""
    for entry in config["datasets"][dataset].get("user_splits") or []:
        if int(entry["labels"]) == int(labels) and int(entry.get("split", 0)) == int(split):
            return entry
    return None


def yaml_text(tree: Mapping[str, Any]) -> str:
    """A nested mapping as YAML text: the one form of the configs the rules write from their params
    (a run's ``overrides.yaml``, a dataset's split config, a CAM config, a pretrained encoder's)."""
    return yaml.safe_dump(dict(tree), sort_keys=False)


# --------------------------------------------------------------------------------------------------
# Checks that run before any job starts


def check_config(config: Mapping[str, Any], validate_cct: Callable[[dict], Any] | None = None,
                 validate_cam: Callable[[dict], Any] | None = None,
                 train_size: Callable[[dict], int] | None = None) -> list[Run]:
    """Expand the grid and check what the schema cannot; raise GridError naming the key.

    ``validate_cct``, when given (``cct.config.from_dict``), builds each distinct run config so that
    an unknown or ill-typed cct key fails here, not in the middle of a grid; ``validate_cam`` does
    the same for the CAM configs of the weak-label setting. ``train_size``, when given (a dataset's
    data section -> its number of training images, counted from file names:
    ``cct.data.base.train_size``), checks that every dataset's root exists and holds at least as many
    training images as its label counts ask for (more, for a semi-supervised method), so that
    ``snakemake -n`` fails on them rather than the first job.
    """
    places = [("cct", config.get("cct"))]
    places += [(f"datasets.{d}.cct", spec.get("cct")) for d, spec in config["datasets"].items()]
    places += [(f"settings.{s}.cct", spec.get("cct")) for s, spec in config["settings"].items()]
    for where, tree in places:
        for key in GRID_KEYS:
            if get_key(tree or {}, key)[0]:
                raise GridError(
                    f"{where}.{key}: this key is set per run by the workflow (from datasets.*.label_counts, "
                    "split_seeds, seeds, settings.*.methods and the resources' threads); remove it"
                )
    _check_user_splits(config)
    runs = expand_runs(config)
    if not runs:
        raise GridError("settings: no setting is enabled, or an enabled setting has no methods/label counts/seeds")
    if multi_domain.SETTING in enabled_settings(config):
        multi_domain.check_pairings(config)
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
            if validate_cct is not None:  # with the thread count the job will pass (cct range-checks it)
                validate_cct(deep_merge(tree, {"train": {"threads": _train_threads(config)}}))
            for member, data in zip(members, [tree.get("data") or {}, *tree.get("extra_domains", [])], strict=True):
                if data.get("dataset", "embedded") != "embedded" and data.get("root") is None:
                    how = (multi_domain.missing_root_hint(member) if run.setting == multi_domain.SETTING
                           else f"run with --config data_root=/path/to/it or set datasets.{member}.cct.data.root")
                    raise GridError(f"data.root is not set for the {data['dataset']!r} dataset: {how}")
        except ValueError as exc:
            raise GridError(f"{where}: {exc}") from exc
    weak_labels.check(config, runs, validate_cam)
    _check_paths(config)
    _check_roots(config, runs)
    if train_size is not None:
        _check_label_counts(config, runs, train_size)
    prepare.check(config, sorted({d for run in runs for d in run_domains(config, run)}), validate_cct)
    return runs


def _train_threads(config: Mapping[str, Any]) -> int:
    """cct's train.threads of a training job: resources.train.threads shared by its processes (GPUs)."""
    resources = config["resources"]["train"]
    return max(1, int(resources["threads"]) // max(1, int(resources["gpu"])))


def _check_paths(config: Mapping[str, Any]) -> None:
    """The results folder is a folder (or can be made), the paper numbers a file when given."""
    results = Path(str(config["results"]))
    if not str(config["results"]).strip():
        raise GridError("results: an empty string is not a folder; give a folder (default: results)")
    if results.exists() and not results.is_dir():
        raise GridError(f"results: {results} is a file, not a folder")
    existing = next(p for p in [results, *results.absolute().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise GridError(f"results: {results} cannot be written ({existing} is not a writable folder)")
    numbers = config.get("paper_numbers")
    if numbers is not None and not Path(str(numbers)).is_file():
        raise GridError(f"paper_numbers: {numbers} is not a file (null: the bundled data/paper_numbers.csv)")


def root_key(config: Mapping[str, Any], dataset: str) -> str:
    """The config key a dataset's data root comes from (``datasets.<d>.cct.data.root``, ``cct.data.root``
    or ``data_root``), for messages."""
    if get_key(config["datasets"][dataset].get("cct") or {}, "data.root")[0]:
        return f"datasets.{dataset}.cct.data.root"
    if get_key(config.get("cct") or {}, "data.root")[0]:
        return "cct.data.root"
    return "data_root"


def _dataset_keys(config: Mapping[str, Any], runs: Iterable[Run]) -> list[str]:
    return sorted({d for run in runs for d in run_domains(config, run)})


def _check_roots(config: Mapping[str, Any], runs: Iterable[Run]) -> None:
    """Every real dataset's root the runs read exists (the embedded dataset's may be a folder a job
    writes, so it is not checked here)."""
    for dataset in _dataset_keys(config, runs):
        data = dataset_cct(config, dataset).get("data") or {}
        root = data.get("root")
        if root is None or data.get("dataset", "embedded") == "embedded":
            continue
        path = Path(str(root)).expanduser()
        if not path.is_dir():
            what = "is a file, not a folder" if path.exists() else "not found"
            raise GridError(f"{root_key(config, dataset)}: {root} {what} (the root of dataset {dataset!r})")


def _check_label_counts(config: Mapping[str, Any], runs: Iterable[Run], train_size: Callable[[dict], int]) -> None:
    """Each run's label count is at most its datasets' training images (below it for a method that
    needs unlabelled images)."""
    sizes: dict[str, int] = {}
    for run in runs:
        semi = run.method not in ("supervised", "joint_supervised")
        for dataset in run_domains(config, run):
            if dataset not in sizes:
                data = dataset_cct(config, dataset).get("data") or {}
                try:
                    sizes[dataset] = train_size(data)
                except ValueError as exc:
                    raise GridError(f"datasets.{dataset}: {exc}") from exc
            size = sizes[dataset]
            if run.labels > size or (semi and run.labels == size):
                raise GridError(
                    f"{_labels_key(config, run, dataset)}: {run.labels} labelled images, but dataset {dataset!r} has "
                    f"{size} training images" + (" and a semi-supervised method needs unlabelled ones"
                                                 if run.labels == size else "")
                    + f" (run {run.path}); give at most {size - 1 if semi else size}"
                )


def _labels_key(config: Mapping[str, Any], run: Run, dataset: str) -> str:
    """The config key a run's label count comes from."""
    spec = config["settings"][run.setting]
    for key in ("label_counts", "label_count"):
        if spec.get(key):
            return f"settings.{run.setting}.{key}"
    return f"datasets.{dataset}.label_counts"


def _check_user_splits(config: Mapping[str, Any]) -> None:
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
            try:
                text = Path(entry["labeled"]).read_bytes().decode("utf-8-sig")
            except (OSError, UnicodeDecodeError) as exc:
                raise GridError(f"{where}.labeled: {entry['labeled']} is not a readable UTF-8 list ({exc})") from None
            n = sum(1 for line in text.splitlines() if line.strip())
            if n != key[0]:
                raise GridError(f"{where}.labeled: {entry['labeled']} lists {n} images, but labels is {key[0]}")


# Per-iteration cost of a run relative to a supervised one, measured on the embedded default
# (docs/embedded-benchmark.md, one thread): the unlabelled batch doubles it (a second encoder pass),
# each auxiliary decoder adds about 8%, pseudo-labelled auxiliary decoders about 30%, every domain
# of a joint run pays all of it again. Only the order matters: it is the train jobs' priority.
UNLABELLED_COST, AUX_COST, WEAK_COST = 1.0, 0.08, 0.3


def relative_cost(tree: Mapping[str, Any]) -> float:
    """Estimated cost of a run whose cct overrides are ``tree`` (as :func:`run_config` returns), in
    supervised iterations of one domain: the ``priority`` of its train job, so that Snakemake starts
    the longest runs first and the workflow does not end on one long run with the other cores idle.
    The tree is resolved by cct itself (``from_dict``), so keys it leaves out count at cct's defaults."""
    from cct.config import from_dict  # imports no torch

    run = from_dict(dict(tree))
    per_domain = 1.0
    if run.train.mode != "supervised":
        per_domain += UNLABELLED_COST + AUX_COST * sum(vars(run.model.aux).values())
        if run.weak.pseudo_labels is not None:
            per_domain += WEAK_COST
    return round(len(run.domains) * per_domain * run.train.iterations, 1)
