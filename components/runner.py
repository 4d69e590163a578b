"""Argument plumbing shared by the Kubeflow components: KFP values in, :func:`run_step` called,
the step's :class:`~mccl_core.steps.contract.StepOutcome` out into KFP's typed outputs.

How steps find the MLflow parent run under Kubeflow (the only thing that differs from DVC): the
cached data steps (validate, extract, cluster) log a run of their own and return its id; the
train step, the first uncached one, starts the parent run and nests those runs under it; evaluate
and register get the parent id as a parameter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mccl_core.steps.contract import StepOutcome, run_step
from mccl_core.tracking.steps import TrackingOptions


def run_kfp_step(
    name: str,
    params: dict[str, Any],
    inputs: dict[str, Any],
    out_dir: str,
    mlflow_tracking_uri: str,
    *,
    parent_run_id: str = "",
    start_parent: bool = False,
    adopt_run_ids: tuple[str, ...] = (),
    metrics: Any = None,
    markdown_path: str = "",
    html_path: str = "",
) -> StepOutcome:
    """Run step ``name``; ``inputs`` maps upstream step names to KFP ``Input`` artifacts."""
    from mccl_core.steps.common import configure_logging

    configure_logging()
    tracking = TrackingOptions.from_params(
        params, tracking_uri=mlflow_tracking_uri, project_dir=Path.cwd(), run_ref=None, create_parent=False,
        parent_run_id=parent_run_id or None, start_parent=start_parent, adopt_run_ids=tuple(r for r in adopt_run_ids if r),
    )  # fmt: skip
    folders = {step: getattr(artifact, "path", artifact) for step, artifact in inputs.items() if artifact is not None}
    outcome = run_step(name, params, folders, out_dir, tracking)
    if metrics is not None:
        for key, value in {**outcome.metrics, **outcome.run_metrics}.items():
            metrics.log_metric(key, float(value))
    for path, text in ((markdown_path, outcome.markdown), (html_path, outcome.html)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text, encoding="utf-8")
    return outcome
