"""Multi-node training as a Kubeflow Training Operator ``PyTorchJob``.

Why an operator: once one machine is not enough, starting, restarting and wiring several
torchrun nodes together is what the Training Operator already does well. The pipeline's train
step therefore becomes a PyTorchJob when more than one node is asked for; the manifest is built
here from the same parameters (image, nodes, processes and accelerators per node).

Data flow: the launcher (a pipeline component) uploads the train inputs to
``<staging_uri>/inputs`` (see :mod:`pipeline.staging`); each pod runs :func:`node_main`
(``python -m pipeline.pytorchjob``), which downloads them and runs ``torchrun`` - the operator
sets ``PET_NNODES``/``PET_NPROC_PER_NODE``/``PET_NODE_RANK``/``PET_MASTER_ADDR``/``PET_MASTER_PORT``,
which torchrun reads - and node 0 uploads the model bundle and its checkpoint to
``<staging_uri>/outputs``. A restarted job downloads that checkpoint first and resumes.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER_NAME = "pytorch"  # the Training Operator requires this container name
WORKSPACE = "/workspace"


@dataclass
class PyTorchJobConfig:
    """Everything the manifest depends on (all of it pipeline parameters or derived from them)."""

    name: str
    namespace: str
    image: str
    num_nodes: int
    nproc_per_node: int
    accelerator_type: str
    accelerators_per_node: int
    staging_uri: str
    mlflow_tracking_uri: str = ""
    mlflow_run_id: str = ""
    #: Kubernetes secret with AWS_* variables (S3 staging, MLflow artifacts); never baked in.
    credentials_secret: str = "mccl-s3-credentials"
    cpu: str = "8"
    memory: str = "32Gi"
    backoff_limit: int = 3
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_nodes < 2:
            raise ValueError(f"a PyTorchJob is for >= 2 nodes, got num_nodes={self.num_nodes}")
        if self.nproc_per_node < 1 or self.accelerators_per_node < 0:
            raise ValueError("nproc_per_node must be >= 1 and accelerators_per_node >= 0")
        if not self.staging_uri.startswith(("s3://", "minio://")):
            raise ValueError(f"staging_uri must be an s3:// (or minio://) prefix, got {self.staging_uri!r}")


def _replica(cfg: PyTorchJobConfig, replicas: int) -> dict[str, Any]:
    resources: dict[str, Any] = {"cpu": cfg.cpu, "memory": cfg.memory}
    limits = dict(resources)
    if cfg.accelerators_per_node:
        limits[cfg.accelerator_type] = str(cfg.accelerators_per_node)
    env = [{"name": "MLFLOW_TRACKING_URI", "value": cfg.mlflow_tracking_uri}] if cfg.mlflow_tracking_uri else []
    env += [{"name": k, "value": v} for k, v in sorted(cfg.extra_env.items())]
    command = ["python", "-m", "pipeline.pytorchjob", "--staging-uri", cfg.staging_uri, "--workspace", WORKSPACE]
    if cfg.mlflow_run_id:
        command += ["--mlflow-run-id", cfg.mlflow_run_id]
    return {
        "replicas": replicas,
        "restartPolicy": "OnFailure",
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": CONTAINER_NAME,
                        "image": cfg.image,
                        "command": command,
                        "env": env,
                        "envFrom": [{"secretRef": {"name": cfg.credentials_secret, "optional": True}}],
                        "resources": {"requests": resources, "limits": limits},
                        "volumeMounts": [{"name": "workspace", "mountPath": WORKSPACE},
                                         {"name": "dshm", "mountPath": "/dev/shm"}],
                    }
                ],
                "volumes": [{"name": "workspace", "emptyDir": {}},
                            {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
            }
        },
    }


def build_pytorchjob(cfg: PyTorchJobConfig) -> dict[str, Any]:
    """The PyTorchJob manifest: 1 master + (num_nodes - 1) workers, ``nprocPerNode`` each."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": cfg.name, "namespace": cfg.namespace, "labels": {"app.kubernetes.io/part-of": "mccl-pipeline"}},
        "spec": {
            "nprocPerNode": str(cfg.nproc_per_node),
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": cfg.backoff_limit},
            "pytorchReplicaSpecs": {
                "Master": _replica(cfg, 1),
                "Worker": _replica(cfg, cfg.num_nodes - 1),
            },
        },
    }


def job_state(job: dict[str, Any]) -> str | None:
    """``Succeeded`` / ``Failed`` once the job finished, else ``None``."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Succeeded", "Failed"):
            return str(condition["type"])
    return None


def submit_and_wait(manifest: dict[str, Any], poll_s: float = 30.0, timeout_s: float = 7 * 24 * 3600) -> dict[str, Any]:
    """Create the PyTorchJob (in-cluster credentials) and wait until it succeeds; raise if it fails."""
    from kubernetes import client, config

    config.load_incluster_config()
    api = client.CustomObjectsApi()
    group, version = API_VERSION.split("/")
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    api.create_namespaced_custom_object(group, version, namespace, "pytorchjobs", manifest)
    log.info("created PyTorchJob %s/%s", namespace, name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = api.get_namespaced_custom_object(group, version, namespace, "pytorchjobs", name)
        state = job_state(job)
        if state == "Succeeded":
            return job
        if state == "Failed":
            raise RuntimeError(f"PyTorchJob {namespace}/{name} failed: {job.get('status')}")
        time.sleep(poll_s)
    raise TimeoutError(f"PyTorchJob {namespace}/{name} did not finish within {timeout_s} s")


# ------------------------------------------------------------------------------- in the pods


def node_command(workspace: Path, mlflow_run_id: str = "") -> list[str]:
    """torchrun over the staged inputs; nodes/ranks/master come from the operator's PET_* env."""
    inputs = workspace / "inputs"
    command = [
        sys.executable, "-m", "torch.distributed.run", "-m", "mccl_core.training.cli",
        "--params", str(inputs / "resolved_params.yaml"),
        "--prototypes", str(inputs / "prototypes.safetensors"),
        "--backbone-init", str(inputs / "backbone_init.pt"),
        "--label-embeddings", str(inputs / "label_embeddings.npz"),
        "--output-dir", str(workspace / "outputs"),
        "--summary-json", str(workspace / "outputs" / "metrics.json"),
    ]  # fmt: skip
    if mlflow_run_id:
        command += ["--mlflow-run-id", mlflow_run_id]
    return command


def node_main(argv: list[str] | None = None) -> int:
    """Entry point of every PyTorchJob pod (``python -m pipeline.pytorchjob``)."""
    from pipeline.staging import download_prefix, upload_dir

    parser = argparse.ArgumentParser(prog="python -m pipeline.pytorchjob", description=node_main.__doc__)
    parser.add_argument("--staging-uri", required=True)
    parser.add_argument("--workspace", type=Path, default=Path(WORKSPACE))
    parser.add_argument("--mlflow-run-id", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workspace = args.workspace
    download_prefix(f"{args.staging_uri.rstrip('/')}/inputs", workspace / "inputs")
    # A restarted job resumes: node 0 uploaded the checkpoint of the last finished run.
    download_prefix(f"{args.staging_uri.rstrip('/')}/outputs/checkpoints", workspace / "outputs" / "checkpoints")
    resolved = workspace / "inputs" / "resolved_params.yaml"
    _relocate_params(resolved, workspace)
    returncode = subprocess.call(node_command(workspace, args.mlflow_run_id))
    node_rank = int(os.environ.get("PET_NODE_RANK", os.environ.get("RANK", "0")))
    if returncode == 0 and node_rank == 0:
        upload_dir(workspace / "outputs", f"{args.staging_uri.rstrip('/')}/outputs")
    return returncode


def _relocate_params(path: Path, workspace: Path) -> None:
    """Point the staged params at the staged data (the launcher wrote paths relative to inputs/)."""
    import yaml

    params = yaml.safe_load(path.read_text())
    data = params["data"]
    base = workspace / "inputs"
    data["root"] = str(base / data["root"])
    data["annotations"] = {k: str(base / v) for k, v in (data.get("annotations") or {}).items()}
    params["train"]["output_dir"] = str(workspace / "outputs")
    path.write_text(yaml.safe_dump(params, sort_keys=False))


if __name__ == "__main__":
    raise SystemExit(node_main())
