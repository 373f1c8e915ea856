"""Files: atomic output (a killed job never leaves a half-written result behind) and checkpoint input."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what open() would give a new file (mkstemp's are 0600)


def _atomic(path: str | Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic(path, lambda h: h.write(text.encode()))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(path, lambda h: h.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch  # here: the embedded data writer and the config writer need no torch

    _atomic(path, lambda h: torch.save(obj, h))


def read_checkpoint(path: str | Path, what: str = "--checkpoint", kind: str = "cct checkpoint") -> dict:
    """``torch.load`` of a checkpoint file (weights only: no code runs from it); ConfigError naming
    ``what`` and the file when it is missing or not a ``kind``."""
    import torch

    from cct.config import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # foreign files raise many types (UnpicklingError, EOFError, RuntimeError, ...)
        raise ConfigError(f"{what}: {path} is not a {kind} ({first_line(exc)})") from exc
    if not isinstance(state, dict):
        raise ConfigError(f"{what}: {path} is not a {kind} (it holds a {type(state).__name__})")
    return state


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
