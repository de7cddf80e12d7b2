"""The one model registry: method name -> model class."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dicmor.config import ConfigError

if TYPE_CHECKING:
    from dicmor.config import ModelConfig
    from dicmor.models.base import DataInfo, MultimodalModel

_MODELS: dict[str, type[MultimodalModel]] = {}


def register(name: str) -> Callable[[type[MultimodalModel]], type[MultimodalModel]]:
    """Class decorator adding a method under ``name``."""

    def add(cls: type[MultimodalModel]) -> type[MultimodalModel]:
        if name in _MODELS:
            raise ValueError(f"method '{name}' is registered twice")
        cls.name = name
        _MODELS[name] = cls
        return cls

    return add


def model_names() -> list[str]:
    """Registered method names."""
    import dicmor.models  # noqa: F401  (registers the methods)

    return sorted(_MODELS)


def get_model_class(name: str) -> type[MultimodalModel]:
    """The class registered under ``name``; unknown names list the known ones."""
    names = model_names()
    if name not in _MODELS:
        raise ConfigError(f"model.method: unknown method '{name}' (known: {', '.join(names)})")
    return _MODELS[name]


def build_model(info: DataInfo, config: ModelConfig) -> MultimodalModel:
    """Instantiate ``config.method`` for data described by ``info``."""
    return get_model_class(config.method)(info, config)
