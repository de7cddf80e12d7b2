"""The one method registry: method name → model class and the dataclass of its options.

A method is one file: a model class decorated with ``@register("name", config=NameConfig)``.
Its options are read from ``model.<name>:`` in YAML (and ``--set model.<name>.key=value``),
validated like every other block. Methods are found without a hand-kept list: every module of
the ``dicmor.models`` package, every entry point of the ``dicmor.methods`` group of installed
packages, and every module named in the ``DICMOR_PLUGINS`` environment variable
(comma-separated module names, or paths to ``.py`` files) are imported when a method is first
looked up.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any

from dicmor.errors import ConfigError

PLUGINS_VARIABLE = "DICMOR_PLUGINS"
ENTRY_POINT_GROUP = "dicmor.methods"
RESERVED = frozenset(
    {"method", "dim", "kernel_size", "input_dropout", "text_encoder", "stage1_epochs"}
    | {"recovery", "mult", "methods"}
)
"""Keys of the ``model`` block that belong to every method, so no method may take them."""


@dataclass(frozen=True)
class Method:
    """A registered method: its model class and the dataclass of its options (or ``None``)."""

    name: str
    model: type
    config: type | None


_METHODS: dict[str, Method] = {}
_discovered = False
_plugins: set[str] = set()


def register(name: str, *, config: type | None = None) -> Callable[[type], type]:
    """Class decorator adding a method under ``name``, with ``config`` (a frozen dataclass, one
    docstring per field) as the type of its ``model.<name>`` options."""
    if not name.isidentifier() or name in RESERVED:
        raise ValueError(
            f"method name {name!r} must be an identifier other than {sorted(RESERVED)}"
        )
    if config is not None and not (isinstance(config, type) and is_dataclass(config)):
        raise TypeError(f"method '{name}': config must be a dataclass type, got {config!r}")

    def add(cls: type) -> type:
        known = _METHODS.get(name)
        if known is not None and known.model.__qualname__ != cls.__qualname__:
            raise ValueError(f"method '{name}' is registered twice")
        cls.name = name
        _METHODS[name] = Method(name, cls, config)
        return cls

    return add


def _import_plugin(entry: str) -> None:
    """Import one ``DICMOR_PLUGINS`` entry: a module name or a ``.py`` path."""
    try:
        if entry.endswith(".py"):
            path = Path(entry)
            spec = importlib.util.spec_from_file_location(f"dicmor_plugin_{path.stem}", path)
            if spec is None or spec.loader is None or not path.is_file():
                raise ImportError(f"no such file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(entry)
    except ImportError as error:
        raise ConfigError(f"{PLUGINS_VARIABLE}: cannot import {entry!r} ({error})") from error


def discover() -> None:
    """Import every method module: the package's own and the entry points once, and each
    ``DICMOR_PLUGINS`` entry not imported yet."""
    global _discovered
    if not _discovered:
        _discovered = True
        import dicmor.models as package

        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            entry_point.load()
    for entry in os.environ.get(PLUGINS_VARIABLE, "").split(","):
        entry = entry.strip()
        if entry and entry not in _plugins:
            _import_plugin(entry)
            _plugins.add(entry)


def model_names() -> list[str]:
    """Registered method names."""
    discover()
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    """The method registered under ``name``; unknown names list the known ones."""
    names = model_names()
    if name not in _METHODS:
        raise ConfigError(f"model.method: unknown method '{name}' (known: {', '.join(names)})")
    return _METHODS[name]


def get_model_class(name: str) -> type:
    """The model class registered under ``name``."""
    return get_method(name).model


def method_config_types() -> dict[str, type]:
    """``{name: options dataclass}`` of every registered method that has options."""
    discover()
    return {name: m.config for name, m in _METHODS.items() if m.config is not None}


def build_model(info: Any, config: Any) -> Any:
    """Instantiate ``config.method`` (a ``ModelConfig``) for data described by ``info``."""
    return get_model_class(config.method)(info, config)
