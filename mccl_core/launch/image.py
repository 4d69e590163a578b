"""The one place that names the project's container image (Dockerfile builds it, KFP runs it).

Build and push (see the Dockerfile)::

    docker build -t ghcr.io/mccl-pipeline/mccl:0.1.0-cpu --build-arg VARIANT=cpu .
    docker build -t ghcr.io/mccl-pipeline/mccl:0.1.0-cuda --build-arg VARIANT=cuda .

Override at compile time with ``MCCL_IMAGE=<registry>/<name>:<tag> mccl pipeline compile``.
"""

from __future__ import annotations

import os

IMAGE_REPOSITORY = "ghcr.io/mccl-pipeline/mccl"
IMAGE_TAG = "0.1.0-cuda"
IMAGE_ENV = "MCCL_IMAGE"


def pipeline_image() -> str:
    """``$MCCL_IMAGE`` if set, else ``IMAGE_REPOSITORY:IMAGE_TAG``."""
    return os.environ.get(IMAGE_ENV) or f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
