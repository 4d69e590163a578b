"""``mccl step <name>``: run one pipeline step, exactly as ``dvc repro`` does (``dvc.yaml`` runs this).

Options come from the step's :class:`~mccl_core.steps.contract.StepSpec`: one ``--<input>``
per upstream folder (default ``outputs/<step>``), ``--out`` (default: where ``dvc.yaml`` keeps
the output), ``--params`` and ``--set section.key=value`` overrides. Nothing here computes
anything: the arguments go to :func:`~mccl_core.steps.contract.run_step`.

Two files belong to the DVC side: ``--metrics-file`` (the step's headline metrics, git-tracked
under ``metrics/`` so that ``dvc exp show`` / ``dvc metrics diff`` read them from every
experiment commit) and ``--log-file`` (everything logged, third-party libraries included; the
terminal shows our own lines, progress bars and one summary line).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mccl_core.config import apply_overrides, load_params
from mccl_core.steps.common import configure_logging
from mccl_core.steps.contract import STEP_NAMES, StepSpec, run_step, spec
from mccl_core.steps.errors import StepError
from mccl_core.tracking.steps import DEFAULT_RUN_REF, TrackingOptions, close_runs_of_dead_processes

USAGE = "usage: mccl step {" + ",".join(STEP_NAMES) + "} [args...]   (mccl step <name> --help for a step's options)"


def build_parser(step: StepSpec) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"mccl step {step.name}", description=f"{step.name}: {step.description} "
                                f"(params sections: {', '.join(step.sections)})")  # fmt: skip
    for item in step.inputs:
        default = None if item.optional else Path(spec(item.step).out_dir())
        p.add_argument(f"--{item.step}", type=Path, default=default, metavar="DIR",
                       help=f"output folder of the {item.step} step" + ("" if item.optional else f" (default: {default})"))  # fmt: skip
    p.add_argument("--out", type=Path, default=step.out_dir(), help=f"output folder (default: {step.out_dir()})")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one param (the value is YAML: 3, 1e-3, [a, b], {k: v})")  # fmt: skip
    p.add_argument("--project-dir", type=Path, default=Path("."), help="project folder (embedded MLflow store)")
    p.add_argument("--run-ref", type=Path, default=DEFAULT_RUN_REF,
                   help="MLflow parent-run reference shared by the steps of one pipeline run")  # fmt: skip
    p.add_argument("--parent-run-id", help="explicit MLflow parent run id (overrides --run-ref)")
    p.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow")
    p.add_argument("--metrics-file", type=Path, default=None, metavar="JSON",
                   help="also write the step's headline metrics here (dvc.yaml: metrics/<step>.json)")  # fmt: skip
    p.add_argument("--log-file", type=Path, default=Path("outputs") / "logs" / f"{step.name}.log",
                   help="full log, third-party libraries included (default: outputs/logs/<step>.log)")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in STEP_NAMES:
        print(f"mccl step: unknown step {name!r}\n{USAGE}", file=sys.stderr)
        return 2
    step = spec(name)
    ns = build_parser(step).parse_args(rest)
    configure_logging(ns.verbose, ns.log_file)
    try:
        params = apply_overrides(load_params(ns.params), ns.overrides)
        run_ref = ns.run_ref if ns.run_ref.is_absolute() else ns.project_dir / ns.run_ref
        tracking = TrackingOptions.from_params(params, enabled=not ns.no_tracking, project_dir=ns.project_dir,
                                               parent_run_id=ns.parent_run_id, run_ref=run_ref)  # fmt: skip
        if tracking.enabled:  # first, whatever the step then does: runs of killed processes end KILLED
            close_runs_of_dead_processes(tracking)
        inputs = {item.step: getattr(ns, item.step) for item in step.inputs}
        outcome = run_step(name, params, inputs, ns.out, tracking)  # logs the summary line
    except (StepError, ValueError, FileNotFoundError) as error:  # ConfigError and weight errors are ValueErrors
        logging.getLogger(__name__).debug("step %s failed", name, exc_info=True)
        print(f"\nERROR: {error}", file=sys.stderr)
        return 1
    if ns.metrics_file is not None:
        write_metrics_file(ns.metrics_file, outcome.metrics)
    return 0


def write_metrics_file(path: Path, metrics: dict[str, float]) -> Path:
    """Headline metrics as sorted, rounded JSON: the same numbers give the same bytes (git-clean
    re-runs), and 6 significant digits are more than any comparison of runs can use."""
    rounded = {k: float(f"{v:.6g}") for k, v in sorted(metrics.items())}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rounded, indent=2) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    raise SystemExit(main())
