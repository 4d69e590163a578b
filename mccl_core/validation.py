"""Data validation of an image manifest with Great Expectations (GX Core 1.x).

Why: a training run that silently skips a corrupt JPEG, trains on a class that has no train
image, or scores on a test image without labels produces numbers nobody can trust. This module
checks a manifest *before* any step consumes it and either stops the pipeline with a message that
names every offending record (``policy="fail"``) or moves the bad records to a quarantine file
and hands back a clean manifest (``policy="quarantine"``) - never dropping anything silently.

The manifest is a plain :class:`pandas.DataFrame` with one row per image::

    image_id     str         unique over the whole manifest
    image_path   str | Path  relative paths are resolved against ``image_root``
    split        "train" | "val" | "test"
    label_ids    list[int]   class indices in [0, num_classes); val/test need at least one

How the checks are split between Python and GX: GX cannot look inside image files or list cells,
so Python derives per-row columns (``readable``, ``width``, ``height``, ``mode``, ``problem`` from
opening each file with PIL; ``labels_wellformed``, ``n_labels``, ``n_labels_out_of_range`` from
``label_ids``) and GX asserts on those columns. GX's result then lists the failing rows (by
``row_number``, the row's position in the input), which become the offending records of the
report. The "every class has a train image" check is table-level: a per-class table of train
counts (over the train rows that passed the row-level checks, i.e. what training will really
see) is validated by a second GX suite, which names the missing classes.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

Policy = Literal["fail", "quarantine"]

REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "image_path", "split", "label_ids")
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Splits whose records are scored and therefore need at least one label.
EVAL_SPLITS: tuple[str, ...] = ("val", "test")
#: PIL modes that ``Image.convert("RGB")`` handles (checked against Pillow 13).
RGB_CONVERTIBLE_MODES: tuple[str, ...] = (
    "1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV",
    "I", "I;16", "I;16B", "I;16L", "F",
)  # fmt: skip
#: How many offending records an exception message / Markdown summary spells out.
MESSAGE_RECORD_LIMIT = 20
ROW_NUMBER = "row_number"


class DataValidationError(ValueError):
    """The manifest failed validation; ``report`` holds the full machine-readable result."""

    def __init__(self, message: str, report: "ValidationReport") -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ImageLimits:
    """Sanity bounds for image files.

    ``max_pixels`` also guards against decompression bombs: an image whose header announces more
    pixels is reported without being decoded.
    """

    min_side: int = 16
    max_side: int = 16384
    max_pixels: int = 89_478_485  # PIL's own Image.MAX_IMAGE_PIXELS default
    allowed_modes: tuple[str, ...] = RGB_CONVERTIBLE_MODES

    def __post_init__(self) -> None:
        if not 0 < self.min_side <= self.max_side:
            raise ValueError(f"ImageLimits needs 0 < min_side <= max_side, got {self.min_side}, {self.max_side}")
        if self.max_pixels <= 0:
            raise ValueError(f"ImageLimits.max_pixels must be positive, got {self.max_pixels}")


@dataclass(frozen=True)
class ImageInspection:
    """What PIL says about one image file (``problem`` is "" when it decoded fine)."""

    readable: bool
    width: int | None
    height: int | None
    mode: str | None
    problem: str


@dataclass
class ExpectationOutcome:
    """One GX expectation's result, reduced to what a person or a dashboard needs."""

    check: str
    expectation_type: str
    description: str
    level: Literal["row", "table"]
    success: bool
    unexpected_count: int
    #: Row numbers (positions in the input manifest) that failed a row-level check.
    failing_rows: list[int] = field(default_factory=list)
    #: Table-level details (e.g. the missing class names).
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class OffendingRecord:
    """A manifest row that failed one or more row-level checks."""

    row_number: int
    image_id: str
    image_path: str
    split: str
    checks: list[str]
    problems: list[str]

    @property
    def problem(self) -> str:
        return "; ".join(self.problems)


@dataclass
class ValidationReport:
    """Result of :func:`validate_manifest`.

    ``success`` says whether the manifest *as given* passed every expectation; ``usable`` whether
    the returned ``clean_manifest`` may be consumed (true after quarantining row-level problems,
    false when a table-level check failed or ``policy="fail"`` met any problem).
    """

    success: bool
    usable: bool
    policy: Policy
    n_records: int
    n_clean: int
    n_quarantined: int
    expectations: list[ExpectationOutcome]
    offending: list[OffendingRecord]
    table_problems: list[str]
    missing_classes: list[str]
    quarantine_path: Path | None
    #: The input rows that passed (original columns and index); empty when not usable.
    clean_manifest: pd.DataFrame = field(repr=False)
    #: Per-row columns derived for GX (readable, width, height, mode, problem, n_labels, ...).
    checked_rows: pd.DataFrame = field(repr=False)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "records": self.n_records,
            "clean": self.n_clean,
            "offending": len(self.offending),
            "quarantined": self.n_quarantined,
            "expectations": len(self.expectations),
            "failed_expectations": sum(not e.success for e in self.expectations),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (without the DataFrames)."""
        return {
            "success": self.success,
            "usable": self.usable,
            "policy": self.policy,
            "counts": self.counts,
            "expectations": [asdict(e) for e in self.expectations],
            "offending_records": [
                {**asdict(record), "problem": record.problem} for record in self.offending
            ],
            "table_problems": list(self.table_problems),
            "missing_classes": list(self.missing_classes),
            "quarantine_path": str(self.quarantine_path) if self.quarantine_path else None,
        }

    def to_json(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n", encoding="utf-8")
        return path

    def to_markdown(self) -> str:
        """A short human summary (status, counts, failed checks, first offending records)."""
        status = "PASSED" if self.success else ("FAILED" if not self.usable else "PASSED after quarantine")
        lines = [
            f"# Data validation: {status}",
            "",
            f"- records: {self.n_records}, clean: {self.n_clean}, offending: {len(self.offending)}, "
            f"quarantined: {self.n_quarantined} (policy: {self.policy})",
        ]
        if self.quarantine_path:
            lines.append(f"- quarantine file: `{self.quarantine_path}`")
        lines += ["", "| check | level | result | unexpected |", "|---|---|---|---|"]
        for outcome in self.expectations:
            mark = "pass" if outcome.success else "**FAIL**"
            lines.append(f"| {outcome.check} | {outcome.level} | {mark} | {outcome.unexpected_count} |")
        if self.table_problems:
            lines += ["", "## Table-level problems", ""] + [f"- {p}" for p in self.table_problems]
        if self.offending:
            lines += ["", f"## Offending records ({len(self.offending)})", ""]
            for record in self.offending[:MESSAGE_RECORD_LIMIT]:
                lines.append(f"- `{record.image_id}` (`{record.image_path}`): {record.problem}")
            if len(self.offending) > MESSAGE_RECORD_LIMIT:
                lines.append(f"- ... and {len(self.offending) - MESSAGE_RECORD_LIMIT} more (see the JSON report)")
        return "\n".join(lines) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# Python-side derivation of per-row columns
# --------------------------------------------------------------------------------------------


def inspect_image(path: Path, limits: ImageLimits) -> ImageInspection:
    """Open ``path`` with PIL and fully decode it, reporting any problem instead of raising.

    The header is read first; an image announcing more than ``limits.max_pixels`` pixels is not
    decoded (decompression-bomb guard). ``load()`` forces the full decode so truncated and
    corrupt files are caught here, not in the middle of a training epoch.
    """
    if not path.exists():
        return ImageInspection(False, None, None, None, f"file not found: {path}")
    if not path.is_file():
        return ImageInspection(False, None, None, None, f"not a regular file: {path}")
    if path.stat().st_size == 0:
        return ImageInspection(False, None, None, None, "zero-byte file")
    try:
        with warnings.catch_warnings():
            # PIL warns (and above 2x its limit raises) for huge images; we apply our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                mode = image.mode
                pixels = width * height
                if pixels > limits.max_pixels:
                    return ImageInspection(
                        False, width, height, mode,
                        f"not decoded: {width}x{height} = {pixels} pixels exceeds max_pixels "
                        f"{limits.max_pixels} (decompression-bomb guard)",
                    )  # fmt: skip
                image.load()
    except Image.DecompressionBombError as error:
        return ImageInspection(False, None, None, None, f"decompression bomb: {error}")
    except UnidentifiedImageError:
        return ImageInspection(False, None, None, None, "not an image (PIL cannot identify the file format)")
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... on corrupt data
        return ImageInspection(
            False, None, None, None, f"truncated or corrupt image data ({type(error).__name__}: {error})"
        )
    return ImageInspection(True, width, height, mode, "")


def _resolve(path_value: Any, image_root: Path | None) -> Path | None:
    if path_value is None or (isinstance(path_value, float) and math.isnan(path_value)):
        return None
    path = Path(str(path_value))
    if not path.is_absolute() and image_root is not None:
        path = image_root / path
    return path


def _label_columns(value: Any, num_classes: int) -> tuple[bool, int, int, str]:
    """(well-formed, number of ids, number out of range, out-of-range ids as text)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        return False, 0, 0, ""
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
        return False, len(value), 0, ""
    bad = [int(v) for v in value if not 0 <= int(v) < num_classes]
    return True, len(value), len(bad), ",".join(str(v) for v in bad)


def _derive_rows(
    manifest: pd.DataFrame,
    num_classes: int,
    check_images: bool,
    limits: ImageLimits,
    image_root: Path | None,
    workers: int,
) -> pd.DataFrame:
    rows = pd.DataFrame(
        {
            ROW_NUMBER: np.arange(len(manifest), dtype=np.int64),
            "image_id": manifest["image_id"].to_numpy(dtype=object),
            "image_path": np.array(
                [None if _resolve(p, None) is None else str(p) for p in manifest["image_path"]], dtype=object
            ),
            "split": manifest["split"].to_numpy(dtype=object),
        }
    )
    labels = [_label_columns(v, num_classes) for v in manifest["label_ids"].tolist()]
    rows["labels_wellformed"] = [x[0] for x in labels]
    rows["n_labels"] = np.array([x[1] for x in labels], dtype=np.int64)
    rows["n_labels_out_of_range"] = np.array([x[2] for x in labels], dtype=np.int64)
    rows["labels_out_of_range"] = [x[3] for x in labels]
    if check_images:
        paths = [_resolve(p, image_root) for p in manifest["image_path"].tolist()]

        def inspect(path: Path | None) -> ImageInspection:
            if path is None:
                return ImageInspection(False, None, None, None, "no image_path")
            return inspect_image(path, limits)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = list(
                tqdm(pool.map(inspect, paths), total=len(paths), desc="checking images", unit="img", leave=False)
            )
        rows["readable"] = [r.readable for r in results]
        rows["width"] = np.array([np.nan if r.width is None else r.width for r in results], dtype=np.float64)
        rows["height"] = np.array([np.nan if r.height is None else r.height for r in results], dtype=np.float64)
        rows["pixels"] = rows["width"] * rows["height"]
        rows["mode"] = np.array([r.mode for r in results], dtype=object)
        rows["problem"] = [r.problem for r in results]
    return rows


# --------------------------------------------------------------------------------------------
# GX suites
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Check:
    key: str
    level: Literal["row", "table"]
    description: str
    expectation: Any


def _row_checks(num_classes: int, check_images: bool, limits: ImageLimits) -> list[_Check]:
    import great_expectations as gx
    from great_expectations.expectations.row_conditions import Column

    E = gx.expectations
    checks = [
        _Check("manifest_not_empty", "table", "the manifest has at least one record",
               E.ExpectTableRowCountToBeBetween(min_value=1)),
        _Check("image_id_present", "row", "image_id is set",
               E.ExpectColumnValuesToNotBeNull(column="image_id")),
        _Check("image_id_unique", "row", "image ids are unique over the whole manifest",
               E.ExpectColumnValuesToBeUnique(column="image_id")),
        _Check("image_id_unique_per_split", "row", "image ids are unique within each split",
               E.ExpectCompoundColumnsToBeUnique(column_list=["split", "image_id"])),
        _Check("image_path_present", "row", "image_path is set",
               E.ExpectColumnValuesToNotBeNull(column="image_path")),
        _Check("split_valid", "row", f"split is one of {list(SPLITS)}",
               E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS))),
        _Check("labels_wellformed", "row", "label_ids is a list of integers",
               E.ExpectColumnValuesToBeInSet(column="labels_wellformed", value_set=[True])),
        _Check("labels_in_range", "row", f"label ids are in [0, {num_classes})",
               E.ExpectColumnValuesToBeInSet(column="n_labels_out_of_range", value_set=[0])),
        _Check("eval_rows_labelled", "row", "val/test records have at least one label",
               E.ExpectColumnValuesToBeBetween(
                   column="n_labels", min_value=1, row_condition=Column("split").is_in(list(EVAL_SPLITS)))),
    ]  # fmt: skip
    if check_images:
        checks += [
            _Check("image_readable", "row", "the image file opens and fully decodes with PIL",
                   E.ExpectColumnValuesToBeInSet(column="readable", value_set=[True])),
            _Check("image_width", "row", f"width in [{limits.min_side}, {limits.max_side}]",
                   E.ExpectColumnValuesToBeBetween(
                       column="width", min_value=limits.min_side, max_value=limits.max_side)),
            _Check("image_height", "row", f"height in [{limits.min_side}, {limits.max_side}]",
                   E.ExpectColumnValuesToBeBetween(
                       column="height", min_value=limits.min_side, max_value=limits.max_side)),
            _Check("image_pixels", "row", f"at most {limits.max_pixels} pixels",
                   E.ExpectColumnValuesToBeBetween(column="pixels", max_value=limits.max_pixels)),
            _Check("image_mode", "row", "PIL mode convertible to RGB",
                   E.ExpectColumnValuesToBeInSet(column="mode", value_set=list(limits.allowed_modes))),
        ]  # fmt: skip
    return checks


def _class_checks(min_train_images: int) -> list[_Check]:
    import great_expectations as gx

    return [
        _Check(
            "every_class_in_train", "table",
            f"every class has at least {min_train_images} valid train image(s)",
            gx.expectations.ExpectColumnValuesToBeBetween(column="train_images", min_value=min_train_images),
        )
    ]  # fmt: skip


def _schema_checks() -> list[_Check]:
    import great_expectations as gx

    return [
        _Check("required_columns", "table", f"columns {list(REQUIRED_COLUMNS)} are present",
               gx.expectations.ExpectTableColumnsToMatchSet(column_set=list(REQUIRED_COLUMNS), exact_match=False))
    ]  # fmt: skip


def _gx_context() -> Any:
    """An in-memory GX context without analytics (no network) or progress bars."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _run_suite(
    context: Any, name: str, frame: pd.DataFrame, checks: list[_Check], index_column: str | None
) -> dict[str, Any]:
    """Validate ``frame`` against ``checks``; returns GX results keyed by check key."""
    import great_expectations as gx

    asset = context.data_sources.add_pandas(f"{name}_source").add_dataframe_asset(f"{name}_asset")
    batch_definition = asset.add_batch_definition_whole_dataframe(f"{name}_batch")
    suite = gx.ExpectationSuite(name=f"{name}_suite")
    for check in checks:
        expectation = check.expectation
        expectation.meta = {"check": check.key}
        expectation.description = check.description
        suite.add_expectation(expectation)
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch_definition, suite=suite, name=f"{name}_validation")
    )
    result_format: dict[str, Any] = {"result_format": "COMPLETE"}
    if index_column is not None:
        result_format["unexpected_index_column_names"] = [index_column]
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
    by_key: dict[str, Any] = {}
    for expectation_result in result.results:
        key = (expectation_result.expectation_config.meta or {}).get("check")
        info = expectation_result.exception_info or {}
        if info.get("raised_exception"):
            raise RuntimeError(
                f"Great Expectations could not evaluate check {key!r}: {info.get('exception_message')}"
            )
        by_key[key] = expectation_result
    return by_key


def _outcome(check: _Check, gx_result: Any, index_column: str | None) -> ExpectationOutcome:
    result = gx_result.result or {}
    failing: list[int] = []
    if index_column is not None and check.level == "row":
        failing = sorted({int(entry[index_column]) for entry in result.get("unexpected_index_list") or []})
    details: dict[str, Any] = {}
    if "observed_value" in result:
        details["observed_value"] = _plain(result["observed_value"])
    if "details" in result:
        details["details"] = _plain(result["details"])
    return ExpectationOutcome(
        check=check.key,
        expectation_type=gx_result.expectation_config.type,
        description=check.description,
        level=check.level,
        success=bool(gx_result.success),
        unexpected_count=int(result.get("unexpected_count") or (0 if gx_result.success else 1)),
        failing_rows=failing,
        details=details,
    )


def _plain(value: Any) -> Any:
    """GX results hold numpy scalars; make them JSON-friendly."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))


# --------------------------------------------------------------------------------------------
# Problem texts
# --------------------------------------------------------------------------------------------


def _problem_text(check: str, row: pd.Series, id_counts: dict[Any, int], num_classes: int, limits: ImageLimits) -> str:
    if check == "image_id_present":
        return "image_id is missing"
    if check == "image_id_unique":
        return f"duplicate image_id {row['image_id']!r} ({id_counts.get(row['image_id'], 0)} records share it)"
    if check == "image_id_unique_per_split":
        return f"duplicate image_id {row['image_id']!r} within split {row['split']!r}"
    if check == "image_path_present":
        return "image_path is missing"
    if check == "split_valid":
        return f"split {row['split']!r} is not one of {list(SPLITS)}"
    if check == "labels_wellformed":
        return f"label_ids is not a list of integers: {row['_label_ids']!r}"
    if check == "labels_in_range":
        return f"label ids out of range [0, {num_classes}): [{row['labels_out_of_range']}]"
    if check == "eval_rows_labelled":
        return f"{row['split']} record has no labels (val/test records need at least one)"
    if check == "image_readable":
        return str(row["problem"])
    if check in ("image_width", "image_height"):
        side = check.removeprefix("image_")
        return f"{side} {int(row[side])} outside [{limits.min_side}, {limits.max_side}]"
    if check == "image_pixels":
        size = f"{int(row['width'])}x{int(row['height'])} = {int(row['pixels'])} pixels"
        return f"{size} exceeds max_pixels {limits.max_pixels}"
    if check == "image_mode":
        return f"image mode {row['mode']!r} cannot be converted to RGB"
    return f"failed check {check}"


def _offending_records(
    outcomes: list[ExpectationOutcome], rows: pd.DataFrame, num_classes: int, limits: ImageLimits
) -> list[OffendingRecord]:
    id_counts = rows["image_id"].value_counts(dropna=True).to_dict()
    by_row: dict[int, OffendingRecord] = {}
    for outcome in outcomes:
        if outcome.level != "row":
            continue
        for row_number in outcome.failing_rows:
            row = rows.iloc[row_number]
            record = by_row.get(row_number)
            if record is None:
                record = by_row[row_number] = OffendingRecord(
                    row_number=row_number,
                    image_id=str(row["image_id"]),
                    image_path=str(row["image_path"]),
                    split=str(row["split"]),
                    checks=[],
                    problems=[],
                )
            text = _problem_text(outcome.check, row, id_counts, num_classes, limits)
            record.checks.append(outcome.check)
            if text not in record.problems:
                record.problems.append(text)
    return [by_row[k] for k in sorted(by_row)]


def _error_message(report: ValidationReport) -> str:
    lines = [f"manifest validation failed ({report.n_records} records, policy={report.policy!r}):"]
    lines += [f"  table: {problem}" for problem in report.table_problems]
    for record in report.offending[:MESSAGE_RECORD_LIMIT]:
        lines.append(f"  - image_id={record.image_id!r} path={record.image_path!r}: {record.problem}")
    if len(report.offending) > MESSAGE_RECORD_LIMIT:
        lines.append(f"  ... and {len(report.offending) - MESSAGE_RECORD_LIMIT} more")
    lines.append(f"  {len(report.offending)} offending record(s) in total")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Quarantine
# --------------------------------------------------------------------------------------------


def write_quarantine(manifest: pd.DataFrame, offending: list[OffendingRecord], path: Path) -> Path:
    """Write the offending rows (original columns + ``row_number``, ``checks``, ``reason``).

    ``.csv`` stores ``label_ids`` as JSON text; ``.json`` writes a list of objects.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"quarantine file {str(path)!r} must end in .csv or .json")
    records = []
    for record in offending:
        source = manifest.iloc[record.row_number]
        entry = {column: _plain(_cell(source[column])) for column in manifest.columns}
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


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def validate_manifest(
    manifest: pd.DataFrame,
    num_classes: int,
    class_names: list[str],
    policy: Policy = "fail",
    check_images: bool = True,
    image_limits: ImageLimits | None = None,
    *,
    image_root: Path | None = None,
    quarantine_path: Path | None = None,
    min_train_images_per_class: int = 1,
    workers: int = 4,
) -> ValidationReport:
    """Validate ``manifest`` (see the module docstring for its columns) with GX.

    ``policy="fail"`` raises :class:`DataValidationError` on any failed expectation, listing the
    first offending records (id, path, problem) and their total. ``policy="quarantine"`` writes
    the records that failed row-level checks to ``quarantine_path`` (``.csv``/``.json``, with the
    reason), logs them and returns the remaining rows as ``report.clean_manifest``; table-level
    failures (missing columns, empty manifest, a class with no valid train image) still raise.
    """
    if policy not in ("fail", "quarantine"):
        raise ValueError(f"policy must be 'fail' or 'quarantine', got {policy!r}")
    if len(class_names) != num_classes:
        raise ValueError(f"num_classes={num_classes} but {len(class_names)} class names were given")
    if policy == "quarantine" and quarantine_path is None:
        raise ValueError("policy='quarantine' needs quarantine_path (where the bad records are written)")
    limits = image_limits or ImageLimits()
    context = _gx_context()

    schema_checks = _schema_checks()
    schema_results = _run_suite(context, "manifest_schema", manifest, schema_checks, index_column=None)
    schema_outcomes = [_outcome(c, schema_results[c.key], None) for c in schema_checks]
    if not all(o.success for o in schema_outcomes):
        missing = sorted(set(REQUIRED_COLUMNS) - set(map(str, manifest.columns)))
        report = ValidationReport(
            success=False, usable=False, policy=policy, n_records=len(manifest), n_clean=0, n_quarantined=0,
            expectations=schema_outcomes, offending=[],
            table_problems=[f"missing required columns {missing} (found {list(map(str, manifest.columns))})"],
            missing_classes=[], quarantine_path=None,
            clean_manifest=manifest.iloc[0:0], checked_rows=pd.DataFrame(),
        )  # fmt: skip
        raise DataValidationError(_error_message(report), report)

    rows = _derive_rows(manifest, num_classes, check_images, limits, image_root, workers)
    row_checks = _row_checks(num_classes, check_images, limits)
    row_results = _run_suite(context, "manifest_rows", rows, row_checks, index_column=ROW_NUMBER)
    row_outcomes = [_outcome(c, row_results[c.key], ROW_NUMBER) for c in row_checks]
    rows["_label_ids"] = manifest["label_ids"].tolist()
    offending = _offending_records(row_outcomes, rows, num_classes, limits)
    rows = rows.drop(columns="_label_ids")
    bad_rows = {record.row_number for record in offending}
    clean_mask = np.ones(len(manifest), dtype=bool)
    clean_mask[list(bad_rows)] = False

    # Table-level: per-class counts over the train rows that passed every row-level check.
    train_counts = np.zeros(num_classes, dtype=np.int64)
    for split, labels, ok in zip(rows["split"], manifest["label_ids"].tolist(), clean_mask):
        if ok and split == "train":
            for label in set(np.asarray(labels, dtype=np.int64).tolist()):
                train_counts[label] += 1
    class_table = pd.DataFrame({"class_name": list(class_names), "train_images": train_counts})
    class_checks = _class_checks(min_train_images_per_class)
    class_results = _run_suite(context, "train_classes", class_table, class_checks, index_column="class_name")
    class_outcome = _outcome(class_checks[0], class_results["every_class_in_train"], None)
    unexpected_classes = class_results["every_class_in_train"].result.get("unexpected_index_list") or []
    missing_classes = [str(entry["class_name"]) for entry in unexpected_classes]
    class_outcome.details["missing_classes"] = missing_classes
    class_outcome.unexpected_count = len(missing_classes)

    outcomes = schema_outcomes + row_outcomes + [class_outcome]
    table_problems = [
        f"{o.check}: {o.description} - failed" for o in row_outcomes if o.level == "table" and not o.success
    ]
    if missing_classes:
        table_problems.append(
            f"classes with fewer than {min_train_images_per_class} valid train image(s): {missing_classes}"
        )
    success = all(o.success for o in outcomes)
    usable = not table_problems and (policy == "quarantine" or not offending)

    written: Path | None = None
    if usable and policy == "quarantine" and offending:
        written = write_quarantine(manifest, offending, quarantine_path)  # type: ignore[arg-type]
        for record in offending[:MESSAGE_RECORD_LIMIT]:
            logger.warning("quarantined %s (%s): %s", record.image_id, record.image_path, record.problem)
        logger.warning("quarantined %d of %d manifest records to %s", len(offending), len(manifest), written)

    clean = manifest.iloc[clean_mask] if usable else manifest.iloc[0:0]
    report = ValidationReport(
        success=success,
        usable=usable,
        policy=policy,
        n_records=len(manifest),
        n_clean=len(clean),
        n_quarantined=len(offending) if written else 0,
        expectations=outcomes,
        offending=offending,
        table_problems=table_problems,
        missing_classes=missing_classes,
        quarantine_path=written,
        clean_manifest=clean,
        checked_rows=rows,
    )
    if not usable:
        raise DataValidationError(_error_message(report), report)
    logger.info(
        "manifest validation %s: %d records, %d clean, %d quarantined",
        "passed" if success else "passed after quarantine", len(manifest), len(clean), report.n_quarantined,
    )
    return report
