"""Train step: runs the training loop (torchrun here, or a Kubernetes job) and resumes after a crash.

The loop itself (:mod:`mccl_core.training`) runs in child processes started by
:mod:`mccl_core.launch` (``launch.nproc_per_node`` processes per node; on CPU, Gloo). The step:

* writes the *resolved* params the loop reads (validated data config, model, train with the
  output folder) - also logged to MLflow as the run's resolved config;
* keeps ``<out>/checkpoints/last.pt`` between runs, so re-running after a crash (or a killed
  ``dvc repro``) continues from the last finished epoch. A checkpoint written for other inputs
  (another config, other prototypes or data, other code) is moved aside (``*.stale.pt``) instead
  of resumed - resuming it would silently train the wrong model;
* holds ``<out>/train.lock`` (a second trainer on the folder is refused, naming the PID) and hands
  it to the training processes, which die with the step (:mod:`mccl_core.launch.local`);
* with ``launch.backend: trainjob | pytorchjob`` runs the same step in the pods of a Kubernetes
  job (:mod:`mccl_core.launch.job`, :mod:`mccl_core.steps.pod`), inputs and checkpoints staged on
  S3 under a prefix of this run's own (keyed by the fingerprint of its inputs and params);
* passes its MLflow run id to the loop, which logs every epoch live (rank 0); epochs finished
  before a crash are back-filled from the history.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from mccl_core.config import to_plain
from mccl_core.hashing import sha256_files, sha256_of
from mccl_core.launch.config import LaunchConfig
from mccl_core.launch.job import Submitter
from mccl_core.launch.supervise import TrainerLock
from mccl_core.models import ModelConfig
from mccl_core.steps.common import StepError, ValidatedData, write_json, write_text
from mccl_core.steps.contract import StepInput, StepOutcome, StepSpec
from mccl_core.steps.layout import (
    BACKBONE_INIT_FILE,
    CHECKPOINT_DIR,
    CURVES_FILE,
    EMBEDDINGS_FILE,
    FINGERPRINT_FILE,
    HISTORY_FILE,
    MODEL_DIR,
    PROTOTYPES_FILE,
    RESOLVED_PARAMS_FILE,
    VALIDATED_ANNOTATIONS_DIR,
    VALIDATED_DATA_FILE,
)
from mccl_core.steps.layout import TRAIN_SUMMARY_FILE as SUMMARY_FILE
from mccl_core.tracking.steps import StepTracking, TrackingOptions, tracked_step
from mccl_core.training.checkpoint import LAST_NAME, set_aside_stale
from mccl_core.training.config import TrainConfig
from mccl_core.training.fingerprint import training_fingerprint

log = logging.getLogger(__name__)


@dataclass
class TrainInputsPaths:
    prototypes: Path | None
    backbone_init: Path | None
    label_embeddings: Path | None


@dataclass
class TrainStepResult:
    model_dir: Path
    history: list[dict[str, Any]]
    final_metrics: dict[str, float]
    resumed: bool
    mlflow_run_id: str | None
    parent_run_id: str | None


def fingerprint_of(model_cfg: ModelConfig, train_cfg: TrainConfig, validated: ValidatedData, inputs: TrainInputsPaths,
                   launch: LaunchConfig) -> dict[str, Any]:  # fmt: skip
    """What this run's model depends on (:func:`~mccl_core.training.fingerprint.training_fingerprint`),
    plus the upstream files and the world size (per-rank batches and data order change with it)."""
    files = {name: sha256_files([path]) for name, path in vars(inputs).items() if path is not None}
    return training_fingerprint(model_cfg, train_cfg, validated.data_hash, inputs=files, world_size=launch.world_size)


def prepare_resume(out_dir: Path, fingerprint: dict[str, Any]) -> bool:
    """True when a checkpoint for these exact inputs exists; a foreign one is moved aside.

    "Foreign" = its fingerprint record (``inputs.json``, written when that run started) differs
    from this run's, or is missing. Every checkpoint file is set aside (``last.pt`` ->
    ``last.stale.pt``, ``prev.pt`` -> ``prev.stale.pt``...), not only ``last.pt``: a fallback
    to an older foreign file would be the same silent mistake.
    """
    ckpt_dir = out_dir / CHECKPOINT_DIR
    record = ckpt_dir / FINGERPRINT_FILE
    digest = sha256_of(fingerprint)
    found = sorted(p for p in ckpt_dir.glob("*.pt") if not p.name.endswith(".stale.pt")) if ckpt_dir.is_dir() else []
    if found:
        try:
            previous = json.loads(record.read_text()).get("sha256") if record.is_file() else None
        except (ValueError, AttributeError):
            previous = None
        if previous == digest:
            log.info("resuming from %s (same inputs)", ckpt_dir / "last.pt")
            return True
        for path in found:
            set_aside_stale(path)  # numbered when an earlier *.stale.pt exists: never overwritten
        log.warning("checkpoints in %s were written for other inputs or params (fingerprint %s, this run %s): "
                    "not resuming them; moved aside as *.stale.pt and training from scratch",
                    ckpt_dir, (previous or "missing")[:16], digest[:16])  # fmt: skip
    write_json(record, {"sha256": digest, "fingerprint": fingerprint})
    return False


def staging_key(fingerprint: dict[str, Any]) -> str:
    """The run's own staging key on S3: runs with other inputs or params never share a prefix."""
    return sha256_of(fingerprint)[:16]


def run_train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    launch: LaunchConfig,
    validated: ValidatedData,
    inputs: TrainInputsPaths,
    out_dir: Path,
    tracking: TrackingOptions | None = None,
    submit: Submitter | None = None,
) -> TrainStepResult:
    """Train (or resume) under torchrun or a Kubernetes job; returns the bundle and the history.

    ``submit`` replaces the in-cluster submission of the job manifest (tests run the pods locally).
    """
    from mccl_core.launch.supervise import TrainerBusyError, exit_with_dvc

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    exit_with_dvc()
    try:
        lock = TrainerLock(out_dir).acquire()
    except TrainerBusyError as error:
        raise StepError(str(error)) from None
    try:
        return _run_locked(model_cfg, replace(train_cfg, output_dir=out_dir), launch, validated, inputs, out_dir,
                           tracking, submit, lock)  # fmt: skip
    finally:
        lock.release()


def _run_locked(model_cfg: ModelConfig, train_cfg: TrainConfig, launch: LaunchConfig, validated: ValidatedData,
                inputs: TrainInputsPaths, out_dir: Path, tracking: TrackingOptions | None, submit: Submitter | None,
                lock: TrainerLock) -> TrainStepResult:  # fmt: skip
    from mccl_core.launch.local import TrainingFailed, run_local_training
    from mccl_core.training.history import curves_csv, epoch_series, headline_and_timing

    # The configs become plain values once, here: the training processes read them from a file
    # (a process boundary), and MLflow logs the same mapping.
    params = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "launch": to_plain(launch)}
    resolved = {"data": validated.data.to_dict(), "model": params["model"], "train": params["train"]}
    # Absolute paths: the training processes may run in another working directory.
    resolved["data"]["root"] = str(Path(resolved["data"]["root"]).resolve())
    resolved["data"]["annotations"] = {k: str(Path(v).resolve()) for k, v in resolved["data"]["annotations"].items()}
    params_path = write_text(out_dir / RESOLVED_PARAMS_FILE, yaml.safe_dump(resolved, sort_keys=False))
    fingerprint = fingerprint_of(model_cfg, train_cfg, validated, inputs, launch)
    # The job's pods run the guard against their own staged checkpoints; here nothing resumes.
    resumable = False if launch.on_kubernetes else prepare_resume(out_dir, fingerprint)

    with tracked_step("train", tracking, params, params, validated.data_hash) as run:
        run.log_artifact(params_path, "config")
        output: list[str] = []
        if launch.on_kubernetes:
            _run_on_kubernetes(launch, validated, inputs, out_dir, resolved, staging_key(fingerprint), run, submit)
        else:
            args = [
                "--params",
                str(params_path),
                "--output-dir",
                str(out_dir),
                "--summary-json",
                str(out_dir / SUMMARY_FILE),
            ]
            for flag, path in (("--prototypes", inputs.prototypes), ("--backbone-init", inputs.backbone_init),
                               ("--label-embeddings", inputs.label_embeddings)):  # fmt: skip
                if path is not None:
                    args += [flag, str(Path(path).resolve())]
            args += [] if resumable else ["--no-resume"]
            tracking_uri = run.tracker.tracking_uri if run.tracker is not None else ""
            try:
                output = run_local_training(launch, args, out_dir / CHECKPOINT_DIR / LAST_NAME, run.run_id,
                                            tracking_uri, lock.fd)  # fmt: skip
            except TrainingFailed as error:
                raise StepError(str(error)) from None
        # On a node other than 0 (multi-node torchrun) only node 0 writes history and bundle.
        node0 = launch.on_kubernetes or launch.node_rank == 0
        history = json.loads((out_dir / HISTORY_FILE).read_text()) if node0 else []
        final = json.loads((out_dir / SUMMARY_FILE).read_text()) if node0 else {}
        backfilled = run.backfill_series(epoch_series(history), key="train_loss")
        if backfilled:
            log.info("logged %d epochs finished before the restart to MLflow", backfilled)
        run.log_artifact(out_dir / HISTORY_FILE, "train")
        if history:
            write_text(out_dir / CURVES_FILE, curves_csv(history))
            headline, timing = headline_and_timing(history)
            # The last epoch's losses and scores are the ends of the parent's curves already.
            run.log_headline({"epochs": headline["epochs"], **timing})
        resumed = any("resumed from" in line for line in output)
        run.set_tags({"mccl.train.resumed": str(resumed).lower()})
        return TrainStepResult(out_dir / MODEL_DIR, history, final, resumed, run.run_id, run.parent_run_id)


def _run_on_kubernetes(launch: LaunchConfig, validated: ValidatedData, inputs: TrainInputsPaths, out_dir: Path,
                       resolved: dict[str, Any], key: str, run: StepTracking, submit: Submitter | None) -> None:  # fmt: skip
    """The pods get this step's inputs as step folders (``validate``, ``extract``, ``cluster``,
    ``demo``) and a params file; each runs this step with the torchrun backend."""
    from mccl_core.launch.job import run_kubernetes_job
    from mccl_core.launch.node import PARAMS_FILE

    def stage(staged: Path) -> None:
        handle_dir = staged / "validate"
        folders: dict[str, Path] = {}
        if validated.data.source == "demo" and validated.data.root.is_dir():
            folders["demo"] = Path(shutil.copytree(validated.data.root, staged / "demo"))
        annotations = {
            s: handle_dir / VALIDATED_ANNOTATIONS_DIR / Path(p).name for s, p in validated.data.annotations.items()
        }
        for split, path in validated.data.annotations.items():
            annotations[split].parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, annotations[split])
        data = replace(validated.data, root=folders.get("demo", validated.data.root), annotations=annotations)
        replace(validated, data=data).save(handle_dir / VALIDATED_DATA_FILE, folders)
        for folder, upstream in (("extract", inputs.backbone_init), ("cluster", inputs.prototypes),
                                 ("cluster", inputs.label_embeddings)):  # fmt: skip
            if upstream is not None:
                (staged / folder).mkdir(exist_ok=True)
                shutil.copy(upstream, staged / folder / Path(upstream).name)
        params = {"model": resolved["model"], "train": {**resolved["train"], "output_dir": "outputs"},
                  "launch": {"env": launch.env}}  # fmt: skip
        write_text(staged / PARAMS_FILE, yaml.safe_dump(params, sort_keys=False))

    tracking_uri = run.tracker.tracking_uri if run.tracker is not None else ""
    manifest = run_kubernetes_job(launch, key, stage, out_dir, tracking_uri, submit)
    log.info("%s %s finished", manifest["kind"], manifest["metadata"]["name"])  # epochs: history.json


# ------------------------------------------------------------------------------- step contract


@dataclass(frozen=True)
class TrainParams:
    """Sections ``model``, ``train`` and ``launch``."""

    model: ModelConfig
    train: TrainConfig
    launch: LaunchConfig


def run(inputs: Mapping[str, Path], out_dir: Path, config: TrainParams, tracking: TrackingOptions) -> StepOutcome:
    from mccl_core.training.history import headline_and_timing

    validated = ValidatedData.load(inputs["validate"], folders=inputs)
    paths = TrainInputsPaths(Path(inputs["cluster"]) / PROTOTYPES_FILE, Path(inputs["extract"]) / BACKBONE_INIT_FILE,
                             Path(inputs["cluster"]) / EMBEDDINGS_FILE)  # fmt: skip
    result = run_train(config.model, config.train, config.launch, validated, paths, out_dir, tracking)
    headline, timing = headline_and_timing(result.history)
    return StepOutcome(
        summary=f"model bundle: {result.model_dir} ({len(result.history)} epochs, resumed: {result.resumed})",
        metrics=headline,
        run_metrics=timing,
        mlflow_run_id=result.mlflow_run_id or "",
        parent_run_id=result.parent_run_id or "",
    )


SPEC = StepSpec(
    name="train",
    description="train under torchrun (or a PyTorchJob); resumes from its checkpoint when the inputs match",
    sections=("model", "train", "launch"),
    config=TrainParams,
    optional_sections=("launch",),
    inputs=(
        StepInput("validate", reads=(VALIDATED_DATA_FILE, VALIDATED_ANNOTATIONS_DIR)),
        StepInput("extract", reads=(BACKBONE_INIT_FILE,)),
        StepInput("cluster", reads=(PROTOTYPES_FILE, EMBEDDINGS_FILE)),
        StepInput("demo", reads=(".",), optional=True),
    ),
    output_kind="Model",
    run=run,
    cacheable=False,
)
