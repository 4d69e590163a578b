"""Reading ``params.yaml``: one section per pipeline step, each turned into its dataclass.

DVC tracks the same file (``params:`` in dvc.yaml), so ``dvc exp run -S train.lr=3e-4`` and the
Kubeflow pipeline's parameters end up in the same place.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ParamsError(ValueError):
    """A params file or section is missing or malformed."""


def load_params(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def section(params: dict[str, Any], name: str, required: bool = True) -> dict[str, Any]:
    value = params.get(name)
    if value is None:
        if required:
            raise ParamsError(f"params section {name!r} is missing (sections present: {sorted(params)})")
        return {}
    if not isinstance(value, dict):
        raise ParamsError(f"params section {name!r} must be a mapping, got {type(value).__name__}")
    return value


def dataclass_from_dict(cls: type[T], values: dict[str, Any], where: str) -> T:
    """Build a flat dataclass, naming unknown keys (a typo must not be silently ignored)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ParamsError(f"unknown keys {unknown} in {where}; valid keys: {sorted(fields)}")
    kwargs = {}
    for key, value in values.items():
        ftype = fields[key].type
        if value is not None and ftype in ("Path", "Path | None", Path):
            value = Path(value)
        kwargs[key] = value
    return cls(**kwargs)  # type: ignore[call-arg]


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}`` (MLflow params, sweep keys)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
