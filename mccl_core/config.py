"""The one config loader: ``params.yaml`` sections -> typed dataclasses, and one :class:`ConfigError`.

Every config dataclass of the project (model, data, demo, train, launch, serving, each step's
section) is built by :func:`from_dict`, so they all behave the same way:

* an unknown key is an error that names the dotted key and the valid keys (a typo such as
  ``pki.tau_`` must not silently fall back to a default);
* values are checked against the field annotations and coerced where the source is lossy:
  Kubeflow passes dict parameters as protobuf ``Struct``s whose numbers are all floats, so an
  integral float becomes an ``int`` for an ``int`` field (``epochs: 8.0`` -> 8); a string
  becomes a :class:`~pathlib.Path` for a ``Path`` field; a list becomes a tuple for a tuple field;
* nested dataclasses are built recursively (``model.mcc.temperature``).

``__post_init__`` of each dataclass then checks the values' meaning (ranges, choices), raising
:class:`ConfigError` too, so a bad value fails when params are read, not deep inside a run.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A params file, section, key or value is missing or invalid (the message names it)."""


def load_params(path: str | Path) -> dict[str, Any]:
    """Read a params file (``params.yaml``): a mapping of section name -> mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def section(params: Mapping[str, Any], name: str, required: bool = True) -> dict[str, Any]:
    """The ``name`` section of ``params`` (``{}`` when optional and absent)."""
    value = params.get(name)
    if value is None:
        if required:
            raise ConfigError(f"params section {name!r} is missing (sections present: {sorted(params)})")
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"params section {name!r} must be a mapping, got {type(value).__name__}")
    return dict(value)


def apply_overrides(params: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-4"]`` -> ``params["train"]["lr"] = 3e-4`` (nested keys with more dots).

    The one parser of ``--set SECTION.KEY=VALUE`` (``mccl step``, ``mccl experiment``, the
    benches). The value is YAML (``3``, ``[a, b]``, ``{k: v}``); ``params`` is changed in place
    and returned.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        *path, last = key.strip().split(".")
        node = params
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
        value = yaml.safe_load(raw)
        if isinstance(value, str):
            try:  # YAML 1.1 reads 3e-4 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        node[last] = value
    return params


def expand_dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model.pki.dim": 8, "train": {"lr": 1}}`` -> nested mappings."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        node = out
        *parents, leaf = str(key).split(".")
        for name in parents:
            node = node.setdefault(name, {})
        if isinstance(value, Mapping):
            node[leaf] = merge(node.get(leaf) or {}, expand_dotted(value))
        else:
            node[leaf] = value
    return out


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge into a copy of ``base``: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            out[key] = merge(out.get(key) or {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}`` (MLflow params, sweep keys)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def to_plain(value: Any) -> Any:
    """Dataclass values -> YAML/JSON-friendly values (tuples -> lists, paths -> strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build the dataclass ``cls`` from ``data``; ``where`` names the section in error messages
    (e.g. ``"train"`` -> ``train.epochs=...: expected an integer``)."""
    return _build(cls, data or {}, prefix=f"{where}." if where else "")


def _build(cls: type[T], data: Any, prefix: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(f"{prefix}{k}" for k in unknown)
        raise ConfigError(f"unknown config key(s) {names}; valid keys here: {sorted(fields)}")
    kwargs = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    return cls(**kwargs)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/coerce one YAML (or KFP Struct) scalar against a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            if len(options) < len(typing.get_args(annotation)):
                return None
            raise ConfigError(f"{key}: a value is required")
        errors = []
        for option in options:
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}={value!r}: expected one of {options}")
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, prefix=f"{key}.")  # type: ignore[arg-type]
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}={value!r}: must be one of {list(choices)}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        return tuple(
            _coerce(v, item, f"{key}[{i}]") if item is not None else _plain_number(v) for i, v in enumerate(value)
        )
    if origin is list:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_plain_number(v) for v in value]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true/false")
        return value
    if annotation is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return str(value)
    if annotation is Path:
        if not isinstance(value, (str, Path)) or value == "":
            raise ConfigError(f"{key}={value!r}: expected a path")
        return Path(value)
    return _plain_number(value)


def _plain_number(value: Any) -> Any:
    """Integral floats from a KFP Struct back to ints inside untyped containers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
