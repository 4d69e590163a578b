"""The result of :func:`~mccl_core.validation.validate_manifest`: per-expectation outcomes, the
offending records (each with its problems), JSON and Markdown renderings, and the exception that
carries the report when validation fails."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from mccl_core.hashing import json_default
from mccl_core.validation.schema import Policy

#: How many offending records an exception message / Markdown summary spells out.
MESSAGE_RECORD_LIMIT = 20


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
    """Result of :func:`~mccl_core.validation.validate_manifest`.

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
            "offending_records": [{**asdict(record), "problem": record.problem} for record in self.offending],
            "table_problems": list(self.table_problems),
            "missing_classes": list(self.missing_classes),
            "quarantine_path": str(self.quarantine_path) if self.quarantine_path else None,
        }

    def to_json(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=json_default) + "\n", encoding="utf-8")
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


class DataValidationError(ValueError):
    """The manifest failed validation; ``report`` holds the full machine-readable result."""

    def __init__(self, message: str, report: ValidationReport) -> None:
        super().__init__(message)
        self.report = report


def plain(value: Any) -> Any:
    """GX results and manifest cells hold numpy scalars; make them JSON-friendly."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))
