"""The training engine: what every trainer of the suite does around its step.

:func:`cct.train.train` (CCT), :func:`cct.weak.cam.train_cam` (the CAM classifier) and
``benchmarks/`` share these pieces, so each of them reads as set-up, loop, evaluation, artefacts:

- :func:`setup`: threads, device, determinism on the CPU, the allocator setting, torchrun's context;
- :func:`seed_step`: the per-iteration seed of the step's own randomness (perturbations, dropout);
- :class:`StopFlag` / :class:`Interrupted`: SIGTERM and SIGINT turned into "save, then stop";
- :class:`ResumeState`: the training state saved atomically every few iterations and loaded back
  when its config is the run's, so a killed run continues where it stopped;
- :func:`set_poly_lr`: the poly learning-rate schedule of the paper;
- :class:`LossLog`: running means of the loss terms, read every few iterations, with the guard
  that stops a run whose loss became NaN or infinite;
- :func:`save_checkpoint` / :func:`load_checkpoint`: the format of a ``cct train`` checkpoint.
"""

from __future__ import annotations

import logging
import platform
import signal
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

import cct
from cct import distributed, host
from cct.config import ConfigError, from_dict
from cct.io import atomic_torch_save, first_line, read_checkpoint

log = logging.getLogger("cct.engine")


def versions() -> dict[str, str]:
    """Versions recorded next to every result."""

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cct": cct.__version__,
        "torch": torch.__version__,
        "torchvision": installed("torchvision"),  # read without importing it (seconds: torch._dynamo)
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def pick_device(name: str) -> torch.device:
    """``train.device`` (auto | cpu | cuda) as a device; ConfigError when CUDA is asked for but absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def setup(device: str, threads: int, compiled: bool = False) -> distributed.Context:
    """Set up this process for training: ``threads`` intra-op threads; on CUDA cuDNN's autotuner (speed
    over bitwise reproducibility); on the CPU deterministic algorithms (a fixed seed gives identical
    metrics) and freed memory kept on the heap (:mod:`cct.host`). Under torchrun, the process group
    and this rank's device (:mod:`cct.distributed`). ``compiled``: the run uses torch.compile. Returns
    the process's context."""
    torch.set_num_threads(threads)
    ctx = distributed.setup(pick_device(device).type)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        _deterministic(compiled)
        host.keep_freed_memory()
    return ctx


def _deterministic(compiled: bool) -> None:
    """``torch.use_deterministic_algorithms(True)``. Its public form also sets the flag of
    torch.compile's generated code, importing ``torch._inductor.config`` (900 modules, 2.4 s of every
    run's start on this machine); without torch.compile only the flag of the eager kernels is
    needed, which is what it sets in ``torch._C``."""
    eager_only = getattr(torch._C, "_set_deterministic_algorithms", None)
    if compiled or eager_only is None:
        torch.use_deterministic_algorithms(True)
    else:
        eager_only(True, warn_only=False)


def iteration_seed(seed: int, iteration: int) -> int:
    """The seed of iteration ``iteration`` of a run seeded ``seed``."""
    return int(np.random.default_rng([seed, 0xCC7, iteration]).integers(2**62))


def seed_step(seed: int, iteration: int, device: torch.device) -> None:
    """Seed the generator the step draws from (perturbations, dropout) for ``iteration``: resuming at
    iteration i reproduces the uninterrupted run. The CPU generator directly (``torch.manual_seed``
    would also queue the lazy seeding of every CUDA/XPU/MTIA generator, formatting a stack trace for
    each: milliseconds per call on a CPU-only process), and the device's own on CUDA."""
    s = iteration_seed(seed, iteration)
    torch.default_generator.manual_seed(s)
    if device.type == "cuda":
        torch.cuda.manual_seed(s)


def set_poly_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], iteration: int, total: int,
                power: float) -> None:
    """Poly schedule: every parameter group's rate is its base rate times (1 - iteration/total)^power."""
    factor = (1 - iteration / total) ** power
    for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = lr * factor


class StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked between iterations, so the state can be saved."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(RuntimeError):
    """Training stopped by a signal after saving its resume state."""


class ResumeState:
    """The training state of a run in ``directory/state.pt``: model and optimizer state, the
    iteration reached, the evaluation history, the wall time so far, and the run's config.

    :meth:`load` restores it into the model and optimizer when ``identity`` of its config equals
    ``identity`` of the run's config (``identity`` drops keys that change how a run executes but
    not its numbers), and starts over otherwise. :meth:`save` writes it atomically."""

    def __init__(self, directory: str | Path, config: dict, identity: Callable[[dict], Any] = lambda c: c) -> None:
        self.path = Path(directory) / "state.pt"
        self.config, self.identity = config, identity
        self._t0 = time.perf_counter()
        self.elapsed = 0.0

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> tuple[int, list]:
        """(iteration to start at, evaluation history so far); (0, []) without a usable state."""
        self._t0 = time.perf_counter()
        if not self.path.is_file():
            return 0, []
        state = torch.load(self.path, map_location=device, weights_only=True)
        if self.identity(state["config"]) != self.identity(self.config):
            log.warning("ignoring %s: it was written by a different config", self.path)
            return 0, []
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        self.elapsed = state["elapsed"]
        log.info("resuming from %s at iteration %d", self.path, state["iteration"])
        return state["iteration"], state["history"]

    def wall_time(self) -> float:
        """Seconds of training so far, earlier runs of a resumed training included."""
        return self.elapsed + time.perf_counter() - self._t0

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, iteration: int, history: list) -> None:
        atomic_torch_save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
             "history": history, "elapsed": self.wall_time(), "config": self.config},
            self.path,
        )


class LossLog:
    """Running means of a step's loss terms (0-dim tensors), summed on the device and read every
    ``every`` iterations, so the other steps need no host sync. :meth:`add` returns the means at a
    reading and raises FloatingPointError naming ``hint`` when one is not finite."""

    def __init__(self, every: int, total: int, hint: str) -> None:
        self.every, self.total, self.hint = every, total, hint
        self._sums: dict[str, torch.Tensor | float] = {}
        self._n = 0

    def add(self, terms: dict[str, torch.Tensor], step: int) -> dict[str, float] | None:
        """Add iteration ``step``'s terms (``step`` counts from 1); the means since the last reading
        at every ``every``-th step and the last one, else None."""
        for k, v in terms.items():
            self._sums[k] = self._sums.get(k, 0.0) + v.detach()
        self._n += 1
        if step % self.every and step != self.total:
            return None
        means = {k: float(v) / self._n for k, v in self._sums.items()}
        self._sums, self._n = {}, 0
        if not all(np.isfinite(list(means.values()))):
            raise FloatingPointError(f"loss became {means} before iteration {step}; {self.hint}")
        return means


# --------------------------------------------------------------------------------------------------
# The checkpoint of a `cct train` run


def save_checkpoint(path: str | Path, model: nn.Module, config: dict, domains: dict[str, dict]) -> None:
    """The final checkpoint of a run: weights, the run's config, and per domain (decoder set) its
    ``class_names`` and ``background_classes``; the first domain's also at the top level."""
    first = next(iter(domains.values()))
    atomic_torch_save(
        {"model": model.state_dict(), "config": config, "class_names": first["class_names"],
         "background_classes": first["background_classes"], "domains": domains},
        path,
    )


def load_checkpoint(path: str | Path):
    """(model in eval mode, its RunConfig) from a ``cct train`` checkpoint; ConfigError if it is not one."""
    from cct.model.cct import build_model

    state = read_checkpoint(path)
    try:
        config = from_dict(state["config"])
        config.model.pretrained = False  # the checkpoint holds the weights
        domains = state.get("domains") or {
            "main": {"class_names": state["class_names"], "background_classes": state["background_classes"]}}
        model = build_model(config.model, {n: len(d["class_names"]) for n, d in domains.items()},
                            {n: d["background_classes"] for n, d in domains.items()})
        model.load_state_dict(state["model"])
    except Exception as exc:  # a dict of other keys or shapes
        raise ConfigError(f"--checkpoint: {path} is not a cct checkpoint ({first_line(exc)})") from exc
    return model.eval(), config


def numeric_identity(config: dict, execution_keys: set[tuple[str, str]]) -> dict:
    """A run config (nested dict) without the keys that change how a run executes but not its numbers."""
    out = {}
    for section, values in config.items():
        if isinstance(values, dict):
            out[section] = {k: v for k, v in values.items() if (section, k) not in execution_keys}
        else:  # extra_domains: data sections
            out[section] = [{k: v for k, v in d.items() if ("data", k) not in execution_keys} for d in values]
    return out

