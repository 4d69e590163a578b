"""The data-source registry: every kind of dataset the project reads, in one table.

A source says which splits it has, how one split is loaded (strict: every annotation problem
raised together, naming the records), which files define its labels (what the data hash
covers), and whether its annotation files use the Intentonomy JSON schema - those the validate
step reads record by record in the parser's lenient mode, so bad records can be quarantined.
``load_split``, the validate step and the data hash all dispatch through :func:`data_source`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mccl_core.data.dataset import ImageRecord
from mccl_core.data.demo import STAMP_FILE
from mccl_core.data.intentonomy import load_intentonomy_records
from mccl_core.data.manifest import load_manifest_records, manifest_path_for_split, read_class_list
from mccl_core.data.mdid import load_mdid_records

if TYPE_CHECKING:
    from mccl_core.data.config import DataConfig

#: (records, class names, class descriptions, a display name for messages)
LoadedSplit = tuple[list[ImageRecord], list[str], list[str], str]


@dataclass(frozen=True)
class DataSource:
    name: str
    splits: tuple[str, ...]
    #: Annotation files in the Intentonomy JSON schema (``annotations/intentonomy_<split>2020.json``).
    intentonomy_schema: bool
    load: Callable[[DataConfig, str], LoadedSplit]
    label_files: Callable[[DataConfig, Sequence[str]], list[Path]]


def _load_intentonomy(cfg: DataConfig, split: str) -> LoadedSplit:
    records, names, descriptions = load_intentonomy_records(cfg.annotation_file(split), cfg.root, split)
    return records, names, descriptions, cfg.source


def _load_demo(cfg: DataConfig, split: str) -> LoadedSplit:
    annotation_file = cfg.annotation_file(split)
    if not annotation_file.is_file() and not (cfg.root / STAMP_FILE).is_file():
        raise FileNotFoundError(
            f"demo dataset not found under {str(cfg.root)!r} (no {annotation_file.name}); generate it with "
            f"`python -m mccl_core.data.cli demo --out {cfg.root}` or mccl_core.data.generate_demo"
        )
    return _load_intentonomy(cfg, split)


def _load_mdid(cfg: DataConfig, split: str) -> LoadedSplit:
    records, names, descriptions = load_mdid_records(cfg.root, cfg.mdid_split_index, split, cfg.mdid_splits_file)
    return records, names, descriptions, f"mdid[{cfg.mdid_split_index}]"


def _load_manifest(cfg: DataConfig, split: str) -> LoadedSplit:
    manifest, class_list = _manifest_files(cfg)
    names, descriptions = read_class_list(class_list)
    path = manifest_path_for_split(manifest, split)
    return load_manifest_records(path, names, split), names, descriptions, f"manifest {path.name}"


def _manifest_files(cfg: DataConfig) -> tuple[Path, Path]:
    if cfg.manifest is None or cfg.class_list is None:  # DataConfig rejects this already
        raise ValueError("the manifest source needs both data.manifest and data.class_list")
    return cfg.manifest, cfg.class_list


def _intentonomy_label_files(cfg: DataConfig, splits: Sequence[str]) -> list[Path]:
    return [cfg.annotation_file(s) for s in splits]


def _manifest_label_files(cfg: DataConfig, splits: Sequence[str]) -> list[Path]:
    manifest, class_list = _manifest_files(cfg)
    return [*sorted({manifest_path_for_split(manifest, s) for s in splits}), class_list]


def _mdid_label_files(cfg: DataConfig, splits: Sequence[str]) -> list[Path]:
    return [cfg.mdid_splits_file] if cfg.mdid_splits_file is not None else []


SOURCES: dict[str, DataSource] = {
    "demo": DataSource("demo", ("train", "val", "test"), True, _load_demo, _intentonomy_label_files),
    "intentonomy": DataSource("intentonomy", ("train", "val", "test"), True, _load_intentonomy, _intentonomy_label_files),
    # MDID has train/val per split index; its protocol averages val accuracy over the 5 indices.
    "mdid": DataSource("mdid", ("train", "val"), False, _load_mdid, _mdid_label_files),
    "manifest": DataSource("manifest", ("train", "val", "test"), False, _load_manifest, _manifest_label_files),
}


def data_source(cfg: DataConfig) -> DataSource:
    try:
        return SOURCES[cfg.source]
    except KeyError:
        raise ValueError(f"unknown data source {cfg.source!r}; sources: {list(SOURCES)}") from None
