"""Any model of the PaddleSeg zoo, from the model section of a config:

    model:
      name: paddleseg
      type: PPLiteSeg                 # a model in paddleseg.cvlibs.manager.MODELS
      backbone: {type: STDC2}         # mappings with `type` are components, built first
      arm_out_chs: [32, 64, 128]      # any other constructor argument, as in PaddleSeg's configs

`type` names a model of paddleseg's registry; every mapping with a `type` (at any depth, in
lists too) is built from the component registries (models, backbones, losses, ...) or, for
backbones, from ours (ResNeXt50_32x4d, ResNeSt50, ...). num_classes comes from the scheme.
`check_spec` finds a wrong type, an unknown or a missing argument from the signatures
without building anything (config validation); `build_paddleseg` builds, and turns a
constructor's TypeError into one line naming the key and the type.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator, Optional

from paddle_lane.models.registry import BACKBONES

Problem = Optional[tuple[str, str]]   # (key, message) of the first problem found
PROVIDED = ("num_classes",)           # set by the builder, never by the config
ARG_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _managers() -> list:
    import paddleseg.models  # noqa: F401  (importing the zoo fills the registries)
    from paddleseg.cvlibs import manager
    return [manager.MODELS, manager.BACKBONES, manager.LOSSES, manager.TRANSFORMS, manager.DATASETS,
            manager.OPTIMIZERS]


def model_names() -> list[str]:
    """The models of paddleseg's registry."""
    return sorted(_managers()[0].components_dict)


def backbone_names() -> list[str]:
    """paddleseg's backbones, then ours that paddleseg lacks."""
    theirs = sorted(_managers()[1].components_dict)
    return theirs + [n for n in BACKBONES.names() if n not in theirs]


def _component(type_name: Any, key: str, top: bool) -> tuple[Optional[Callable], str]:
    """(the factory named type_name, '') or (None, the message listing what exists)."""
    managers = _managers()
    if top:
        found = managers[0].components_dict.get(type_name) if isinstance(type_name, str) else None
        return found, "" if found else f"must be one of paddleseg's models [{', '.join(model_names())}], got {type_name!r}"
    if isinstance(type_name, str):
        for m in managers:
            if type_name in m.components_dict:
                return m.components_dict[type_name], ""
        if type_name in BACKBONES:
            return BACKBONES.get(type_name), ""
    if key.rsplit(".", 1)[-1].endswith("backbone"):
        known = backbone_names()
    else:
        known = sorted({n for m in managers for n in m.components_dict})
    return None, f"must be one of [{', '.join(known)}], got {type_name!r}"


def _nested(value: Any, key: str) -> Iterator[tuple[str, dict]]:
    """(key, spec) of every mapping with a `type` in value, lists included."""
    if isinstance(value, dict) and "type" in value:
        yield key, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _nested(item, f"{key}.{i}")


def _check_arguments(factory: Callable, type_name: str, args: dict, key: str, provided=()) -> Problem:
    """An argument the factory does not take, or a required one not given."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None
    names = [p.name for p in params if p.kind in ARG_KINDS]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        unknown = [a for a in args if a not in names]
        if unknown:
            takes = ", ".join(n for n in names if n not in provided)
            return f"{key}.{unknown[0]}", f"is not an argument of {type_name} (it takes: {takes})"
    missing = [p.name for p in params if p.kind in ARG_KINDS and p.default is p.empty
               and p.name not in args and p.name not in provided]
    return (f"{key}.{missing[0]}", f"is required by {type_name}") if missing else None


def _check_component(type_name: Any, args: dict, key: str, top: bool = False) -> Problem:
    factory, message = _component(type_name, key, top)
    if factory is None:
        return f"{key}.type", message
    problem = _check_arguments(factory, type_name, args, key, PROVIDED if top else ())
    for name, value in args.items():
        for sub_key, spec in _nested(value, f"{key}.{name}"):
            problem = problem or _check_component(spec["type"], _without_type(spec), sub_key)
    return problem


def _without_type(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "type"}


def check_spec(type_name: Optional[str], args: dict) -> Problem:
    """The first problem of a `name: paddleseg` model section, None when it looks buildable."""
    if type_name is None:
        return "model.type", f"must name a paddleseg model for name: paddleseg, one of [{', '.join(model_names())}]"
    for reserved in PROVIDED:
        if reserved in args:
            return f"model.{reserved}", "comes from data.scheme: remove it"
    return _check_component(type_name, args, "model", top=True)


def _build(type_name: str, args: dict, key: str, extra: dict, top: bool = False):
    factory, message = _component(type_name, key, top)
    if factory is None:
        raise ValueError(f"key '{key}.type' {message}")
    kwargs = {name: _materialize(value, f"{key}.{name}") for name, value in args.items()}
    try:
        return factory(**kwargs, **extra)
    except TypeError as exc:
        raise ValueError(f"key '{key}': {type_name}: {exc}") from None


def _materialize(value: Any, key: str) -> Any:
    if isinstance(value, dict) and "type" in value:
        return _build(value["type"], _without_type(value), key, {})
    if isinstance(value, (list, tuple)):
        return [_materialize(item, f"{key}.{i}") for i, item in enumerate(value)]
    return value


def build_paddleseg(type_name: Optional[str], args: dict, num_classes: int):
    """paddleseg's model `type_name` with `args` (components built first) and num_classes."""
    problem = check_spec(type_name, args)
    if problem:
        raise ValueError(f"key '{problem[0]}' {problem[1]}")
    return _build(type_name, args, "model", {"num_classes": num_classes}, top=True)
