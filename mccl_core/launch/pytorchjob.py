"""Multi-node training as a Kubeflow Training Operator ``PyTorchJob``.

Why an operator: once one machine is not enough, starting, restarting and wiring several
torchrun nodes together is what the Training Operator already does well. The pipeline's train
step therefore becomes a PyTorchJob when more than one node is asked for; the manifest is built
here from the same parameters (image, nodes, processes and accelerators per node).

Data flow: the train step with ``launch.backend: pytorchjob`` (see
:func:`mccl_core.steps.train.run_train`) uploads its inputs and params to
``<staging>/inputs`` (the staging prefix is keyed by the fingerprint of the inputs, so two runs
never share one); every pod runs :func:`node_main` (``python -m mccl_core.launch.pytorchjob``),
which downloads them and runs **the train step itself** with the ``torchrun`` backend, its
nodes, rank and rendezvous taken from the ``PET_*`` environment the operator sets - the same
resume guard, the same loop. Node 0 uploads the outputs (bundle, history, checkpoint) to
``<staging>/outputs``; a restarted pod downloads that checkpoint first and resumes it when it
belongs to the same inputs.
"""

from __future__ import annotations

import argparse
import logging
import os
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
    command = [
        "python",
        "-m",
        "mccl_core.launch.pytorchjob",
        "--staging-uri",
        cfg.staging_uri,
        "--workspace",
        WORKSPACE,
    ]
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
                        "volumeMounts": [
                            {"name": "workspace", "mountPath": WORKSPACE},
                            {"name": "dshm", "mountPath": "/dev/shm"},
                        ],
                    }
                ],
                "volumes": [{"name": "workspace", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
            }
        },
    }


def build_pytorchjob(cfg: PyTorchJobConfig) -> dict[str, Any]:
    """The PyTorchJob manifest: 1 master + (num_nodes - 1) workers, ``nprocPerNode`` each."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": cfg.name,
            "namespace": cfg.namespace,
            "labels": {"app.kubernetes.io/part-of": "mccl-pipeline"},
        },
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

PARAMS_FILE = "params.yaml"


def launch_from_env(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``launch`` section of one pod, from what the Training Operator sets (``PET_*``)."""
    env = dict(os.environ if env is None else env)
    nnodes = int(env.get("PET_NNODES", "1").split(":")[-1])
    values: dict[str, Any] = {
        "backend": "torchrun",
        "nproc_per_node": int(env.get("PET_NPROC_PER_NODE", "1")),
        "nnodes": nnodes,
        "node_rank": int(env.get("PET_NODE_RANK", env.get("RANK", "0"))),
    }
    if nnodes > 1:
        values["rdzv_endpoint"] = (
            f"{env.get('PET_MASTER_ADDR', env.get('MASTER_ADDR', ''))}:{env.get('PET_MASTER_PORT', env.get('MASTER_PORT', '23456'))}"
        )
    return values


def node_main(argv: list[str] | None = None) -> int:
    """Entry point of every PyTorchJob pod: download the staged inputs, run the train step."""
    import yaml

    from mccl_core.launch.staging import download_prefix, upload_dir
    from mccl_core.steps.contract import run_step
    from mccl_core.steps.errors import StepError
    from mccl_core.tracking.steps import TrackingOptions

    parser = argparse.ArgumentParser(prog="python -m mccl_core.launch.pytorchjob", description=node_main.__doc__)
    parser.add_argument("--staging-uri", required=True, help="the run's staging prefix (inputs/, outputs/)")
    parser.add_argument("--workspace", type=Path, default=Path(WORKSPACE))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    staging, workspace = args.staging_uri.rstrip("/"), args.workspace
    inputs_dir, out_dir = workspace / "inputs", workspace / "outputs"
    download_prefix(f"{staging}/inputs", inputs_dir)
    # A restarted pod resumes from node 0's last upload (the step's guard checks it is ours).
    download_prefix(f"{staging}/outputs/checkpoints", out_dir / "checkpoints")
    params = yaml.safe_load((inputs_dir / PARAMS_FILE).read_text())
    params["launch"] = {**launch_from_env(), "env": (params.get("launch") or {}).get("env")}
    inputs = {
        name: inputs_dir / name for name in ("validate", "extract", "cluster", "demo") if (inputs_dir / name).is_dir()
    }
    try:
        # MLflow: the launcher owns the train run and back-fills the epochs from history.json.
        run_step("train", params, inputs, out_dir, TrackingOptions(enabled=False, project_dir=workspace))
    except (StepError, ValueError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    if launch_from_env()["node_rank"] == 0:
        upload_dir(out_dir, f"{staging}/outputs")
    return 0


if __name__ == "__main__":
    raise SystemExit(node_main())
