"""MLflow tracking that never takes a pipeline step down.

Why: a training step that runs for hours must not crash because the tracking server restarted,
and a laptop user must get useful tracking without running any server. So:

* **Where runs go** (:func:`resolve_tracking_uri`): an explicit URI, else ``MLFLOW_TRACKING_URI``,
  else an embedded SQLite store inside the project folder (``sqlite:///<project>/mlflow.db``,
  artifacts under ``<project>/mlartifacts``) - running ``mlflow ui`` in that folder shows the runs.
* **Run layout**: one parent run per pipeline execution and one nested run per step. The parent's
  id travels between steps (separate processes / containers) through the environment variable
  ``MCCL_MLFLOW_PARENT_RUN_ID`` or a small JSON reference file (:meth:`ResilientTracker.write_run_ref`).
* **Resilience** (:class:`ResilientTracker`): every client call is guarded. When the server is
  unreachable (connection refused, timeouts, too many 5xx retries) the tracker warns once,
  appends the item to a local JSONL journal instead and stops calling the server for
  ``retry_after_s`` seconds, after which it tries again. ``tracker.not_logged`` summarises what
  was not logged so the step can report it. Other errors (a bad parameter, a missing file) are
  programming errors and still raise.
* **Short HTTP retries**: MLflow's default (7 retries with exponential backoff, 120 s timeout)
  would stall a step for many minutes per call against a dead server. While the tracker talks to a
  server it sets ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` /
  ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` / ``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER`` (unless the user
  set them) and restores the previous values afterwards.

The tracker uses :class:`mlflow.MlflowClient` with explicit run ids, not the fluent
``mlflow.start_run`` API, so it holds no hidden global "active run".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

logger = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
PARENT_RUN_ENV = "MCCL_MLFLOW_PARENT_RUN_ID"
DB_FILENAME = "mlflow.db"
ARTIFACTS_DIRNAME = "mlartifacts"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
GIT_DIRTY_TAG = "mccl.git.dirty"
DATA_HASH_TAG = "mccl.dvc.data_hash"
PARENT_RUN_TAG = "mlflow.parentRunId"
STEP_TAG = "mccl.step"
#: MLflow REST batch limits (mlflow.utils.validation).
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

T = TypeVar("T")
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]


# --------------------------------------------------------------------------------------------
# Where runs go
# --------------------------------------------------------------------------------------------


def embedded_tracking_uri(project_dir: Path | None = None) -> str:
    """``sqlite:///<project>/mlflow.db`` (absolute), the store ``mlflow ui`` opens in that folder."""
    return f"sqlite:///{(Path(project_dir) if project_dir else Path.cwd()).resolve() / DB_FILENAME}"


def embedded_artifact_location(project_dir: Path | None = None) -> str:
    """``file://<project>/mlartifacts``, where embedded runs keep their artifacts."""
    return ((Path(project_dir) if project_dir else Path.cwd()).resolve() / ARTIFACTS_DIRNAME).as_uri()


def resolve_tracking_uri(project_dir: Path | None = None, explicit: str | None = None) -> str:
    """``explicit`` if given, else ``$MLFLOW_TRACKING_URI``, else the embedded SQLite store."""
    if explicit:
        return explicit
    from_env = os.environ.get(TRACKING_URI_ENV, "").strip()
    return from_env or embedded_tracking_uri(project_dir)


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


# --------------------------------------------------------------------------------------------
# Helpers: params, git
# --------------------------------------------------------------------------------------------


def flatten_params(params: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts (and dataclasses) to dotted keys: ``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": "0.0001"}``.

    Lists and other values are stringified (MLflow params are strings). Empty dicts are kept as
    ``"{}"`` so a section that exists but is empty is still visible.
    """
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        params = dataclasses.asdict(params)
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping or dataclass, got {type(params).__name__}")
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name))
        elif isinstance(value, Mapping):
            flat[name] = "{}"
        else:
            flat[name] = _param_text(value)
    return flat


def _param_text(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return json.dumps([_param_text(v) if isinstance(v, Path) else v for v in value], default=str)
    return str(value)


#: Paths the dirty check ignores: files DVC rewrites (lock, ``.dvc`` files, the stages' git-tracked
#: metrics) and ``params.yaml``, whose values every run logs as params (``dvc exp run -S`` edits
#: it). A clean clone plus ``dvc repro`` / ``dvc exp run`` therefore tags ``git.dirty=false``.
DVC_MANAGED_PATHSPECS = (":(exclude)dvc.lock", ":(exclude,glob)**/*.dvc", ":(exclude)params.yaml",
                         ":(exclude)metrics", ":(exclude).dvc")  # fmt: skip


def git_commit(cwd: Path | None = None) -> tuple[str, bool] | None:
    """``(HEAD commit, working tree dirty)`` or ``None`` outside a git checkout / without git.

    Dirty means a tracked file other than the DVC-managed ones (:data:`DVC_MANAGED_PATHSPECS`)
    differs from HEAD: code or config that no logged param records.
    """
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *DVC_MANAGED_PATHSPECS],
            cwd=cwd, capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return (head, bool(status.strip())) if re.fullmatch(r"[0-9a-f]{40,64}", head) else None


# --------------------------------------------------------------------------------------------
# Unreachable-server detection and short HTTP retries
# --------------------------------------------------------------------------------------------

_UNREACHABLE_TEXT = (
    "Max retries exceeded",
    "Connection refused",
    "Failed to establish a new connection",
    "Connection aborted",
    "RemoteDisconnected",
    "Read timed out",
    "timed out",
    "timeout exception",
    "Could not connect to the endpoint URL",
    "too many 5",  # urllib3 "too many 503 error responses"
)


def is_unreachable_error(error: BaseException) -> bool:
    """True when ``error`` (or anything in its cause/context chain) means "cannot reach the server".

    MLflow wraps transport errors in :class:`MlflowException` (sometimes without ``from``), so
    the chain is walked and, as a last resort, the message is matched.
    """
    import requests

    transport: tuple[type[BaseException], ...] = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.RetryError,
        ConnectionError,
        TimeoutError,
        socket.timeout,
    )
    try:
        import botocore.exceptions as boto_errors

        transport += (
            boto_errors.EndpointConnectionError,
            boto_errors.ConnectTimeoutError,
            boto_errors.ReadTimeoutError,
        )
    except ImportError:  # pragma: no cover - botocore ships with the project
        pass
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, transport):
            return True
        current = current.__cause__ or current.__context__
    text = str(error)
    return any(marker in text for marker in _UNREACHABLE_TEXT)


class _HttpRetryEnv:
    """Reference-counted override of MLflow's HTTP retry env vars (process-wide, so counted)."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: dict[str, str | None] = {}

    def acquire(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._saved = {name: os.environ.get(name) for name in self._values}
                for name, value in self._values.items():
                    if self._saved[name] is None:  # a value the user set explicitly wins
                        os.environ[name] = value
            self._depth += 1

    def release(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for name, previous in self._saved.items():
                    if previous is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = previous

    @contextmanager
    def applied(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


def short_http_retries(timeout_s: int = 5, max_retries: int = 0) -> Any:
    """Context manager: MLflow HTTP calls inside fail fast (no retry, ``timeout_s`` per request)
    unless the user set those variables; for housekeeping that must not hold up a command when
    the server is down."""
    return _HttpRetryEnv(
        {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
        }
    ).applied()


# --------------------------------------------------------------------------------------------
# Tracker
# --------------------------------------------------------------------------------------------


@dataclass
class TrackerConfig:
    """Settings of :class:`ResilientTracker`."""

    #: Folder of the embedded store (``mlflow.db``, ``mlartifacts/``) and default journal location.
    project_dir: Path = field(default_factory=Path.cwd)
    experiment_name: str = "mccl"
    #: ``None``: ``$MLFLOW_TRACKING_URI`` or the embedded SQLite store.
    tracking_uri: str | None = None
    #: JSONL file that receives everything that could not be logged; default
    #: ``<project>/outputs/mlflow_not_logged.jsonl``.
    journal_path: Path | None = None
    #: Per-request timeout (seconds, MLflow wants an integer) and retries while talking to a server.
    http_timeout_s: int = 5
    http_max_retries: int = 1
    http_backoff_factor: int = 1
    #: After a failed call, skip the server (journal directly) for this many seconds, then retry.
    retry_after_s: float = 30.0
    #: Log CPU / memory / GPU / disk / network under ``system/`` for step runs (mlflow's monitor).
    system_metrics: bool = False
    system_metrics_interval_s: float = 10.0


@dataclass
class RunHandle:
    """A run of this tracker. ``run_id`` is ``None`` when the run could not be created remotely."""

    local_id: str
    name: str
    run_id: str | None
    parent: RunHandle | None = None
    step: str | None = None
    ended: bool = False

    @property
    def remote_run_id(self) -> str:
        """``run_id`` for calls to the server, which the tracker makes only for runs created there."""
        if self.run_id is None:
            raise RuntimeError(f"run {self.name!r} was not created on the tracking server")
        return self.run_id


@dataclass
class NotLoggedSummary:
    """What did not reach MLflow: counts by kind (params/metrics/tags/artifacts/runs/...)."""

    counts: dict[str, int]
    journal_path: Path | None
    first_error: str | None

    def __bool__(self) -> bool:
        return any(self.counts.values())

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "total": self.total,
            "journal_path": str(self.journal_path) if self.journal_path else None,
            "first_error": self.first_error,
        }

    def describe(self) -> str:
        if not self:
            return "everything was logged to MLflow"
        parts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()) if n)
        return f"not logged to MLflow: {parts} (journal: {self.journal_path}; first error: {self.first_error})"


class ResilientTracker:
    """MLflow logging for pipeline steps that keeps going when the server does not.

    Typical step::

        with ResilientTracker(TrackerConfig(project_dir=root)) as tracker:
            tracker.resume_parent_run()              # id from $MCCL_MLFLOW_PARENT_RUN_ID
            with tracker.step_run("train"):
                tracker.log_params({"train": {"lr": 1e-4}})
                tracker.log_metrics({"loss": 0.3}, step=10)
            report["tracking"] = tracker.not_logged.to_dict()
    """

    def __init__(self, config: TrackerConfig | None = None) -> None:
        from mlflow import MlflowClient

        self.config = config or TrackerConfig()
        self.project_dir = Path(self.config.project_dir).resolve()
        self.tracking_uri = resolve_tracking_uri(self.project_dir, self.config.tracking_uri)
        self.is_server = is_server_uri(self.tracking_uri)
        self.journal_path = Path(self.config.journal_path or self.project_dir / "outputs" / "mlflow_not_logged.jsonl")
        self._http_env = _HttpRetryEnv(
            {
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.config.http_max_retries),
                "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(self.config.http_timeout_s))),
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(self.config.http_backoff_factor),
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
            }
        )
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.experiment_id: str | None = None
        self._stack: list[RunHandle] = []
        self._monitors: dict[str, Any] = {}
        self._offline_until = 0.0
        self._warned = False
        self._first_error: str | None = None
        self._not_logged: Counter[str] = Counter()
        self._local_ids = 0
        self._lock = threading.RLock()
        self._default_parent: RunHandle | None = None

    # ---------------------------------------------------------------- context management
    def __enter__(self) -> ResilientTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(status="FAILED" if exc_type else "FINISHED")

    def close(self, status: RunStatus = "FINISHED") -> None:
        """End every run this tracker started and still holds open; log what was not logged."""
        while self._stack:
            self.end_run(self._stack[-1], status=status)
        if self._not_logged.total():
            logger.warning("MLflow: %s", self.not_logged.describe())

    # ---------------------------------------------------------------- guarded calls
    @property
    def online(self) -> bool:
        return time.monotonic() >= self._offline_until

    @property
    def not_logged(self) -> NotLoggedSummary:
        return NotLoggedSummary(
            counts=dict(self._not_logged),
            journal_path=self.journal_path if self._not_logged.total() else None,
            first_error=self._first_error,
        )

    def _guarded(
        self,
        kind: str,
        count: int,
        payload: dict[str, Any],
        call: Callable[[], T],
        run: RunHandle | None,
        journal: bool = True,
    ) -> T | None:
        """Run ``call``; on an unreachable server journal ``payload`` instead of raising.

        ``journal=False`` is for look-ups (experiment, run info) that carry no data to keep.
        """
        if run is not None and run.run_id is None:
            if journal:
                self._journal(kind, count, payload, run, "run was not created on the tracking server")
            return None
        if not self.online:
            if journal:
                self._journal(kind, count, payload, run, "tracking server unreachable (skipping until retry)")
            return None
        try:
            if self.is_server:
                with self._http_env.applied():
                    result = call()
            else:
                result = call()
        except Exception as error:
            if not (self.is_server and is_unreachable_error(error)):
                raise
            self._went_offline(error)
            if journal:
                self._journal(kind, count, payload, run, f"{type(error).__name__}: {error}")
            return None
        if self._warned and self._first_error and self._offline_until:
            logger.info("MLflow tracking server %s reachable again", self.tracking_uri)
            self._offline_until = 0.0
        return result

    def _went_offline(self, error: BaseException) -> None:
        self._offline_until = time.monotonic() + self.config.retry_after_s
        message = f"{type(error).__name__}: {error}"
        if self._first_error is None:
            self._first_error = message[:500]
        if not self._warned:
            self._warned = True
            logger.warning(
                "MLflow tracking server %s is unreachable (%s); continuing without it and journaling "
                "what is not logged to %s",
                self.tracking_uri, message[:300], self.journal_path,
            )  # fmt: skip
        else:
            logger.debug("MLflow tracking server still unreachable: %s", message[:300])

    def _journal(self, kind: str, count: int, payload: dict[str, Any], run: RunHandle | None, reason: str) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(),
            "kind": kind,
            "run_local_id": run.local_id if run else None,
            "run_id": run.run_id if run else None,
            "run_name": run.name if run else None,
            "experiment_name": self.config.experiment_name,
            "tracking_uri": self.tracking_uri,
            "reason": reason[:500],
            "payload": payload,
        }
        with self._lock:
            self.journal_path.parent.mkdir(parents=True, exist_ok=True)
            with self.journal_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, default=str) + "\n")
            if count:
                self._not_logged[kind] += count

    # ---------------------------------------------------------------- runs
    def _new_handle(self, name: str, run_id: str | None, parent: RunHandle | None, step: str | None) -> RunHandle:
        self._local_ids += 1
        local_id = f"local-{os.getpid()}-{self._local_ids}"
        return RunHandle(local_id=local_id, name=name, run_id=run_id, parent=parent, step=step)

    def _ensure_experiment(self) -> str | None:
        if self.experiment_id is not None:
            return self.experiment_id

        def lookup_or_create() -> str:
            from mlflow.exceptions import MlflowException

            experiment = self.client.get_experiment_by_name(self.config.experiment_name)
            if experiment is not None:
                return experiment.experiment_id
            location = None if self.is_server else embedded_artifact_location(self.project_dir)
            try:
                return self.client.create_experiment(self.config.experiment_name, artifact_location=location)
            except MlflowException as error:  # created concurrently by another step
                experiment = self.client.get_experiment_by_name(self.config.experiment_name)
                if experiment is None:
                    raise error
                return experiment.experiment_id

        self.experiment_id = self._guarded(
            "experiment", 0, {"experiment_name": self.config.experiment_name}, lookup_or_create, None, journal=False
        )
        return self.experiment_id

    def _create_run(self, name: str, tags: dict[str, str], parent: RunHandle | None, step: str | None) -> RunHandle:
        experiment_id = self._ensure_experiment()
        payload = {"run_name": name, "tags": tags}
        run_id: str | None = None
        if experiment_id is not None:
            created = self._guarded(
                "runs", 1, payload,
                lambda: self.client.create_run(experiment_id, tags=tags, run_name=name), None,
            )  # fmt: skip
            run_id = created.info.run_id if created is not None else None
        else:
            self._journal("runs", 1, payload, None, "experiment unavailable (tracking server unreachable)")
        handle = self._new_handle(name, run_id, parent, step)
        self._stack.append(handle)
        return handle

    def start_parent_run(self, run_name: str, tags: Mapping[str, Any] | None = None) -> RunHandle:
        """Start the pipeline-level run; pass its id to later steps (env var or ref file)."""
        return self._create_run(run_name, {k: str(v) for k, v in (tags or {}).items()}, None, None)

    def resume_parent_run(self, run_id: str | None = None, ref_file: Path | None = None) -> RunHandle:
        """Attach to an existing parent run: ``run_id``, else ``ref_file``, else ``$MCCL_MLFLOW_PARENT_RUN_ID``.

        A reference that holds no id (the parent could not be created) gives an offline handle:
        nested step runs are then created without a parent link.
        """
        name = "parent"
        if run_id is None and ref_file is not None:
            reference = json.loads(Path(ref_file).read_text(encoding="utf-8"))
            run_id = reference.get("run_id")
            name = reference.get("run_name") or name
            if reference.get("experiment_id"):
                self.experiment_id = reference["experiment_id"]
        elif run_id is None:
            run_id = os.environ.get(PARENT_RUN_ENV) or None
            if run_id is None:
                raise ValueError(f"no parent run id: pass run_id, a ref_file, or set ${PARENT_RUN_ENV}")
        if run_id is not None and self.experiment_id is None:
            run = self._guarded(
                "resume", 0, {"run_id": run_id}, lambda: self.client.get_run(run_id), None, journal=False
            )
            if run is not None:
                self.experiment_id = run.info.experiment_id
                name = run.info.run_name or name
        handle = self._new_handle(name, run_id, None, None)
        handle.ended = True  # a resumed parent is ended by whoever started it
        self._default_parent = handle
        return handle

    def write_run_ref(self, path: Path, run: RunHandle | None = None, execution: str | None = None) -> Path:
        """Write ``{"run_id", "run_name", "experiment_id", "tracking_uri", "execution"}`` for later
        steps (``execution``: the pipeline execution that owns the run, see tracking.steps)."""
        run = run or self._current()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        reference = {
            "run_id": run.run_id,
            "run_name": run.name,
            "experiment_id": self.experiment_id,
            "tracking_uri": self.tracking_uri,
            "execution": execution,
        }
        path.write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")
        return path

    def start_step_run(
        self, step: str, parent: RunHandle | None = None, tags: Mapping[str, Any] | None = None
    ) -> RunHandle:
        """A nested run for one pipeline step under ``parent`` (default: the innermost open run)."""
        parent = parent or (self._stack[-1] if self._stack else self._default_parent)
        all_tags = {STEP_TAG: step, **{k: str(v) for k, v in (tags or {}).items()}}
        if parent is not None and parent.run_id is not None:
            all_tags[PARENT_RUN_TAG] = parent.run_id
        handle = self._create_run(step, all_tags, parent, step)
        if self.config.system_metrics and handle.run_id is not None:
            self._start_system_metrics(handle)
        return handle

    @contextmanager
    def step_run(
        self, step: str, parent: RunHandle | None = None, tags: Mapping[str, Any] | None = None
    ) -> Iterator[RunHandle]:
        """Nested step run that ends FINISHED, or FAILED when the block raises."""
        run = self.start_step_run(step, parent=parent, tags=tags)
        try:
            yield run
        except BaseException:
            self.end_run(run, status="FAILED")
            raise
        self.end_run(run, status="FINISHED")

    def end_run(self, run: RunHandle | None = None, status: RunStatus = "FINISHED") -> None:
        run = run or self._current()
        monitor = self._monitors.pop(run.local_id, None)
        if monitor is not None:
            try:
                monitor.finish()
            finally:
                if self.is_server:
                    self._http_env.release()
        if not run.ended:
            self._guarded(
                "run_status", 1, {"status": status},
                lambda: self.client.set_terminated(run.remote_run_id, status=status), run,
            )  # fmt: skip
            run.ended = True
        if run in self._stack:
            self._stack.remove(run)

    def _current(self) -> RunHandle:
        if self._stack:
            return self._stack[-1]
        if self._default_parent is not None:
            return self._default_parent
        raise RuntimeError("no MLflow run: call start_parent_run / resume_parent_run / start_step_run first")

    def _start_system_metrics(self, run: RunHandle) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        if self.is_server:
            self._http_env.acquire()  # the monitor thread talks to the server too
        monitor = SystemMetricsMonitor(
            run.run_id, sampling_interval=self.config.system_metrics_interval_s, tracking_uri=self.tracking_uri
        )
        monitor.start()
        self._monitors[run.local_id] = monitor

    # ---------------------------------------------------------------- logging
    def log_params(self, params: Mapping[str, Any] | Any, run: RunHandle | None = None) -> None:
        """Log (nested) params with dotted keys; see :func:`flatten_params`."""
        from mlflow.entities import Param

        run = run or self._current()
        flat = flatten_params(params)
        items = list(flat.items())
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            chunk = dict(items[start : start + _PARAMS_PER_BATCH])

            def send_params(batch: dict[str, str] = chunk) -> None:
                self.client.log_batch(run.remote_run_id, params=[Param(k, v) for k, v in batch.items()])

            self._guarded("params", len(chunk), {"params": chunk}, send_params, run)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, run: RunHandle | None = None) -> None:
        """Log numeric metrics (NaN/inf allowed) at ``step`` (default 0)."""
        from mlflow.entities import Metric

        run = run or self._current()
        timestamp = int(time.time() * 1000)
        values: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                values[str(key)] = float(value)
            except (TypeError, ValueError) as error:
                raise TypeError(f"metric {key!r} must be a number, got {value!r}") from error
        items = list(values.items())
        for start in range(0, len(items), _METRICS_PER_BATCH):
            chunk = dict(items[start : start + _METRICS_PER_BATCH])
            payload = {"metrics": {k: (v if math.isfinite(v) else str(v)) for k, v in chunk.items()}, "step": step}

            def send_metrics(batch: dict[str, float] = chunk) -> None:
                metrics = [Metric(k, v, timestamp, step or 0) for k, v in batch.items()]
                self.client.log_batch(run.remote_run_id, metrics=metrics)

            self._guarded("metrics", len(chunk), payload, send_metrics, run)

    def set_tags(self, tags: Mapping[str, Any], run: RunHandle | None = None) -> None:
        from mlflow.entities import RunTag

        run = run or self._current()
        text = {str(k): str(v) for k, v in tags.items()}
        if text:
            self._guarded(
                "tags", len(text), {"tags": text},
                lambda: self.client.log_batch(run.remote_run_id, tags=[RunTag(k, v) for k, v in text.items()]),
                run,
            )  # fmt: skip

    def set_provenance_tags(self, data_hash: str | None = None, run: RunHandle | None = None) -> dict[str, str]:
        """Tag the git commit (``git rev-parse HEAD`` of the project, if a checkout) and the
        DVC data hash given by the caller; returns the tags set."""
        tags: dict[str, str] = {}
        commit = git_commit(self.project_dir)
        if commit is not None:
            tags[GIT_COMMIT_TAG] = commit[0]
            tags[GIT_DIRTY_TAG] = str(commit[1]).lower()
        if data_hash:
            tags[DATA_HASH_TAG] = data_hash
        self.set_tags(tags, run=run)
        return tags

    def log_artifact(self, path: Path, artifact_path: str | None = None, run: RunHandle | None = None) -> None:
        """Upload one file (the journal keeps its path if the upload cannot happen)."""
        run = run or self._current()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"artifact {str(path)!r} is not a file")
        self._guarded(
            "artifacts", 1, {"path": str(path.resolve()), "artifact_path": artifact_path},
            lambda: self.client.log_artifact(run.remote_run_id, str(path), artifact_path),
            run,
        )  # fmt: skip

    def log_artifacts(self, directory: Path, artifact_path: str | None = None, run: RunHandle | None = None) -> None:
        """Upload a folder's files."""
        run = run or self._current()
        directory = Path(directory)
        if not directory.is_dir():
            raise NotADirectoryError(f"artifact folder {str(directory)!r} is not a directory")
        n_files = sum(1 for p in directory.rglob("*") if p.is_file())
        self._guarded(
            "artifacts", n_files, {"directory": str(directory.resolve()), "artifact_path": artifact_path},
            lambda: self.client.log_artifacts(run.remote_run_id, str(directory), artifact_path),
            run,
        )  # fmt: skip
