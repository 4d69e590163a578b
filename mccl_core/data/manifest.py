""" "Your own data": a CSV or JSONL manifest plus a class list.

Manifest (``.csv``, header row required; or ``.jsonl``, one JSON object per line):

=============  ============================================================================
``image``      image path, relative to the manifest's folder or absolute (required)
``labels``     CSV: class names separated by ``|`` (e.g. ``Happy|EnjoyLife``);
               JSONL: a list of class names (required; may be empty only for train rows)
``split``      ``train`` / ``val`` / ``test`` (optional; required when one manifest holds
               several splits, see below)
``image_id``   unique id (optional; defaults to the ``image`` value as written)
=============  ============================================================================

Splits: either one manifest with a ``split`` column (``load_split`` keeps the rows of the asked
split), or one manifest per split by putting ``{split}`` in the configured path (e.g.
``data/my_{split}.csv``). A manifest without ``split`` column used for a single split is taken
whole. Unknown split values are an error (a typo like ``valid`` must not silently drop rows).

Class list: ``.json`` holding a list of names or of ``{"name": ..., "description": ...}``
objects, or a text file with one name per line (blank lines and ``#`` comments ignored).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from mccl_core.data.dataset import SPLITS, ImageRecord, ProblemCollector

logger = logging.getLogger(__name__)

LABEL_SEPARATOR = "|"


def read_class_list(path: Path) -> tuple[list[str], list[str]]:
    """Class names and descriptions ("" where none is given) from a class-list file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list {str(path)!r} not found")
    problems = ProblemCollector(f"class list {str(path)!r}")
    names: list[str] = []
    descriptions: list[str] = []
    if path.suffix.lower() == ".json":
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"class list {str(path)!r} is not valid JSON: {error}") from error
        if not isinstance(entries, list):
            problems.add("must be a JSON list of names or of {name, description} objects")
            problems.raise_if_any()
        for position, entry in enumerate(entries):
            if isinstance(entry, str):
                names.append(entry.strip())
                descriptions.append("")
            elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
                names.append(entry["name"].strip())
                descriptions.append(str(entry.get("description", "")).strip())
            else:
                problems.add(f"entry #{position} must be a name or a {{name, description}} object: {entry!r}")
    else:
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            name = line.strip()
            if name and not name.startswith("#"):
                names.append(name)
                descriptions.append("")
    if not names and not problems.problems:
        problems.add("no classes")
    if any(not n for n in names):
        problems.add("empty class name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.add(f"duplicate class names {duplicates}")
    bad_chars = [n for n in names if LABEL_SEPARATOR in n]
    if bad_chars:
        problems.add(f"class names must not contain {LABEL_SEPARATOR!r}: {bad_chars}")
    problems.raise_if_any()
    return names, descriptions


def _read_rows(manifest: Path, problems: ProblemCollector) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs; label fields already split into lists of names."""
    rows: list[tuple[int, dict[str, Any]]] = []
    if manifest.suffix.lower() == ".jsonl":
        for line_number, line in enumerate(manifest.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                problems.add(f"line {line_number}: invalid JSON ({error})")
                continue
            if not isinstance(row, dict):
                problems.add(f"line {line_number}: expected a JSON object, got {type(row).__name__}")
                continue
            labels = row.get("labels")
            if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
                problems.add(f"line {line_number}: 'labels' must be a list of class names, got {labels!r}")
                continue
            rows.append((line_number, row))
    elif manifest.suffix.lower() == ".csv":
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            missing = [c for c in ("image", "labels") if c not in fields]
            if missing:
                problems.add(
                    f"CSV header must contain 'image' and 'labels' columns, missing {missing} (header: {fields})"
                )
                return rows
            for row in reader:
                line_number = reader.line_num
                if None in row:
                    problems.add(f"line {line_number}: more fields than header columns")
                    continue
                raw = row.get("labels") or ""
                row["labels"] = [name.strip() for name in raw.split(LABEL_SEPARATOR)] if raw.strip() else []
                rows.append((line_number, row))
    else:
        problems.add("manifest must be a .csv or .jsonl file")
    return rows


def load_manifest_records(manifest: Path, class_names: list[str], split: str | None) -> list[ImageRecord]:
    """Records of ``split`` (``None``: all rows) from a CSV/JSONL manifest.

    All rows are validated (also rows of other splits) and every problem is raised together:
    missing image field, unknown class names, repeated labels, duplicate image ids, unknown split
    values, rows without labels in val/test, or a ``split`` asked of a manifest without a split
    column that also has no ``{split}`` template.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {str(manifest)!r} not found")
    problems = ProblemCollector(f"manifest {str(manifest)!r}")
    rows = _read_rows(manifest, problems)
    index_of = {name: i for i, name in enumerate(class_names)}
    records: list[ImageRecord] = []
    seen: dict[str, int] = {}
    has_split_column = any(str(row.get("split") or "").strip() for _, row in rows)
    unlabelled_train = 0
    for line_number, row in rows:
        image_value = row.get("image")
        if not isinstance(image_value, str) or not image_value.strip():
            problems.add(f"line {line_number}: missing 'image'")
            continue
        image_value = image_value.strip()
        path = Path(image_value)
        path = path if path.is_absolute() else manifest.parent / path
        image_id = str(row.get("image_id") or image_value).strip()
        where = f"line {line_number}"
        row_split = str(row.get("split") or "").strip()
        if has_split_column and row_split not in SPLITS:
            problems.add(f"{where}: split {row_split!r} is not one of {list(SPLITS)}", image_id, path)
            continue
        if image_id in seen:
            problems.add(f"{where}: duplicate image id (first on line {seen[image_id]})", image_id, path)
            continue
        seen[image_id] = line_number
        names = row["labels"]
        unknown = [n for n in names if n not in index_of]
        if unknown:
            problems.add(f"{where}: unknown label name(s) {unknown}", image_id, path)
            continue
        if len(set(names)) != len(names):
            problems.add(f"{where}: label listed more than once in {names}", image_id, path)
            continue
        effective_split = row_split if has_split_column else split
        if not names:
            if effective_split == "train":
                unlabelled_train += effective_split == split
            else:
                problems.add(
                    f"{where}: no labels (every {effective_split or 'val/test'} image needs at least one)",
                    image_id,
                    path,
                )
                continue
        if split is None or not has_split_column or row_split == split:
            records.append(ImageRecord(image_id, path, tuple(sorted(index_of[n] for n in names)), None))
    problems.raise_if_any()
    if not records:
        raise ValueError(f"manifest {str(manifest)!r}: no rows for split {split!r}")
    if unlabelled_train:
        logger.warning(
            "manifest %s: %d train rows have no label (kept as all-negative examples)", manifest, unlabelled_train
        )
    logger.info("manifest %s: %d %s images, %d classes", manifest, len(records), split or "all", len(class_names))
    return records


def manifest_path_for_split(manifest: Path, split: str) -> Path:
    """Apply the ``{split}`` template, if any, to a manifest path."""
    text = str(manifest)
    return Path(text.replace("{split}", split)) if "{split}" in text else Path(manifest)
