# Helpers of every rule file (the grid of this config, the results layout, job resources, input
# functions and the final targets). The planning itself is plain Python in workflow/planner/ (tested in
# tests/workflow/); every path below comes from its layout (planner/layout.py).

import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import DeploymentMethod

ROOT = str(workflow.basedir)  # the folder holding the Snakefile, analysis/, data/ and workflow/
PLANNER_PARENT = os.path.join(ROOT, "workflow")  # holds the planner package
for _path in (PLANNER_PARENT, ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)


# Jobs run `cct ...` and `python -m analysis.<module>`. Without --sdm conda/apptainer they use the
# Python environment that runs Snakemake, even when it is not activated (`.venv/bin/snakemake`);
# analysis/ and the planner are importable from any working directory. (The prefix runs after a
# conda activation.)
def _escape(text):
    return shlex.quote(text).replace("{", "{{").replace("}", "}}")


_deployed = set(workflow.deployment_settings.deployment_method) & {
    DeploymentMethod.CONDA,
    DeploymentMethod.APPTAINER,
}
shell.prefix(
    "set -euo pipefail; "
    + ("" if _deployed else f'export PATH={_escape(os.path.dirname(sys.executable))}:"$PATH"; ')
    + f"export PYTHONPATH={_escape(ROOT)}:{_escape(PLANNER_PARENT)}"
    + "${{PYTHONPATH:+:$PYTHONPATH}}; "
)

from planner import configs, grid, multi_domain, prepare, weak_labels
from planner.configs import enabled_settings
from planner.layout import RUN, Layout, Run, split_key, weak_key
from planner.vocabulary import METHOD_ORDER, SETTINGS

try:  # check every cct key and dataset before any job starts (skipped where the package is not importable)
    from cct.config import CamRunConfig
    from cct.config import from_dict as _validate_cct
    from cct.data.base import train_size as _data_train_size

    def _validate_cam(tree):
        return _validate_cct(tree, kind=CamRunConfig)

    def _train_size(data):
        """Training images of a dataset's data section (file names and lists only, no image read)."""
        return _data_train_size(_validate_cct({"data": dict(data)}).data)

except ImportError:
    _validate_cct = _validate_cam = _train_size = None

try:
    RUNS = grid.check_config(config, _validate_cct, _validate_cam, _train_size)
except configs.GridError as exc:
    raise WorkflowError(f"Invalid config: {exc}")

# A run whose cct config equals an earlier run's (the ablation's supervised/all at a label count of
# the curve) is not trained again: rule alias copies the canonical run's results into its directory.
CANONICAL = grid.canonical_runs(config, RUNS)  # run -> the run that trains its config
TRAINED = [r for r in RUNS if CANONICAL[r] == r]
ALIASES = {r: c for r, c in CANONICAL.items() if r != c}

WEAK = weak_labels.pipelines(config, RUNS)  # (dataset, seed) of every weak-label pipeline

L = Layout.of(config)  # every path of the results tree
PAPER_NUMBERS = config["paper_numbers"] or os.path.join(ROOT, "data", "paper_numbers.csv")
ENV = "../../environment.yml"


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    setting="|".join(SETTINGS),
    method="|".join(METHOD_ORDER),
    labels=r"\d+",
    split=r"\d+",
    seed=r"\d+",
    domain=r"[A-Za-z0-9]+",
    name=r"[A-Za-z0-9][A-Za-z0-9_-]*",


def threads_of(kind):
    """Cores of a job of config `resources.<kind>` (train, splits, cam, analysis)."""
    return config["resources"][kind]["threads"]


def resources_of(kind):
    """The other resources of a job of config `resources.<kind>`: mem_mb, runtime (minutes), gpu.
    Rules take them as `resources: **resources_of(kind)` beside `threads: threads_of(kind)`."""
    return {key: value for key, value in config["resources"][kind].items() if key != "threads"}


# The shell command of the rules that write a config from their params (`params.text`, YAML):
# a shell, not a `run:` block, which Snakemake 9 executes in a new Snakemake process that parses the
# workflow and builds its DAG again (about 2 s of CPU for each of the grid's 50-odd configs).
WRITE_TEXT = "printf '%s' {params.text:q} > {output:q} 2> {log:q}"


# Snakemake starts the ready jobs of highest priority first (priority 0 without one). Every job a
# training waits for (scenes, pretrained encoder, configs, splits, the CAM classifier, its maps, the
# pseudo labels) goes before every training, or trainings ready earlier would hold it back and the
# runs behind it start late; trainings go longest first (grid.relative_cost), so that the last jobs
# running are short and no core idles at the end.
PREPARE_PRIORITY = 1_000_000


def train_priority(wildcards):
    """A train job's priority: its run's estimated cost (planner.grid.relative_cost)."""
    return grid.relative_cost(run_cct_config(wildcards))


def train_launcher():
    """`cct`, or with more than one GPU per training one process per GPU under torchrun
    (DistributedDataParallel, synchronised batch norm; cct/distributed.py)."""
    gpus = config["resources"]["train"]["gpu"]
    if gpus <= 1:
        return "cct"
    return f"python -m torch.distributed.run --standalone --nproc_per_node {gpus} -m cct"


def threads_per_process():
    """A training's torch threads (cct's train.threads), shared by its processes (one per GPU): from
    the config's resources.train.threads, not the job's {threads}, which Snakemake lowers to --cores
    when that is smaller. The thread count changes a CPU run's numbers (it is part of the run's
    identity), so a run's metrics must not depend on --cores."""
    return max(1, threads_of("train") // max(1, config["resources"]["train"]["gpu"]))


def output_dir(name):
    """A params function: the folder of output `name` (where a command writes it and its siblings)."""
    return lambda wildcards, output: os.path.dirname(output[name])


def run_files(name, setting=None):
    """`name` (e.g. metrics.json) in every run directory of the grid (or of one setting)."""
    return [L.run_file(name, r) for r in RUNS if setting is None or r.setting == setting]


def train_benchmarks():
    """Benchmarks of the training jobs: aliases are no training and have none."""
    return [L.benchmark("train", r.path) for r in TRAINED]


def alias_pattern():
    """Regex of the alias run paths (the {alias} wildcard of rule alias); matches nothing if none."""
    return "|".join(re.escape(r.path) for r in sorted(ALIASES)) or "(?!)"


def canonical_files(wildcards):
    """The canonical run's files that rule alias copies into the alias run's directory."""
    canonical = CANONICAL[Run.from_path(wildcards.alias)]
    return {"metrics": L.run_file("metrics.json", canonical), "config": L.run_file("config.yaml", canonical)}


def run_cct_config(wildcards):
    """The cct config of the run named by the wildcards (written to its overrides.yaml)."""
    return grid.workflow_run_config(config, Run.from_wildcards(wildcards))


def run_prepared(wildcards):
    """What the workflow prepares that a run reads: embedded scenes, a pretrained encoder."""
    return prepare.inputs(config, run_cct_config(wildcards))


def split_prepared(wildcards):
    return prepare.inputs(config, configs.split_config(config, wildcards.dataset))


def cam_prepared(wildcards):
    return prepare.inputs(config, weak_labels.cam_config(config, wildcards.dataset, wildcards.seed))


def run_lists(wildcards):
    """The split lists a run trains on: its dataset's, or every member's (a joint run)."""
    lists = grid.run_split_lists(config, Run.from_wildcards(wildcards))
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
    if wildcards.setting != multi_domain.SETTING:
        return ""
    pairs = [f"{name}={','.join(members)}" for name, members in multi_domain.pairings(config).items()]
    return " ".join(f"--pairing {shlex.quote(pair)}" for pair in pairs)


def weak_inputs(wildcards):
    """The pseudo labels a run trains on (a method that learns from them), else nothing."""
    if not weak_labels.needs_pseudo_labels(wildcards.method):
        return []
    return [weak_labels.pseudo_labels(config, wildcards.dataset, wildcards.seed)]


def weak_summaries():
    return [L.weak_paths(d, s)["summary"] for d, s in WEAK]


def cam_metrics():
    return [f"{L.weak_paths(d, s)['cam']}/metrics.json" for d, s in WEAK]


def weak_figure_inputs(wildcards):
    """The dataset's first run on pseudo labels (its checkpoint) and the weak pipeline it read."""
    run = min(r for r in TRAINED if r.dataset == wildcards.dataset and weak_labels.needs_pseudo_labels(r.method))
    seed = weak_labels.pipeline_seed(config, run.seed)
    paths = L.weak_paths(run.dataset, seed)
    return {
        "prepared": prepare.inputs(config, weak_labels.cam_config(config, run.dataset, seed)),
        "cam_config": paths["config"],
        "cams": paths["cams"],
        "pseudo": paths["pseudo_labels"],
        "checkpoint": L.run_file("checkpoint.pt", run),
        "unlabeled": L.split_lists(run.dataset, run.labels, run.split)["unlabeled"],
    }


def final_outputs():
    outputs = [L.table("runs"), L.table("runtime", "csv"), L.table("runtime", "md")]
    for setting in enabled_settings(config):
        outputs += [L.table(setting, ext) for ext in ("csv", "md", "tex")]
        outputs += [L.plot(setting, ext) for ext in ("png", "pdf")]
        outputs += [L.plot(f"{setting}_curves", ext) for ext in ("png", "pdf")]
    if WEAK:
        outputs += [L.table("pseudo_labels", ext) for ext in ("csv", "md")]
        outputs += [
            L.plot(f"weak_labels_examples_{d}", ext) for d in sorted({d for d, _ in WEAK}) for ext in ("png", "pdf")
        ]
    return outputs
