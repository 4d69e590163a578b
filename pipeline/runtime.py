"""What the Kubeflow components execute: thin adapters from KFP artifacts to :mod:`mccl_core.steps`.

Kept in the installed package (not in the component source) so the components stay a few lines
and every step runs the very same library function under KFP, DVC and the CLI.

MLflow under Kubeflow: validate/extract/cluster are cached (deterministic, possibly expensive),
so they cannot take the per-run parent id as an input (it would defeat the cache). They log a
step run of their own and return its id; the train step - the first uncached one - starts the
pipeline's parent run, adopts those step runs (if they ran in this execution) and hands the
parent id to evaluate and register.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from mccl_core.steps.common import VALIDATED_DATA_FILE, ValidatedData, configure_logging
from mccl_core.steps.tracking import TrackingOptions

log = logging.getLogger(__name__)


def tracking_options(tracking_uri: str, parent_run_id: str = "", start_parent: bool = False) -> TrackingOptions:
    configure_logging()
    return TrackingOptions(
        enabled=True,
        project_dir=Path.cwd(),
        tracking_uri=tracking_uri or None,
        parent_run_id=parent_run_id or None,
        run_ref=None,
        create_parent=False,
        start_parent=start_parent,
    )


def _all_params(**sections: dict[str, Any]) -> dict[str, Any]:
    return {k: dict(v) for k, v in sections.items()}


def plain(value: Any) -> Any:
    """KFP passes dict parameters as protobuf Structs, whose numbers are all floats: turn integral
    floats back into ints (``epochs: 8.0`` -> 8) so the config dataclasses get what params.yaml says."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def validate(demo: dict, data: dict, validate_params: dict, data_root: str, tracking_uri: str,
             out_dir: str) -> tuple[str, dict[str, Any], str]:  # fmt: skip
    """Returns (step run id, counts, Markdown summary). Demo data is generated into ``out_dir``."""
    demo, data, validate_params = plain(demo), plain(data), plain(validate_params)
    from mccl_core.data import DataConfig
    from mccl_core.steps.demo import run_demo
    from mccl_core.steps.validate import SUMMARY_FILE, ValidateConfig, run_validate

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = dict(data)
    if data_root:
        data["root"] = data_root
    elif data.get("source") == "demo":
        # Under Kubeflow the demo images travel inside this step's Dataset artifact.
        data["root"] = str(run_demo(demo, out / "demo"))
    result = run_validate(
        ValidateConfig.from_dict(validate_params), DataConfig.from_dict(data), out,
        tracking_options(tracking_uri), all_params=_all_params(demo=demo, data=data, validate=validate_params),
    )  # fmt: skip
    return result.mlflow_run_id or "", dict(result.validated.counts), (out / SUMMARY_FILE).read_text()


def extract(extract_params: dict, model: dict, train: dict, validated_dir: str, tracking_uri: str,
            features_dir: str, backbone_init_path: str) -> tuple[str, dict[str, Any]]:  # fmt: skip
    extract_params, model, train = plain(extract_params), plain(model), plain(train)
    from mccl_core.models import ModelConfig
    from mccl_core.steps.extract import ExtractStepConfig, run_extract
    from mccl_core.training.config import TrainConfig

    train_cfg = TrainConfig.from_dict(train)
    work = Path(features_dir)
    result = run_extract(
        ExtractStepConfig.from_dict(extract_params), ValidatedData.load(Path(validated_dir)),
        ModelConfig.from_dict(model), train_cfg.image_size, train_cfg.seed, work,
        tracking_options(tracking_uri), all_params=_all_params(extract=extract_params, model=model, train=train),
    )  # fmt: skip
    Path(backbone_init_path).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(result.backbone_init), backbone_init_path)
    return result.mlflow_run_id or "", result.summary


def cluster(cluster_params: dict, model: dict, validated_dir: str, features_dir: str, tracking_uri: str,
            out_dir: str) -> tuple[str, str]:  # fmt: skip
    """Returns (step run id, allocation table as Markdown)."""
    cluster_params, model = plain(cluster_params), plain(model)
    from mccl_core.models import ModelConfig
    from mccl_core.steps.cluster import ClusterStepConfig, run_cluster

    result = run_cluster(
        ClusterStepConfig.from_dict(cluster_params), ValidatedData.load(Path(validated_dir)),
        ModelConfig.from_dict(model), Path(features_dir) / "features", Path(out_dir),
        tracking_options(tracking_uri), all_params=_all_params(cluster=cluster_params, model=model),
    )  # fmt: skip
    return result.mlflow_run_id or "", result.allocation_md.read_text()


def train(model: dict, train_params: dict, launch: dict, nproc_per_node: int, validated_dir: str,
          cluster_dir: str, backbone_init_path: str, tracking_uri: str, upstream_run_ids: list[str],
          out_dir: str) -> tuple[str, str, dict[str, float]]:  # fmt: skip
    """Returns (step run id, parent run id, final-epoch metrics)."""
    model, train_params, launch = plain(model), plain(train_params), plain(launch)
    from mccl_core.models import ModelConfig
    from mccl_core.steps.tracking import StepTracking, adopt_runs
    from mccl_core.steps.train import LaunchConfig, TrainInputsPaths, run_train
    from mccl_core.training.config import TrainConfig

    launch_values = {**launch, "nproc_per_node": int(nproc_per_node)}
    options = tracking_options(tracking_uri, start_parent=True)
    cluster_path = Path(cluster_dir)
    result = run_train(
        ModelConfig.from_dict(model), TrainConfig.from_dict(train_params), LaunchConfig.from_dict(launch_values),
        ValidatedData.load(Path(validated_dir)),
        TrainInputsPaths(cluster_path / "prototypes.safetensors", Path(backbone_init_path), cluster_path / "label_embeddings.npz"),
        Path(out_dir), options, all_params=_all_params(model=model, train=train_params, launch=launch_values),
    )  # fmt: skip
    if result.parent_run_id:
        from mccl_core.tracking import ResilientTracker, RunHandle

        with ResilientTracker(options.tracker_config()) as tracker:
            parent = RunHandle(local_id="parent", name="pipeline", run_id=result.parent_run_id, ended=True)
            adopted = adopt_runs(StepTracking(tracker, None, parent), upstream_run_ids)
            log.info("adopted upstream step runs %s under parent %s", adopted, result.parent_run_id)
    return result.mlflow_run_id or "", result.parent_run_id or "", dict(result.final_metrics)


def evaluate(evaluate_params: dict, validated_dir: str, model_dir: str, tracking_uri: str, parent_run_id: str,
             out_dir: str) -> tuple[dict[str, Any], str]:  # fmt: skip
    """Returns (compact metrics, an HTML report with the plots embedded)."""
    evaluate_params = plain(evaluate_params)
    from mccl_core.steps.evaluate import EvaluateConfig, run_evaluate

    result = run_evaluate(
        EvaluateConfig.from_dict(evaluate_params), ValidatedData.load(Path(validated_dir)), bundle_dir(model_dir),
        Path(out_dir), tracking_options(tracking_uri, parent_run_id), all_params=_all_params(evaluate=evaluate_params),
    )  # fmt: skip
    return result.metrics, evaluation_html(result.metrics, result.plot_paths)


def bundle_dir(trained_model_dir: str) -> Path:
    """The model bundle inside a train step's output folder (``<out>/model``)."""
    path = Path(trained_model_dir)
    return path / "model" if (path / "model" / "bundle.json").is_file() else path


def evaluation_html(metrics: dict[str, Any], plots: list[Path]) -> str:
    import base64
    import html

    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" if isinstance(v, float) else
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in metrics.items()
    )  # fmt: skip
    images = "".join(
        f'<h3>{html.escape(p.stem)}</h3><img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"/>'
        for p in plots
    )
    return f"<html><body><h2>MCCL evaluation</h2><table border='1'>{rows}</table>{images}</body></html>"


def register(register_params: dict, model_dir: str, evaluation_dir: str, tracking_uri: str, parent_run_id: str,
             out_dir: str) -> tuple[str, bool, str]:  # fmt: skip
    """Returns (registered version, promoted, reason)."""
    register_params = plain(register_params)
    from mccl_core.steps.register import RegisterConfig, run_register

    result = run_register(
        RegisterConfig.from_dict(register_params), bundle_dir(model_dir), Path(evaluation_dir) / "metrics.json",
        Path(out_dir), tracking_options(tracking_uri, parent_run_id), all_params=_all_params(register=register_params),
    )  # fmt: skip
    return result.version, result.promoted, result.reason


def train_multinode(model: dict, train_params: dict, launch: dict, num_nodes: int, nproc_per_node: int,
                    accelerator_type: str, accelerators_per_node: int, image: str, namespace: str,
                    staging_uri: str, job_name: str, validated_dir: str, cluster_dir: str,
                    backbone_init_path: str, tracking_uri: str, out_dir: str) -> tuple[str, str]:  # fmt: skip
    """Stage the inputs to S3, run a PyTorchJob, fetch the bundle. Returns (parent run id, job name)."""
    model, train_params, launch = plain(model), plain(train_params), plain(launch)
    import tempfile

    import yaml

    from mccl_core.steps.tracking import tracked_step
    from pipeline.pytorchjob import PyTorchJobConfig, build_pytorchjob, submit_and_wait
    from pipeline.staging import download_prefix, upload_dir

    validated = ValidatedData.load(Path(validated_dir))
    options = tracking_options(tracking_uri, start_parent=True)
    with tracked_step("train", options, {"model": model, "train": train_params}, None, validated.data_hash) as run, \
            tempfile.TemporaryDirectory() as tmp:  # fmt: skip
        staging = Path(tmp)
        data_dir = staging / "data"
        shutil.copytree(validated_dir, data_dir)
        handle = ValidatedData.load(data_dir)
        if not Path(handle.data.root).resolve().is_relative_to(data_dir.resolve()):
            shutil.copytree(handle.data.root, data_dir / "images")
            handle.data.root = data_dir / "images"
        resolved = {
            "data": {**handle.data.to_dict(),
                     "root": str(Path(handle.data.root).resolve().relative_to(staging.resolve())),
                     "annotations": {k: str(Path(v).resolve().relative_to(staging.resolve()))
                                     for k, v in handle.data.annotations.items()}},
            "model": model, "train": train_params,
        }  # fmt: skip
        (staging / "resolved_params.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        shutil.copy(Path(cluster_dir) / "prototypes.safetensors", staging / "prototypes.safetensors")
        shutil.copy(Path(cluster_dir) / "label_embeddings.npz", staging / "label_embeddings.npz")
        shutil.copy(backbone_init_path, staging / "backbone_init.pt")
        upload_dir(staging, f"{staging_uri.rstrip('/')}/inputs")
        manifest = build_pytorchjob(PyTorchJobConfig(
            name=job_name, namespace=namespace, image=image, num_nodes=int(num_nodes),
            nproc_per_node=int(nproc_per_node), accelerator_type=accelerator_type,
            accelerators_per_node=int(accelerators_per_node), staging_uri=staging_uri,
            mlflow_tracking_uri=tracking_uri, mlflow_run_id=run.run_id or "",
        ))  # fmt: skip
        run.log_params({"launch.num_nodes": num_nodes, "launch.nproc_per_node": nproc_per_node})
        submit_and_wait(manifest)
        download_prefix(f"{staging_uri.rstrip('/')}/outputs", Path(out_dir))
        history = json.loads((Path(out_dir) / "history.json").read_text())
        log.info("PyTorchJob %s trained %d epochs", job_name, len(history))
        return run.parent_run_id or "", job_name


__all__ = ["VALIDATED_DATA_FILE"]
