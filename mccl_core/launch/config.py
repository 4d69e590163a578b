"""The ``launch`` section: how many training processes, on how many nodes, started how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mccl_core.config import ConfigError, from_dict

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

    @property
    def on_kubernetes(self) -> bool:
        return self.backend in KUBERNETES_BACKENDS
