"""What every training pod (TrainJob or PyTorchJob) needs around the train step.

Both Kubernetes launchers run the same program in each node's container
(``python -m mccl_core.steps.pod``, :mod:`mccl_core.steps.pod`). It

1. downloads the run's staged inputs (``<staging>/inputs``) and the checkpoints node 0 uploaded so
   far (``<staging>/outputs/checkpoints``);
2. runs **the train step itself** with the ``torchrun`` backend, nodes / processes / rank /
   master taken from the ``PET_*`` environment the operator sets (:func:`launch_from_env`); the
   step's guard resumes the downloaded checkpoint only when it was written for this run's
   fingerprint, otherwise it sets it aside and trains from scratch;
3. on node 0, mirrors ``<workspace>/outputs/checkpoints`` to S3 while training
   (:class:`CheckpointUploader`, every ``--upload-interval`` seconds) so a restarted pod resumes
   its own last epoch, not epoch 0; after success it uploads the whole output folder.

The staging prefix is one run's own (the launcher keys it by the run's fingerprint), so two runs
never read or overwrite each other's checkpoints.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WORKSPACE = "/workspace"
PARAMS_FILE = "params.yaml"
CHECKPOINTS = "checkpoints"
#: Process-level variables of the operators that must not reach the training processes directly:
#: torchrun sets each worker's own from the PET_* derived launch section.
OPERATOR_RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                     "MASTER_PORT")  # fmt: skip
DEFAULT_MASTER_PORT = "29400"


def _nproc(value: str) -> int:
    """``PET_NPROC_PER_NODE``: an int, or torchrun's ``auto`` / ``gpu`` / ``cpu``."""
    if value.isdigit():
        return int(value)
    import torch

    if value in ("auto", "gpu") and torch.cuda.is_available():
        return torch.cuda.device_count()
    if value == "cpu":
        return os.cpu_count() or 1
    return 1


def launch_from_env(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``launch`` section of one node, from what the operator sets.

    Kubeflow Trainer v2's ``torch-distributed`` runtime and the Training Operator v1 both set
    ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK`` and the master's address
    (``PET_MASTER_ADDR``/``PET_MASTER_PORT``; v1 also ``MASTER_ADDR``/``MASTER_PORT``, ``RANK``).
    The rendezvous is torchrun's *static* one: global rank = node rank x processes + local rank,
    so global rank 0 (the one that writes checkpoints and the bundle) is on node 0.
    """
    env = dict(os.environ if env is None else env)
    nnodes = int(env.get("PET_NNODES", "1").split(":")[-1])
    values: dict[str, Any] = {
        "backend": "torchrun",
        "nproc_per_node": _nproc(env.get("PET_NPROC_PER_NODE", "1")),
        "nnodes": nnodes,
        "node_rank": int(env.get("PET_NODE_RANK", env.get("RANK", "0"))),
    }
    if nnodes > 1:
        addr = env.get("PET_MASTER_ADDR") or env.get("MASTER_ADDR", "")
        port = env.get("PET_MASTER_PORT") or env.get("MASTER_PORT") or DEFAULT_MASTER_PORT
        values["rdzv_endpoint"] = f"{addr}:{port}"
        values["rdzv_backend"] = "static"
    return values


def _signature(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _is_checkpoint_file(path: Path) -> bool:
    """Every file of the checkpoints folder except temporaries and set-aside foreign checkpoints."""
    return path.is_file() and not path.name.endswith((".tmp", ".stale.pt")) and not path.name.startswith(".")


class CheckpointUploader:
    """Mirror a checkpoints folder to ``<uri>`` from a background thread.

    Why a watcher and not a hook in the loop: the loop (``mccl_core.training``) writes checkpoints
    atomically (temporary file + ``os.replace``), so a file's (inode, mtime, size) changing means
    a complete new version. Each changed file is hard-linked to a private snapshot first (a later
    ``os.replace`` cannot change what is being uploaded), then uploaded; files that disappeared
    locally (a foreign checkpoint set aside) are deleted remotely *before* new ones are uploaded,
    so the remote folder never pairs one run's fingerprint record with another run's weights.
    """

    def __init__(self, local_dir: Path, uri: str, interval_s: float = 30.0, client: Any | None = None) -> None:
        from mccl_core.launch.staging import _location

        self.local_dir = Path(local_dir)
        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = _location(self.uri)
        self.interval_s = interval_s
        self._client = client
        self._snapshots = self.local_dir.parent / f".{self.local_dir.name}.upload"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: name -> signature of what the remote holds (seeded with what was just downloaded)
        self.remote: dict[str, tuple[int, int, int]] = self._scan()
        self.uploads = 0
        self.errors = 0

    @property
    def client(self) -> Any:
        if self._client is None:
            from mccl_core.launch.s3 import s3_client_from_env

            self._client = s3_client_from_env()
        return self._client

    def _scan(self) -> dict[str, tuple[int, int, int]]:
        found: dict[str, tuple[int, int, int]] = {}
        if self.local_dir.is_dir():
            for path in self.local_dir.iterdir():
                try:
                    if _is_checkpoint_file(path):
                        found[path.name] = _signature(path)
                except FileNotFoundError:  # replaced between listing and stat
                    continue
        return found

    def sync(self) -> int:
        """One pass: delete what vanished, upload what changed. Returns the files uploaded."""
        with self._lock:
            current = self._scan()
            for name in sorted(set(self.remote) - set(current)):
                self.client.delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}")
                del self.remote[name]
                log.info("checkpoint %s set aside locally; deleted s3://%s/%s/%s", name, self.bucket, self.prefix, name)
            uploaded = 0
            self._snapshots.mkdir(parents=True, exist_ok=True)
            for name, signature in sorted(current.items()):
                if self.remote.get(name) == signature:
                    continue
                snapshot = self._snapshots / name
                snapshot.unlink(missing_ok=True)
                try:
                    os.link(self.local_dir / name, snapshot)
                except FileNotFoundError:
                    continue  # replaced meanwhile: the next pass uploads the new version
                except OSError:
                    shutil.copy2(self.local_dir / name, snapshot)
                self.client.upload_file(str(snapshot), self.bucket, f"{self.prefix}/{name}")
                snapshot.unlink(missing_ok=True)
                self.remote[name] = signature
                uploaded += 1
            self.uploads += uploaded
            if uploaded:
                log.info("uploaded %d checkpoint file(s) to %s", uploaded, self.uri)
            return uploaded

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sync()
            except Exception as error:  # noqa: BLE001 - S3 hiccup: keep training, retry next pass
                self.errors += 1
                log.warning("checkpoint upload to %s failed (will retry): %s", self.uri, error)

    def start(self) -> CheckpointUploader:
        self._thread = threading.Thread(target=self._run, name="checkpoint-uploader", daemon=True)
        self._thread.start()
        return self

    def stop(self, final_sync: bool = True) -> None:
        """Stop the thread; by default one last pass (training failed or ended: keep its progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if final_sync:
            self.sync()
        shutil.rmtree(self._snapshots, ignore_errors=True)


def upload_outputs(out_dir: Path, uri: str) -> int:
    """Upload the output folder except set-aside checkpoints, temporaries and the trainer lock."""
    from mccl_core.launch.s3 import s3_client_from_env
    from mccl_core.launch.staging import _location

    client = s3_client_from_env()
    bucket, prefix = _location(uri)
    count = 0
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(out_dir)
        if path.name.endswith((".tmp", ".stale.pt", ".lock")) or relative.parts[0].startswith("."):
            continue
        client.upload_file(str(path), bucket, f"{prefix}/{relative.as_posix()}")
        count += 1
    log.info("uploaded %d output files to %s", count, uri)
    return count


if __name__ == "__main__":
    # Manifests built by earlier versions start their pods with this module: run the pod program
    # (by name: the launchers sit below the steps and do not import them).
    import runpy

    runpy.run_module("mccl_core.steps.pod", run_name="__main__", alter_sys=True)
