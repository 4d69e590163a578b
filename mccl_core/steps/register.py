"""Register step: the evaluated model into the MLflow model registry; ``champion`` only if better.

The model is logged as an MLflow pyfunc model (``mccl_core.serving.log_pyfunc_model``, with the
threshold the evaluate step chose on val) and registered as a new version of
``register.model_name``. ``mccl_core.serving.promote_if_better`` then moves the alias (default
``champion``) to it only when its validation selection score (val macro-F1 at the val-tuned
threshold) beats the current champion's; test macro-F1 is recorded, never compared. Otherwise the
version stays a candidate and the decision file says why.

Scores are only compared between models of the same task: each version is tagged with its class
list (hash, count, names), its dataset (the data source: ``demo``, ``intentonomy``, ``mdid``,
``manifest``) and the data hash (:class:`mccl_core.serving.registry.ModelIdentity`). When the
current champion of ``register.model_name`` was trained on another class list or dataset, the
step fails *before* registering anything - a 5-class model must not displace a 28-class
Intentonomy champion because its val macro-F1 happens to be higher - and the message says to give
the model its own ``register.model_name`` (e.g. ``mccl-intent-<dataset>``).

Unlike the other steps, this one cannot work without the tracking server: the registry *is* the
output. An unreachable server therefore fails the step with a clear message. This is also the
pipeline's last step, so it ends the pipeline's parent MLflow run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mccl_core.steps.common import StepError, ValidatedData, read_json, write_json
from mccl_core.steps.contract import StepInput, StepOutcome, StepSpec
from mccl_core.steps.layout import DECISION_FILE, EVALUATE_METRICS_FILE, MODEL_DIR, SUBMISSION_FILE, VALIDATED_DATA_FILE
from mccl_core.tracking import is_unreachable_error, resolve_tracking_uri
from mccl_core.tracking.steps import TrackingOptions, finish_parent_run, tracked_step

if TYPE_CHECKING:
    from mccl_core.serving.registry import ModelIdentity

log = logging.getLogger(__name__)

#: What was submitted to the registry (name, scores, identity): the same for the same inputs and
#: params, so ``dvc.yaml`` declares this file; the decision (version, champion) is a record of
#: the registry's state and stays undeclared (it would change ``dvc.lock`` on every run).
SUBMISSION_KEYS = ("model_name", "alias", "threshold", "selection_score", "test_macro_f1")


@dataclass
class RegisterConfig:
    """The ``register`` section of params.yaml."""

    model_name: str = "mccl-intent"
    alias: str = "champion"


@dataclass
class RegisterResult:
    model_name: str
    version: str
    promoted: bool
    reason: str
    decision: dict[str, Any]
    decision_path: Path
    mlflow_run_id: str | None


@contextmanager
def _short_http_timeouts() -> Iterator[None]:
    names = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    saved = {n: os.environ.get(n) for n in names}
    for name, value in names.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous


def check_registry(tracking_uri: str) -> None:
    """Raise :class:`StepError` when the model registry at ``tracking_uri`` cannot be used."""
    from mlflow import MlflowClient

    try:
        with _short_http_timeouts():
            MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).search_registered_models(max_results=1)
    except Exception as error:
        why = "is unreachable" if is_unreachable_error(error) else "cannot be used"
        raise StepError(
            f"the MLflow model registry at {tracking_uri} {why} ({type(error).__name__}: {str(error)[:300]}); "
            "the register step needs it. Start the tracking server or point MLFLOW_TRACKING_URI at a "
            "reachable one, then re-run the step (the model bundle and metrics are kept)."
        ) from error


def run_register(
    cfg: RegisterConfig,
    model_dir: Path,
    evaluation_metrics: Path,
    out_dir: Path,
    tracking: TrackingOptions,
    all_params: dict[str, Any] | None = None,
    data_hash: str | None = None,
    dataset: str | None = None,
) -> RegisterResult:
    """Register ``model_dir`` as a new version of ``cfg.model_name``; move ``cfg.alias`` if better.

    ``dataset`` (the data source) and ``data_hash`` are recorded with the class list as the
    version's identity; ``dataset`` None is not compared (the class list always is).

    Raises:
        StepError: tracking disabled, registry unreachable, or the champion of ``cfg.model_name``
            was trained on another class list / dataset (nothing is registered then).
    """
    if tracking is None or not tracking.enabled:
        raise StepError("the register step needs MLflow tracking (tracking is disabled)")
    import mlflow
    from mlflow import MlflowClient

    from mccl_core.models.bundle import read_meta
    from mccl_core.serving import log_pyfunc_model, promote_if_better
    from mccl_core.serving.registry import IncompatibleModelError, ModelIdentity, check_comparable

    metrics = read_json(Path(evaluation_metrics), "evaluation metrics")
    threshold = float(metrics["threshold"])
    score = float(metrics["selection_score"])
    test_score = metrics.get("test_macro_f1")
    uri = resolve_tracking_uri(Path(tracking.project_dir), tracking.tracking_uri)
    check_registry(uri)
    identity = ModelIdentity.of(read_meta(Path(model_dir)).class_names, dataset, data_hash)
    try:
        with _short_http_timeouts():
            check_comparable(MlflowClient(tracking_uri=uri, registry_uri=uri), cfg.model_name, identity, cfg.alias)
    except IncompatibleModelError as error:
        raise StepError(_refusal_message(cfg, identity, error)) from error
    out_dir = Path(out_dir)
    with tracked_step("register", tracking, {"register": asdict(cfg)}, all_params, data_hash) as run:
        if run.run_id is None:
            raise StepError(f"could not create an MLflow run at {uri}; the register step needs the tracking server")
        previous_uri = mlflow.get_tracking_uri()
        previous_registry = mlflow.get_registry_uri()
        # mlflow.set_*_uri also export MLFLOW_*_URI; restore the environment exactly afterwards,
        # or every later tracker in this process would log to this store.
        previous_env = {n: os.environ.get(n) for n in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            with _short_http_timeouts(), mlflow.start_run(run_id=run.run_id):
                info = log_pyfunc_model(Path(model_dir), threshold, registered_model_name=cfg.model_name)
            version = str(info.registered_model_version)
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            decision = promote_if_better(
                client,
                cfg.model_name,
                version,
                score,
                alias=cfg.alias,
                test_macro_f1=None if test_score is None else float(test_score),
                identity=identity,
            )
        except StepError:
            raise
        except IncompatibleModelError as error:  # the champion changed since the check above
            raise StepError(_refusal_message(cfg, identity, error, str(info.registered_model_version))) from error
        except Exception as error:
            if is_unreachable_error(error):
                raise StepError(
                    f"the MLflow registry at {uri} became unreachable while registering: {error}"
                ) from error
            raise
        finally:
            mlflow.set_tracking_uri(previous_uri)
            mlflow.set_registry_uri(previous_registry)
            for name, value in previous_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        payload = {
            "model_name": cfg.model_name,
            "alias": cfg.alias,
            "version": version,
            "threshold": threshold,
            "selection_score": score,
            "test_macro_f1": test_score,
            "promoted": bool(decision.promoted),
            "champion_version": decision.champion_version,
            "champion_score": decision.champion_score,
            "reason": decision.reason,
            "model_uri": info.model_uri,
            "mlflow_run_id": run.run_id,
            **{f"identity_{k}": v for k, v in identity.tags().items()},
        }
        decision_path = write_json(out_dir / DECISION_FILE, payload)
        write_json(out_dir / SUBMISSION_FILE, {k: v for k, v in payload.items()
                                               if k in SUBMISSION_KEYS or k.startswith("identity_")})  # fmt: skip
        run.set_tags({"mccl.registered_version": version, "mccl.promoted": str(bool(decision.promoted)).lower()})
        run.log_metrics({"registered_selection_score": score, "promoted": float(bool(decision.promoted))})
        run.log_artifact(decision_path, "registry")
        status = f"promoted to @{cfg.alias}" if decision.promoted else f"kept as a candidate (not @{cfg.alias})"
        log.info("%s version %s %s: %s", cfg.model_name, version, status, decision.reason)
        finish_parent_run(run)
        return RegisterResult(
            cfg.model_name, version, bool(decision.promoted), decision.reason, payload, decision_path, run.run_id
        )


def _refusal_message(
    cfg: RegisterConfig, identity: ModelIdentity, error: Exception, registered_version: str | None = None
) -> str:
    """The registry's refusal plus what to change in params.yaml."""
    suffix = identity.dataset or f"{len(identity.class_names)}classes"
    suggestion = f"{cfg.model_name}-{suffix}" if not cfg.model_name.endswith(f"-{suffix}") else f"{cfg.model_name}-2"
    outcome = (
        "Nothing was registered."
        if registered_version is None
        else f"Version {registered_version} was registered before the {cfg.alias} changed; it stays a candidate."
    )
    return (
        f"register: {error} {outcome} Give this model its own registered model name: set "
        f"`register.model_name: {suggestion}` in params.yaml (or `mccl step register --set "
        f"register.model_name={suggestion}`; `dvc exp run -S register.model_name={suggestion}`), and serve it "
        f"as models:/{suggestion}@{cfg.alias}."
    )


# ------------------------------------------------------------------------------- step contract


def run(inputs: Mapping[str, Path], out_dir: Path, config: RegisterConfig, tracking: TrackingOptions) -> StepOutcome:
    validated = ValidatedData.load(inputs["validate"], folders=inputs)
    result = run_register(config, Path(inputs["train"]) / MODEL_DIR, Path(inputs["evaluate"]) / EVALUATE_METRICS_FILE, out_dir,
                          tracking, all_params={"register": asdict(config)}, data_hash=validated.data_hash,
                          dataset=validated.source)  # fmt: skip
    state = f"promoted to @{config.alias}" if result.promoted else f"kept as a candidate (not @{config.alias})"
    return StepOutcome(
        summary=f"{result.model_name} version {result.version} {state}: {result.reason}",
        metrics={"version": float(result.version), "promoted": float(result.promoted)},
        markdown=f"# Model registry\n\n{result.model_name} version **{result.version}** {state}.\n\n{result.reason}\n",
        mlflow_run_id=result.mlflow_run_id or "",
    )


SPEC = StepSpec(
    name="register",
    description="register in the MLflow model registry; move the alias only when the validation macro-F1 is better",
    sections=("register",),
    config=RegisterConfig,
    optional_sections=("register",),
    inputs=(
        StepInput("validate", reads=(VALIDATED_DATA_FILE,)),
        StepInput("train", reads=(MODEL_DIR,)),
        StepInput("evaluate", reads=(EVALUATE_METRICS_FILE,)),
    ),
    output_kind="Artifact",
    run=run,
    cacheable=False,
)
