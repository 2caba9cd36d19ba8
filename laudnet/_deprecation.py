"""Old names that keep working for this release: each warns once and says where the name went."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable

_WARNED: set[str] = set()


def warn_moved(old: str, new: str) -> None:
    """Warn (once per process) that ``old`` is deprecated in favour of ``new``."""
    if old in _WARNED:
        return
    _WARNED.add(old)
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}", FutureWarning,
                  stacklevel=3)


def resolve(target: str) -> Any:
    """The object at ``"package.module:name"``."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def module_getattr(module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``names`` (old name → ``"package.module:name"``) with a warning."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target = names[name]
        warn_moved(f"{module}.{name}", target.replace(":", "."))
        return resolve(target)

    return __getattr__
