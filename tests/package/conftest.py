"""Shared fixtures of the package tests: one torch thread, a fixed seed per test, and helpers to run
the ``cct`` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _seed_and_restore_torch_flags():
    """Every test starts from the same torch seed; a test that trains in-process (``cct.train.train``
    switches on deterministic algorithms) does not leak that switch into later tests."""
    torch.manual_seed(0)
    deterministic = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.set_num_threads(1)


def cct_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run_cct(*args: str, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    """``python -m cct ARGS`` with the test interpreter; text output captured."""
    return subprocess.run(
        [sys.executable, "-m", "cct", *args], capture_output=True, text=True, timeout=timeout, env=cct_env(), cwd=cwd
    )


def popen_cct(*args: str, cwd=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cct", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=cct_env(), cwd=cwd,
    )


# Overrides of a run small enough for a 2-core CPU: crop 32, batch 2+2, a narrow encoder.
TINY = [
    "data.crop_size=32",
    "train.batch_size_labeled=2",
    "train.batch_size_unlabeled=2",
    "train.progress=false",
    "model.width=8",
]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A real checkpoint written by ``cct.train.train`` (2 supervised iterations of a narrow model)."""
    from cct.config import from_dict
    from cct.train import train

    out = tmp_path_factory.mktemp("tiny_run")
    deterministic = torch.are_deterministic_algorithms_enabled()
    config = from_dict(None, TINY + ["train.mode=supervised", "train.iterations=2", "train.eval_interval=2"])
    try:
        train(config, out)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return out / "checkpoint.pt"
