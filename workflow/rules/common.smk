# Helpers shared by all rule files (paths, the expanded grid, input functions, final targets).
# The grid logic itself is plain Python in analysis/grid.py (tested in tests/workflow/).

import os
import shlex
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
    from cct.config import from_dict as _validate_cct
except ImportError:
    _validate_cct = None

try:
    RUNS = grid.check_config(config, _validate_cct)
except grid.GridError as exc:
    raise WorkflowError(f"Invalid config: {exc}")

R = config["results"]
RUN = grid.RUN_PATTERN  # {dataset}/{setting}/{method}/{labels}/split{split}/seed{seed}
RUN_DIR = f"{R}/runs/{RUN}"
SPLIT_DIR = f"{R}/splits/{{dataset}}/{{labels}}/split{{split}}"
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


def runs_of(setting=None):
    return [r for r in RUNS if setting is None or r.setting == setting]


def run_files(name, setting=None):
    """`name` (e.g. metrics.json) in every run directory of the grid (or of one setting)."""
    return [f"{R}/runs/{r.path}/{name}" for r in runs_of(setting)]


def train_benchmarks():
    return [f"{R}/benchmarks/train/{r.path}.tsv" for r in RUNS]


def split_lists(wildcards):
    """The labelled and unlabelled lists a run reads."""
    split_dir = SPLIT_DIR.format(**wildcards)
    return {"labeled": f"{split_dir}/labeled.txt", "unlabeled": f"{split_dir}/unlabeled.txt"}


def run_cct_config(wildcards):
    """The cct config of the run named by the wildcards (written to its overrides.yaml)."""
    lists = split_lists(wildcards)
    return grid.run_config(config, grid.Run.from_wildcards(wildcards), lists["labeled"], lists["unlabeled"])


def user_lists(wildcards):
    """The user's list pair for this split (validated and copied), or nothing (drawn by cct)."""
    entry = grid.user_split(config, wildcards.dataset, int(wildcards.labels), int(wildcards.split))
    return [entry["labeled"], entry["unlabeled"]] if entry else []


def split_source(wildcards, input):
    if input.lists:
        return "--from-lists " + " ".join(shlex.quote(p) for p in input.lists)
    return f"--n-labeled {int(wildcards.labels)} --split-seed {int(wildcards.split)}"


def final_outputs():
    outputs = [f"{R}/tables/runs.csv", f"{R}/tables/runtime.csv", f"{R}/tables/runtime.md"]
    for setting in grid.enabled_settings(config):
        outputs += [f"{R}/tables/{setting}.{ext}" for ext in ("csv", "md", "tex")]
        outputs += [f"{R}/plots/{setting}.{ext}" for ext in ("png", "pdf")]
        outputs += [f"{R}/plots/{setting}_curves.{ext}" for ext in ("png", "pdf")]
    return outputs
