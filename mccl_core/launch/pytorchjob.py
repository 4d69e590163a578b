"""Multi-node training as a Kubeflow Training Operator v1 ``PyTorchJob`` (``kubeflow.org/v1``).

Why it stays: Kubeflow removed the Training Operator v1 upstream in February 2025 in favour of
Kubeflow Trainer v2's ``TrainJob`` (:mod:`mccl_core.launch.trainjob`, the default), but clusters
still running v1 keep working with ``launch.backend: pytorchjob``. The manifest is built from the
same parameters (image, nodes, processes and accelerators per node) and its pods run the same
entry point, :mod:`mccl_core.steps.pod` (``python -m mccl_core.launch.pytorchjob`` and ``python -m
mccl_core.launch.node`` still run it, for manifests built by earlier versions).
"""

from __future__ import annotations

from typing import Any

from mccl_core.launch.kube import WORKSPACE, NodeJobConfig, finished_state, submit_and_wait
from mccl_core.launch.node import PARAMS_FILE, launch_from_env

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
PLURAL = "pytorchjobs"
CONTAINER_NAME = "pytorch"  # the Training Operator requires this container name

__all__ = ["PARAMS_FILE", "PyTorchJobConfig", "build_pytorchjob", "job_state", "launch_from_env", "submit"]


class PyTorchJobConfig(NodeJobConfig):
    """:class:`NodeJobConfig` for a PyTorchJob: at least 2 nodes (1 master + workers)."""

    def __post_init__(self) -> None:
        if self.num_nodes < 2:
            raise ValueError(f"a PyTorchJob is for >= 2 nodes, got num_nodes={self.num_nodes}")
        super().__post_init__()


def _replica(cfg: NodeJobConfig, replicas: int) -> dict[str, Any]:
    return {
        "replicas": replicas,
        "restartPolicy": "OnFailure",
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": CONTAINER_NAME,
                        "image": cfg.image,
                        "command": cfg.command(),
                        "env": cfg.env(secret_as_env=False),
                        "envFrom": [{"secretRef": {"name": cfg.credentials_secret, "optional": True}}],
                        "resources": cfg.resources(),
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


def build_pytorchjob(cfg: NodeJobConfig) -> dict[str, Any]:
    """The PyTorchJob manifest: 1 master + (num_nodes - 1) workers, ``nprocPerNode`` each."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": cfg.metadata(),
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
    return finished_state(job, ("Succeeded",), ("Failed",))


def submit(manifest: dict[str, Any], poll_s: float = 30.0) -> dict[str, Any]:
    """Create the PyTorchJob in this cluster and wait for it (raises when it fails)."""
    return submit_and_wait(manifest, PLURAL, job_state, poll_s=poll_s)


if __name__ == "__main__":
    # Manifests built by earlier versions start their pods with this module: run the pod program
    # (by name: the launchers sit below the steps and do not import them).
    import runpy

    runpy.run_module("mccl_core.steps.pod", run_name="__main__", alter_sys=True)
