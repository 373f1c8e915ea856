"""How the workflow side is put together (issue #15, "one place for each idea"): no import circles in
analysis/ and the planner, no torch where the Snakefile or an analysis job imports, the results tree
spelled only in planner/layout.py, and the places a setting is named (the vocabulary, the schema, the
report captions, the figure and table kinds, the tiny test configs) agreeing with each other."""

from __future__ import annotations

import ast
import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate
from workflow_helpers import ROOT, TEST_CONFIGS, load_test_config

from analysis import plots
from cct.model.perturbations import PERTURBATIONS
from planner import grid, vocabulary

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
PACKAGES = {"analysis": ROOT / "analysis", "planner": ROOT / "workflow" / "planner"}


def modules() -> dict[str, Path]:
    """Every module of analysis/ and the planner, by dotted name."""
    return {f"{package}.{path.stem}": path for package, folder in PACKAGES.items()
            for path in sorted(folder.glob("*.py")) if path.stem != "__init__"}


def imports_of(path: Path) -> set[str]:
    """The analysis/planner modules a module imports, at any depth of its code (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules()}
    return found


def test_no_import_circles():
    graph = {name: imports_of(path) for name, path in modules().items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                cycle = trail[trail.index(other):] + [other] if other in trail else [name, other]
                pytest.fail(f"import circle: {' -> '.join(cycle)}")
            if other not in state:
                visit(other, trail + [other])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert "analysis.grid" not in modules()  # the planner is the workflow's (workflow/planner)


def test_the_planner_and_the_analysis_jobs_import_no_torch():
    """torch costs seconds per job: the Snakefile's planner and the analysis scripts must not pull it
    (analysis.weak's figure imports it when drawn, not on import)."""
    code = ("import sys; import planner.grid, planner.layout, planner.vocabulary, analysis.collect, analysis.tables, "
            "analysis.multidomain, analysis.runtime, analysis.weak, analysis.plots; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": f"{ROOT}:{ROOT / 'workflow'}", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# parts of the results tree (planner/layout.py): a folder of the root, or a run/split/weak key field
_TREE = re.compile(r"(?:^|/|\})(?:runs|splits|weak|resume|benchmarks|logs|tables|plots)/|/split\{|/seed\{|^seed\{")


def _strings(tree: ast.AST) -> list[str]:
    """String constants of a module's code, docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_the_results_tree_is_spelled_only_in_the_layout():
    offenders = []
    for name, path in modules().items():
        if name != "planner.layout":
            offenders += [f"{name}: {s!r}" for s in _strings(ast.parse(path.read_text())) if _TREE.search(s)]
    for path in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        code = re.sub(r'"""(?:.|\n)*?"""', "", path.read_text())  # rule docstrings
        for line in code.splitlines():
            if line.strip().startswith("#"):
                continue
            offenders += [f"{path.name}: {s!r}" for s in re.findall(r'"([^"\n]*)"', line) if _TREE.search(s)]
    assert not offenders, "paths of the results tree outside planner/layout.py:\n" + "\n".join(offenders)


def test_the_schema_names_the_vocabularys_settings_and_methods():
    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["settings"]["properties"]
    assert list(schema) == list(vocabulary.SETTINGS)
    for name, setting in vocabulary.SETTINGS_BY_NAME.items():
        block = schema[name]["properties"]
        assert block["methods"]["items"]["enum"] == list(setting.methods), name
        assert set(block["methods"]["default"]) <= set(setting.methods), name
        if setting.labels == "one":
            assert "label_count" in block and "label_counts" not in block, name
        else:
            assert "label_counts" in block and "label_count" not in block, name
    # the schema cannot read the perturbation registry: alone_aux spells its names, kept in step here
    alone = schema["perturbation_ablation"]["properties"]["alone_aux"]["properties"]
    assert list(alone) == list(PERTURBATIONS)


@pytest.mark.parametrize("caption", ["plot.rst", "table.rst"])
def test_every_setting_has_its_own_report_caption(caption):
    """A setting without a branch of its own gets the generic caption (the report still renders); this
    test is what makes the omission loud."""
    text = (ROOT / "workflow" / "report" / caption).read_text()
    branches = re.findall(r'snakemake\.wildcards\.setting == "(\w+)"', text)
    assert sorted(branches) == sorted(vocabulary.SETTINGS), f"workflow/report/{caption}: one branch per setting"
    assert "{%- else -%}" in text  # the generic caption names the setting, never another setting's


def test_every_figure_and_table_kind_is_drawn():
    assert set(plots.FIGURES) == set(vocabulary.FIGURES)
    assert set(plots.PLOTS) == set(vocabulary.SETTINGS)
    assert {s.table for s in vocabulary.SETTINGS_BY_NAME.values()} <= set(vocabulary.TABLES)


@pytest.mark.parametrize("name", sorted(p.stem for p in TEST_CONFIGS.glob("*.yaml")))
def test_the_tiny_test_configs_are_valid_grids(name):
    config = copy.deepcopy(load_test_config(name))
    validate(config, str(SCHEMA))
    assert grid.check_config(config)
