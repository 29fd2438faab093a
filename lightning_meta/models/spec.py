"""Backbones as plain data: a class path and its init arguments, the form LightningCLI configs use, so that a
learner's checkpoint can rebuild its backbone (``load_from_checkpoint(path)`` with no ``model=``) and still load with
``torch.load(weights_only=True)``: no pickled objects."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

from torch import nn

ModuleClass = TypeVar("ModuleClass", bound=type)
PLAIN = (str, int, float, bool, type(None))


def records_init_args(cls: ModuleClass) -> ModuleClass:
    """Class decorator: each instance of ``cls`` records the arguments it was built with as ``init_args`` (a dict
    of plain data, tuples as lists), which [module_spec][lightning_meta.models.spec.module_spec] reads. A subclass
    records its own only if it is decorated too (its arguments may differ from ``cls``'s).

    Examples:
        >>> @records_init_args
        ... class Head(nn.Linear):
        ...     def __init__(self, width: int = 4, ways: int = 5):
        ...         super().__init__(width, ways)
        >>> Head(ways=3).init_args
        {'width': 4, 'ways': 3}
    """
    original = cls.__init__
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if type(self) is cls:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = {k: v for k, v in list(bound.arguments.items())[1:]}
            self.init_args = {k: _plain(v) for k, v in arguments.items()} if _is_plain(arguments) else None

    cls.__init__ = __init__
    return cls


def module_spec(module: nn.Module) -> dict[str, Any] | None:
    """``{"class_path": ..., "init_args": {...}}`` that rebuilds ``module``'s architecture, or ``None`` where its
    arguments are unknown (a module built by hand: give it an ``init_args`` dict of plain data, or pass it to
    ``load_from_checkpoint`` as the learner's ``model=``/``encoder=``).

    Examples:
        >>> from lightning_meta.models import Conv4
        >>> module_spec(Conv4(out_features=3, hidden=8))["class_path"]
        'lightning_meta.models.backbones.Conv4'
        >>> module_spec(nn.Linear(2, 3)) is None
        True
    """
    args = getattr(module, "init_args", None)
    if not isinstance(args, Mapping) or not _is_plain(dict(args)):
        return None
    cls = type(module)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": {k: _plain(v) for k, v in args.items()}}


def import_class(class_path: str) -> Any:
    """The object ``"package.module.Name"`` names (``ImportError``, ``AttributeError`` or ``ValueError`` if none).

    Examples:
        >>> import_class("torch.nn.Linear").__name__
        'Linear'
    """
    module_name, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def build_module(value: nn.Module | Mapping | None, name: str, owner: str) -> nn.Module:
    """``value`` if it is a module, else the module a [module_spec][lightning_meta.models.spec.module_spec] dict
    describes; ``None`` (a checkpoint whose backbone was built by hand) is a ``ValueError`` saying to pass it."""
    if isinstance(value, nn.Module):
        return value
    if value is None:
        raise build_module_error(owner, name)
    if not isinstance(value, Mapping) or not isinstance(value.get("class_path"), str):
        raise TypeError(f"{owner}: {name} must be an nn.Module or a {{'class_path': ..., 'init_args': {{...}}}} "
                        f"dict, got {type(value).__name__}")
    try:
        cls = import_class(value["class_path"])
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"{owner}: cannot import the {name} class {value['class_path']!r}: {error}") from error
    module = cls(**dict(value.get("init_args") or {}))
    if not isinstance(module, nn.Module):
        raise TypeError(f"{owner}: {value['class_path']!r} built a {type(module).__name__}, not an nn.Module")
    return module


def callable_spec(factory: Any) -> dict[str, Any] | None:
    """``{"class_path": ..., "init_args": {...}}`` of an optimizer or scheduler factory: a class, a
    ``functools.partial(cls, **plain keywords)`` or a LightningCLI ``class_path`` callable; ``None`` for anything
    else (a lambda), which a checkpoint then does not record.

    Examples:
        >>> import torch
        >>> callable_spec(functools.partial(torch.optim.SGD, lr=0.1))
        {'class_path': 'torch.optim.sgd.SGD', 'init_args': {'lr': 0.1}}
    """
    cls, kwargs = factory, {}
    if isinstance(factory, functools.partial):
        func, args, kwargs = factory.func, factory.args, dict(factory.keywords)
        if isinstance(func, type) and not args:
            cls = func
        elif getattr(func, "__name__", "") == "call_without_instantiate_context" and args:
            cls = args[-1]  # LightningCLI's callable: partial(call_without_instantiate_context, instantiator, cls)
        else:
            return None
    if not isinstance(cls, type) or not _is_plain(kwargs):
        return None
    init_args = {k: _plain(v) for k, v in kwargs.items()}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def build_callable(spec: Mapping[str, Any], name: str) -> functools.partial:
    """The factory a [callable_spec][lightning_meta.models.spec.callable_spec] describes:
    ``functools.partial(cls, **init_args)``."""
    try:
        cls = import_class(str(spec.get("class_path", "")))
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import the recorded {name} class {spec.get('class_path')!r}: {error}") from error
    return functools.partial(cls, **dict(spec.get("init_args") or {}))


def build_module_error(owner: str, name: str) -> ValueError:
    """The error for a checkpoint (or call) that has no ``name`` module and no record of how to build one."""
    return ValueError(f"{owner}: this checkpoint does not record how to build its {name} (a module without recorded "
                      f"init_args, e.g. assembled by hand); pass it: {owner}.load_from_checkpoint(path, "
                      f"{name}=<the same architecture>)")


def is_plain(value: Any) -> bool:
    """Whether ``value`` is plain data (str, numbers, bools, None, lists/tuples and str-keyed dicts of them)."""
    return _is_plain(value)


def _is_plain(value: Any) -> bool:
    if isinstance(value, PLAIN):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (YAML- and ``weights_only``-friendly)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
