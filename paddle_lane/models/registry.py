"""Name -> factory registries for models and backbones, filled by decorators (PaddleSeg's
`manager.MODELS` / `manager.BACKBONES` pattern).

The registries import no deep-learning code: the config reads their names to validate
`model.name` and `model.backbone` without loading Paddle. The decorated factories live in
`paddle_lane.models.zoo` (loaded on first use) and import their networks when called, so a
new model or backbone is one decorated function there.
"""
from __future__ import annotations

import importlib
from typing import Callable


class Registry:
    """Factories by name; `register` is the decorator, `get` the lookup with a clear error."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ("paddle_lane.models.zoo",)):
        self.kind = kind
        self._modules = modules
        self._items: dict[str, Callable] = {}

    def register(self, name: str | None = None) -> Callable[[Callable], Callable]:
        """Decorator: file `fn` under `name` (default: the function's own name)."""
        def add(fn: Callable) -> Callable:
            key = name or fn.__name__
            if key in self._items and self._items[key] is not fn:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = fn
            return fn
        return add

    def _load(self) -> None:
        for module in self._modules:
            importlib.import_module(module)

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        self._load()
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def get(self, name: str) -> Callable:
        """The factory for `name`; an unknown name is one line listing the known ones."""
        self._load()
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self._items)}")
        return self._items[name]


MODELS = Registry("model")        # name -> fn(model_cfg, num_classes) -> (network, its backbone or None)
BACKBONES = Registry("backbone")  # name -> fn(output_stride=8) -> layer with feat_channels, 4 features
INITS = ("kaiming", "xavier", "default")  # model.init: builder.INITIALIZERS, or each layer's own
