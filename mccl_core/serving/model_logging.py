"""Log an MCCL bundle as a self-contained MLflow pyfunc model (and optionally register it).

What goes into the logged model and why:

* ``artifacts/bundle/``: a copy of the bundle folder (weights, prototypes, label embeddings,
  co-occurrence, class names) with the tuned threshold written into its ``bundle.json``, so the
  artifact alone reproduces evaluation.
* ``code/mccl_core/``: the ``mccl_core`` package as ``code_paths``. MLflow puts ``code/`` first on
  ``sys.path`` when it loads the model, so a serving image needs only the pinned third-party
  requirements below, not this project installed.
* ``model_config``: the :class:`~mccl_core.serving.pyfunc.ServingConfig` (threshold, size limits
  and decode budget, batch size, device). It can be overridden at load time with
  ``mlflow.pyfunc.load_model(uri, model_config={...})``, and for ``mlflow models serve`` with the
  JSON environment variable ``MLFLOW_PYFUNC_INFERENCE_CONFIG`` (MLflow's; only keys the logged
  config has are taken, so every field is always logged).
* ``requirements.txt``: the installed versions of what the serving code imports, pinned.
* A signature (input column ``image``: string; outputs: one float per class + ``intents``:
  list of strings; inference params ``explain`` (boolean, default false) and ``top_k`` (long,
  default 5), which add the ``clues`` column, see :mod:`mccl_core.serving.pyfunc`) and a real JPEG
  as input example. Before anything is logged the model is loaded
  from the staged files and run on that example, so a bundle that cannot serve never reaches the
  registry.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.metadata
import io
import logging
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModelContext
from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec
from PIL import Image

import mccl_core
from mccl_core.models.bundle import BundleError, read_meta, write_meta
from mccl_core.serving.pyfunc import (
    BUNDLE_ARTIFACT,
    CLUES_COLUMN,
    DEFAULT_TOP_K,
    EXPLAIN_PARAM,
    IMAGE_COLUMN,
    INTENTS_COLUMN,
    TOP_K_PARAM,
    MCCLIntentModel,
    ServingConfig,
)

logger = logging.getLogger(__name__)

#: Distributions the serving code imports (directly or through mccl_core's package imports).
SERVING_DISTRIBUTIONS = (
    "torch",
    "torchvision",
    "pillow",
    "numpy",
    "pandas",
    "safetensors",
    "requests",
    "tqdm",
    "cloudpickle",
)


def serving_requirements() -> list[str]:
    """``name==version`` of :data:`SERVING_DISTRIBUTIONS` as installed here (local labels such as
    ``+cu128`` dropped: they are not on PyPI). MLflow adds its own pin."""
    pins = []
    for name in SERVING_DISTRIBUTIONS:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError as error:
            raise RuntimeError(f"{name} is not installed; the served model needs it") from error
        pins.append(f"{name}=={version.split('+', 1)[0]}")
    return pins


def serving_signature(class_names: list[str]) -> ModelSignature:
    """Input: column ``image`` (base64 string). Output: one float per class + ``intents`` (list).
    Params: ``explain`` (default false) and ``top_k`` (default 5); with ``explain`` the answer has
    one more column, ``clues`` (not in the output schema: MLflow's types cannot spell a map of
    intent names to lists of records, and the output schema is not enforced)."""
    if len(set(class_names)) != len(class_names):
        raise BundleError(f"class names are not unique: {class_names}")
    reserved = (INTENTS_COLUMN, IMAGE_COLUMN, CLUES_COLUMN)
    if any(name in class_names for name in reserved):
        raise BundleError(f"a class is named {' or '.join(map(repr, reserved))}, which the answer uses itself")
    outputs: list[ColSpec | TensorSpec] = [ColSpec(DataType.float, name) for name in class_names]
    outputs.append(ColSpec(Array(DataType.string), INTENTS_COLUMN))
    params = ParamSchema([
        ParamSpec(EXPLAIN_PARAM, DataType.boolean, False),
        ParamSpec(TOP_K_PARAM, DataType.long, DEFAULT_TOP_K),
    ])  # fmt: skip
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, IMAGE_COLUMN)]), outputs=Schema(outputs), params=params
    )


def example_jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    """A small deterministic JPEG (colour gradient) used as the logged input example."""
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    pixels = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                       np.full((height, width), 128, dtype=np.float32)], axis=-1)  # fmt: skip
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def encode_image(data: bytes) -> str:
    """Image file bytes -> the base64 text a request carries in column ``image``."""
    return base64.b64encode(data).decode("ascii")


def log_pyfunc_model(
    bundle_dir: Path,
    threshold: float,
    artifact_name: str = "model",
    registered_model_name: str | None = None,
    *,
    serving: ServingConfig | None = None,
    example_image: Path | None = None,
    await_registration_for: int = 300,
) -> ModelInfo:
    """Log ``bundle_dir`` as a pyfunc model in the active MLflow run; register it when asked.

    Args:
        bundle_dir: a model bundle folder (:mod:`mccl_core.models.bundle`).
        threshold: the tuned decision threshold (from the evaluate step); stored in the model config
            and in the logged bundle's ``bundle.json``. It overrides ``serving.threshold``.
        artifact_name: the logged model's name (``mlflow.pyfunc.log_model(name=...)``).
        registered_model_name: register the model under this name (a new version); ``None``: don't.
        serving: limits, batch size and device of the served model (defaults: :class:`ServingConfig`).
        example_image: an image file for the input example (default: a generated 64x48 JPEG).
        await_registration_for: seconds to wait for the new version to become READY.

    Returns:
        MLflow's :class:`ModelInfo` (``model_uri``, ``registered_model_version`` when registered).

    Raises:
        RuntimeError: no active run. BundleError: not a bundle / unusable class names.
        ValueError: invalid threshold or serving config.
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_pyfunc_model must be called inside an active run (with mlflow.start_run(...))")
    bundle_dir = Path(bundle_dir)
    meta = read_meta(bundle_dir)
    config = dataclasses.replace(serving or ServingConfig(threshold=threshold), threshold=threshold)
    if meta.threshold is not None and abs(float(meta.threshold) - config.threshold) > 1e-12:
        logger.warning("%s: bundle threshold %s replaced by %s", bundle_dir, meta.threshold, config.threshold)
    signature = serving_signature(meta.class_names)
    example_bytes = Path(example_image).read_bytes() if example_image is not None else example_jpeg()
    input_example = pd.DataFrame({IMAGE_COLUMN: [encode_image(example_bytes)]})

    with tempfile.TemporaryDirectory(prefix="mccl-pyfunc-") as staging:
        staged_bundle = Path(staging) / BUNDLE_ARTIFACT
        shutil.copytree(bundle_dir, staged_bundle, ignore=shutil.ignore_patterns("*.tmp"))
        meta.threshold = config.threshold
        write_meta(staged_bundle, meta)
        _check_staged_model(staged_bundle, config, input_example, meta.class_names)
        model_info = mlflow.pyfunc.log_model(
            name=artifact_name,
            python_model=MCCLIntentModel(),
            artifacts={BUNDLE_ARTIFACT: str(staged_bundle)},
            code_paths=[str(Path(mccl_core.__file__).resolve().parent)],
            model_config=config.to_dict(),
            signature=signature,
            input_example=input_example,
            pip_requirements=serving_requirements(),
            metadata={
                "mccl": {
                    "class_names": meta.class_names,
                    "image_size": meta.image_size,
                    "threshold": config.threshold,
                    "variant": meta.model_config.get("variant", "mccl"),
                }
            },
            registered_model_name=registered_model_name,
            await_registration_for=await_registration_for,
        )
    logger.info(
        "logged pyfunc model %s (%d classes, threshold %.3f)%s",
        model_info.model_uri, len(meta.class_names), config.threshold,
        f" as {registered_model_name} v{model_info.registered_model_version}" if registered_model_name else "",
    )  # fmt: skip
    return model_info


def _check_staged_model(bundle: Path, config: ServingConfig, example: pd.DataFrame, class_names: list[str]) -> None:
    """Load the staged bundle the way serving will and score the input example."""
    model = MCCLIntentModel()
    context = PythonModelContext(artifacts={BUNDLE_ARTIFACT: str(bundle)}, model_config=config.to_dict())
    model.load_context(context)
    answer = model.predict(context, example)
    expected = [*class_names, INTENTS_COLUMN]
    if list(answer.columns) != expected or len(answer) != len(example):
        raise BundleError(f"{bundle}: the model answered columns {list(answer.columns)}, expected {expected}")
    scores = answer[class_names].to_numpy()
    if not np.isfinite(scores).all():
        raise BundleError(f"{bundle}: the model gives non-finite scores for the input example")
    if model.has_prototypes:  # the explain path, too (every intent predicted, so every intent explained)
        model.config = dataclasses.replace(model.config, threshold=0.0)
        explained = model.predict(context, example, params={EXPLAIN_PARAM: True, TOP_K_PARAM: 1})
        clues = explained[CLUES_COLUMN].tolist() if CLUES_COLUMN in explained.columns else []
        intents = explained[INTENTS_COLUMN].tolist()
        if len(clues) != len(example) or any(
            sorted(row) != sorted(names) or any(len(c) != 1 for c in row.values()) for row, names in zip(clues, intents)
        ):
            raise BundleError(f"{bundle}: the model does not explain the input example's intents")
