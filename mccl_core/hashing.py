"""SHA-256 of files and of JSON-able values: the fingerprints of data, configs and code."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sha256_files(paths: Iterable[Path]) -> str:
    """One SHA-256 over the names and contents of ``paths`` (order-independent)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def sha256_of(payload: Any) -> str:
    """SHA-256 of a JSON-serialisable value (sorted keys): config fingerprints."""
    text = json.dumps(payload, sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()
