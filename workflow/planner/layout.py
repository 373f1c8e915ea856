"""The results tree, spelled once.

Everything the workflow writes lies under the config's ``results`` folder:

    runs/{dataset}/{setting}/{method}/{labels}/split{split}/seed{seed}/   one run (Run.path)
    splits/{dataset}/dataset.yaml                                        what `cct splits` reads
    splits/{dataset}/{labels}/split{split}/{labeled,unlabeled}.txt       a split draw's lists
    weak/{dataset}/seed{seed}/                                           a weak-label pipeline
    data/embedded/embedded-{domain}-{split}.npz                          the embedded scenes, written once
    pretrained/{name}/                                                   an encoder pretrained by the workflow
    resume/<run>/, resume/weak/{dataset}/seed{seed}/                     resumable training state
    benchmarks/<rule>/<key>.tsv, logs/<rule>/<key>.log                   per job
    tables/<name>.<ext>, plots/<name>.<ext>                              the analysis' outputs

The rule files (through ``workflow/rules/common.smk``), the planner and ``analysis/`` build every
path from :class:`Layout` and parse one back with :meth:`Run.from_path` or :func:`weak_key_of`;
no other module spells a part of this tree. Called without the values of a key, a :class:`Layout`
method returns the Snakemake pattern (``{dataset}``, ``{seed}``, ... as wildcards).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The keys of the tree: a run, a split draw, a weak-label pipeline (its dataset and training seed:
# the CAM classifier of training seed s is trained with seed s).
RUN = "{dataset}/{setting}/{method}/{labels}/split{split}/seed{seed}"
SPLIT = "{dataset}/{labels}/split{split}"
WEAK = "{dataset}/seed{seed}"
_NUMBERS = ("labels", "split", "seed")  # the fields that are integers


def _regex(pattern: str) -> str:
    """A key pattern as a regex with a named group per field (integers: digits; names: no slash)."""
    parts = re.split(r"\{(\w+)\}", pattern)  # literal, field, literal, field, ...
    fields = {name: r"\d+" if name in _NUMBERS else r"[^/]+" for name in parts[1::2]}
    return "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>{fields[part]})" for i, part in enumerate(parts))


# a run directory, a file in it (``.../seed0/metrics.json``) or a benchmark of it (``.../seed0.tsv``)
_RUN_RE = re.compile(rf"(?:^|/){_regex(RUN)}(?:\.[A-Za-z0-9]+|/[^/]+)?$")
_WEAK_RE = re.compile(rf"(?:^|/){_regex(WEAK)}(?:/|\.|$)")


@dataclass(frozen=True, order=True)
class Run:
    """One point of datasets x settings x methods x label counts x split draws x training seeds."""

    dataset: str
    setting: str
    method: str
    labels: int
    split: int
    seed: int

    @property
    def path(self) -> str:
        """Relative run path, e.g. ``embedded/label_fraction/cct/20/split0/seed1``."""
        return RUN.format(**self.__dict__)

    @classmethod
    def from_wildcards(cls, wc: Any) -> Run:
        return cls(wc.dataset, wc.setting, wc.method, int(wc.labels), int(wc.split), int(wc.seed))

    @classmethod
    def from_path(cls, path: str | Path) -> Run:
        """Parse a run directory, a file in it (``.../seed0/metrics.json``) or a benchmark (``.../seed0.tsv``)."""
        match = _RUN_RE.search(Path(path).as_posix())
        if not match:
            raise ValueError(f"{path}: not a run path (expected .../{RUN}[/file])")
        g = match.groupdict()
        return cls(g["dataset"], g["setting"], g["method"], int(g["labels"]), int(g["split"]), int(g["seed"]))


def split_key(dataset: Any = "{dataset}", labels: Any = "{labels}", split: Any = "{split}") -> str:
    return SPLIT.format(dataset=dataset, labels=labels, split=split)


def weak_key(dataset: Any = "{dataset}", seed: Any = "{seed}") -> str:
    return WEAK.format(dataset=dataset, seed=seed)


def weak_key_of(path: str | Path) -> tuple[str, int]:
    """(dataset, seed) of a path under ``{results}/weak/{dataset}/seed{seed}`` (its last such part)."""
    match = None
    for match in _WEAK_RE.finditer(Path(path).as_posix()):  # noqa: B007 (the last match is the one)
        pass
    if match is None:
        raise ValueError(f"{path}: not under .../{WEAK}/")
    return match["dataset"], int(match["seed"])


def _run_key(run: Run | str) -> str:
    return run.path if isinstance(run, Run) else run


@dataclass(frozen=True)
class Layout:
    """The results tree under one root (the workflow config's ``results``)."""

    results: str

    @classmethod
    def of(cls, config: Any) -> Layout:
        return cls(str(config["results"]))

    # runs: ``run`` is a Run, a run key (``{alias}``) or, by default, the wildcard pattern
    def run_dir(self, run: Run | str = RUN) -> str:
        return f"{self.results}/runs/{_run_key(run)}"

    def run_file(self, name: str, run: Run | str = RUN) -> str:
        return f"{self.run_dir(run)}/{name}"

    def resume_dir(self, run: Run | str = RUN) -> str:
        """A training's resume state: outside the run directory (Snakemake deletes declared outputs)."""
        return f"{self.results}/resume/{_run_key(run)}"

    # splits
    def split_config(self, dataset: Any = "{dataset}") -> str:
        return f"{self.results}/splits/{dataset}/dataset.yaml"

    def split_dir(self, dataset: Any = "{dataset}", labels: Any = "{labels}", split: Any = "{split}") -> str:
        return f"{self.results}/splits/{split_key(dataset, labels, split)}"

    def split_lists(self, dataset: Any = "{dataset}", labels: Any = "{labels}",
                    split: Any = "{split}") -> dict[str, str]:
        """The labelled and unlabelled lists of a split draw."""
        split_dir = self.split_dir(dataset, labels, split)
        return {"labeled": f"{split_dir}/labeled.txt", "unlabeled": f"{split_dir}/unlabeled.txt"}

    # the weak-label pipeline of a dataset and training seed
    def weak_dir(self, dataset: Any = "{dataset}", seed: Any = "{seed}") -> str:
        return f"{self.results}/weak/{weak_key(dataset, seed)}"

    def weak_paths(self, dataset: Any = "{dataset}", seed: Any = "{seed}") -> dict[str, str]:
        """Its folder (root), CAM config (cam.yaml), CAM classifier (cam/), class activation maps
        (cams/), pseudo labels (pseudo_labels/) and their quality (pseudo_labels.json)."""
        root = self.weak_dir(dataset, seed)
        return {"root": root, "config": f"{root}/cam.yaml", "cam": f"{root}/cam", "cams": f"{root}/cams",
                "pseudo_labels": f"{root}/pseudo_labels", "summary": f"{root}/pseudo_labels.json"}

    def weak_resume_dir(self, dataset: Any = "{dataset}", seed: Any = "{seed}") -> str:
        return f"{self.results}/resume/weak/{weak_key(dataset, seed)}"

    # what is prepared once for many runs (planner.prepare)
    def embedded_dir(self) -> str:
        return f"{self.results}/data/embedded"

    def embedded_files(self, domain: Any = "{domain}") -> list[str]:
        """The files ``cct embedded --domain <domain>`` writes (its train and val scenes; their names
        are the package's, :func:`cct.data.embedded.cache_file`)."""
        from cct.data.embedded import SPLIT_SIZES, cache_file

        return [str(cache_file(self.embedded_dir(), split, domain)) for split in SPLIT_SIZES]

    def pretrained_file(self, name: str, encoder: Any = "{name}") -> str:
        return f"{self.results}/pretrained/{encoder}/{name}"

    def pretrained_resume_dir(self, encoder: Any = "{name}") -> str:
        return f"{self.results}/resume/pretrained/{encoder}"

    # the analysis' outputs
    def table(self, name: str = "{setting}", ext: str = "csv") -> str:
        return f"{self.results}/tables/{name}.{ext}"

    def plot(self, name: str = "{setting}", ext: str = "png") -> str:
        return f"{self.results}/plots/{name}.{ext}"

    # per job
    def log(self, rule: str, key: str | None = None) -> str:
        return f"{self.results}/logs/{rule}.log" if key is None else f"{self.results}/logs/{rule}/{key}.log"

    def benchmark(self, rule: str, key: str) -> str:
        return f"{self.results}/benchmarks/{rule}/{key}.tsv"
