"""MLflow layout of a pipeline execution: one parent run, one nested run per step.

How steps find the parent run (they are separate processes, possibly separate containers):

* **Kubeflow**: the parent's id is passed along explicitly (``TrackingOptions.parent_run_id``).
* **DVC / CLI**: a run-reference file (``outputs/mlflow_run.json``) that also names the
  *execution* that wrote it: the ``dvc`` process running the stages (:func:`pipeline_execution_id`).
  The first step of a ``dvc repro`` / ``dvc exp run`` finds no parent of its own execution
  there, creates one and writes the file; later steps of the same execution attach to it. Steps
  run by hand (no ``dvc`` above them) attach to the referenced parent until the register step
  marks the pipeline complete.
* ``$MCCL_MLFLOW_PARENT_RUN_ID`` overrides both (an outer orchestrator owns the parent).

Run status: every step ends its own run *and* the parent when it exits, so no run is left
RUNNING whichever stages an experiment re-runs; the parent's status follows its latest child
(FINISHED, or FAILED when that step failed), and a step that attaches to it marks it RUNNING
again while it works. A step killed before it could end its runs has them marked KILLED by its
reaper at once, and any RUNNING run whose owner process is gone by the next step or store-reading
command (:mod:`mccl_core.tracking.reaper`): a re-run that DVC satisfies from its cache, which runs
none of our code, finds nothing RUNNING. A parent left RUNNING by a killed execution is also marked
KILLED (with its RUNNING step runs) when the next execution starts its own parent.

Comparison: the parent run carries the whole params file (dotted names, the same for every
run), the steps' headline metrics (:meth:`StepTracking.log_headline`) and the per-epoch curves
(every metric logged with a ``step``), so the MLflow UI's compare view lines pipeline runs up.

Where runs go: ``$MLFLOW_TRACKING_URI`` if set, else the embedded SQLite store in the project
folder (see :mod:`mccl_core.tracking.tracker`). An unreachable server never fails a step (the tracker
journals what was not logged and the step reports it), except the register step, which needs
the model registry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mccl_core.config import ConfigError, flatten, section
from mccl_core.tracking.reaper import OWNER_TAG, RunReaper, process_identity, sweep
from mccl_core.tracking.tracker import (
    PARENT_RUN_ENV,
    PARENT_RUN_TAG,
    ResilientTracker,
    RunHandle,
    TrackerConfig,
    is_unreachable_error,
)

log = logging.getLogger(__name__)

DEFAULT_RUN_REF = Path("outputs") / "mlflow_run.json"
PIPELINE_RUN_NAME = "pipeline"
#: Names the pipeline execution a step belongs to (set by an outer orchestrator; else derived).
EXECUTION_ENV = "MCCL_PIPELINE_EXECUTION"


def pipeline_execution_id() -> str | None:
    """Identity of the pipeline execution running this step, or ``None`` (a step run by hand).

    ``$MCCL_PIPELINE_EXECUTION`` when set; under DVC (``$DVC_STAGE`` is set for stage commands)
    the ``dvc`` process above this one, as ``dvc:<pid>:<start time>`` from ``/proc`` (Linux):
    every stage of one ``dvc repro`` / ``dvc exp run`` shares it, and a pid reused later has
    another start time. ``None`` where neither applies.
    """
    explicit = os.environ.get(EXECUTION_ENV)
    if explicit:
        return explicit
    if not os.environ.get("DVC_STAGE"):
        return None
    pid = os.getppid()
    for _ in range(16):  # dvc -> sh -c -> mccl step: a few levels at most
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if any(Path(arg.decode(errors="replace")).name == "dvc" for arg in argv[:3]):
            return f"dvc:{pid}:{fields[19]}"  # field 22 of stat: start time in clock ticks
        pid = int(fields[1])
        if pid <= 1:
            return None
    return None


@dataclass
class TrackingOptions:
    """Where a step logs. ``enabled=False`` logs nothing (unit tests of the step logic)."""

    enabled: bool = True
    project_dir: Path = field(default_factory=Path.cwd)
    experiment: str = "mccl"
    #: ``None``: ``$MLFLOW_TRACKING_URI`` or the embedded SQLite store under ``project_dir``.
    tracking_uri: str | None = None
    #: Explicit parent run id (Kubeflow); wins over ``run_ref``.
    parent_run_id: str | None = None
    #: Run-reference file shared by the steps of one ``dvc repro`` (see the module docstring).
    run_ref: Path | None = None
    #: Create a parent when ``run_ref`` holds no open one (False: log the step run alone).
    create_parent: bool = True
    #: Always start a new parent run (Kubeflow: the first uncached step starts it).
    start_parent: bool = False
    run_name: str = PIPELINE_RUN_NAME
    #: Step runs created without a parent (Kubeflow's cached data steps) to nest under the
    #: parent this step starts or joins (see :func:`adopt_runs`).
    adopt_run_ids: tuple[str, ...] = ()
    #: The whole params mapping, logged on a parent run this step creates (so the parent shows
    #: every setting of the pipeline run, whichever step happens to create it).
    parent_params: Mapping[str, Any] | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **run_settings: Any) -> TrackingOptions:
        """The ``tracking`` section of params (experiment, tracking URI, enabled), plus the
        driver's run settings (``project_dir``, ``run_ref``, ``parent_run_id``, ...).

        A non-empty ``tracking_uri`` run setting (Kubeflow's ``mlflow_tracking_uri`` parameter)
        wins over the section's; ``enabled=False`` as a run setting (``--no-tracking``) wins too.
        """
        settings = section(params, "tracking", required=False)
        unknown = sorted(set(settings) - {"enabled", "experiment", "tracking_uri"})
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join('tracking.' + k for k in unknown)}; "
                              "valid keys here: ['enabled', 'experiment', 'tracking_uri']")  # fmt: skip
        values: dict[str, Any] = {
            "parent_params": {k: v for k, v in params.items() if k != "tracking"},
            "enabled": bool(settings.get("enabled", True)),
            "experiment": str(settings.get("experiment") or "mccl"),
            "tracking_uri": settings.get("tracking_uri") or None,
        }
        for key, value in run_settings.items():
            if key == "tracking_uri" and not value:
                continue
            if key == "enabled":
                values["enabled"] = values["enabled"] and bool(value)
                continue
            values[key] = value
        return cls(**values)

    def tracker_config(self) -> TrackerConfig:
        return TrackerConfig(
            project_dir=Path(self.project_dir), experiment_name=self.experiment, tracking_uri=self.tracking_uri
        )


@dataclass
class StepTracking:
    """What a step body gets: the tracker, its own run and the pipeline's parent run."""

    tracker: ResilientTracker | None
    run: RunHandle | None
    parent: RunHandle | None
    #: Set by :func:`finish_parent_run`: the pipeline is complete, later steps start a new parent.
    complete: bool = False

    @property
    def run_id(self) -> str | None:
        return self.run.run_id if self.run is not None else None

    @property
    def parent_run_id(self) -> str | None:
        return self.parent.run_id if self.parent is not None else None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log to the step's run; a series (``step`` given: per-epoch curves) goes to the parent
        too, so the compare view of pipeline runs shows the curves."""
        if self.tracker is not None and self.run is not None:
            self.tracker.log_metrics(metrics, step=step, run=self.run)
            if step is not None and self.parent is not None and self.parent.run_id is not None:
                self.tracker.log_metrics(metrics, step=step, run=self.parent)

    def log_parent_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log to the parent only (series the step's run got from elsewhere, e.g. a subprocess)."""
        if self.tracker is not None and self.parent is not None and self.parent.run_id is not None:
            self.tracker.log_metrics(metrics, step=step, run=self.parent)

    def backfill_series(self, series: Sequence[tuple[int, Mapping[str, float]]], key: str) -> int:
        """Log the steps of ``series`` (step, metrics) that the step's run lacks (a subprocess
        logged the others live, or crashed before them), and give the parent every step.
        ``key`` is a metric every step has (how a logged step is recognised). Returns the
        number of steps back-filled."""
        if self.tracker is None or self.run_id is None:
            return 0
        try:
            logged = {m.step for m in self.tracker.client.get_metric_history(self.run_id, key)}
        except Exception as error:  # noqa: BLE001 - an unreachable server: the tracker journals below
            log.debug("cannot read metric history: %s", error)
            logged = set()
        missing = 0
        for step, metrics in series:
            if step in logged:
                self.log_parent_metrics(metrics, step=step)
            else:
                self.log_metrics(metrics, step=step)  # a series: reaches the parent too
                missing += 1
        return missing

    def log_headline(self, metrics: Mapping[str, float]) -> None:
        """The step's headline numbers: on its run and on the parent (same names in every
        pipeline run, so runs of a sweep can be compared and searched by them)."""
        if self.tracker is not None and self.run is not None:
            self.tracker.log_metrics(metrics, run=self.run)
            if self.parent is not None and self.parent.run_id is not None:
                self.tracker.log_metrics(metrics, run=self.parent)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.tracker is not None and self.run is not None:
            self.tracker.log_params(params, run=self.run)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.tracker is not None and self.run is not None:
            self.tracker.set_tags(tags, run=self.run)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.tracker is not None and self.run is not None and Path(path).is_file():
            self.tracker.log_artifact(Path(path), artifact_path, run=self.run)

    def not_logged(self) -> dict[str, Any]:
        return self.tracker.not_logged.to_dict() if self.tracker is not None else {"counts": {}, "total": 0}


def _run_status(tracker: ResilientTracker, run_id: str) -> str | None:
    """The run's status; ``None`` when it no longer exists (deleted, other store).
    An unreachable server counts as RUNNING (keep using the reference)."""
    try:
        return str(tracker.client.get_run(run_id).info.status)
    except Exception as error:
        if tracker.is_server and is_unreachable_error(error):
            return "RUNNING"
        from mlflow.exceptions import MlflowException

        if isinstance(error, MlflowException):
            log.info("parent run %s is not usable (%s); starting a new one", run_id, error)
            return None
        raise


def _close_abandoned(tracker: ResilientTracker, run_id: str) -> None:
    """Mark a parent left RUNNING by a killed execution (and its RUNNING step runs) KILLED."""
    try:
        experiment_id = tracker.client.get_run(run_id).info.experiment_id
        children = tracker.client.search_runs(
            [experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{run_id}' and attributes.status = 'RUNNING'"
        )
        for run in [*children, tracker.client.get_run(run_id)]:
            tracker.client.set_terminated(run.info.run_id, status="KILLED")
        log.info("marked the abandoned pipeline run %s KILLED (%d step runs)", run_id, len(children))
    except Exception as error:  # noqa: BLE001 - housekeeping must never fail a step
        log.warning("could not close the abandoned pipeline run %s: %s", run_id, error)


def _reopen(tracker: ResilientTracker, parent: RunHandle) -> RunHandle:
    """Mark an attached parent RUNNING while this step works (its status follows its children)."""
    if parent.run_id is not None:
        run_id = parent.run_id
        tracker._guarded(  # noqa: SLF001 - same journalled path as every other write
            "run_status", 1, {"status": "RUNNING"},
            lambda: tracker.client.update_run(run_id, status="RUNNING"), parent,
        )  # fmt: skip
    return parent


def _resolve_parent(
    tracker: ResilientTracker, options: TrackingOptions, params: Mapping[str, Any] | None
) -> RunHandle | None:
    run_id = options.parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
    if run_id:
        return _reopen(tracker, tracker.resume_parent_run(run_id=run_id))
    ref = options.run_ref
    execution = pipeline_execution_id()
    if ref is not None and Path(ref).is_file():
        import json

        reference = json.loads(Path(ref).read_text(encoding="utf-8"))
        same_store = reference.get("tracking_uri") == tracker.tracking_uri
        referenced = reference.get("run_id")
        if referenced and same_store:
            status = _run_status(tracker, referenced)
            same_execution = execution is None or reference.get("execution") == execution
            if status is not None and same_execution and not reference.get("complete"):
                return _reopen(tracker, tracker.resume_parent_run(ref_file=Path(ref)))
            if status == "RUNNING":
                _close_abandoned(tracker, referenced)
    if not options.start_parent and (ref is None or not options.create_parent):
        return None
    parent = tracker.start_parent_run(
        options.run_name, tags={"mccl.pipeline": "kubeflow" if options.start_parent else "dvc"}
    )
    if params:
        tracker.log_params(dict(flatten(dict(params))), run=parent)
    tracker.set_provenance_tags(None, run=parent)  # git commit and dirty flag, comparable across runs
    if ref is not None:
        tracker.write_run_ref(Path(ref), parent, execution=execution)
    # The step that created the parent does not own it: tracked_step ends it like any step.
    parent.ended = True
    log.info("MLflow parent run %s started (reference: %s)", parent.run_id, ref)
    return parent


def _end_parent(tracker: ResilientTracker, parent: RunHandle, status: str, options: TrackingOptions,
                complete: bool) -> None:  # fmt: skip
    """End the parent with this step's status; a complete pipeline is recorded in the reference."""
    if parent.run_id is None:
        return
    parent.ended = False
    tracker.end_run(parent, status=status)  # type: ignore[arg-type]
    ref = options.run_ref
    if complete and ref is not None and Path(ref).is_file():
        import json

        reference = json.loads(Path(ref).read_text(encoding="utf-8"))
        if reference.get("run_id") == parent.run_id:
            reference["complete"] = True
            Path(ref).write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")


@contextmanager
def tracked_step(
    step: str,
    options: TrackingOptions | None,
    params: Mapping[str, Any] | None = None,
    all_params: Mapping[str, Any] | None = None,
    data_hash: str | None = None,
) -> Iterator[StepTracking]:
    """Nested MLflow run for ``step`` under the pipeline's parent run.

    ``params``: the step's params sections (logged flattened with dotted names, e.g.
    ``train.lr``); ``all_params``: the whole params file, logged on a parent this call creates.
    The run ends FAILED when the block raises.
    """
    if options is None or not options.enabled:
        yield StepTracking(None, None, None)
        return
    with ResilientTracker(options.tracker_config()) as tracker:
        sweep(tracker.tracking_uri)  # runs of processes that died (see mccl_core.tracking.reaper)
        parent = _resolve_parent(tracker, options, options.parent_params or all_params)
        if options.adopt_run_ids and parent is not None:
            adopted = adopt_runs(StepTracking(tracker, None, parent), list(options.adopt_run_ids))
            if adopted:
                log.info("nested earlier step runs %s under the parent run %s", adopted, parent.run_id)
        status = "FAILED"
        tracking: StepTracking | None = None
        reaper: RunReaper | None = None
        try:
            with tracker.step_run(step, parent=parent) as run:
                # Owned by this process: if it dies without ending them, they are marked KILLED.
                owned = [h for h in (run, parent) if h is not None and h.run_id is not None]
                for handle in owned:
                    tracker.set_tags({OWNER_TAG: process_identity()}, run=handle)
                reaper = RunReaper(tracker.tracking_uri, [str(h.run_id) for h in owned])
                if params:
                    tracker.log_params(dict(flatten(dict(params))), run=run)
                tracker.set_provenance_tags(data_hash, run=run)
                tracking = StepTracking(tracker, run, parent)
                yield tracking
            status = "FINISHED"
        finally:
            if parent is not None:
                _end_parent(tracker, parent, status, options, complete=tracking is not None and tracking.complete)
            if reaper is not None:
                reaper.done()
        summary = tracker.not_logged
        if summary:
            log.warning("step %s: %s", step, summary.describe())


def close_runs_of_dead_processes(options: TrackingOptions) -> list[str]:
    """Mark the store's RUNNING runs whose owner process is gone KILLED (``mccl step`` calls this
    first; commands that read the store call :func:`mccl_core.tracking.reaper.sweep`)."""
    from mccl_core.tracking.tracker import resolve_tracking_uri

    config = options.tracker_config()
    return sweep(resolve_tracking_uri(Path(config.project_dir).resolve(), config.tracking_uri))


def finish_parent_run(tracking: StepTracking) -> None:
    """Mark the pipeline complete (the last step does this): the parent ends with this step, as
    after every step, and the next step run by hand starts a new parent instead of attaching."""
    tracking.complete = True


def adopt_runs(tracking: StepTracking, run_ids: list[str]) -> list[str]:
    """Nest earlier step runs that were created without a parent under this pipeline's parent.

    Kubeflow caches the data steps (validate/extract/cluster), which therefore cannot take the
    parent run id as an input; the first uncached step adopts the runs they created in this
    pipeline execution. A run that already has a parent (e.g. from a cached execution) is left
    alone. Returns the adopted ids.
    """
    if tracking.tracker is None or tracking.parent_run_id is None:
        return []
    adopted = []
    for run_id in [r for r in run_ids if r]:
        try:
            run = tracking.tracker.client.get_run(run_id)
        except Exception as error:  # noqa: BLE001
            log.warning("cannot adopt step run %s: %s", run_id, error)
            continue
        if PARENT_RUN_TAG in run.data.tags:
            continue
        handle = RunHandle(local_id=f"adopt-{run_id}", name=run.info.run_name or run_id, run_id=run_id, ended=True)
        tracking.tracker.set_tags({PARENT_RUN_TAG: tracking.parent_run_id}, run=handle)
        adopted.append(run_id)
    return adopted
