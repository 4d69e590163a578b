""" "Your own data": a CSV or JSONL manifest plus a class list.

Manifest (``.csv``, UTF-8, header row required; or ``.jsonl``, one JSON object per line):

==============  ===========================================================================
``image_path``  image path, relative to the manifest file's folder or absolute (required;
                ``image`` is accepted as an alias, but not both in one file)
``labels``      CSV: class names separated by ``|`` (e.g. ``Happy|EnjoyLife``);
                JSONL: a list of class names (required; may be empty only for train rows)
``split``       ``train`` / ``val`` / ``test`` (required when one manifest holds every split;
                optional with one file per split, see below)
``image_id``    unique id (optional; defaults to the image path as written)
==============  ===========================================================================

Image paths resolve against the manifest file's folder, never against ``data.root`` or the
working directory: a manifest and its images can then be moved (or DVC-tracked) as one folder.

Splits: either one manifest with a ``split`` column (``load_split`` keeps the rows of the asked
split), or one manifest per split by putting ``{split}`` in the configured path (e.g.
``data/my_{split}.csv``; a ``split`` column there must agree with the file). A single manifest
without ``split`` column is taken whole when ONE split is asked of it (``load_split``, ``mccl data
verify``), but is a file-level error for the validate step, which reads every split: taking it
whole for each would put the same images in train and test. Unknown split values are a
record-level error (a typo like ``valid`` must not silently drop rows).

Problems are either *file-level* (missing / not UTF-8 / no header / no path, ``labels`` or
``split`` column / not CSV or JSONL: :class:`ManifestFileError`, the file cannot be read at all)
or *record-level* (one row: duplicate id, unknown or repeated label, val/test row without label,
bad split, no image path, malformed JSONL line). :func:`read_manifest` returns every row with its
problems, so the validate step can quarantine bad rows; :func:`load_manifest_records` (training)
raises every problem at once.

Class list: ``.json`` holding a list of names or of ``{"name": ..., "description": ...}``
objects, or a UTF-8 text file with one name per line (blank lines and ``#`` comments ignored).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mccl_core.data.dataset import SPLITS, AnnotationError, ImageRecord, ProblemCollector

logger = logging.getLogger(__name__)

LABEL_SEPARATOR = "|"
#: Column holding the image path: the documented name first, then the accepted alias.
PATH_COLUMNS: tuple[str, ...] = ("image_path", "image")
_BOM = b"\xef\xbb\xbf"


class ManifestFileError(AnnotationError):
    """A manifest or class-list file that cannot be read at all (file-level problem)."""


def _read_text(path: Path, what: str) -> str:
    """The file as text; a non-UTF-8 file is a :class:`ManifestFileError` naming the file and
    the byte offset of the first bad byte (a spreadsheet export in cp1252 is the usual cause)."""
    raw = path.read_bytes()
    skip = len(_BOM) if raw.startswith(_BOM) else 0
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = skip + error.start
        raise ManifestFileError(
            f"{what} {str(path)!r}",
            [
                f"not UTF-8 text: byte 0x{raw[offset]:02x} at byte offset {offset} ({error.reason}); "
                "save the file as UTF-8"
            ],
        ) from None


def read_class_list(path: Path) -> tuple[list[str], list[str]]:
    """Class names and descriptions ("" where none is given) from a class-list file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list {str(path)!r} not found")
    problems = ProblemCollector(f"class list {str(path)!r}")
    names: list[str] = []
    descriptions: list[str] = []
    text = _read_text(path, "class list")
    if path.suffix.lower() == ".json":
        try:
            entries = json.loads(text)
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
        for line in text.splitlines():
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


@dataclass(frozen=True)
class ManifestRow:
    """One row of a manifest, problems included (see :func:`read_manifest`).

    ``label_ids`` are the ids of the label names that are in the class list (unknown names are
    a problem of the row); ``split`` is the row's split as written (or the file's split).
    """

    line_number: int
    image_id: str | None
    image_path: Path | None
    split: str
    label_ids: tuple[int, ...]
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def _where(line_number: int, image_id: str | None, path: Path | None) -> str:
    parts = []
    if image_id is not None:
        parts.append(f"image {image_id!r}")
    if path is not None:
        parts.append(f"file {str(path)!r}")
    return (" ".join(parts) + ": " if parts else "") + f"line {line_number}"


def _raw_rows(manifest: Path, source: str) -> tuple[list[str], list[tuple[int, dict[str, Any] | None, str | None]]]:
    """(columns, rows): each row is (line number, fields or None, problem of an unreadable row).

    CSV label fields are split into lists of names. File-level problems raise
    :class:`ManifestFileError`.
    """
    suffix = manifest.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ManifestFileError(source, [f"manifest must be a .csv or .jsonl file, got {manifest.name!r}"])
    text = _read_text(manifest, "manifest")
    rows: list[tuple[int, dict[str, Any] | None, str | None]] = []
    columns: list[str] = []
    if suffix == ".jsonl":
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                rows.append((line_number, None, f"invalid JSON ({error})"))
                continue
            if not isinstance(row, dict):
                rows.append((line_number, None, f"expected a JSON object, got {type(row).__name__}"))
                continue
            columns += [str(k) for k in row if str(k) not in columns]
            labels = row.get("labels")
            if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
                rows.append((line_number, None, f"'labels' must be a list of class names, got {labels!r}"))
                continue
            rows.append((line_number, row, None))
        return columns, rows
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [str(c).strip() for c in reader.fieldnames or [] if c is not None]
    if not columns:
        raise ManifestFileError(source, ["empty file: a CSV manifest needs a header row (image_path,labels[,split])"])
    reader.fieldnames = columns
    for row in reader:
        line_number = reader.line_num
        if None in row:
            rows.append((line_number, None, "more fields than header columns"))
            continue
        raw = row.get("labels") or ""
        row["labels"] = [name.strip() for name in raw.split(LABEL_SEPARATOR)] if raw.strip() else []
        rows.append((line_number, row, None))
    return columns, rows


def read_manifest(
    manifest: Path, class_names: list[str], file_split: str | None = None, *, one_file_per_split: bool = False
) -> list[ManifestRow]:
    """Every row of a manifest with its problems (the lenient reader; nothing is dropped).

    Args:
        manifest: the ``.csv`` / ``.jsonl`` file.
        class_names: the class list (label names -> ids).
        file_split: the split of the rows when the file has no ``split`` column; ``None``: the
            file must have one (it holds every split).
        one_file_per_split: the file is the ``file_split`` file of a ``{split}`` template: a
            ``split`` column, if any, must agree with it.

    Raises:
        FileNotFoundError: the file does not exist.
        ManifestFileError: file-level problems (not UTF-8, no header, no image path / labels /
            split column, not CSV or JSONL), each naming the file and the columns found.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {str(manifest)!r} not found")
    source = f"manifest {str(manifest)!r}"
    columns, raw_rows = _raw_rows(manifest, source)
    if not columns and not raw_rows:
        raise ManifestFileError(source, ["empty manifest: no rows"])
    path_columns = [c for c in PATH_COLUMNS if c in columns]
    missing: list[str] = []
    if not path_columns and (columns or not raw_rows):
        missing.append("'image_path' (or its alias 'image')")
    if "labels" not in columns and (columns or not raw_rows) and manifest.suffix.lower() == ".csv":
        missing.append("'labels'")
    has_split_column = "split" in columns
    if file_split is None and not has_split_column and raw_rows:
        missing.append("'split' (one manifest for every split needs it; or put {split} in data.manifest)")
    if missing:
        raise ManifestFileError(source, [f"missing column(s) {', '.join(missing)}; columns found: {columns}"])
    if len(path_columns) > 1:
        raise ManifestFileError(source, [f"has both 'image_path' and its alias 'image' columns ({columns}); keep one"])
    path_column = path_columns[0] if path_columns else PATH_COLUMNS[0]
    index_of = {name: i for i, name in enumerate(class_names)}
    seen: dict[str, int] = {}
    result: list[ManifestRow] = []
    for line_number, row, unreadable in raw_rows:
        if row is None:
            result.append(
                ManifestRow(line_number, None, None, file_split or "", (), (f"line {line_number}: {unreadable}",))
            )
            continue
        problems: list[str] = []
        image_value = row.get(path_column)
        path: Path | None = None
        if isinstance(image_value, str) and image_value.strip():
            image_value = image_value.strip()
            path = Path(image_value)
            path = path if path.is_absolute() else manifest.parent / path
        given_id = row.get("image_id")
        image_id = str(given_id).strip() if given_id not in (None, "") else (image_value if path else None)
        where = _where(line_number, image_id, path)
        if path is None:
            problems.append(f"{where}: missing {path_column!r}")
        row_split = str(row.get("split") or "").strip() if has_split_column else (file_split or "")
        if row_split not in SPLITS:
            problems.append(f"{where}: split {row_split!r} is not one of {list(SPLITS)}")
        elif one_file_per_split and row_split != file_split:
            problems.append(f"{where}: split {row_split!r} in the {file_split!r} manifest (one file per split)")
        if image_id is not None and image_id in seen:
            problems.append(f"{where}: duplicate image id (first on line {seen[image_id]})")
        elif image_id is not None:
            seen[image_id] = line_number
        names = row["labels"]
        unknown = [n for n in names if n not in index_of]
        if unknown:
            problems.append(f"{where}: unknown label name(s) {unknown}")
        if len(set(names)) != len(names):
            problems.append(f"{where}: label listed more than once in {names}")
        if not names and row_split != "train":
            problems.append(f"{where}: no labels (every {row_split or 'val/test'} image needs at least one)")
        label_ids = tuple(sorted({index_of[n] for n in names if n in index_of}))
        result.append(ManifestRow(line_number, image_id, path, row_split, label_ids, tuple(problems)))
    return result


def load_manifest_records(
    manifest: Path, class_names: list[str], split: str, one_file_per_split: bool = False
) -> list[ImageRecord]:
    """Records of ``split`` from a CSV/JSONL manifest (strict).

    All rows are checked (also rows of other splits: a bad row anywhere means a bad dataset) and
    every problem is raised together as one :class:`~mccl_core.data.dataset.AnnotationError`
    (see :func:`read_manifest` for what is checked). A file without ``split`` column is taken
    whole as ``split``. ``one_file_per_split``: the file is ``split``'s file of a template.
    """
    manifest = Path(manifest)
    rows = read_manifest(manifest, class_names, split, one_file_per_split=one_file_per_split)
    problems = [p for row in rows for p in row.problems]
    if problems:
        raise AnnotationError(f"manifest {str(manifest)!r}", problems)
    records = [
        ImageRecord(str(r.image_id), Path(str(r.image_path)), r.label_ids, None) for r in rows if r.split == split
    ]
    if not records:
        raise ValueError(f"manifest {str(manifest)!r}: no rows for split {split!r}")
    unlabelled_train = sum(1 for r in records if not r.labels)
    if unlabelled_train:
        logger.warning(
            "manifest %s: %d train rows have no label (kept as all-negative examples)", manifest, unlabelled_train
        )
    logger.info("manifest %s: %d %s images, %d classes", manifest, len(records), split, len(class_names))
    return records


def manifest_path_for_split(manifest: Path, split: str) -> Path:
    """Apply the ``{split}`` template, if any, to a manifest path."""
    text = str(manifest)
    return Path(text.replace("{split}", split)) if "{split}" in text else Path(manifest)


def is_split_template(manifest: Path) -> bool:
    """Whether the manifest path names one file per split (contains ``{split}``)."""
    return "{split}" in str(manifest)
