"""S3 access for DVC remotes and MLflow artifacts, with credentials from the environment only.

Why environment only: credentials written into ``.dvc/config``, ``params.yaml``, MLflow params or
a Kubeflow pipeline spec end up in git history and run metadata. The pipeline therefore reads
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and optionally ``AWS_SESSION_TOKEN``) from the
environment (a Kubernetes secret, a CI secret, a local ``.env`` that is not committed) and the
endpoint of an S3-compatible store (SeaweedFS, MinIO, Ceph) from ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL``. Nothing here logs a secret:
:func:`describe_s3_env` gives a loggable summary and :func:`redact_secrets` scrubs tool output.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
SESSION_TOKEN_ENV = "AWS_SESSION_TOKEN"
REGION_ENVS = ("AWS_REGION", "AWS_DEFAULT_REGION")
#: Checked in this order; the first one set wins.
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
SECRET_ENVS = (SECRET_KEY_ENV, SESSION_TOKEN_ENV)
DEFAULT_REGION = "us-east-1"


class S3ConfigError(RuntimeError):
    """S3 settings missing or malformed (the message names variables, never their values)."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"


def parse_s3_uri(uri: str) -> S3Location:
    """``s3://bucket/some/prefix`` -> ``S3Location("bucket", "some/prefix")``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise S3ConfigError(f"not an s3:// URI: {uri!r}")
    return S3Location(parsed.netloc, parsed.path.lstrip("/"))


def s3_endpoint_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The S3 endpoint URL from the environment, or ``None`` for AWS itself."""
    env = os.environ if env is None else env
    for name in ENDPOINT_ENVS:
        value = (env.get(name) or "").strip()
        if value:
            if not value.startswith(("http://", "https://")):
                raise S3ConfigError(f"${name} must be an http(s) URL, got {value!r}")
            return value
    return None


def _region(env: Mapping[str, str]) -> str:
    return next((env[name] for name in REGION_ENVS if env.get(name)), DEFAULT_REGION)


def describe_s3_env(env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """A summary that is safe to log: endpoint, region, masked access key id, secret set or not."""
    env = os.environ if env is None else env
    access_key = env.get(ACCESS_KEY_ENV) or ""
    return {
        "endpoint_url": s3_endpoint_from_env(env),
        "region": _region(env),
        "access_key_id": (access_key[:4] + "****") if access_key else None,
        "secret_access_key": "set" if env.get(SECRET_KEY_ENV) else "missing",
    }


def s3_client_from_env(env: Mapping[str, str] | None = None, **client_kwargs: Any) -> Any:
    """A boto3 S3 client built only from environment variables (see the module docstring).

    Raises :class:`S3ConfigError` naming the missing variables (never printing values).
    """
    import boto3

    env = os.environ if env is None else env
    missing = [name for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV) if not env.get(name)]
    if missing:
        raise S3ConfigError(
            f"S3 credentials missing: set {' and '.join('$' + m for m in missing)} in the environment "
            "(credentials are never read from config files of this project)"
        )
    session = boto3.session.Session(
        aws_access_key_id=env[ACCESS_KEY_ENV],
        aws_secret_access_key=env[SECRET_KEY_ENV],
        aws_session_token=env.get(SESSION_TOKEN_ENV) or None,
        region_name=_region(env),
    )
    endpoint = s3_endpoint_from_env(env)
    logger.debug("S3 client: %s", describe_s3_env(env))
    return session.client("s3", endpoint_url=endpoint, **client_kwargs)


def ensure_bucket(client: Any, bucket: str) -> bool:
    """Create ``bucket`` unless it exists; returns whether it was created."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise
    client.create_bucket(Bucket=bucket)
    logger.info("created S3 bucket %s", bucket)
    return True


def list_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    """All object keys under ``prefix`` (paginated)."""
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def redact_secrets(text: str, env: Mapping[str, str] | None = None) -> str:
    """Replace the values of secret environment variables in ``text`` (e.g. tool output)."""
    env = os.environ if env is None else env
    for name in SECRET_ENVS:
        value = env.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, f"<${name}>")
    return text
