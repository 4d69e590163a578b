"""The data-source registry: every kind of dataset the project reads, in one table.

A source says which splits it has, how one split is loaded (strict: every annotation problem
raised together, naming the records), how every record is read *with* its problems (lenient:
what the validate step quarantines under ``validate.policy: quarantine``), which files define its
labels and which folder holds its images (together: what the data hash covers), and whether its
annotation files are in the canonical format - one JSON file per split in Intentonomy's schema
(the validate step reads those itself, to write cleaned copies of the documents) - and under
which default names (:mod:`mccl_core.data.annotations`). ``load_split``, the validate step and
the data hash all dispatch through :func:`data_source`.

The one rule of the lenient readers: a problem of one record (row) is returned with that record,
so it can be reported and set aside; only a problem of the file as a whole (missing, unreadable,
not UTF-8, no header, missing column or top-level key) raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mccl_core.data.annotations import CANONICAL_FILENAMES, LEGACY_FILENAMES, load_annotation_records
from mccl_core.data.dataset import ImageRecord
from mccl_core.data.demo import STAMP_FILE
from mccl_core.data.intentonomy import OFFICIAL_ANNOTATION_FILENAMES
from mccl_core.data.manifest import (
    ManifestFileError,
    ManifestRow,
    is_split_template,
    load_manifest_records,
    manifest_path_for_split,
    read_class_list,
    read_manifest,
)
from mccl_core.data.mdid import MDID_DESCRIPTIONS, MDID_INTENTS, load_mdid_records, read_mdid_rows

if TYPE_CHECKING:
    from mccl_core.data.config import DataConfig

#: (records, class names, class descriptions, a display name for messages)
LoadedSplit = tuple[list[ImageRecord], list[str], list[str], str]


@dataclass(frozen=True)
class CheckedRecord:
    """A record read leniently: as written, with what is wrong with it (``problems`` name the
    annotation file and the record)."""

    image_id: str | None
    image_path: Path | None
    split: str
    label_ids: tuple[int, ...] | None
    problems: tuple[str, ...] = ()
    #: The record's line in its file (what the problems quote as "line N"), where it has one.
    line: int | None = None


#: (every record of the asked splits, class names, class descriptions)
CheckedSplits = tuple[list[CheckedRecord], list[str], list[str]]


@dataclass(frozen=True)
class DataSource:
    name: str
    splits: tuple[str, ...]
    #: Annotation files in the canonical format: one JSON file per split in Intentonomy's schema.
    intentonomy_schema: bool
    load: Callable[[DataConfig, str], LoadedSplit]
    label_files: Callable[[DataConfig, Sequence[str]], list[Path]]
    #: The folder holding the images (``data.root``; the manifest's folder for ``manifest``).
    data_dir: Callable[[DataConfig], Path]
    #: Lenient reader of every record of the asked splits (``None``: the Intentonomy-schema
    #: sources, which the validate step parses itself).
    read_checked: Callable[[DataConfig, Sequence[str]], CheckedSplits] | None = None
    #: Default annotation file names under ``<root>/annotations/`` (schema sources; where
    #: ``data.annotations`` names no file): one ``split -> name`` table per candidate, most
    #: preferred first; :meth:`DataConfig.annotation_file` takes the first that exists.
    annotation_filenames: tuple[Mapping[str, str], ...] = (CANONICAL_FILENAMES,)


def _load_annotations(cfg: DataConfig, split: str) -> LoadedSplit:
    records, names, descriptions = load_annotation_records(cfg.annotation_file(split), cfg.root, split)
    return records, names, descriptions, cfg.source


def _load_demo(cfg: DataConfig, split: str) -> LoadedSplit:
    annotation_file = cfg.annotation_file(split)
    if not annotation_file.is_file() and not (cfg.root / STAMP_FILE).is_file():
        raise FileNotFoundError(
            f"demo dataset not found under {str(cfg.root)!r} (no {annotation_file.name}); generate it with "
            f"`python -m mccl_core.data.cli demo --out {cfg.root}` or mccl_core.data.generate_demo"
        )
    return _load_annotations(cfg, split)


def _load_mdid(cfg: DataConfig, split: str) -> LoadedSplit:
    records, names, descriptions = load_mdid_records(cfg.root, cfg.mdid_split_index, split, cfg.mdid_splits_file)
    return records, names, descriptions, f"mdid[{cfg.mdid_split_index}]"


def _load_manifest(cfg: DataConfig, split: str) -> LoadedSplit:
    manifest, class_list = _manifest_files(cfg)
    names, descriptions = read_class_list(class_list)
    path = manifest_path_for_split(manifest, split)
    records = load_manifest_records(path, names, split, one_file_per_split=is_split_template(manifest))
    return records, names, descriptions, f"manifest {path.name}"


def _checked_manifest(cfg: DataConfig, splits: Sequence[str]) -> CheckedSplits:
    """Every row of the manifest(s) of ``splits`` (rows with a split value that is not a split
    included: they belong to no split, and must not vanish)."""
    manifest, class_list = _manifest_files(cfg)
    names, descriptions = read_class_list(class_list)
    files: list[tuple[Path, str | None]] = (
        [(manifest_path_for_split(manifest, s), s) for s in splits]
        if is_split_template(manifest)
        else [(manifest, None)]
    )
    rows: list[tuple[Path, ManifestRow]] = []
    for path, file_split in files:
        rows += [
            (path, row) for row in read_manifest(path, names, file_split, one_file_per_split=file_split is not None)
        ]
    empty = [s for s in splits if not any(row.split == s for _, row in rows)]
    if empty:
        raise ManifestFileError(f"manifest {str(manifest)!r}", [f"no rows for split(s) {empty}"])
    records = [
        CheckedRecord(
            row.image_id, row.image_path, row.split, row.label_ids,
            tuple(f"manifest {str(path)!r}: {p}" for p in row.problems), row.line_number,
        )
        for path, row in rows
    ]  # fmt: skip
    return records, names, descriptions


def _checked_mdid(cfg: DataConfig, splits: Sequence[str]) -> CheckedSplits:
    records: list[CheckedRecord] = []
    for split in splits:
        source = f"MDID split {cfg.mdid_split_index} {split}"
        for record, problems in read_mdid_rows(cfg.root, cfg.mdid_split_index, split, cfg.mdid_splits_file):
            records.append(
                CheckedRecord(record.image_id, record.image_path, split, record.labels,
                              tuple(f"{source}: {p}" for p in problems))
            )  # fmt: skip
    return records, list(MDID_INTENTS), list(MDID_DESCRIPTIONS)


def _manifest_files(cfg: DataConfig) -> tuple[Path, Path]:
    if cfg.manifest is None or cfg.class_list is None:  # DataConfig rejects this already
        raise ValueError("the manifest source needs both data.manifest and data.class_list")
    return cfg.manifest, cfg.class_list


def _annotation_label_files(cfg: DataConfig, splits: Sequence[str]) -> list[Path]:
    return [cfg.annotation_file(s) for s in splits]


def _manifest_label_files(cfg: DataConfig, splits: Sequence[str]) -> list[Path]:
    """The manifest file(s) and the class list: both define the labels (data hash, DVC deps)."""
    manifest, class_list = _manifest_files(cfg)
    return [*sorted({manifest_path_for_split(manifest, s) for s in splits}), class_list]


def _mdid_label_files(cfg: DataConfig, splits: Sequence[str]) -> list[Path]:
    return [cfg.mdid_splits_file] if cfg.mdid_splits_file is not None else []


def _root(cfg: DataConfig) -> Path:
    return cfg.root


def _manifest_dir(cfg: DataConfig) -> Path:
    """Image paths of a manifest resolve against its folder (``data.root`` is not used)."""
    return _manifest_files(cfg)[0].parent


SPLITS3 = ("train", "val", "test")
SOURCES: dict[str, DataSource] = {
    # The demo's files carry the canonical names; a demo folder rendered before them has the
    # legacy ones, still read when the canonical ones are missing.
    "demo": DataSource(
        "demo",
        SPLITS3,
        True,
        _load_demo,
        _annotation_label_files,
        _root,
        annotation_filenames=(CANONICAL_FILENAMES, LEGACY_FILENAMES),
    ),
    # Intentonomy as published (and as `mccl data download-intentonomy` expects it).
    "intentonomy": DataSource(
        "intentonomy",
        SPLITS3,
        True,
        _load_annotations,
        _annotation_label_files,
        _root,
        annotation_filenames=(OFFICIAL_ANNOTATION_FILENAMES,),
    ),
    # MDID has train/val per split index; its protocol averages val accuracy over the 5 indices.
    "mdid": DataSource("mdid", ("train", "val"), False, _load_mdid, _mdid_label_files, _root, _checked_mdid),
    "manifest": DataSource(
        "manifest", SPLITS3, False, _load_manifest, _manifest_label_files, _manifest_dir, _checked_manifest
    ),
}


def data_source(cfg: DataConfig) -> DataSource:
    try:
        return SOURCES[cfg.source]
    except KeyError:
        raise ValueError(f"unknown data source {cfg.source!r}; sources: {list(SOURCES)}") from None
