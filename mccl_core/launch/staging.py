"""Copying step folders to and from S3 (multi-node training exchanges its inputs/outputs there).

The pods of a PyTorchJob do not see the step's input folders, so the train step uploads them to
``<staging>/inputs`` and every node downloads them; node 0 uploads the trained bundle (and
checkpoints, so a restarted pod resumes) to ``<staging>/outputs``. Credentials and endpoint come from the environment only
(:mod:`mccl_core.launch.s3`). ``minio://bucket/key`` (Kubeflow's default store) is read as S3.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mccl_core.launch.s3 import list_keys, parse_s3_uri, s3_client_from_env

log = logging.getLogger(__name__)


def _location(uri: str) -> tuple[str, str]:
    if uri.startswith("minio://"):
        uri = "s3://" + uri[len("minio://") :]
    location = parse_s3_uri(uri)
    return location.bucket, location.key.rstrip("/")


def upload_dir(local_dir: Path, uri: str, client: Any | None = None) -> int:
    """Upload every file under ``local_dir`` to ``uri`` (keys keep the relative paths)."""
    client = client or s3_client_from_env()
    bucket, prefix = _location(uri)
    count = 0
    for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(local_dir).as_posix()}" if prefix else path.relative_to(local_dir).as_posix()
        client.upload_file(str(path), bucket, key)
        count += 1
    log.info("uploaded %d files from %s to s3://%s/%s", count, local_dir, bucket, prefix)
    return count


def download_prefix(uri: str, local_dir: Path, client: Any | None = None) -> int:
    """Download every object under ``uri`` into ``local_dir`` (0 when there is none)."""
    client = client or s3_client_from_env()
    bucket, prefix = _location(uri)
    count = 0
    for key in list_keys(client, bucket, prefix + "/" if prefix else ""):
        target = Path(local_dir) / key[len(prefix) + 1 if prefix else 0 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))
        count += 1
    log.info("downloaded %d files from s3://%s/%s to %s", count, bucket, prefix, local_dir)
    return count
