"""Train step: launches the training loop through ``torchrun`` and resumes after a crash.

The loop itself (:mod:`mccl_core.training`) runs in child processes started by
``python -m torch.distributed.run`` (torchrun) with ``launch.nproc_per_node`` processes (one per
GPU; on CPU, Gloo). The step:

* writes the *resolved* params the loop reads (validated data config, model, train with the
  output folder) - also logged to MLflow as the run's resolved config;
* keeps ``<out>/checkpoints/last.pt`` between runs, so re-running after a crash (or a killed
  ``dvc repro``) continues from the last finished epoch. A checkpoint written for other inputs
  (another config, other prototypes or data) is moved aside (``*.stale.pt``) instead of resumed -
  resuming it would silently train the wrong model;
* holds ``<out>/train.lock`` (a second trainer on the folder is refused, naming the PID; the
  training command inherits the lock, :mod:`mccl_core.training.lock`) and runs
  the training processes in their own process group that dies with the step
  (:mod:`mccl_core.launch.supervise`): a killed step leaves no trainer behind;
* with ``launch.backend: trainjob | pytorchjob`` runs the same step in the pods of a Kubernetes
  job instead (:mod:`mccl_core.launch.node`), inputs and checkpoints staged on S3 under a prefix
  of this run's own (keyed by the fingerprint of its inputs and params);
* passes its MLflow run id to the loop, which logs every epoch's metrics live (rank 0); epochs
  finished before a crash are back-filled from the history.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from mccl_core.config import ConfigError, from_dict, section, to_plain
from mccl_core.launch.supervise import TrainerLock
from mccl_core.models import ModelConfig
from mccl_core.steps.common import (
    VALIDATED_ANNOTATIONS_DIR,
    VALIDATED_DATA_FILE,
    StepError,
    ValidatedData,
    sha256_files,
    sha256_of,
    training_fingerprint,
    write_json,
    write_text,
)
from mccl_core.steps.contract import StepInput, StepOutcome, StepSpec
from mccl_core.tracking.steps import StepTracking, TrackingOptions, tracked_step
from mccl_core.training.checkpoint import TRAINER_ERROR_PREFIX, set_aside_stale
from mccl_core.training.config import TrainConfig
from mccl_core.training.lock import handover_env

log = logging.getLogger(__name__)

RESOLVED_PARAMS_FILE = "resolved_params.yaml"
FINGERPRINT_FILE = "inputs.json"
SUMMARY_FILE = "metrics.json"
HISTORY_FILE = "history.json"
#: Per-epoch curves without timings (``dvc plots``): what the inputs and params determine.
CURVES_FILE = "curves.csv"
CURVE_COLUMNS = ("epoch", "train_loss", "lr", "val_macro_f1_split_tuned", "val_map")
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
#: Fields of TrainConfig that do not change what a resumed run computes.
#: Kubernetes job kinds of ``launch.backend`` (anything else is torchrun on this machine).
KUBERNETES_BACKENDS = ("trainjob", "pytorchjob")


@dataclass
class KubernetesConfig:
    """``launch.kubernetes``: the job the train step submits with ``backend: trainjob | pytorchjob``."""

    namespace: str = "kubeflow"
    #: Container image of the pods (default: the project's image, see mccl_core.launch.image).
    image: str = ""
    accelerator_type: str = "nvidia.com/gpu"
    accelerators_per_node: int = 1
    #: S3 prefix the inputs and outputs travel through; each run gets its own key below it.
    staging_uri: str = "s3://mccl-pipeline/staging"
    #: Kubernetes secret with the AWS_* variables (S3 staging, MLflow artifacts).
    credentials_secret: str = "mccl-s3-credentials"
    cpu: str = "8"
    memory: str = "32Gi"
    #: ClusterTrainingRuntime a TrainJob runs on (Kubeflow Trainer v2's stock one by default).
    runtime: str = "torch-distributed"
    #: Seconds between node 0's checkpoint uploads (a restarted pod resumes the last upload).
    checkpoint_upload_s: float = 30.0


@dataclass
class LaunchConfig:
    """The ``launch`` section: how many training processes, on how many nodes, started how.

    ``backend: torchrun`` (the default: ``dvc repro`` on a laptop) starts ``nproc_per_node``
    processes here (``nnodes > 1`` on bare machines needs ``rdzv_endpoint``, the host:port of
    node 0). ``backend: trainjob`` submits a Kubeflow Trainer v2 TrainJob, ``backend: pytorchjob``
    a Training Operator v1 PyTorchJob (>= 2 nodes), of ``nnodes`` pods x ``nproc_per_node``
    processes (settings in ``kubernetes``); every pod runs this same step with the torchrun backend.
    """

    backend: Literal["torchrun", "trainjob", "pytorchjob"] = "torchrun"
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""
    #: ``c10d`` (elastic: ranks by arrival) or ``static`` (rank = node_rank: what the pods use,
    #: so global rank 0 - the writer of checkpoints and bundle - is on node 0).
    rdzv_backend: Literal["c10d", "static"] = "c10d"
    #: Extra environment for the training processes (e.g. ``OMP_NUM_THREADS``).
    env: dict[str, str] | None = None
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise ConfigError(
                f"launch.nproc_per_node and launch.nnodes must be >= 1, got {self.nproc_per_node}, {self.nnodes}"
            )
        if self.backend == "torchrun" and self.nnodes > 1 and not self.rdzv_endpoint:
            raise ConfigError("launch.nnodes > 1 with the torchrun backend needs launch.rdzv_endpoint (host:port of node 0); "
                              "on Kubernetes use launch.backend: trainjob (or pytorchjob)")  # fmt: skip
        if self.backend == "pytorchjob" and self.nnodes < 2:
            raise ConfigError(f"launch.backend: pytorchjob is for >= 2 nodes, got launch.nnodes={self.nnodes}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LaunchConfig:
        return from_dict(cls, values, "launch")

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


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


def torchrun_command(launch: LaunchConfig, train_args: list[str]) -> list[str]:
    """``python -m torch.distributed.run ... -m mccl_core.training.cli <train_args>``.

    One process on one node runs the loop directly (``python -m mccl_core.training.cli``): the same
    code path without the elastic agent, whose workers live in their own session and would survive
    a SIGKILL of the pipeline (and race the re-run for the checkpoint).
    """
    if launch.nproc_per_node == 1 and launch.nnodes == 1:
        return [sys.executable, "-m", "mccl_core.training.cli", *train_args]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(launch.nproc_per_node)]
    if launch.nnodes == 1:
        command.append("--standalone")
    elif launch.rdzv_backend == "static":
        host, _, port = launch.rdzv_endpoint.rpartition(":")
        command += ["--nnodes", str(launch.nnodes), "--node_rank", str(launch.node_rank),
                    "--master_addr", host, "--master_port", port]  # fmt: skip
    else:
        command += ["--nnodes", str(launch.nnodes), "--node_rank", str(launch.node_rank),
                    "--rdzv_backend", "c10d", "--rdzv_endpoint", launch.rdzv_endpoint]  # fmt: skip
    return command + ["-m", "mccl_core.training.cli", *train_args]


def _fingerprint(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    validated: ValidatedData,
    inputs: TrainInputsPaths,
    launch: LaunchConfig,
) -> dict[str, Any]:
    files = {name: sha256_files([path]) for name, path in asdict(inputs).items() if path is not None}
    # World size matters: per-rank batches and data order change with it.
    return training_fingerprint(model_cfg, train_cfg, validated.data_hash, inputs=files, world_size=launch.world_size)


def _prepare_resume(out_dir: Path, fingerprint: dict[str, Any]) -> bool:
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


def headline_and_timing(history: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """``(headline, timing)`` of a finished training: the last epoch's losses and validation
    scores (deterministic: ``metrics/train.json``), and the wall-clock facts of this run."""
    from mccl_core.training.loop import EpochRecord

    if not history:
        return {}, {}
    last = EpochRecord(**history[-1]).metrics()
    headline = {"epochs": float(len(history))}
    headline |= {k: float(last[k]) for k in ("train_loss", "val_macro_f1_split_tuned", "val_map") if k in last}
    seconds = sum(float(r.get("seconds") or 0.0) for r in history)
    images = sum(float(r.get("seconds") or 0.0) * float(r.get("images_per_second") or 0.0) for r in history)
    timing = {"train_seconds": seconds, "train_images_per_second": images / seconds if seconds else 0.0}
    return headline, timing


def write_curves(path: Path, history: list[dict[str, Any]]) -> Path:
    """The per-epoch curves as CSV, timings left out (they differ per run and would change dvc.lock)."""
    import csv
    import io

    from mccl_core.training.loop import EpochRecord

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CURVE_COLUMNS)
    for record in history:
        values = {"epoch": int(record["epoch"]), **EpochRecord(**record).metrics()}
        writer.writerow(["" if values.get(c) is None else repr(values[c]) if isinstance(values[c], float) else values[c]
                         for c in CURVE_COLUMNS])  # fmt: skip
    return write_text(path, buffer.getvalue())


def _backfill_epochs(run: StepTracking, history: list[dict[str, Any]]) -> int:
    """Log epochs of ``history`` that this MLflow run lacks (finished before a crash), and give
    the parent run every epoch's curves (the training processes log live to the step run only)."""
    if run.tracker is None or run.run_id is None:
        return 0
    from mccl_core.training.loop import EpochRecord

    try:
        logged = {m.step for m in run.tracker.client.get_metric_history(run.run_id, "train_loss")}
    except Exception as error:  # noqa: BLE001 - an unreachable server: the tracker journals below
        log.debug("cannot read metric history: %s", error)
        logged = set()
    missing = 0
    for record in history:
        epoch, metrics = int(record["epoch"]), EpochRecord(**record).metrics()
        if epoch in logged:
            run.log_parent_metrics(metrics, step=epoch)
        else:
            run.log_metrics(metrics, step=epoch)  # a series: reaches the parent too
            missing += 1
    return missing


#: ``submit(manifest)``: create a Kubernetes job and return once it succeeded (raise if it failed).
Submitter = Callable[[dict[str, Any]], Any]


def run_train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    launch: LaunchConfig,
    validated: ValidatedData,
    inputs: TrainInputsPaths,
    out_dir: Path,
    tracking: TrackingOptions | None = None,
    all_params: dict[str, Any] | None = None,
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
        return _run_train_locked(model_cfg, train_cfg, launch, validated, inputs, out_dir, tracking, all_params,
                                 submit, lock)  # fmt: skip
    finally:
        lock.release()


def _run_train_locked(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    launch: LaunchConfig,
    validated: ValidatedData,
    inputs: TrainInputsPaths,
    out_dir: Path,
    tracking: TrackingOptions | None,
    all_params: dict[str, Any] | None,
    submit: Submitter | None,
    lock: TrainerLock,
) -> TrainStepResult:
    train_cfg.output_dir = out_dir
    resolved = {"data": validated.data.to_dict(), "model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
    # Absolute paths: the training processes may run in another working directory.
    resolved["data"]["root"] = str(Path(resolved["data"]["root"]).resolve())
    resolved["data"]["annotations"] = {k: str(Path(v).resolve()) for k, v in resolved["data"]["annotations"].items()}
    params_path = write_text(out_dir / RESOLVED_PARAMS_FILE, yaml.safe_dump(resolved, sort_keys=False))
    fingerprint = _fingerprint(model_cfg, train_cfg, validated, inputs, launch)
    kubernetes = launch.backend in KUBERNETES_BACKENDS
    # The job's pods run the guard against their own staged checkpoints; here nothing resumes.
    resumable = False if kubernetes else _prepare_resume(out_dir, fingerprint)
    params = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "launch": to_plain(launch)}

    with tracked_step("train", tracking, params, all_params, validated.data_hash) as run:
        run.log_artifact(params_path, "config")
        train_args = [
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
                train_args += [flag, str(Path(path).resolve())]
        if not resumable:
            train_args.append("--no-resume")
        if kubernetes:
            history, final, output = _launch_kubernetes(launch, validated, inputs, out_dir, resolved, fingerprint,
                                                        run, submit)  # fmt: skip
        else:
            history, final, output = _launch_torchrun(launch, train_args, run, out_dir, lock.fd)
        backfilled = _backfill_epochs(run, history)
        if backfilled:
            log.info("logged %d epochs finished before the restart to MLflow", backfilled)
        if (out_dir / HISTORY_FILE).is_file():
            run.log_artifact(out_dir / HISTORY_FILE, "train")
        if history:
            write_curves(out_dir / CURVES_FILE, history)
            headline, timing = headline_and_timing(history)
            # The last epoch's losses and scores are the ends of the parent's curves already.
            run.log_headline({"epochs": headline["epochs"], **timing})
        resumed = any("resumed from" in line for line in output)
        run.set_tags({"mccl.train.resumed": str(resumed).lower()})
        return TrainStepResult(out_dir / MODEL_DIR, history, final, resumed, run.run_id, run.parent_run_id)


def _launch_torchrun(
    launch: LaunchConfig, train_args: list[str], run: StepTracking, out_dir: Path, lock_fd: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """The training processes on this machine (``torchrun``, or one plain process), supervised.

    They run in their own process group, die with this step and inherit the trainer lock. On a
    node other than 0 (multi-node) only global rank 0's node writes history and bundle: empty here.
    """
    from mccl_core.launch.supervise import run_streaming

    env = dict(os.environ)
    env.update(launch.env or {})
    if run.run_id is not None and run.tracker is not None:
        train_args = [*train_args, "--mlflow-run-id", run.run_id]
        env["MLFLOW_TRACKING_URI"] = run.tracker.tracking_uri
    command = torchrun_command(launch, train_args)
    log.info("launching: %s", " ".join(command))
    env.setdefault("TQDM_MININTERVAL", "5")  # progress lines in logs, not a flood
    if lock_fd is not None:  # the trainer holds the step's lock instead of locking against it
        env.update(handover_env(lock_fd))
    returncode, output = run_streaming(command, env, pass_fds=(lock_fd,) if lock_fd is not None else ())
    if returncode != 0:
        raise training_failure(returncode, output, out_dir / CHECKPOINT_DIR / "last.pt")
    if launch.node_rank != 0:
        return [], {}, output
    history = json.loads((out_dir / HISTORY_FILE).read_text())
    final = json.loads((out_dir / SUMMARY_FILE).read_text())
    return history, final, output


def training_failure(returncode: int, output: list[str], last: Path) -> StepError:
    """The step's error for a failed training process.

    When the trainer reported an error a person must resolve (its one ``mccl train: ...`` line: a
    refused or unreadable checkpoint, a busy folder), that line is the error - re-running would
    hit it again, so no "re-run resumes" hint and no second copy of the output. Otherwise (a
    crash) the output's tail, and re-running resumes from ``last`` if an epoch finished.
    """
    reported = [line for line in output if line.startswith(TRAINER_ERROR_PREFIX)]
    if reported:
        return StepError(f"training stopped (exit code {returncode}): {reported[-1][len(TRAINER_ERROR_PREFIX) :]}")
    return StepError(
        f"training failed (exit code {returncode}); re-running the step resumes from {last} if an epoch "
        "finished. Last output:\n" + "\n".join(output[-40:])
    )


def staging_key(fingerprint: dict[str, Any]) -> str:
    """The run's own staging key: runs with other inputs or params never share a prefix."""
    return sha256_of(fingerprint)[:16]


def _launch_kubernetes(
    launch: LaunchConfig,
    validated: ValidatedData,
    inputs: TrainInputsPaths,
    out_dir: Path,
    resolved: dict[str, Any],
    fingerprint: dict[str, Any],
    run: StepTracking,
    submit: Submitter | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Stage the inputs to S3, run a TrainJob / PyTorchJob whose pods run this step, fetch the outputs."""
    import shutil
    import tempfile

    from mccl_core.launch import pytorchjob, trainjob
    from mccl_core.launch.image import pipeline_image
    from mccl_core.launch.kube import NodeJobConfig
    from mccl_core.launch.node import PARAMS_FILE
    from mccl_core.launch.staging import download_prefix, upload_dir

    k8s = launch.kubernetes
    key = staging_key(fingerprint)
    staging = f"{k8s.staging_uri.rstrip('/')}/{key}"
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        handle_dir = staged / "validate"
        folders: dict[str, Path] = {}
        if validated.data.source == "demo" and validated.data.root.is_dir():
            shutil.copytree(validated.data.root, staged / "demo")
            folders["demo"] = staged / "demo"
        moved = ValidatedData(
            data=replace(validated.data, root=folders.get("demo", validated.data.root),
                         annotations={s: handle_dir / "annotations" / Path(p).name for s, p in validated.data.annotations.items()}),
            source=validated.source, splits=validated.splits, data_hash=validated.data_hash, counts=validated.counts,
        )  # fmt: skip
        for split, path in validated.data.annotations.items():
            (handle_dir / "annotations").mkdir(parents=True, exist_ok=True)
            shutil.copy(path, moved.data.annotations[split])
        moved.save(handle_dir / VALIDATED_DATA_FILE, folders)
        for folder, upstream in (
            ("extract", inputs.backbone_init),
            ("cluster", inputs.prototypes),
            ("cluster", inputs.label_embeddings),
        ):
            if upstream is not None:
                (staged / folder).mkdir(exist_ok=True)
                shutil.copy(upstream, staged / folder / Path(upstream).name)
        params = {"model": resolved["model"], "train": {**resolved["train"], "output_dir": "outputs"},
                  "launch": {"env": launch.env}}  # fmt: skip
        write_text(staged / PARAMS_FILE, yaml.safe_dump(params, sort_keys=False))
        upload_dir(staged, f"{staging}/inputs")
    job = NodeJobConfig(
        name=f"mccl-train-{key}", namespace=k8s.namespace, image=k8s.image or pipeline_image(),
        num_nodes=launch.nnodes, nproc_per_node=launch.nproc_per_node, accelerator_type=k8s.accelerator_type,
        accelerators_per_node=k8s.accelerators_per_node, staging_uri=staging,
        mlflow_tracking_uri=run.tracker.tracking_uri if run.tracker is not None else "",
        credentials_secret=k8s.credentials_secret, cpu=k8s.cpu, memory=k8s.memory,
        upload_interval_s=k8s.checkpoint_upload_s,
    )  # fmt: skip
    if launch.backend == "pytorchjob":
        manifest = pytorchjob.build_pytorchjob(job)
        (submit or pytorchjob.submit)(manifest)
    else:
        manifest = trainjob.build_trainjob(job, runtime=k8s.runtime)
        (submit or trainjob.submit)(manifest)
    download_prefix(f"{staging}/outputs", out_dir)
    history = json.loads((out_dir / HISTORY_FILE).read_text())
    final = json.loads((out_dir / SUMMARY_FILE).read_text())
    log.info("%s %s trained %d epochs", manifest["kind"], manifest["metadata"]["name"], len(history))
    return history, final, []


# ------------------------------------------------------------------------------- step contract


@dataclass(frozen=True)
class TrainParams:
    """Sections ``model``, ``train`` and ``launch``."""

    model: ModelConfig
    train: TrainConfig
    launch: LaunchConfig

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainParams:
        return cls(ModelConfig.from_dict(section(params, "model")), TrainConfig.from_dict(section(params, "train")),
                   LaunchConfig.from_dict(section(params, "launch", required=False)))  # fmt: skip


def run(inputs: Mapping[str, Path], out_dir: Path, config: TrainParams, tracking: TrackingOptions) -> StepOutcome:
    from mccl_core.steps.cluster import EMBEDDINGS_FILE, PROTOTYPES_FILE
    from mccl_core.steps.extract import BACKBONE_INIT_FILE

    validated = ValidatedData.load(inputs["validate"], folders=inputs)
    paths = TrainInputsPaths(Path(inputs["cluster"]) / PROTOTYPES_FILE, Path(inputs["extract"]) / BACKBONE_INIT_FILE,
                             Path(inputs["cluster"]) / EMBEDDINGS_FILE)  # fmt: skip
    all_params = {"model": config.model.to_dict(), "train": config.train.to_dict(), "launch": to_plain(config.launch)}
    result = run_train(config.model, config.train, config.launch, validated, paths, out_dir, tracking, all_params)
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
    inputs=(
        StepInput("validate", reads=(VALIDATED_DATA_FILE, VALIDATED_ANNOTATIONS_DIR)),
        StepInput("extract", reads=("backbone_init.pt",)),
        StepInput("cluster", reads=("prototypes.safetensors", "label_embeddings.npz")),
        StepInput("demo", reads=(".",), optional=True),
    ),
    output_kind="Model",
    load_config=TrainParams.from_params,
    run=run,
    cacheable=False,
)
