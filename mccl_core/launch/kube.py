"""What the Kubernetes launchers share: the pod settings and submitting a job and waiting for it.

Both kinds (Kubeflow Trainer v2 ``TrainJob``, Training Operator v1 ``PyTorchJob``) run the same
pod entry point (:mod:`mccl_core.steps.pod`) with the same environment; only the manifest
shape and the finished-condition names differ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

WORKSPACE = "/workspace"
NODE_MODULE = "mccl_core.steps.pod"
#: The AWS_* keys the pods read from the credentials secret (S3 staging, MLflow artifacts).
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


@dataclass
class NodeJobConfig:
    """Everything a job manifest depends on (all of it pipeline parameters or derived from them)."""

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
    #: Seconds between node 0's checkpoint uploads.
    upload_interval_s: float = 30.0
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {self.num_nodes}")
        if self.nproc_per_node < 1 or self.accelerators_per_node < 0:
            raise ValueError("nproc_per_node must be >= 1 and accelerators_per_node >= 0")
        if not self.staging_uri.startswith(("s3://", "minio://")):
            raise ValueError(f"staging_uri must be an s3:// (or minio://) prefix, got {self.staging_uri!r}")

    def command(self) -> list[str]:
        return ["python", "-m", NODE_MODULE, "--staging-uri", self.staging_uri, "--workspace", WORKSPACE,
                "--upload-interval", f"{self.upload_interval_s:g}"]  # fmt: skip

    def env(self, secret_as_env: bool) -> list[dict[str, Any]]:
        """Plain variables, plus (``secret_as_env``) each AWS_* key as an optional secret reference."""
        env: list[dict[str, Any]] = []
        if self.mlflow_tracking_uri:
            env.append({"name": "MLFLOW_TRACKING_URI", "value": self.mlflow_tracking_uri})
        env += [{"name": k, "value": v} for k, v in sorted(self.extra_env.items())]
        if secret_as_env:
            env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": self.credentials_secret, "key": key,
                                                                  "optional": True}}} for key in SECRET_KEYS]  # fmt: skip
        return env

    def metadata(self) -> dict[str, Any]:
        """The job's ``metadata`` (same name, namespace and label for both job kinds)."""
        return {
            "name": self.name,
            "namespace": self.namespace,
            "labels": {"app.kubernetes.io/part-of": "mccl-pipeline"},
        }

    def resources(self) -> dict[str, Any]:
        requests: dict[str, Any] = {"cpu": self.cpu, "memory": self.memory}
        limits = dict(requests)
        if self.accelerators_per_node:
            limits[self.accelerator_type] = str(self.accelerators_per_node)
        return {"requests": requests, "limits": limits}


def finished_state(job: dict[str, Any], succeeded: tuple[str, ...], failed: tuple[str, ...]) -> str | None:
    """``succeeded[0]`` / ``failed[0]`` once a True condition of those types exists, else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") in succeeded:
            return succeeded[0]
        if condition.get("type") in failed:
            return failed[0]
    return None


def submit_and_wait(
    manifest: dict[str, Any],
    plural: str,
    state: Callable[[dict[str, Any]], str | None],
    poll_s: float = 30.0,
    timeout_s: float = 7 * 24 * 3600,
) -> dict[str, Any]:
    """Create the custom object (in-cluster credentials), wait until ``state`` says it finished.

    An object of the same name that already exists (a retried pipeline task) is waited for, not
    recreated: its pods already resume from the run's staged checkpoints.
    """
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    config.load_incluster_config()
    api = client.CustomObjectsApi()
    group, version = manifest["apiVersion"].split("/")
    namespace, name, kind = manifest["metadata"]["namespace"], manifest["metadata"]["name"], manifest["kind"]
    try:
        api.create_namespaced_custom_object(group, version, namespace, plural, manifest)
        log.info("created %s %s/%s", kind, namespace, name)
    except ApiException as error:
        if error.status != 409:
            raise
        log.info("%s %s/%s exists already (a retried task): waiting for it", kind, namespace, name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = api.get_namespaced_custom_object(group, version, namespace, plural, name)
        outcome = state(job)
        if outcome is not None:
            if outcome in ("Succeeded", "Complete"):
                return job
            raise RuntimeError(f"{kind} {namespace}/{name} failed: {job.get('status')}")
        time.sleep(poll_s)
    raise TimeoutError(f"{kind} {namespace}/{name} did not finish within {timeout_s} s")
