"""Validate step: Great Expectations over the dataset manifest and image files.

Why before anything else: a corrupt JPEG, an unknown label id or a class without training images
must stop the pipeline before any GPU time is spent, with a message that names the records.

What it does:

1. Builds the manifest (one row per image: ``image_id, image_path, split, label_ids`` and the
   reader's ``annotation_problems``) of every split. Every source is read *leniently*: the
   Intentonomy-schema files (``demo``, ``intentonomy``) by the parser's lenient mode, the others
   by their source's lenient reader (:attr:`mccl_core.data.sources.DataSource.read_checked`).
2. Runs :func:`mccl_core.validation.validate_manifest` (the reader's problems, required columns,
   unique ids, label ids in range, every class present in train, every image readable with sane
   size and mode).
3. ``policy: fail`` -> the step fails (report + summary still written). ``policy: quarantine`` ->
   the bad records go to ``quarantine.csv`` (with the reason), are counted in the report and the
   summary, and the step writes *clean* annotation files without them. Every later step loads the
   data through ``validated_data.json``, which points at the clean files: quarantined records are
   skipped everywhere, never silently.

The one rule: a problem of ONE record - whether the annotation reader or the suite finds it (a
duplicate id, an unknown label, a val row without label, a bad split, a NaN soft label, an
unreadable image, ...) - is a record-level problem and follows ``validate.policy``. Only a
problem of a whole file (missing, unreadable, not UTF-8, not JSON, no header, a missing column
or top-level key, unusable categories / class list) fails the step under either policy, with a
report naming the file.

Outputs (``out_dir``): ``report.json`` (machine-readable), ``summary.md`` (human),
``metrics.json`` (counts, for DVC), ``quarantine.csv``, ``annotations/<split>.json`` (the clean
files, in the canonical format whatever the source: :mod:`mccl_core.data.annotations`),
``validated_data.json`` (the handle later steps read; it names the clean files, so handles written
before the canonical names, pointing at ``annotations/intentonomy_<split>2020.json``, still load).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from mccl_core.data import AnnotationError, DataConfig, load_split
from mccl_core.data.annotations import CANONICAL_FILENAMES, LEGACY_FILENAMES, resolve_class_descriptions
from mccl_core.data.intentonomy_json import AnnotationFileError, parse_intentonomy_document, read_intentonomy_json
from mccl_core.data.sources import data_source
from mccl_core.hashing import sha256_files
from mccl_core.steps.common import (
    StepError,
    ValidatedData,
    annotation_files,
    dvc_data_hash,
    write_json,
    write_text,
)
from mccl_core.steps.contract import StepInput, StepOutcome, StepSpec
from mccl_core.steps.layout import QUARANTINE_FILE, VALIDATED_ANNOTATIONS_DIR, VALIDATED_DATA_FILE
from mccl_core.steps.layout import VALIDATE_METRICS_FILE as METRICS_FILE
from mccl_core.steps.layout import VALIDATE_REPORT_FILE as REPORT_FILE
from mccl_core.steps.layout import VALIDATE_SUMMARY_FILE as SUMMARY_FILE
from mccl_core.tracking.steps import StepTracking, TrackingOptions, tracked_step
from mccl_core.validation import (
    ANNOTATION_PROBLEMS,
    REQUIRED_COLUMNS,
    DataValidationError,
    ImageLimits,
    ValidationReport,
    validate_manifest,
)

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = [*REQUIRED_COLUMNS, "row_number", "checks", "reason"]


@dataclass
class ValidateConfig:
    """The ``validate`` section of params.yaml."""

    #: ``fail``: any bad record stops the pipeline; ``quarantine``: bad records are set aside.
    policy: Literal["fail", "quarantine"] = "fail"
    check_images: bool = True
    min_side: int = 16
    max_side: int = 16384
    max_pixels: int = 89_478_485
    min_train_images_per_class: int = 1
    workers: int = 4

    def __post_init__(self) -> None:
        if self.policy not in ("fail", "quarantine"):
            raise ValueError(f"validate.policy must be 'fail' or 'quarantine', got {self.policy!r}")

    def limits(self, loader_max_pixels: int | None = None) -> ImageLimits:
        """The checks' limits; never laxer than the loader's pixel cap (``data.max_image_pixels``),
        so an image validation accepts is one every later step can load."""
        caps = [c for c in (self.max_pixels, loader_max_pixels) if c is not None]
        return ImageLimits(min_side=self.min_side, max_side=self.max_side, max_pixels=min(caps) if caps else None)


@dataclass
class ValidateResult:
    validated: ValidatedData
    report_path: Path
    summary_path: Path
    quarantine_path: Path
    n_records: int
    n_quarantined: int
    mlflow_run_id: str | None


def splits_of(data_cfg: DataConfig) -> list[str]:
    """Splits the source provides (MDID has train/val per split index only)."""
    return list(data_source(data_cfg).splits)


# ------------------------------------------------------------------------------------ manifest


@dataclass
class _SourceRows:
    frame: pd.DataFrame
    class_names: list[str]
    class_descriptions: list[str]
    #: Intentonomy-schema documents per split (lenient path), to write the clean files from.
    documents: dict[str, dict[str, Any]]
    #: Per frame row (Intentonomy schema only): (split, ``annotations`` index, ``images`` indices)
    #: - what a clean copy of the document drops when the row is quarantined.
    places: list[tuple[str, int | None, tuple[int, ...]]] = field(default_factory=list)


MANIFEST_COLUMNS = [*REQUIRED_COLUMNS, ANNOTATION_PROBLEMS]
#: A record's line in its manifest file (manifest sources): the "line N" its problems quote.
#: ``row_number`` in quarantine.csv is something else: the 0-based position among all records.
LINE_COLUMN = "line"


def _intentonomy_rows(data_cfg: DataConfig, splits: list[str]) -> _SourceRows:
    """Manifest rows of Intentonomy-schema files, parsed in lenient mode: every record, bad ones
    included, each with the parser's problems (prefixed with the file), so the GX suite reports
    or quarantines them. The parser's file-level problems (not JSON, missing keys, bad categories,
    a file mixing soft and hard labels) fail: no record can be trusted."""
    rows: list[dict[str, Any]] = []
    places: list[tuple[str, int | None, tuple[int, ...]]] = []
    documents: dict[str, dict[str, Any]] = {}
    names: list[str] | None = None
    descriptions: tuple[str, ...] | None = None
    for split in splits:
        path = data_cfg.annotation_file(split)
        try:
            document = read_intentonomy_json(path)
            parsed = parse_intentonomy_document(
                document, str(path), mode="lenient", image_root=data_cfg.root, split=split
            )
        except AnnotationFileError as error:  # unreadable file / unusable categories: no record to validate
            raise AnnotationError(error.source, error.problems) from error
        if parsed.file_problems():
            raise AnnotationError(str(path), parsed.file_problems())
        if names is None:
            names, descriptions = list(parsed.class_names), parsed.class_descriptions
        elif list(parsed.class_names) != names:
            raise AnnotationError(
                str(path), [f"categories {list(parsed.class_names)} differ from the train split's {names}"]
            )
        documents[split] = document
        for r in parsed.records:
            rows.append(
                {"image_id": r.image_id, "image_path": None if r.image_path is None else str(r.image_path),
                 "split": split, "label_ids": None if r.label_ids is None else list(r.label_ids),
                 ANNOTATION_PROBLEMS: [f"{path}: {p}" for p in r.problems]}
            )  # fmt: skip
            places.append((split, r.position, r.image_positions))
    names = names or []
    return _SourceRows(
        pd.DataFrame(rows, columns=MANIFEST_COLUMNS),
        names,
        resolve_class_descriptions(names, descriptions),
        documents,
        places,
    )


def _checked_rows(data_cfg: DataConfig, splits: list[str]) -> _SourceRows:
    """Manifest rows from the source's lenient reader (manifest, MDID): every record of the
    splits, each with its problems; file-level problems raise."""
    reader = data_source(data_cfg).read_checked
    if reader is None:
        raise ValueError(f"data source {data_cfg.source!r} has no lenient reader")
    records, names, descriptions = reader(data_cfg, splits)
    rows = [
        {"image_id": r.image_id, "image_path": None if r.image_path is None else str(r.image_path), "split": r.split,
         "label_ids": None if r.label_ids is None else list(r.label_ids), LINE_COLUMN: r.line,
         ANNOTATION_PROBLEMS: list(r.problems)}
        for r in records
    ]  # fmt: skip
    # Records with a line in their file keep it: quarantine.csv then says "line" as the reasons do.
    columns = MANIFEST_COLUMNS if all(r.line is None for r in records) else [*REQUIRED_COLUMNS, LINE_COLUMN,
                                                                             ANNOTATION_PROBLEMS]  # fmt: skip
    return _SourceRows(pd.DataFrame(rows, columns=columns), names, descriptions, {})


def build_manifest(data_cfg: DataConfig, splits: list[str]) -> _SourceRows:
    """The manifest DataFrame of ``splits`` (see the module docstring)."""
    if data_source(data_cfg).intentonomy_schema:
        return _intentonomy_rows(data_cfg, splits)
    return _checked_rows(data_cfg, splits)


def allowed_roots(data_cfg: DataConfig) -> list[Path]:
    """Where image paths may resolve: ``data.root``, the source's image folder (a manifest's
    folder) and ``data.allowed_roots``. DVC watches these; a file elsewhere is never read."""
    roots = [data_cfg.root, Path(data_source(data_cfg).data_dir(data_cfg)), *data_cfg.allowed_roots]
    return list(dict.fromkeys(roots))


def data_hash_of(data_cfg: DataConfig, splits: list[str], project_dir: Path) -> str:
    """The provenance tag of the data: what changes when an image or a label changes.

    The DVC hash of the source's image folder (``data.root``; a manifest's folder) when DVC
    tracks it, plus a SHA-256 over the label files (annotation files, manifest(s), class list)
    that lie outside that folder - or over all of them when DVC does not know the folder. A
    manifest kept elsewhere is thus still covered: editing a label changes the hash.
    """
    source = data_source(data_cfg)
    data_dir = Path(source.data_dir(data_cfg))
    files = annotation_files(data_cfg, splits)
    dvc = dvc_data_hash(data_dir, project_dir)
    if dvc is None:
        return f"sha256:{sha256_files(files)}" if files else "unknown"
    outside = [f for f in files if not Path(f).resolve().is_relative_to(data_dir.resolve())]
    return f"{dvc}+sha256:{sha256_files(outside)}" if outside else dvc


# ------------------------------------------------------------------------------------ outputs


def _clean_documents(
    source: _SourceRows, report: ValidationReport, data_cfg: DataConfig, splits: list[str]
) -> dict[str, dict[str, Any]]:
    """The annotation documents without the quarantined records.

    Intentonomy schema: the quarantined rows' ``annotations`` entries and ``images`` entries are
    dropped by position (not by id: with duplicate ids, an id does not say which entry is bad),
    and an image whose id only quarantined records used is dropped with them.
    """
    if source.documents:
        bad_annotations: dict[str, set[int]] = {s: set() for s in source.documents}
        bad_images: dict[str, set[int]] = {s: set() for s in source.documents}
        bad_ids: dict[str, set[str]] = {s: set() for s in source.documents}
        for record in report.offending:
            split, position, image_positions = source.places[record.row_number]
            if position is not None:
                bad_annotations[split].add(position)
            bad_images[split].update(image_positions)
            image_id = source.frame.iloc[record.row_number]["image_id"]
            if image_id is not None:
                bad_ids[split].add(str(image_id))
        clean: dict[str, dict[str, Any]] = {}
        for split, document in source.documents.items():
            copy = dict(document)
            copy["annotations"] = [a for i, a in enumerate(document["annotations"]) if i not in bad_annotations[split]]
            kept_ids = {str(a.get("image_id")) for a in copy["annotations"] if isinstance(a, dict)}
            if isinstance(document.get("images"), list):
                copy["images"] = [
                    image
                    for i, image in enumerate(document["images"])
                    if i not in bad_images[split]
                    and not (isinstance(image, dict) and str(image.get("id")) in bad_ids[split] - kept_ids)
                ]
            clean[split] = copy
        return clean
    # Other sources: write the loaded records in the canonical format (Intentonomy schema, hard labels).
    categories = [
        {"id": i, "name": n, "description": d}
        for i, (n, d) in enumerate(zip(source.class_names, source.class_descriptions))
    ]
    clean = {}
    frame = report.clean_manifest
    for split in splits:
        part = frame[frame["split"] == split]
        images = [{"id": str(r.image_id), "filename": str(Path(r.image_path).resolve())} for r in part.itertuples()]
        annotations = [
            {"id": n, "image_id": str(r.image_id), "category_ids": [int(v) for v in r.label_ids]}
            for n, r in enumerate(part.itertuples())
        ]
        clean[split] = {"categories": categories, "images": images, "annotations": annotations}
    return clean


def _failure_report(
    out_dir: Path, data_cfg: DataConfig, policy: str, message: str, problems: list[str]
) -> dict[str, Any]:
    payload = {
        "success": False,
        "usable": False,
        "policy": policy,
        "source": data_cfg.source,
        "stage": "annotations",
        "message": message,
        "annotation_problems": problems,
        "counts": {"records": 0, "clean": 0, "offending": len(problems), "quarantined": 0},
    }
    write_json(out_dir / REPORT_FILE, payload)
    lines = [
        "# Data validation: FAILED (annotation files)",
        "",
        f"- source: `{data_cfg.source}`",
        "",
        "## Problems",
        "",
    ]
    lines += [f"- {p}" for p in problems[:50]]
    if len(problems) > 50:
        lines.append(f"- ... and {len(problems) - 50} more (see report.json)")
    write_text(out_dir / SUMMARY_FILE, "\n".join(lines) + "\n")
    write_json(out_dir / METRICS_FILE, payload["counts"])
    return payload


def _empty_quarantine(path: Path) -> None:
    write_text(path, ",".join(QUARANTINE_COLUMNS) + "\n")


def _log_outputs(tracking: StepTracking, out_dir: Path) -> None:
    for name in (REPORT_FILE, SUMMARY_FILE, QUARANTINE_FILE):
        tracking.log_artifact(out_dir / name, "validation")


def run_validate(
    cfg: ValidateConfig,
    data_cfg: DataConfig,
    out_dir: Path,
    tracking: TrackingOptions | None = None,
    all_params: dict[str, Any] | None = None,
    project_dir: Path | None = None,
    input_folders: dict[str, Path] | None = None,
) -> ValidateResult:
    """Validate the configured dataset; raise :class:`StepError` naming the bad records on failure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (QUARANTINE_FILE, VALIDATED_DATA_FILE):
        (out_dir / stale).unlink(missing_ok=True)
    for legacy in LEGACY_FILENAMES.values():  # clean files of a run from before the canonical names
        (out_dir / VALIDATED_ANNOTATIONS_DIR / legacy).unlink(missing_ok=True)
    splits = splits_of(data_cfg)
    data_hash = data_hash_of(data_cfg, splits, Path(project_dir or Path.cwd()))
    params = {"data": data_cfg.to_dict(), "validate": cfg.__dict__}

    with tracked_step("validate", tracking, params, all_params, data_hash) as tracking_run:
        quarantine_path = out_dir / QUARANTINE_FILE
        try:
            source = build_manifest(data_cfg, splits)
        except (AnnotationError, FileNotFoundError) as error:  # file-level: fails under either policy
            file_problems = (
                [f"{error.source}: {p}" for p in error.problems] if isinstance(error, AnnotationError) else [str(error)]
            )
            _failure_report(out_dir, data_cfg, cfg.policy, str(error), file_problems)
            _empty_quarantine(quarantine_path)
            _log_outputs(tracking_run, out_dir)
            raise StepError(f"data validation failed: the annotation files cannot be used:\n{error}") from error

        try:
            report = validate_manifest(
                source.frame,
                num_classes=len(source.class_names),
                class_names=source.class_names,
                policy=cfg.policy,
                check_images=cfg.check_images,
                image_limits=cfg.limits(data_cfg.max_image_pixels),
                quarantine_path=quarantine_path,
                min_train_images_per_class=cfg.min_train_images_per_class,
                workers=cfg.workers,
                allowed_roots=allowed_roots(data_cfg),
            )
        except DataValidationError as error:
            _write_report(out_dir, error.report, data_cfg, splits, data_hash)
            if not quarantine_path.is_file():
                _empty_quarantine(quarantine_path)
            tracking_run.log_metrics(_metric_counts(error.report))
            _log_outputs(tracking_run, out_dir)
            raise StepError(f"data validation failed:\n{error}") from error

        if not quarantine_path.is_file():
            _empty_quarantine(quarantine_path)
        documents = _clean_documents(source, report, data_cfg, splits)
        annotations = {}
        for split, document in documents.items():
            path = out_dir / VALIDATED_ANNOTATIONS_DIR / CANONICAL_FILENAMES[split]
            write_text(path, json.dumps(document, separators=(",", ":")) + "\n")
            annotations[split] = path
        clean_root = data_cfg.root if source.documents else Path("/")
        clean_cfg = DataConfig(
            source="demo" if data_cfg.source == "demo" else "intentonomy",
            root=clean_root,
            annotations=annotations,
            max_image_pixels=data_cfg.max_image_pixels,
        )
        # Anything the record-level suite could not see (e.g. an image listed twice) fails here.
        problems: list[str] = []
        for split in splits:
            try:
                load_split(clean_cfg, split)
            except AnnotationError as error:
                problems += error.problems
        if problems:
            _failure_report(out_dir, data_cfg, cfg.policy, "annotation problems", problems)
            _log_outputs(tracking_run, out_dir)
            raise StepError(
                "data validation failed: annotation problems:\n"
                + "\n".join(f"  - {p}" for p in problems[:20])
                + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
            )

        counts = {**report.counts, "per_split": {s: int((report.clean_manifest["split"] == s).sum()) for s in splits}}
        validated = ValidatedData(
            data=clean_cfg, source=data_cfg.source, splits=splits, data_hash=data_hash, counts=counts
        )
        validated.save(out_dir / VALIDATED_DATA_FILE, input_folders)
        _write_report(out_dir, report, data_cfg, splits, data_hash)
        tracking_run.log_metrics(_metric_counts(report))
        _log_outputs(tracking_run, out_dir)
        if report.n_quarantined:
            log.warning(
                "%d of %d records quarantined (listed with reasons in %s); later steps skip them",
                report.n_quarantined, report.n_records, quarantine_path,
            )  # fmt: skip
        return ValidateResult(
            validated=validated,
            report_path=out_dir / REPORT_FILE,
            summary_path=out_dir / SUMMARY_FILE,
            quarantine_path=quarantine_path,
            n_records=report.n_records,
            n_quarantined=report.n_quarantined,
            mlflow_run_id=tracking_run.run_id,
        )


def _metric_counts(report: ValidationReport) -> dict[str, float]:
    return {f"validation_{k}": float(v) for k, v in report.counts.items()}


def _write_report(
    out_dir: Path, report: ValidationReport, data_cfg: DataConfig, splits: list[str], data_hash: str
) -> None:
    payload = {**report.to_dict(), "source": data_cfg.source, "splits": splits, "data_hash": data_hash}
    write_json(out_dir / REPORT_FILE, payload)
    write_text(out_dir / SUMMARY_FILE, report.to_markdown())
    write_json(out_dir / METRICS_FILE, {k: v for k, v in report.counts.items()})


# ------------------------------------------------------------------------------- step contract


@dataclass
class ValidateStepConfig:
    """Sections ``data`` (what to validate) and ``validate`` (how)."""

    validate: ValidateConfig
    data: DataConfig


def run(
    inputs: Mapping[str, Path], out_dir: Path, config: ValidateStepConfig, tracking: TrackingOptions
) -> StepOutcome:
    """Validate ``data`` (the demo source reads the ``demo`` input folder when one is given:
    under Kubeflow the generated dataset arrives as the demo step's artifact)."""
    data_cfg = config.data
    folders: dict[str, Path] = {}
    if data_cfg.source == "demo" and "demo" in inputs:
        folders["demo"] = Path(inputs["demo"])
        data_cfg = replace(data_cfg, root=folders["demo"])
    result = run_validate(config.validate, data_cfg, out_dir, tracking,
                          all_params={"data": data_cfg.to_dict(), "validate": asdict(config.validate)},
                          project_dir=tracking.project_dir, input_folders=folders)  # fmt: skip
    counts = result.validated.counts
    return StepOutcome(
        summary=f"validation passed: {result.n_records} records, {result.n_quarantined} quarantined "
                f"(report: {result.report_path}, summary: {result.summary_path})",
        metrics={k: float(counts.get(k, 0)) for k in ("records", "clean", "quarantined", "offending", "failed_expectations")},
        markdown=result.summary_path.read_text(encoding="utf-8"),
        mlflow_run_id=result.mlflow_run_id or "",
    )  # fmt: skip


SPEC = StepSpec(
    name="validate",
    description="Great Expectations over the manifest and images; stops (or quarantines) bad records",
    sections=("data", "validate"),
    config=ValidateStepConfig,
    optional_sections=("validate",),
    inputs=(StepInput("demo", reads=(".",), optional=True),),
    output_kind="Dataset",
    run=run,
)
