"""Read per-image score files for the scoring CLI.

Two formats are accepted (one score per class, in class-index order = category id):

* CSV with a header: ``image_id`` plus either one column per class NAME (as in the annotation
  ``categories``) or columns ``s0 .. s{C-1}``; column order is free.
* JSON object ``{"<image_id>": [s0, ..., s{C-1}], ...}``.

Everything is checked and every problem is reported with the file and the offending image ids
(first few + count): duplicated ids, wrong number of scores, non-numeric or non-finite scores,
unknown / missing columns.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mccl_core.metrics._validation import format_id_list


class PredictionsFileError(ValueError):
    """A predictions file is missing, malformed or does not match the annotations."""


@dataclass(frozen=True)
class Predictions:
    """Scores ``scores[i]`` (C values, class-index order) of image ``image_ids[i]``."""

    image_ids: tuple[str, ...]
    scores: np.ndarray
    sources: tuple[Path, ...]

    def rows_for(self, image_ids: Sequence[str], split_name: str) -> np.ndarray:
        """Score matrix in the order of ``image_ids``; raises naming the ids that have no scores."""
        position = {image_id: row for row, image_id in enumerate(self.image_ids)}
        missing = [i for i in image_ids if i not in position]
        if missing:
            raise PredictionsFileError(
                f"predictions ({', '.join(map(str, self.sources))}) lack scores for {split_name} images: "
                f"{format_id_list(missing)}"
            )
        return self.scores[[position[i] for i in image_ids]]


def _fail(path: Path, message: str) -> PredictionsFileError:
    return PredictionsFileError(f"{path}: {message}")


def _parse_score(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _column_classes(path: Path, score_columns: list[str], class_names: Sequence[str]) -> list[int]:
    """Map CSV score columns to class indices, by class name or by ``s<i>``."""
    num_classes = len(class_names)
    by_name = {name: index for index, name in enumerate(class_names)}
    by_position = {f"s{index}": index for index in range(num_classes)}
    for scheme_name, mapping in (("class names", by_name), ("s0..s{C-1}", by_position)):
        if set(score_columns) <= set(mapping) and len(score_columns) == len(set(score_columns)):
            missing = [c for c in mapping if c not in score_columns]
            if missing:
                raise _fail(
                    path,
                    f"CSV score columns (by {scheme_name}) lack {len(missing)} of {num_classes} classes: {missing[:5]}",
                )
            return [mapping[c] for c in score_columns]
    if len(score_columns) != len(set(score_columns)):
        raise _fail(path, f"CSV header repeats a column: {score_columns}")
    unknown = [c for c in score_columns if c not in by_name and c not in by_position]
    raise _fail(
        path,
        f"CSV score columns must be exactly the {num_classes} class names or s0..s{num_classes - 1}; "
        f"{len(unknown)} unrecognised column(s): {unknown[:5]}"
        + ("" if unknown else " (names and s<i> columns are mixed)"),
    )


def _read_csv(path: Path, class_names: Sequence[str]) -> tuple[list[str], list[list[float]]]:
    with path.open("r", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise _fail(path, "CSV file is empty")
        header = [h.strip() for h in header]
        if "image_id" not in header:
            raise _fail(path, f"CSV header has no 'image_id' column: {header[:6]}")
        id_column = header.index("image_id")
        score_columns = [h for i, h in enumerate(header) if i != id_column]
        column_classes = _column_classes(path, score_columns, class_names)
        image_ids: list[str] = []
        rows: list[list[float]] = []
        wrong_count: list[str] = []
        not_numeric: list[str] = []
        for line_number, fields in enumerate(reader, start=2):
            if not fields or all(not f.strip() for f in fields):
                continue  # blank line
            image_id = fields[id_column].strip() if id_column < len(fields) else ""
            label = image_id or f"<line {line_number}>"
            if len(fields) != len(header):
                wrong_count.append(f"{label} ({len(fields) - 1} scores)")
                continue
            if not image_id:
                raise _fail(path, f"line {line_number} has an empty image_id")
            values = [_parse_score(f) for i, f in enumerate(fields) if i != id_column]
            if any(v is None for v in values):
                not_numeric.append(label)
                continue
            ordered = [0.0] * len(class_names)
            for class_index, value in zip(column_classes, values, strict=True):
                ordered[class_index] = float(value)  # type: ignore[arg-type]
            image_ids.append(image_id)
            rows.append(ordered)
    if wrong_count:
        raise _fail(
            path,
            f"wrong number of scores (expected {len(class_names)}) for {format_id_list(wrong_count)}",
        )
    if not_numeric:
        raise _fail(path, f"non-numeric, NaN or infinite scores for {format_id_list(not_numeric)}")
    return image_ids, rows


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    duplicated = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
    if duplicated:
        raise PredictionsFileError(f"JSON object repeats key(s): {format_id_list(duplicated)}")
    return dict(pairs)


def _read_json(path: Path, num_classes: int) -> tuple[list[str], list[list[float]]]:
    try:
        with path.open("r", encoding="utf-8") as handle:
            document = json.load(handle, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not valid JSON: {exc}") from exc
    except PredictionsFileError as exc:
        raise _fail(path, str(exc)) from exc
    if not isinstance(document, dict):
        raise _fail(path, "JSON predictions must be an object {image_id: [scores]}")
    image_ids: list[str] = []
    rows: list[list[float]] = []
    wrong_count: list[str] = []
    not_numeric: list[str] = []
    for image_id, values in document.items():
        if not isinstance(values, list):
            not_numeric.append(image_id)
            continue
        if len(values) != num_classes:
            wrong_count.append(f"{image_id} ({len(values)} scores)")
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            not_numeric.append(image_id)
            continue
        image_ids.append(image_id)
        rows.append([float(v) for v in values])
    if wrong_count:
        raise _fail(path, f"wrong number of scores (expected {num_classes}) for {format_id_list(wrong_count)}")
    if not_numeric:
        raise _fail(path, f"scores are not a list of finite numbers for {format_id_list(not_numeric)}")
    return image_ids, rows


def load_predictions(paths: Sequence[Path | str], class_names: Sequence[str]) -> Predictions:
    """Read and merge one or more prediction files (``.csv`` or ``.json``) for ``class_names``.

    Raises:
        PredictionsFileError: unreadable/malformed file, wrong score count, duplicated image ids
            (within or across files), non-finite scores.
    """
    if not paths:
        raise PredictionsFileError("no predictions file given")
    all_ids: list[str] = []
    all_rows: list[list[float]] = []
    sources: list[Path] = []
    for raw_path in paths:
        path = Path(raw_path)
        if not path.is_file():
            raise _fail(path, "predictions file does not exist")
        suffix = path.suffix.lower()
        try:
            if suffix == ".csv":
                ids, rows = _read_csv(path, class_names)
            elif suffix == ".json":
                ids, rows = _read_json(path, len(class_names))
            else:
                raise _fail(path, f"unsupported predictions format {suffix!r} (use .csv or .json)")
        except (OSError, UnicodeDecodeError) as exc:
            raise _fail(path, f"cannot read predictions file: {exc}") from exc
        if not ids:
            raise _fail(path, "predictions file has no rows")
        all_ids.extend(ids)
        all_rows.extend(rows)
        sources.append(path)
    duplicated = sorted(i for i, n in Counter(all_ids).items() if n > 1)
    if duplicated:
        raise PredictionsFileError(
            f"predictions ({', '.join(map(str, sources))}) give more than one row for {format_id_list(duplicated)}"
        )
    return Predictions(image_ids=tuple(all_ids), scores=np.asarray(all_rows, dtype=np.float64), sources=tuple(sources))
