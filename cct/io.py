"""Files: atomic writes (a killed job never leaves a half-written result behind), the errors of a
full disk or a read-only folder as plain ``OSError`` naming the file, the checks of output paths
made before any work (a wrong kind of path, an unwritable folder, an output that would overwrite an
input), and the reading of checkpoints (weights only, one-line errors)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what open() would give a new file (mkstemp's are 0600)


class _FullWrites:
    """A file object whose ``write`` writes every byte or raises ``OSError``: torch.save's writer
    checks the count it gets back, and a short write on a full disk would otherwise surface as a
    RuntimeError ("unexpected pos ...") with the OSError buried in its context."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()  # of everything written: a checksum at no extra read

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        done = 0
        while done < len(view):
            done += os.write(self.handle.fileno(), view[done:])
        return done

    def flush(self) -> None:
        pass


def os_error_in(exc: BaseException | None) -> OSError | None:
    """The first ``OSError`` in ``exc`` and its chain of causes/contexts (torch wraps the OSError of a
    failed write in a RuntimeError), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _atomic(path: str | Path, write) -> str:
    """Write ``path`` through ``write(handle)`` into a temporary file renamed over it once complete;
    returns the SHA-256 (hex) of the bytes written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb", buffering=0) as handle:
            writer = _FullWrites(handle)
            write(writer)
            os.fsync(handle.fileno())
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
        return writer.sha256.hexdigest()
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        found = os_error_in(exc)
        if found is not None and (found is not exc or not found.filename):
            # the file named, whatever layer (torch's writer, os.write) saw the error
            raise OSError(found.errno, found.strerror or os.strerror(found.errno), str(path)) from exc
        raise


def atomic_write_text(path: str | Path, text: str) -> str:
    # surrogateescape: a path that is not UTF-8 (read from argv or the file system) is written back as its bytes
    return _atomic(path, lambda h: h.write(text.encode("utf-8", "surrogateescape")))


def atomic_write_bytes(path: str | Path, data: bytes) -> str:
    return _atomic(path, lambda h: h.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> str:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> str:
    """torch.save into ``path`` atomically; returns the file's SHA-256 (hex)."""
    import torch  # here: the embedded data writer and the config writer need no torch

    return _atomic(path, lambda h: torch.save(obj, h))


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
        raise ConfigError(f"{what}: {path} is not a {kind} ({_load_failure(path, exc)})") from exc
    if not isinstance(state, dict):
        raise ConfigError(f"{what}: {path} is not a {kind} (it holds a {type(state).__name__})")
    return state


def _load_failure(path: Path, exc: BaseException) -> str:
    """Why ``torch.load`` refused ``path``, in a few words rather than torch's paragraph."""
    import zipfile

    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            pickled = f.read(1) == b"\x80"  # pickle protocol 2+: torch.save's legacy format
        if not pickled:
            return "not a file written by torch.save"
    if "Weights only load failed" in str(exc):
        return "it holds Python objects besides tensors; only weights-only files are read"
    return first_line(exc)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    # a heading such as torch's "Error(s) in loading state_dict for SmallEncoder:" says nothing alone
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


# --------------------------------------------------------------------------------------------------
# Output paths, checked before any work


class OutputError(ValueError):
    """An output path is of the wrong kind, unwritable, or would overwrite an input. A ValueError, so
    that :class:`cct.config.ConfigError` handlers need not know it; the CLI reports it as one line."""


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(folder: Path, what: str, path: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        reason = "is on a read-only file system" if _read_only(folder) else "is not writable by this user"
        raise OutputError(f"{what}: cannot write {path}: the folder {folder} {reason}")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output_dir(path: str | Path, what: str, create: bool = False) -> Path:
    """``path`` is a folder that exists or can be created, and is writable; OutputError naming
    ``what`` (the option or key) otherwise. With ``create`` it is created (a failure is the same one
    line), else nothing is."""
    if not str(path).strip() or "\0" in str(path):
        raise OutputError(f"{what}: {str(path)!r} is not a folder name")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what}: {path} is a file, not a folder; give a folder")
    existing = _first_existing(path.absolute())
    if not existing.is_dir():
        raise OutputError(f"{what}: cannot create {path}: {existing} is a file, not a folder")
    _writable(existing, what, path)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{what}: cannot create {path} ({exc.strerror or exc})") from exc
    return path


def check_output_file(path: str | Path, what: str, inputs: Iterable[str | Path] = ()) -> Path:
    """``path`` is a file that can be written (its folder exists or can be created, and is writable),
    is not a folder, and is none of ``inputs`` (files the command reads); OutputError otherwise."""
    if not str(path).strip() or "\0" in str(path):
        raise OutputError(f"{what}: {str(path)!r} is not a file name")
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what}: {path} is a folder; give a file name")
    for source in inputs:
        if same_path(path, source):
            raise OutputError(f"{what}: {path} is also an input of this command; writing it would destroy that input")
    existing = _first_existing(path.absolute().parent)
    if not existing.is_dir():
        raise OutputError(f"{what}: cannot create {path}: {existing} is a file, not a folder")
    _writable(existing, what, path)
    return path


def check_replaceable_dir(path: str | Path, marker: str, what: str) -> Path:
    """A folder output that a command replaces as a whole (written beside it, then renamed over it):
    it may be missing, empty, or a folder this command wrote before (it holds ``marker``); anything
    else, a file or a folder of the user's, is refused rather than deleted."""
    path = check_output_dir(path, what)
    if path.absolute().name in ("", ".", "..") or path.absolute() == Path.home():
        raise OutputError(f"{what}: {path} cannot be replaced as a whole; give a new folder")
    if path.is_dir() and not (path / marker).is_file() and any(path.iterdir()):
        raise OutputError(
            f"{what}: {path} holds files this command did not write (no {marker}); it replaces its output folder "
            "as a whole, so give a new or empty folder"
        )
    return path


def same_path(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder (links resolved; False if either is missing)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return Path(a).absolute() == Path(b).absolute()


# errno -> what a user should do about it (the CLI's one line for an OSError that is not a bug)
FAULTS = {
    errno.ENOSPC: "the disk is full: free space (or point the output elsewhere) and rerun the same command",
    errno.EDQUOT: "the disk quota is exceeded: free space (or point the output elsewhere) and rerun the same command",
    errno.EROFS: "the file system is read-only: write the outputs elsewhere (--out) or remount it read-write",
    errno.EACCES: "permission denied: write the outputs where you may write, or fix the folder's permissions",
    errno.EPERM: "operation not permitted: write the outputs where you may write, or fix the folder's permissions",
    errno.EISDIR: "a folder is where a file was expected: give a file path",
    errno.ENOTDIR: "a file is where a folder was expected: give a folder path",
    errno.EEXIST: "a file is where a folder was expected: give a folder path",
    errno.ENAMETOOLONG: "the file name is too long: give a shorter path",
    errno.ELOOP: "the path has a symbolic link loop: give another path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or lower data.num_workers",
    errno.EIO: "an input/output error of the disk: check the disk, then rerun the same command",
}
