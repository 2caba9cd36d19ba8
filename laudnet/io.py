"""Atomic file writing and safe checkpoint reading.

Every file laudnet writes goes to a temporary file in the destination folder first and is
renamed into place, so a crash never leaves a half-written file behind. Checkpoints are
read with ``weights_only=True``: loading never runs pickled code.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Union

import torch
from .errors import MissingFileError, UsageError

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

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for one that is not a
    readable checkpoint (corrupt, truncated, or containing pickled code).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device=str(map_location))
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for bad files; report one clear error
        raise UsageError(f"cannot read checkpoint {path}: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    return obj
