"""Argument handling shared by the step CLIs (argparse lives only in ``components/``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mccl_core.params import ParamsError, load_params, section
from mccl_core.steps.errors import StepError
from mccl_core.steps.tracking import DEFAULT_RUN_REF, TrackingOptions

log = logging.getLogger("components")

DEFAULT_VALIDATED = Path("outputs/validate")


def parser(step: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"mccl step {step}", description=description)
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    p.add_argument("--project-dir", type=Path, default=Path("."), help="project folder (embedded MLflow store)")
    p.add_argument("--run-ref", type=Path, default=DEFAULT_RUN_REF,
                   help="MLflow parent-run reference shared by the steps of one pipeline run")  # fmt: skip
    p.add_argument("--parent-run-id", help="explicit MLflow parent run id (overrides --run-ref)")
    p.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def tracking_options(args: argparse.Namespace, params: dict[str, Any]) -> TrackingOptions:
    settings = section(params, "tracking", required=False)
    return TrackingOptions(
        enabled=not args.no_tracking and bool(settings.get("enabled", True)),
        project_dir=Path(args.project_dir),
        experiment=str(settings.get("experiment", "mccl")),
        tracking_uri=settings.get("tracking_uri") or None,
        parent_run_id=args.parent_run_id,
        run_ref=Path(args.project_dir) / args.run_ref if not Path(args.run_ref).is_absolute() else Path(args.run_ref),
    )


def run(argv: list[str] | None, build: Callable[[], argparse.ArgumentParser],
        body: Callable[[argparse.Namespace, dict[str, Any]], None]) -> int:  # fmt: skip
    """Parse, load params, run ``body``; a step failure prints its message and returns 1."""
    args = build().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        params = load_params(args.params)
        body(args, params)
    except (StepError, ParamsError, ValueError, FileNotFoundError) as error:
        print(f"\nERROR: {error}", file=sys.stderr)
        return 1
    return 0
