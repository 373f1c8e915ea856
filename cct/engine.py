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

import hashlib
import logging
import os
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
from cct.io import atomic_torch_save, atomic_write_text, first_line, read_checkpoint

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
    # Deterministic mode also fills every new tensor's memory with NaN so that a kernel reading
    # memory it never wrote shows up. No kernel of a training reads any (the weights of a run come
    # out bit for bit the same without the fill), and the fill is about 350 writes per embedded
    # step: 1.1 of 16.8 ms of a supervised step, 1.3 of 45 of a CCT one (one thread, the Xeon).
    torch.utils.deterministic.fill_uninitialized_memory = False


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
    """Turns SIGTERM/SIGINT/SIGHUP into a flag checked between iterations, so the state can be saved.

    With ``watch_pid`` (``cct train --stop-with PID``: the workflow passes the Snakemake process), the
    end of that process also stops the run, at most ``poll_s`` seconds later: a training whose
    workflow was killed (``kill -9``, a closed terminal) saves its state and exits instead of
    running on as an orphan."""

    def __init__(self, watch_pid: int | None = None, poll_s: float = 5.0) -> None:
        self.signum: int | None = None
        self.reason: str | None = None
        self.watch_pid, self.poll_s = watch_pid, poll_s
        self._next_poll = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        # SIGHUP: the terminal of an interactive run was closed (its default would kill without saving)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self.reason = f"stopped by signal {signum}"

    @property
    def stopping(self) -> bool:
        """Whether to save and stop now: a signal came, or the watched process is gone."""
        if self.reason is None and self.watch_pid is not None:
            now = time.monotonic()
            if now >= self._next_poll:
                self._next_poll = now + self.poll_s
                if not process_alive(self.watch_pid):
                    self.reason = f"stopped because process {self.watch_pid} (--stop-with) ended"
        return self.reason is not None

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class Interrupted(RuntimeError):
    """Training stopped by a signal after saving its resume state."""


_cpu_origin: float | None = None
"""Process CPU time that run CPU counts start from (:meth:`ResumeState.cpu_time`): 0 once
:func:`own_process` is called, else (an in-process call of ``train``) each state's creation."""


def own_process() -> None:
    """Declare that this process runs one command (``cct ...`` from a shell): a run's CPU time then
    counts from the process's start, its imports included, as a job's wall time does."""
    global _cpu_origin
    _cpu_origin = 0.0


class ResumeState:
    """The training state of a run in ``directory/state.pt``: model and optimizer state, the
    iteration reached, the evaluation history, the attempts so far (their wall time), the run's
    config and what it executed on (``execution``: device type, process count).

    :meth:`load` restores it into the model and optimizer when it belongs to this run: the
    ``identity`` of its config (the config without the keys that change how a run executes but not
    its numbers) and its ``execution`` equal this run's. A state of another run is refused with
    ConfigError naming the keys that differ (``stale="refuse"``), or discarded with a warning
    (``stale="restart"``: the workflow, where a changed config legitimately reruns a run into the
    same folder). A state that cannot be read (truncated, corrupt, foreign, a checksum mismatch) is
    moved aside (``state.pt.corrupt``) with a warning, and the previous state (``state.prev.pt``,
    kept at every save) is tried, else the run starts over.

    :meth:`save` writes it atomically, with its SHA-256 beside it (``state.pt.sha256``). A lock
    (``directory/lock``) keeps a second process from training into the same folder."""

    FILE, PREVIOUS = "state.pt", "state.prev.pt"

    def __init__(self, directory: str | Path, config: dict, identity: Callable[[dict], Any] = lambda c: c,
                 stale: str = "refuse", execution: dict | None = None, lock_wait_s: float = 60.0) -> None:
        if stale not in ("refuse", "restart"):
            raise ValueError(f"stale={stale!r}")
        self.directory = Path(directory)
        self.path = self.directory / self.FILE
        self.previous = self.directory / self.PREVIOUS
        self.config, self.identity, self.stale = config, identity, stale
        self.execution = dict(execution or {})
        self.lock_wait_s = lock_wait_s
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time() if _cpu_origin is None else _cpu_origin
        self._attempts: list[dict] = []
        self._start = 0
        self._lock = None
        self._chosen: Path | None = None
        self._prepared = False
        self._state: dict | None = None

    # -- the lock -----------------------------------------------------------------------------
    def acquire(self) -> None:
        """Hold ``directory/lock`` for this process's life (waits up to ``lock_wait_s`` for a process
        that is saving and stopping); ConfigError naming the process holding it."""
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        handle = open(self.directory / "lock", "a+")
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    handle.close()
                    raise ConfigError(
                        f"--resume-dir: {self.directory} is in use by {holder}, still training this run: wait for "
                        f"it to finish, or stop it first (kill <pid> saves its state; see docs/operations.md)"
                    ) from None
                time.sleep(0.5)
            except OSError as exc:  # a file system without locks (ENOLCK): go on unlocked
                log.debug("no lock on %s (%s)", self.directory, exc)
                break
        handle.seek(0)
        handle.truncate()
        handle.write(f"cct pid {os.getpid()} on {platform.node()}\n")
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- loading ------------------------------------------------------------------------------
    def _read(self, path: Path) -> dict | None:
        """The state in ``path`` if it is a readable state of the expected form, else None after
        moving it aside."""
        digest_file = path.with_name(path.name + ".sha256")
        try:
            if digest_file.is_file():
                expected = digest_file.read_text().split()[0]
                if _sha256(path) != expected:
                    raise ValueError("its SHA-256 does not match the one saved with it")
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing = {"model", "optimizer", "iteration", "history", "config"} - set(state)
            if missing:
                raise ValueError(f"it lacks {sorted(missing)}")
            if not isinstance(state["iteration"], int) or state["iteration"] < 0:
                raise ValueError(f"its iteration is {state['iteration']!r}")
            return state
        except Exception as exc:  # torch.load of a damaged file raises many types
            aside = _free_name(path.with_name(path.name + ".corrupt"))
            os.replace(path, aside)
            digest_file.unlink(missing_ok=True)
            log.warning("cannot resume from %s (%s): moved it to %s", path, first_line(exc), aside)
            return None

    def _differences(self, state: dict) -> list[str]:
        """'key: old -> new' of every identity key (and execution fact) that differs."""
        old = _flatten(self.identity(state["config"]))
        new = _flatten(self.identity(self.config))
        out = [f"{k}: {_short(old.get(k, '(unset)'))} -> {_short(new.get(k, '(unset)'))}"
               for k in sorted(set(old) | set(new), key=str) if old.get(k, _MISSING) != new.get(k, _MISSING)]
        before = state.get("execution") or {}
        for k, v in self.execution.items():
            if k in before and before[k] != v:
                out.append(f"{k}: {before[k]} -> {v}")
        return out

    def _decide(self) -> tuple[Path | None, str | None]:
        """(the state file to resume from or None, the error to raise or None); on the main process."""
        for path in (self.path, self.previous):
            if not path.is_file():
                continue
            state = self._read(path)
            if state is None:
                continue
            differences = self._differences(state)
            if not differences:
                self._state = state  # read and checked once: load() uses it
                return path, None
            shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
            if self.stale == "refuse":
                return None, (
                    f"--resume-dir: {path} holds the state of a run with other numbers ({shown}): rerun with its "
                    f"config to resume it, or pass --stale-resume restart to discard it and start over (or use "
                    f"another --resume-dir)"
                )
            log.warning("discarding %s, the state of a run with other numbers (%s): starting over", path, shown)
            self.discard()
            return None, None
        return None, None

    def prepare(self, ctx: distributed.Context | None = None) -> None:
        """Lock the folder and choose the state to resume from, refusing a stale one (ConfigError)
        before the run loads its data or builds its model. Under torchrun the main process decides
        (and locks, moves, discards) and tells the others."""
        ctx = ctx or distributed.Context()
        decision = (None, None)
        if ctx.is_main:
            self.acquire()
            decision = self._decide()
        chosen, error = distributed.broadcast_object(decision, ctx)
        if error is not None:
            self.release()
            raise ConfigError(error)
        self._chosen = chosen
        self._prepared = True

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
             ctx: distributed.Context | None = None) -> tuple[int, list]:
        """(iteration to start at, evaluation history so far); (0, []) without a usable state
        (:meth:`prepare` first, if it was not called)."""
        if not self._prepared:
            self.prepare(ctx)
        self._t0 = time.perf_counter()
        chosen = self._chosen
        if chosen is None:
            return 0, []
        state = self._state if self._state is not None else torch.load(chosen, map_location=device, weights_only=True)
        self._state = None
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except Exception as exc:  # the right config but not this model's tensors: written by other code
            self.release()
            raise ConfigError(
                f"--resume-dir: {chosen} does not fit this run's model ({first_line(exc)}); delete it, or pass "
                "--stale-resume restart"
            ) from exc
        self._attempts = list(state.get("attempts") or [])
        if not self._attempts and state.get("elapsed"):  # a state written before attempts were recorded
            self._attempts = [{"start_iteration": 0, "iteration": state["iteration"], "wall_s": state["elapsed"]}]
        self._start = state["iteration"]
        log.info("resuming from %s at iteration %d", chosen, state["iteration"])
        return state["iteration"], state["history"]

    def discard(self) -> None:
        """Remove the saved states (a stale run's)."""
        for name in (self.FILE, self.PREVIOUS):
            (self.directory / name).unlink(missing_ok=True)
            (self.directory / f"{name}.sha256").unlink(missing_ok=True)

    # -- time -----------------------------------------------------------------------------------
    def wall_time(self) -> float:
        """Seconds of training so far, every attempt of a resumed training included."""
        return sum(a["wall_s"] for a in self._attempts) + time.perf_counter() - self._t0

    def cpu_time(self) -> float | None:
        """CPU seconds (user + system, every thread) of this run's processes so far: this process's
        since it started (:func:`own_process`; else since this state was created; rank 0's under
        torchrun), plus the earlier attempts'; None when an earlier attempt did not record its own
        (a state written before they were)."""
        if any("cpu_s" not in a for a in self._attempts):
            return None
        return sum(a["cpu_s"] for a in self._attempts) + self._cpu_this_attempt()

    def _cpu_this_attempt(self) -> float:
        return time.process_time() - self._cpu0

    def attempts(self, iteration: int) -> list[dict]:
        """The attempts so far, this one (up to ``iteration``) last: the iterations it trained, its
        wall seconds of training and its process's CPU seconds (:meth:`cpu_time`)."""
        this = {"start_iteration": self._start, "iteration": iteration, "wall_s": time.perf_counter() - self._t0,
                "cpu_s": self._cpu_this_attempt()}
        return [*self._attempts, this]

    # -- saving ---------------------------------------------------------------------------------
    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, iteration: int, history: list) -> None:
        """Write the state atomically; the one it replaces becomes ``state.prev.pt``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
                 "history": history, "elapsed": self.wall_time(), "attempts": self.attempts(iteration),
                 "config": self.config, "execution": self.execution}
        if self.path.is_file():  # the digest first: a state without one is accepted unchecked
            digest = self.path.with_name(self.FILE + ".sha256")
            if digest.is_file():
                os.replace(digest, self.previous.with_name(self.PREVIOUS + ".sha256"))
            else:
                self.previous.with_name(self.PREVIOUS + ".sha256").unlink(missing_ok=True)
            os.replace(self.path, self.previous)
        digest = atomic_torch_save(state, self.path)
        atomic_write_text(self.path.with_name(self.FILE + ".sha256"), f"{digest}  {self.FILE}\n")

    def finish(self) -> None:
        """After the run's last save: the previous state is of no more use; the lock is released."""
        self.previous.unlink(missing_ok=True)
        self.previous.with_name(self.PREVIOUS + ".sha256").unlink(missing_ok=True)
        self.release()


_MISSING = object()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted key: value}; lists of mappings (extra_domains) by index."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        for i, v in enumerate(tree):
            out.update(_flatten(v, f"{prefix[:-1]}[{i}]."))
        return out
    return {prefix[:-1]: tree}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _free_name(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``, ... whichever does not exist."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


DIVERGED = "lower {key} (then rerun with --stale-resume restart: the saved state is the old config's)"
"""LossLog's hint for a loss that became NaN or infinite."""


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


def load_checkpoint(path: str | Path, what: str = "--checkpoint"):
    """(model in eval mode, its RunConfig) from a ``cct train`` checkpoint; ConfigError naming ``what``
    if it is not one. ``model.class_names`` maps each domain (decoder set) to the class names it was
    trained on, so that a caller can refuse data with other classes."""
    from cct.model.cct import build_model

    state = read_checkpoint(path, what)
    if {"optimizer", "iteration"} <= set(state):
        raise ConfigError(f"{what}: {path} is a resume state of `cct train`, not its checkpoint; give the run's "
                          "checkpoint.pt")
    if isinstance(state.get("config"), dict) and "infer" in state["config"]:
        raise ConfigError(f"{what}: {path} is a CAM checkpoint (`cct cam train`), not a `cct train` one")
    try:
        config = from_dict(state["config"])
        config.model.pretrained = False  # the checkpoint holds the weights
        domains = state.get("domains") or {
            "main": {"class_names": state["class_names"], "background_classes": state["background_classes"]}}
        model = build_model(config.model, {n: len(d["class_names"]) for n, d in domains.items()},
                            {n: d["background_classes"] for n, d in domains.items()})
        model.load_state_dict(state["model"])
        model.class_names = {n: tuple(d["class_names"]) for n, d in domains.items()}
    except Exception as exc:  # a dict of other keys or shapes
        raise ConfigError(f"{what}: {path} is not a cct checkpoint ({first_line(exc)})") from exc
    return model.eval(), config


def check_classes(model, domain: str, class_names: tuple[str, ...], data_name: str, what: str) -> None:
    """ConfigError naming ``what`` when ``class_names`` (of the data ``data_name``) are not the classes
    the checkpoint's decoder set ``domain`` was trained on: scores over another label space would be a
    number without meaning."""
    trained = tuple(getattr(model, "class_names", {}).get(domain, ()))
    if trained and tuple(class_names) != trained:
        def show(names):
            names = list(names)
            return f"{len(names)} classes {names[:4] + (['...'] if len(names) > 4 else [])}"

        raise ConfigError(
            f"{what}: {data_name} has {show(class_names)}, but the checkpoint's domain {domain!r} was trained on "
            f"{show(trained)}; evaluate it on data with its classes (or choose the domain with --domain)"
        )


def numeric_identity(config: dict, execution_keys: set[tuple[str, str]]) -> dict:
    """A run config (nested dict) without the keys that change how a run executes but not its numbers."""
    out = {}
    for section, values in config.items():
        if isinstance(values, dict):
            out[section] = {k: v for k, v in values.items() if (section, k) not in execution_keys}
        else:  # extra_domains: data sections
            out[section] = [{k: v for k, v in d.items() if ("data", k) not in execution_keys} for d in values]
    return out

