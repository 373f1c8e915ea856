"""Helpers of the workflow tests: the tiny configs of ``.test/config/`` and a runner for ``snakemake``
on the root Snakefile from a temporary working directory. (The repository root and ``workflow/``,
for ``analysis`` and the planner, are on the path through pyproject.toml's pytest ``pythonpath``.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEST_CONFIGS = ROOT / ".test" / "config"

SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def load_test_config(name: str) -> dict:
    """``.test/config/<name>.yaml``: a whole workflow config (the tiny grids the tests run)."""
    return yaml.safe_load((TEST_CONFIGS / f"{name}.yaml").read_text())


def snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the workflow of this repository with ``workdir`` as working directory (its
    ``config/config.yaml`` is the default config there; results land under it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE")}
    return subprocess.run(
        [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
    )


def write_config(workdir: Path, config: dict, name: str = "config/config.yaml") -> Path:
    path = workdir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
