# Helpers shared by all rule files (paths, the expanded grid, input functions, final targets).
# The grid logic itself is plain Python in analysis/grid.py (tested in tests/workflow/).

import os
import re
import shlex
import shutil
import sys

from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import DeploymentMethod

ROOT = str(workflow.basedir)  # the folder holding the Snakefile, analysis/ and data/
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Jobs run `cct ...` and `python -m analysis.<module>`. Without --sdm conda/apptainer they use the
# Python environment that runs Snakemake, even when it is not activated (`.venv/bin/snakemake`);
# analysis/ is importable from any working directory. (The prefix runs after a conda activation.)
_deployed = set(workflow.deployment_settings.deployment_method) & {DeploymentMethod.CONDA, DeploymentMethod.APPTAINER}
_escape = lambda text: shlex.quote(text).replace("{", "{{").replace("}", "}}")
shell.prefix(
    "set -euo pipefail; "
    + ("" if _deployed else f'export PATH={_escape(os.path.dirname(sys.executable))}:"$PATH"; ')
    + f"export PYTHONPATH={_escape(ROOT)}"
    + "${{PYTHONPATH:+:$PYTHONPATH}}; "
)

from analysis import grid

try:  # check every cct key before any job starts (skipped where the package is not importable)
    from cct.config import CamRunConfig, from_dict as _validate_cct

    _validate_cam = lambda tree: _validate_cct(tree, kind=CamRunConfig)
except ImportError:
    _validate_cct = _validate_cam = None

try:
    RUNS = grid.check_config(config, _validate_cct, _validate_cam)
except grid.GridError as exc:
    raise WorkflowError(f"Invalid config: {exc}")

# A run whose cct config equals an earlier run's (the ablation's supervised/all at a label count of
# the curve) is not trained again: rule alias copies the canonical run's results into its directory.
CANONICAL = grid.canonical_runs(config, RUNS)  # run -> the run that trains its config
TRAINED = [r for r in RUNS if CANONICAL[r] == r]
ALIASES = {r: c for r, c in CANONICAL.items() if r != c}

WEAK = grid.weak_pipelines(RUNS)  # (dataset, seed) of every weak-label pipeline

R = config["results"]
RUN = grid.RUN_PATTERN  # {dataset}/{setting}/{method}/{labels}/split{split}/seed{seed}
RUN_DIR = f"{R}/runs/{RUN}"
SPLIT_DIR = f"{R}/splits/{grid.SPLIT_PATTERN}"  # {dataset}/{labels}/split{split}
WEAK_DIR = f"{R}/weak/{grid.WEAK_PATTERN}"  # {dataset}/seed{seed}: cam/, cams/, pseudo_labels/
PAPER_NUMBERS = config["paper_numbers"] or os.path.join(ROOT, "data", "paper_numbers.csv")
ENV = "../../environment.yml"


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    setting="|".join(grid.SETTINGS),
    method="|".join(grid.METHOD_ORDER),
    labels=r"\d+",
    split=r"\d+",
    seed=r"\d+",


def res(kind, key):
    """A resource of config `resources.<kind>`."""
    return config["resources"][kind][key]


def train_launcher():
    """`cct`, or with more than one GPU per training one process per GPU under torchrun
    (DistributedDataParallel, synchronised batch norm; cct/distributed.py)."""
    gpus = res("train", "gpu")
    if gpus <= 1:
        return "cct"
    return f"python -m torch.distributed.run --standalone --nproc_per_node {gpus} -m cct"


def runs_of(setting=None):
    return [r for r in RUNS if setting is None or r.setting == setting]


def run_files(name, setting=None):
    """`name` (e.g. metrics.json) in every run directory of the grid (or of one setting)."""
    return [f"{R}/runs/{r.path}/{name}" for r in runs_of(setting)]


def train_benchmarks():
    """Benchmarks of the training jobs: aliases are no training and have none."""
    return [f"{R}/benchmarks/train/{r.path}.tsv" for r in TRAINED]


def alias_pattern():
    """Regex of the alias run paths (the {alias} wildcard of rule alias); matches nothing if none."""
    return "|".join(re.escape(r.path) for r in sorted(ALIASES)) or "(?!)"


def canonical_files(wildcards):
    """The canonical run's files that rule alias copies into the alias run's directory."""
    canonical = CANONICAL[grid.Run.from_path(wildcards.alias)]
    return {"metrics": f"{R}/runs/{canonical.path}/metrics.json", "config": f"{R}/runs/{canonical.path}/config.yaml"}


def copy_alias(input, output, log):
    """Rule alias: copy the canonical run's files and name it in the log."""
    for name in ("metrics", "config"):
        shutil.copyfile(input[name], output[name])
    with open(log, "w") as handle:
        handle.write(f"alias of {os.path.dirname(input.metrics)}: same cct config; copied, not trained\n")


def run_cct_config(wildcards):
    """The cct config of the run named by the wildcards (written to its overrides.yaml)."""
    return grid.workflow_run_config(config, grid.Run.from_wildcards(wildcards))


def run_lists(wildcards):
    """The split lists a run trains on: its dataset's, or every member's (a joint run)."""
    lists = grid.run_split_lists(config, grid.Run.from_wildcards(wildcards))
    return [path for pair in lists.values() for path in (pair["labeled"], pair["unlabeled"])]


def user_lists(wildcards):
    """The user's list pair for this split (validated and copied), or nothing (drawn by cct)."""
    entry = grid.user_split(config, wildcards.dataset, int(wildcards.labels), int(wildcards.split))
    return [entry["labeled"], entry["unlabeled"]] if entry else []


def split_source(wildcards, input):
    if input.lists:
        return "--from-lists " + " ".join(shlex.quote(p) for p in input.lists)
    return f"--n-labeled {int(wildcards.labels)} --split-seed {int(wildcards.split)}"


def pairing_args(wildcards):
    """`--pairing NAME=A,B ...` for the multi-domain table and figure (which datasets a pairing joins);
    nothing for the other settings."""
    if wildcards.setting != "multi_domain":
        return ""
    pairs = [f"{name}={','.join(members)}" for name, members in grid.pairings(config).items()]
    return " ".join(f"--pairing {shlex.quote(pair)}" for pair in pairs)


def weak_inputs(wildcards):
    """The pseudo labels a run trains on (cct_weak runs), else nothing."""
    if wildcards.method != "cct_weak":
        return []
    return [grid.weak_paths(config, wildcards.dataset, wildcards.seed)["pseudo_labels"]]


def weak_summaries():
    return [f"{R}/weak/{grid.WEAK_PATTERN.format(dataset=d, seed=s)}/pseudo_labels.json" for d, s in WEAK]


def cam_metrics():
    return [f"{R}/weak/{grid.WEAK_PATTERN.format(dataset=d, seed=s)}/cam/metrics.json" for d, s in WEAK]


def weak_figure_inputs(wildcards):
    """The first seed's weak pipeline of the dataset and the checkpoint of its first cct_weak run."""
    run = min(r for r in TRAINED if r.dataset == wildcards.dataset and r.method == "cct_weak")
    paths = grid.weak_paths(config, run.dataset, run.seed)
    return {
        "cam_config": f"{paths['root']}/cam.yaml",
        "cams": paths["cams"],
        "pseudo": paths["pseudo_labels"],
        "checkpoint": f"{R}/runs/{run.path}/checkpoint.pt",
        "unlabeled": grid.split_lists(config, run.dataset, run.labels, run.split)["unlabeled"],
    }


def final_outputs():
    outputs = [f"{R}/tables/runs.csv", f"{R}/tables/runtime.csv", f"{R}/tables/runtime.md"]
    for setting in grid.enabled_settings(config):
        outputs += [f"{R}/tables/{setting}.{ext}" for ext in ("csv", "md", "tex")]
        outputs += [f"{R}/plots/{setting}.{ext}" for ext in ("png", "pdf")]
        outputs += [f"{R}/plots/{setting}_curves.{ext}" for ext in ("png", "pdf")]
    if WEAK:
        outputs += [f"{R}/tables/pseudo_labels.{ext}" for ext in ("csv", "md")]
        outputs += [f"{R}/plots/weak_labels_examples_{d}.{ext}" for d in sorted({d for d, _ in WEAK}) for ext in ("png", "pdf")]
    return outputs
