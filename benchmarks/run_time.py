"""Where the time of a whole ``cct train`` run goes: start-up, data preparation, loading and
augmentation, the training step, evaluation, checkpoints.

    python benchmarks/run_time.py                          # embedded default (supervised and CCT) + paper
    python benchmarks/run_time.py --only embedded --json out.json
    PYTHONPATH=/path/to/other/checkout python benchmarks/run_time.py    # another version of cct, same phases

``benchmarks/step_time.py`` times the step alone; a run also pays for Python and torch to start,
the dataset to be built, every batch to be loaded and augmented, the periodic evaluations and the
checkpoints. Each run here is a fresh process (as a workflow job is), timed from outside, and inside
it these phases are timed by wrapping functions that every version of the package has, so the same
script measures an older checkout too:

* ``start-up``: the interpreter and the imports (``cct.train``, TensorBoard's writer, tqdm);
* ``set-up``: from ``train()`` to the first batch, less data preparation (threads, model, optimizer);
* ``data``: ``cct.train.load_domains`` and ``domain_streams`` (sources, splits, loaders);
* ``loading``: fetching batches from the data loaders (reading and augmentation);
* ``step``: the rest of the loop (forward, backward, SGD, the schedule, logging);
* ``evaluation``: ``cct.evaluate.evaluate`` on the validation set;
* ``checkpoints``: every atomic write (resume state, checkpoint, metrics, config).

Configurations: ``embedded-supervised`` and ``embedded-cct`` are one run of config/config.yaml's
grid at its smallest label count (its model, schedule and data, as the workflow writes them, except
that the data are generated inside the run when the checkout has no ``cct embedded`` cache);
``paper-cct`` is config/paper/voc.yaml's model and loss (random-initialised ResNet-50, crop 320,
batch 2+2 on the CPU) for ``--paper-iterations`` iterations on a generated VOC-layout tree of
500x375 images (``tests/package/layouts.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("start-up", "set-up", "data", "loading", "step", "evaluation", "checkpoints")


def _embedded_tree(mode: str, cache: str | None) -> dict:
    """The run config of the default grid's smallest label count, as the workflow layers it."""
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    dataset = config["datasets"]["embedded"]
    tree = _merge(config.get("cct") or {}, dataset.get("cct") or {})
    tree = _merge(tree, {"train": {"mode": mode, "seed": 0, "progress": False},
                         "data": {"n_labeled": min(dataset["label_counts"])}})
    if cache:
        tree["data"]["root"] = cache
    return tree


def _paper_tree(root: str, iterations: int) -> dict:
    config = yaml.safe_load((ROOT / "config/paper/voc.yaml").read_text())
    paper, data = config["cct"], config["datasets"]["voc"]["cct"]["data"]
    return {"model": paper["model"] | {"pretrained": False}, "loss": paper["loss"], "optim": paper["optim"],
            "data": data | {"root": root, "n_labeled": 8, "num_workers": 0},
            "train": {"mode": "semi", "iterations": iterations, "eval_interval": iterations, "checkpoint_interval":
                      max(1, iterations // 2), "batch_size_labeled": 2, "batch_size_unlabeled": 2, "seed": 0,
                      "progress": False, "device": "cpu"}}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --------------------------------------------------------------------------------------------------
# The child: one run, its phases timed from inside


def child(tree: dict, threads: int) -> dict:
    t_start = time.perf_counter()
    import torch  # noqa: F401  (the imports are the start-up phase)
    import tqdm  # noqa: F401
    from torch.utils.data import dataloader
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401

    import cct.evaluate
    import cct.io
    import cct.train
    from cct.config import from_dict

    spent = dict.fromkeys(PHASES, 0.0)
    spent["start-up"] = time.perf_counter() - t_start
    marks: dict[str, float] = {}

    def timed(owner, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            marks.setdefault(phase, t)
            try:
                return original(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - t

        setattr(owner, name, wrapper)

    for name in ("load_domains", "domain_streams"):
        timed(cct.train, name, "data")
    timed(dataloader._SingleProcessDataLoaderIter, "_next_data", "loading")
    timed(cct.train, "evaluate", "evaluation")
    timed(cct.io, "_atomic", "checkpoints")

    config = _config(from_dict, tree, threads)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        metrics = cct.train.train(config, out)
        t1 = time.perf_counter()
    first = marks["loading"]
    spent["set-up"] = first - t0 - spent["data"]
    spent["step"] = (t1 - first) - spent["loading"] - spent["evaluation"] - spent["checkpoints"]
    return {"phases": spent, "iterations": config.train.iterations, "miou": metrics["miou"],
            "child_s": time.perf_counter() - t_start}


def _config(from_dict, tree: dict, threads: int):
    """The run config; keys an older checkout does not know yet (options added since, at their
    defaults in the embedded config) are dropped one by one, so the same tree measures it too."""
    import re

    tree = json.loads(json.dumps(tree))
    while True:
        try:
            return from_dict(tree, [f"train.threads={threads}"])
        except ValueError as exc:
            unknown = re.search(r"unknown config key '([\w.]+)'", str(exc))
            if not unknown:
                raise
            *parents, leaf = unknown.group(1).split(".")
            node = tree
            for part in parents:
                node = node[part]
            del node[leaf]


# --------------------------------------------------------------------------------------------------
# The parent: fresh processes, timed from outside


def measure(name: str, tree: dict, threads: int) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(tree), "--threads", str(threads)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    total = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{name}: the run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["phases"]["start-up"] += total - result["child_s"]  # the interpreter before the first line
    return {"config": name, "total_s": total, **result}


def _cct_version_has_cache() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import cct.data.embedded as e; print(hasattr(e, 'write'))"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["embedded", "paper"], default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (the workflow's: 1)")
    parser.add_argument("--paper-iterations", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child), args.threads)))
        return

    import cct

    print(f"cct from {Path(cct.__file__).parent}, {args.threads} thread(s); seconds per phase of one run")
    with tempfile.TemporaryDirectory() as scratch:
        runs = []
        if args.only in (None, "embedded"):
            cache = None
            if _cct_version_has_cache():  # as the workflow does: the scenes written once, read by every run
                cache = str(Path(scratch) / "embedded")
                subprocess.run([sys.executable, "-m", "cct", "embedded", "--domain", "a", "--out", cache], check=True,
                               capture_output=True)
            runs += [("embedded-supervised", _embedded_tree("supervised", cache)),
                     ("embedded-cct", _embedded_tree("semi", cache))]
        if args.only in (None, "paper"):
            voc = Path(scratch) / "voc"
            subprocess.run([sys.executable, str(ROOT / "tests/package/layouts.py"), "voc", str(voc), "--train", "24",
                            "--extra", "8", "--val", "4", "--size", "375x500"], check=True, capture_output=True)
            runs.append(("paper-cct", _paper_tree(str(voc), args.paper_iterations)))
        print(f"{'config':<20} {'its':>5} {'total':>7} " + " ".join(f"{p:>11}" for p in PHASES))
        results = []
        for name, tree in runs:
            r = measure(name, tree, args.threads)
            results.append(r)
            print(f"{name:<20} {r['iterations']:>5} {r['total_s']:>7.1f} "
                  + " ".join(f"{r['phases'][p]:>11.1f}" for p in PHASES), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
