# One image for every pipeline step (DVC stages, Kubeflow components, the PyTorchJob pods).
#
#   docker build -t ghcr.io/mccl-pipeline/mccl:0.1.0-cuda .                        # CUDA (default)
#   docker build -t ghcr.io/mccl-pipeline/mccl:0.1.0-cpu --build-arg VARIANT=cpu .  # CPU only, smaller
#
# The image name/tag the Kubeflow pipeline uses is set in pipeline/image.py (one place).
# CUDA variant: PyPI's torch wheels bundle the CUDA runtime, so only the host's NVIDIA driver (via
# the NVIDIA container toolkit / Kubernetes device plugin) is needed - no CUDA base image.
# No credentials are baked in: S3 / MLflow settings come from the environment at run time
# (AWS_*, MLFLOW_TRACKING_URI), e.g. from a Kubernetes secret.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG VARIANT=cuda
# Pins: identical to pyproject.toml (tests/test_dockerfile.py checks it).
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

RUN apt-get update \
 && apt-get install -y --no-install-recommends git tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 --shell /bin/bash mccl

WORKDIR /opt/mccl

# 1. Dependencies first (cached layer): torch for the chosen variant, then the project's pins.
COPY pyproject.toml README.md ./
RUN case "$VARIANT" in \
      cpu)  pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" --index-url "${TORCH_CPU_INDEX}" ;; \
      cuda) pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" ;; \
      *)    echo "VARIANT must be cpu or cuda, got ${VARIANT}" >&2; exit 1 ;; \
    esac \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# 2. The project (packages mccl_core, components, pipeline; console script `mccl`).
COPY mccl_core ./mccl_core
COPY components ./components
COPY pipeline ./pipeline
RUN pip install --no-deps . \
 && python -c "import mccl_core, components.runner, pipeline.pipeline, kfp, mlflow, dvc, great_expectations"

# 3. The DVC project files, so `dvc repro` also runs inside the image (mount or pull the data).
COPY dvc.yaml params.yaml data.dvc .dvcignore ./

RUN mkdir -p /workspace && chown -R mccl:mccl /opt/mccl /workspace
USER mccl
ENV HOME=/home/mccl
LABEL org.opencontainers.image.title="mccl-pipeline" \
      org.opencontainers.image.description="MCCL image intent recognition pipeline (${VARIANT})"

ENTRYPOINT ["tini", "--"]
CMD ["mccl", "--help"]
