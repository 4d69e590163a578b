"""The quarantine file: the records validation set aside, with their original columns and reason."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mccl_core.validation.report import OffendingRecord, plain
from mccl_core.validation.schema import ANNOTATION_PROBLEMS


def write_quarantine(manifest: pd.DataFrame, offending: list[OffendingRecord], path: Path) -> Path:
    """Write the offending rows (original columns + ``row_number``, ``checks``, ``reason``).

    ``.csv`` stores ``label_ids`` as JSON text; ``.json`` writes a list of objects. The optional
    ``annotation_problems`` column is left out: its texts are in ``reason`` already.
    """
    path = Path(path)
    manifest = manifest.drop(columns=[ANNOTATION_PROBLEMS], errors="ignore")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"quarantine file {str(path)!r} must end in .csv or .json")
    records = []
    for record in offending:
        source = manifest.iloc[record.row_number]
        entry = {column: plain(_cell(source[column])) for column in manifest.columns}
        entry.update(row_number=record.row_number, checks=record.checks, reason=record.problem)
        records.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        path.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    else:
        frame = pd.DataFrame(records, columns=[*manifest.columns, "row_number", "checks", "reason"])
        for column in frame.columns:
            if frame[column].map(lambda v: isinstance(v, (list, dict))).any():
                frame[column] = frame[column].map(json.dumps)
        frame.to_csv(path, index=False)
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
