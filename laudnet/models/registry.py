"""Model registry: builders by name, as in timm's ``_registry``.

``create_model("laud_resnet50", mode="channel", weights=...)`` looks the builder up and
calls it; ``list_models()`` names what is available. The builders are also registered with
timm when it is installed, so ``timm.create_model("laud_resnet50", ...)`` works too.
"""

from __future__ import annotations

import fnmatch
import functools
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn
from ..errors import UsageError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}

# Keyword arguments timm's create_model passes that laudnet builders do not use.
_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


# Builder arguments that say where weights come from, not what the model is.
_LOADING_KWARGS = ("weights", "progress", "strict_spec")


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make ``builder`` available to :func:`create_model` under its function name.

    The built model remembers how it was built in ``model.build_config``
    (``{"name": ..., "kwargs": {...}}``, plain data), so a checkpoint can rebuild it.
    """
    name = builder.__name__
    if name in _BUILDERS:
        raise UsageError(f"model {name!r} is already registered")

    @functools.wraps(builder)
    def build(**kwargs) -> nn.Module:
        model = builder(**kwargs)
        config = {k: v for k, v in kwargs.items() if k not in _LOADING_KWARGS}
        spec = getattr(model, "dynamic_spec", None)
        if spec is not None:
            _check_modes(name, model, spec.modes)
            config.update(spec.to_dict())
        model.build_config = {"name": name, "kwargs": _plain(config)}
        return model

    _BUILDERS[name] = build
    return build


def _check_modes(name: str, model: nn.Module, modes: tuple[str, ...]) -> None:
    """A mode the model's family does not implement (a ViT combination on a CNN) is an error, not a static block."""
    from .family import family_of

    accepted = family_of(model).modes
    wrong = sorted(set(modes) - set(accepted))
    if wrong:
        raise UsageError(f"{name} does not implement mode {', '.join(wrong)}; accepted modes are {', '.join(accepted)}")


def _plain(value):
    """Tuples to lists, recursively: checkpoint metadata must load with ``weights_only=True``."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with the builder's keyword arguments."""
    if name not in _BUILDERS:
        raise UsageError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return _BUILDERS[name](**kwargs)


def create_meta_model(name: str, **kwargs) -> nn.Module:
    """Build ``name`` on the meta device, structure only: no memory for weights, no time initialising them."""
    with torch.device("meta"), _no_initialisation():
        return create_model(name, **kwargs)


# The initialisers torch's layers and laudnet's models call; on meta tensors they compute nothing.
_INITIALISERS = ("uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "zeros_", "ones_", "constant_")


@contextmanager
def _no_initialisation() -> Iterator[None]:
    saved = {name: getattr(nn.init, name) for name in _INITIALISERS}
    for name in _INITIALISERS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def register_with_timm() -> bool:
    """Register every laudnet builder with timm (if installed). Returns whether it was."""
    try:
        from timm.models import register_model as timm_register
        from timm.models import is_model
    except ImportError:
        return False
    for name, builder in _BUILDERS.items():
        if not is_model(name):
            timm_register(_timm_entry(name, builder))
    return True


def _timm_entry(name: str, builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def entry(pretrained: bool = False, **kwargs) -> nn.Module:
        for key in _TIMM_ONLY_KWARGS:
            kwargs.pop(key, None)
        if pretrained and kwargs.get("weights") is None:
            kwargs["weights"] = "DEFAULT"
        return builder(**kwargs)

    entry.__name__ = name
    entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = builder.__doc__
    return entry
