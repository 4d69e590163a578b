"""Multi-node training as a Kubeflow Trainer v2 ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``).

Why: Kubeflow removed the Training Operator v1 (``PyTorchJob``) in February 2025; its successor,
Kubeflow Trainer v2, runs a ``TrainJob`` against a cluster-wide runtime (here the stock
``torch-distributed`` ``ClusterTrainingRuntime``), which sets the ``PET_*`` environment
(``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``,
``PET_MASTER_PORT``) that torchrun - and :func:`mccl_core.launch.node.launch_from_env` - read.
The default Kubernetes kind of the train step (``launch.backend: trainjob``); the PyTorchJob
launcher (:mod:`mccl_core.launch.pytorchjob`) stays for clusters on Training Operator v1.

Every node runs ``python -m mccl_core.steps.pod`` (the train step itself), see that module.
"""

from __future__ import annotations

from typing import Any

from mccl_core.launch.kube import WORKSPACE, NodeJobConfig, finished_state, submit_and_wait

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
PLURAL = "trainjobs"
DEFAULT_RUNTIME = "torch-distributed"
#: The replicated job and container of the stock torch-distributed runtime that run the trainer.
RUNTIME_JOB = "trainer-node"
RUNTIME_CONTAINER = "trainer"


def build_trainjob(cfg: NodeJobConfig, runtime: str = DEFAULT_RUNTIME) -> dict[str, Any]:
    """The TrainJob manifest: ``num_nodes`` nodes x ``nproc_per_node`` processes, our entry point.

    Credentials: each AWS_* variable is an optional ``secretKeyRef`` of ``credentials_secret`` (the
    trainer's env has no ``envFrom``); the workspace and a memory-backed ``/dev/shm`` (DataLoader
    workers) come as ``podSpecOverrides`` of the runtime's trainer job.
    """
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": cfg.metadata(),
        "spec": {
            "runtimeRef": {"name": runtime, "kind": "ClusterTrainingRuntime", "apiGroup": "trainer.kubeflow.org"},
            "trainer": {
                "image": cfg.image,
                "command": cfg.command(),
                "env": cfg.env(secret_as_env=True),
                "numNodes": cfg.num_nodes,
                "numProcPerNode": cfg.nproc_per_node,
                "resourcesPerNode": cfg.resources(),
            },
            "podSpecOverrides": [
                {
                    "targetJobs": [{"name": RUNTIME_JOB}],
                    "volumes": [
                        {"name": "workspace", "emptyDir": {}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                    ],
                    "containers": [
                        {
                            "name": RUNTIME_CONTAINER,
                            "volumeMounts": [
                                {"name": "workspace", "mountPath": WORKSPACE},
                                {"name": "dshm", "mountPath": "/dev/shm"},
                            ],
                        }
                    ],
                }
            ],
        },
    }


def job_state(job: dict[str, Any]) -> str | None:
    """``Complete`` / ``Failed`` once the TrainJob finished, else ``None``."""
    return finished_state(job, ("Complete",), ("Failed",))


def submit(manifest: dict[str, Any], poll_s: float = 30.0) -> dict[str, Any]:
    """Create the TrainJob in this cluster and wait for it (raises when it fails)."""
    return submit_and_wait(manifest, PLURAL, job_state, poll_s=poll_s)
