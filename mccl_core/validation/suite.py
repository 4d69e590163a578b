"""The Great Expectations suite over an image manifest (GX Core 1.x), and its entry point
:func:`validate_manifest`.

How the checks are split between Python and GX: GX cannot look inside image files or list cells,
so Python derives per-row columns and GX asserts on those columns. Label columns
(``labels_wellformed``, ``n_labels``, ``n_labels_out_of_range``) come from ``label_ids``; image
columns come from the one image inspector, :func:`mccl_core.data.images.inspect_image` - the
function the training loader uses - through the adapter :mod:`mccl_core.validation.images`
(facts ``width``, ``height``, ``pixels``, ``mode``, ``problem`` and one verdict column per image
check), so validation accepts exactly the files the loader decodes, for the same reasons. GX's
result then lists the failing rows (by ``row_number``, the row's position in the input), which
become the offending records of the report. The "every class has a train image" check is
table-level: a per-class table of train counts (over the train rows that passed the row-level
checks, i.e. what training will really see) is validated by a second GX suite, which names the
missing classes.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from mccl_core.data.images import ImageInspection, ImageLimits
from mccl_core.validation.images import IMAGE_CHECKS, add_image_columns, image_problem, inspect_paths
from mccl_core.validation.quarantine import write_quarantine
from mccl_core.validation.report import (
    MESSAGE_RECORD_LIMIT,
    DataValidationError,
    ExpectationOutcome,
    OffendingRecord,
    ValidationReport,
    plain,
)
from mccl_core.validation.schema import ANNOTATION_PROBLEMS, EVAL_SPLITS, REQUIRED_COLUMNS, ROW_NUMBER, SPLITS, Policy

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Python-side derivation of per-row columns
# --------------------------------------------------------------------------------------------


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


def _problem_list(value: Any) -> list[str]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value]


def _derive_rows(
    manifest: pd.DataFrame,
    num_classes: int,
    check_images: bool,
    limits: ImageLimits,
    image_root: Path | None,
    workers: int,
    allowed_roots: Sequence[Path] | None = None,
) -> tuple[pd.DataFrame, list[ImageInspection]]:
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
    ids = rows["image_id"]
    rows["image_id_first"] = ~(ids.duplicated(keep="first") & ids.notna())
    rows["image_id_first_in_split"] = ~(rows.duplicated(subset=["split", "image_id"], keep="first") & ids.notna())
    labels = [_label_columns(v, num_classes) for v in manifest["label_ids"].tolist()]
    rows["labels_wellformed"] = [x[0] for x in labels]
    rows["n_labels"] = np.array([x[1] for x in labels], dtype=np.int64)
    rows["n_labels_out_of_range"] = np.array([x[2] for x in labels], dtype=np.int64)
    rows["labels_out_of_range"] = [x[3] for x in labels]
    if ANNOTATION_PROBLEMS in manifest.columns:
        problems = [_problem_list(v) for v in manifest[ANNOTATION_PROBLEMS].tolist()]
        rows["annotation_ok"] = [not p for p in problems]
        rows["_annotation_problems"] = ["; ".join(p) for p in problems]
    paths = [_resolve(p, image_root) for p in manifest["image_path"].tolist()]
    outside: list[str | None] = [None] * len(paths)
    if allowed_roots is not None:
        outside = [outside_roots(p, allowed_roots) for p in paths]
        rows["inside_root"] = [o is None for o in outside]
        rows["_outside_root"] = [o or "" for o in outside]
    inspections: list[ImageInspection] = []
    if check_images:
        # A path outside the roots is never opened: its only problem is where it points.
        inspections = inspect_paths([None if o else p for p, o in zip(paths, outside)], limits, workers)
        inspections = [ImageInspection(Path(str(p)), None, None, None) if o else i
                       for i, p, o in zip(inspections, paths, outside)]  # fmt: skip
        add_image_columns(rows, inspections)
    return rows, inspections


def outside_roots(path: Path | None, roots: Sequence[Path]) -> str | None:
    """``None`` when ``path`` resolves (symlinks followed, ``..`` collapsed) inside one of
    ``roots``; else the problem, naming the resolved path. Only resolves: nothing is opened."""
    if path is None:
        return None
    resolved = Path(os.path.realpath(path))
    if any(resolved.is_relative_to(Path(os.path.realpath(root))) for root in roots):
        return None
    shown = ", ".join(str(Path(os.path.realpath(r))) for r in roots)
    return (f"image path {str(path)!r} resolves to {str(resolved)!r}, outside the data root(s) [{shown}]: "
            "not opened (keep images under data.root, or list their folder in data.allowed_roots)")  # fmt: skip


# --------------------------------------------------------------------------------------------
# GX suites
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Check:
    key: str
    level: Literal["row", "table"]
    description: str
    expectation: Any


def _row_checks(
    num_classes: int,
    check_images: bool,
    limits: ImageLimits,
    annotation_problems: bool = False,
    inside_roots: bool = False,
) -> list[_Check]:
    import great_expectations as gx
    from great_expectations.expectations.row_conditions import Column

    E = gx.expectations
    checks = [
        _Check("manifest_not_empty", "table", "the manifest has at least one record",
               E.ExpectTableRowCountToBeBetween(min_value=1)),
        _Check("image_id_present", "row", "image_id is set",
               E.ExpectColumnValuesToNotBeNull(column="image_id")),
        # A repeated id fails on its later copies only: the first record is fine, and setting it
        # aside too (quarantine) would lose a good record.
        _Check("image_id_unique", "row", "image ids are unique over the whole manifest (later copies fail)",
               E.ExpectColumnValuesToBeInSet(column="image_id_first", value_set=[True])),
        _Check("image_id_unique_per_split", "row", "image ids are unique within each split (later copies fail)",
               E.ExpectColumnValuesToBeInSet(column="image_id_first_in_split", value_set=[True])),
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
    if annotation_problems:  # first: its problems name the annotation file and line
        checks.insert(
            1,
            _Check("annotation_valid", "row", "the annotation reader found no problem in the record",
                   E.ExpectColumnValuesToBeInSet(column="annotation_ok", value_set=[True]))
        )  # fmt: skip
    if inside_roots:
        checks.insert(
            1, _Check("image_inside_root", "row", "the image path resolves inside the data root(s)",
                      E.ExpectColumnValuesToBeInSet(column="inside_root", value_set=[True]))
        )  # fmt: skip
    if check_images:
        # The verdicts come from the image inspector (the loader's own checks); GX asserts them.
        descriptions = {
            "image_readable": "the image file opens, decodes and converts to RGB with the loader's inspector",
            "image_width": f"width in [{limits.min_side}, {limits.max_side}]",
            "image_height": f"height in [{limits.min_side}, {limits.max_side}]",
            "image_pixels": f"at most {limits.max_pixels} pixels (larger images are not decoded)",
            "image_mode": f"PIL mode converted to RGB by the loader (one of {list(limits.allowed_modes)})",
        }
        checks += [
            _Check(check, "row", descriptions[check], E.ExpectColumnValuesToBeInSet(column=column, value_set=[True]))
            for check, (column, _) in IMAGE_CHECKS.items()
        ]
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
        # Every expectation carries the meta set above, so the key is its check's key (a str).
        key = cast(str, (expectation_result.expectation_config.meta or {}).get("check"))
        info = expectation_result.exception_info or {}
        if info.get("raised_exception"):
            raise RuntimeError(f"Great Expectations could not evaluate check {key!r}: {info.get('exception_message')}")
        by_key[key] = expectation_result
    return by_key


def _outcome(check: _Check, gx_result: Any, index_column: str | None) -> ExpectationOutcome:
    result = gx_result.result or {}
    failing: list[int] = []
    if index_column is not None and check.level == "row":
        failing = sorted({int(entry[index_column]) for entry in result.get("unexpected_index_list") or []})
    details: dict[str, Any] = {}
    if "observed_value" in result:
        details["observed_value"] = plain(result["observed_value"])
    if "details" in result:
        details["details"] = plain(result["details"])
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


# --------------------------------------------------------------------------------------------
# Problem texts
# --------------------------------------------------------------------------------------------


def _problem_text(
    check: str,
    row: pd.Series,
    id_counts: dict[Any, int],
    num_classes: int,
    inspection: ImageInspection | None,
    first_rows: dict[Any, int] | None = None,
) -> str:
    first_rows = first_rows or {}
    if check == "image_id_present":
        return "image_id is missing"
    if check == "image_id_unique":
        return (f"duplicate image_id {row['image_id']!r} ({id_counts.get(row['image_id'], 0)} records share it; "
                f"the first, row {first_rows.get(row['image_id'])}, is kept)")  # fmt: skip
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
    if check == "annotation_valid":
        return str(row["_annotation_problems"])
    if check == "image_inside_root":
        return str(row["_outside_root"])
    if check in IMAGE_CHECKS and inspection is not None:
        return image_problem(check, inspection)
    return f"failed check {check}"


def _offending_records(
    outcomes: list[ExpectationOutcome], rows: pd.DataFrame, num_classes: int, inspections: list[ImageInspection]
) -> list[OffendingRecord]:
    id_counts = rows["image_id"].value_counts(dropna=True).to_dict()
    first_rows: dict[Any, int] = {}
    for position, image_id in enumerate(rows["image_id"].tolist()):
        first_rows.setdefault(image_id, position)
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
            inspection = inspections[row_number] if inspections else None
            text = _problem_text(outcome.check, row, id_counts, num_classes, inspection, first_rows)
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
    allowed_roots: Sequence[Path] | None = None,
) -> ValidationReport:
    """Validate ``manifest`` (columns: see :mod:`mccl_core.validation.schema`) with GX.

    When the manifest has an ``annotation_problems`` column (what the annotation reader found
    wrong with each record), a row-level check fails the rows whose list is not empty: problems
    found while reading follow the same policy as those the suite finds.

    ``policy="fail"`` raises :class:`DataValidationError` on any failed expectation, listing the
    first offending records (id, path, problem) and their total. ``policy="quarantine"`` writes
    the records that failed row-level checks to ``quarantine_path`` (``.csv``/``.json``, with the
    reason), logs them and returns the remaining rows as ``report.clean_manifest``; table-level
    failures (missing columns, empty manifest, a class with no valid train image) still raise.

    ``allowed_roots``: every image path must resolve (after symlinks) inside one of these folders;
    one that does not is a row problem naming its resolved path, and is never opened.
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

    rows, inspections = _derive_rows(manifest, num_classes, check_images, limits, image_root, workers, allowed_roots)
    row_checks = _row_checks(num_classes, check_images, limits, ANNOTATION_PROBLEMS in manifest.columns,
                             allowed_roots is not None)  # fmt: skip
    text_columns = [c for c in rows.columns if c.startswith("_")]  # problem texts: not for GX
    row_results = _run_suite(
        context, "manifest_rows", rows.drop(columns=text_columns), row_checks, index_column=ROW_NUMBER
    )
    row_outcomes = [_outcome(c, row_results[c.key], ROW_NUMBER) for c in row_checks]
    rows["_label_ids"] = manifest["label_ids"].tolist()
    offending = _offending_records(row_outcomes, rows, num_classes, inspections)
    rows = rows.drop(columns=[*text_columns, "_label_ids"])
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
        "passed" if success else "passed after quarantine",
        len(manifest),
        len(clean),
        report.n_quarantined,
    )
    return report
