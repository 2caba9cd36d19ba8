"""Atomic file writing and safe checkpoint reading.

Every file laudnet writes goes to a temporary file in the destination folder first and is
renamed into place, so a crash never leaves a half-written file behind. Checkpoints are
read with ``weights_only=True``: loading never runs pickled code.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Union

import torch
from .errors import CheckpointError, MissingFileError, UsageError

PathLike = Union[str, os.PathLike]


@contextmanager
def atomic_open(path: PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; honour the user's umask instead
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path`` (its folder made if needed): descriptor and name."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror or error}") from None


# The names :func:`_temporary` gives: ``.NAME.`` + mkstemp's eight random characters + ``.tmp``.
_TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Delete the temporaries that writes into ``folder`` left behind when a process was killed
    mid-write (their targets were never replaced); returns the paths removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and _TEMPORARY_NAME.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def check_writable(path: PathLike) -> None:
    """Fail now, with one clear error, if ``path`` could not be written later (before long work)."""
    fd, tmp = _temporary(Path(path))
    os.close(fd)
    os.unlink(tmp)


def write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def save_torch(obj: Any, path: PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def save_safetensors(tensors: dict[str, torch.Tensor], path: PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write a flat tensor dict as safetensors, atomically."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Read a ``.pth``/``.pt`` (``weights_only=True``) or ``.safetensors`` file.

    Raises :class:`MissingFileError` for a missing file and :class:`CheckpointError` whose one-line
    message says what is wrong with one that is not a readable checkpoint: empty, truncated, not a
    checkpoint at all, or holding pickled code or objects (which are never run).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes; was its writing "
                              "interrupted?)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device=str(map_location))
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for bad files; report one clear error
        raise CheckpointError(f"cannot read checkpoint {path}: {_read_problem(path, error)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    return obj


def _read_problem(path: Path, error: Exception) -> str:
    """What made ``torch.load`` / safetensors fail on ``path``, in words."""
    text = str(error)
    with open(path, "rb") as handle:
        head = handle.read(4)
    pickled = head.startswith(b"PK") or head[:1] == b"\x80"  # a torch zip archive or a legacy pickle
    if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in text and pickled:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" (it needs the global {found.group(1)})" if found else ""
        return (f"it holds code or Python objects that laudnet will not load{what}; laudnet reads checkpoints "
                "with weights_only=True, so only tensors and plain data load and nothing in the file is run")
    if path.suffix == ".safetensors":
        return f"it is truncated or not a safetensors file ({text.splitlines()[0] if text else type(error).__name__})"
    if head.startswith(b"PK"):
        return "it is truncated or corrupt (an incomplete torch zip archive; was its writing interrupted?)"
    if head[:1] == b"\x80" or isinstance(error, EOFError):
        return "it is truncated or corrupt (the pickled data ends early)"
    return "it is not a checkpoint (expected a torch .pth/.pt file or a .safetensors file)"
