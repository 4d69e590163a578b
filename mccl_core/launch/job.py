"""Training as a Kubernetes job: stage the inputs on S3, submit, wait, fetch the outputs.

The caller writes the folder the pods need (the inputs of the train step and a ``params.yaml``,
:data:`mccl_core.launch.node.PARAMS_FILE`); this module uploads it under the run's own staging
key, submits a Kubeflow Trainer v2 ``TrainJob`` or a Training Operator v1 ``PyTorchJob`` whose
pods run the train step (:mod:`mccl_core.steps.pod`), and downloads what node 0 uploaded.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mccl_core.launch.config import LaunchConfig

log = logging.getLogger(__name__)

#: ``submit(manifest)``: create a Kubernetes job and return once it succeeded (raise if it failed).
Submitter = Callable[[dict[str, Any]], Any]


def run_kubernetes_job(
    launch: LaunchConfig,
    key: str,
    stage_inputs: Callable[[Path], None],
    out_dir: Path,
    tracking_uri: str = "",
    submit: Submitter | None = None,
) -> dict[str, Any]:
    """Run one training job; returns its manifest once the outputs are in ``out_dir``.

    ``key``: the run's own staging key (runs with other inputs never share a prefix);
    ``stage_inputs(folder)``: writes what the pods download; ``submit`` replaces the in-cluster
    submission (tests run the pods locally).
    """
    from mccl_core.launch import pytorchjob, trainjob
    from mccl_core.launch.image import pipeline_image
    from mccl_core.launch.kube import NodeJobConfig
    from mccl_core.launch.staging import download_prefix, upload_dir

    k8s = launch.kubernetes
    staging = f"{k8s.staging_uri.rstrip('/')}/{key}"
    with tempfile.TemporaryDirectory() as tmp:
        stage_inputs(Path(tmp))
        upload_dir(Path(tmp), f"{staging}/inputs")
    job = NodeJobConfig(
        name=f"mccl-train-{key}", namespace=k8s.namespace, image=k8s.image or pipeline_image(),
        num_nodes=launch.nnodes, nproc_per_node=launch.nproc_per_node, accelerator_type=k8s.accelerator_type,
        accelerators_per_node=k8s.accelerators_per_node, staging_uri=staging, mlflow_tracking_uri=tracking_uri,
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
    return manifest
