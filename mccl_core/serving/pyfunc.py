"""The MLflow pyfunc model that serves an MCCL bundle: base64 image bytes in, intent scores out.

Why a custom :class:`mlflow.pyfunc.PythonModel` and not e.g. the ``mlflow.pytorch`` flavour: the
request carries *encoded images* (what a client has), and the answer must be intent names at the
tuned threshold, so decoding, the eval transform, batching, sigmoid and thresholding belong to the
model - exactly the same code path as evaluation (:func:`mccl_core.data.images.load_rgb_image_bytes`
shares the decoder of :func:`mccl_core.data.load_rgb_image`, and the transform is
:meth:`mccl_core.models.bundle.BundleMeta.eval_transform`, with the normalisation of the backbone's weights).

Request (the scoring server's ``dataframe_split`` / ``dataframe_records`` JSON, or a DataFrame when
called in-process): one row per image, column ``image`` = base64 of the JPEG/PNG/... file bytes
(standard or URL-safe alphabet; whitespace and a ``data:image/...;base64,`` prefix are accepted).

Answer: a DataFrame with one ``float32`` column per class (named by the class, the sigmoid score)
and the column ``intents``: the list of class names whose score is strictly above the stored
threshold (the official protocol's rule, :mod:`mccl_core.metrics.f1`), in class order. The scoring
server returns it as ``{"predictions": [{"<class>": score, ..., "intents": [...]}, ...]}``.

Bad requests raise :class:`mlflow.exceptions.MlflowException` with ``INVALID_PARAMETER_VALUE``,
which the scoring server answers with HTTP 400 and the message: a missing ``image`` column (MLflow's
schema enforcement), an empty frame, more than ``max_images_per_request`` rows, and - naming every
offending row - values that are null, not strings, not base64, not an image, corrupt, or too large
(encoded bytes above ``max_image_bytes`` or decoded pixels above ``max_pixels``, the
decompression-bomb guard). One bad row rejects the whole request: a partial answer would silently
drop images. The request body as a whole is not size-limited by the scoring server: put a reverse
proxy with a body-size limit in front of it in production.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext
from PIL import Image

from mccl_core.config import ConfigError, from_dict
from mccl_core.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_rgb_image_bytes
from mccl_core.models.bundle import load_bundle

logger = logging.getLogger(__name__)

#: Input column: base64 of the encoded image file.
IMAGE_COLUMN = "image"
#: Output column: class names with score > threshold.
INTENTS_COLUMN = "intents"
#: The pyfunc artifact key under which the bundle folder is logged.
BUNDLE_ARTIFACT = "bundle"
#: At most this many row problems are spelled out in one error message.
MAX_LISTED_PROBLEMS = 10

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)


@dataclass
class ServingConfig:
    """How the served model decides and what it accepts (stored as the pyfunc ``model_config``).

    Attributes:
        threshold: a class is predicted when its score is strictly above this (tuned on val).
        max_pixels: refuse decoded images with more pixels (decompression bombs); ``None``: PIL's own
            hard limit only. Default: the training loader's limit.
        max_image_bytes: refuse an image whose encoded file is larger than this.
        max_images_per_request: refuse requests with more rows (bounds the memory one request holds).
        batch_size: images per forward pass inside one request.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
    """

    threshold: float
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_image_bytes: int = 20 * 1024 * 1024
    max_images_per_request: int = 256
    batch_size: int = 32
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        self.threshold = float(self.threshold)
        if not np.isfinite(self.threshold) or not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be a score in [0, 1], got {self.threshold}")
        self.max_pixels = None if self.max_pixels is None else int(self.max_pixels)
        self.max_image_bytes, self.batch_size = int(self.max_image_bytes), int(self.batch_size)
        self.max_images_per_request = int(self.max_images_per_request)
        if self.max_pixels is not None and self.max_pixels <= 0:
            raise ConfigError(f"max_pixels must be positive or None, got {self.max_pixels}")
        if self.max_image_bytes <= 0:
            raise ConfigError(f"max_image_bytes must be positive, got {self.max_image_bytes}")
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
        if self.max_images_per_request <= 0:
            raise ConfigError(f"max_images_per_request must be positive, got {self.max_images_per_request}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServingConfig:
        return from_dict(cls, data, "serving")


class RequestError(ValueError):
    """One request row cannot be scored; the message names the row and the problem."""


def decode_base64_image(value: Any, row: int, config: ServingConfig) -> Image.Image:
    """One request cell -> RGB image, or :class:`RequestError` naming ``row`` and the problem."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise RequestError(f"row {row}: no image (null value)")
    if not isinstance(value, str):
        raise RequestError(f"row {row}: expected a base64 string, got {type(value).__name__}")
    text = "".join(_DATA_URL.sub("", value.strip(), count=1).split())
    if not text:
        raise RequestError(f"row {row}: empty string instead of base64 image data")
    # 4 base64 characters carry 3 bytes: refuse oversized data before decoding it.
    encoded_bytes = len(text) // 4 * 3
    if encoded_bytes > config.max_image_bytes:
        raise RequestError(
            f"row {row}: image data is {encoded_bytes / 2**20:.1f} MiB, above the limit of "
            f"{config.max_image_bytes / 2**20:.1f} MiB"
        )
    altchars = b"-_" if ("-" in text or "_" in text) else None
    try:
        data = base64.b64decode(text, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"row {row}: not valid base64 ({error})") from error
    try:
        return load_rgb_image_bytes(data, source=f"request row {row}", max_pixels=config.max_pixels)
    except ImageLoadError as error:
        raise RequestError(f"row {row}: {error.problem}") from error


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class MCCLIntentModel(PythonModel):
    """pyfunc wrapper of an MCCL model bundle (see the module docstring for the I/O contract).

    Everything is loaded in :meth:`load_context` (nothing but the class is pickled), so the logged
    model is the bundle folder + the ``mccl_core`` code shipped as ``code_paths``.
    """

    def load_context(self, context: PythonModelContext) -> None:
        self.config = ServingConfig.from_dict(context.model_config or {})
        self.device = _resolve_device(self.config.device)
        self.model, self.meta = load_bundle(context.artifacts[BUNDLE_ARTIFACT], self.device)
        self.class_names: list[str] = list(self.meta.class_names)
        self.transform = self.meta.eval_transform()
        # One forward at a time: the scoring server runs requests in threads; parallel forwards
        # only oversubscribe the cores (CPU) or the device, while decoding still runs in parallel.
        self._forward_lock = threading.Lock()
        logger.info(
            "MCCL intent model: %d classes, %d px, threshold %.3f, device %s",
            len(self.class_names), self.meta.image_size, self.config.threshold, self.device,
        )  # fmt: skip

    # -- input -----------------------------------------------------------------------------

    def _image_tensors(self, model_input: Any) -> list[torch.Tensor]:
        frame = self._as_frame(model_input)
        if len(frame) == 0:
            raise _invalid(f"the request has no rows: send one row per image in column {IMAGE_COLUMN!r}")
        if len(frame) > self.config.max_images_per_request:
            raise _invalid(
                f"the request has {len(frame)} images, more than the limit of {self.config.max_images_per_request} "
                "per request: split it into several requests"
            )
        tensors: list[torch.Tensor] = []
        problems: list[str] = []
        for row, value in enumerate(frame[IMAGE_COLUMN].tolist()):
            try:
                tensors.append(self.transform(decode_base64_image(value, row, self.config)))
            except RequestError as error:
                problems.append(str(error))
        if problems:
            listed = "; ".join(problems[:MAX_LISTED_PROBLEMS])
            unlisted = len(problems) - MAX_LISTED_PROBLEMS
            more = f"; ... and {unlisted} more" if unlisted > 0 else ""
            raise _invalid(f"{len(problems)} of {len(frame)} images rejected: {listed}{more}")
        return tensors

    @staticmethod
    def _as_frame(model_input: Any) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            frame = model_input
        elif isinstance(model_input, Mapping):
            frame = pd.DataFrame(dict(model_input))
        else:
            raise _invalid(
                f"expected a table with a column {IMAGE_COLUMN!r} of base64 images, got {type(model_input).__name__}"
            )
        if IMAGE_COLUMN not in frame.columns:
            raise _invalid(
                f"the request has no column {IMAGE_COLUMN!r} (columns: {[str(c) for c in frame.columns]}); "
                f"send one base64-encoded image per row in column {IMAGE_COLUMN!r}"
            )
        return frame

    # -- model -----------------------------------------------------------------------------

    def scores(self, images: Sequence[torch.Tensor]) -> np.ndarray:
        """Sigmoid scores ``[N, C]`` (float32) of transformed images, ``batch_size`` at a time."""
        out: list[np.ndarray] = []
        with self._forward_lock, torch.inference_mode():
            for batch in _chunks(images, self.config.batch_size):
                pixels = torch.stack(list(batch)).to(self.device, non_blocking=True)
                with _autocast(self.device, self.config.precision):
                    logits = self.model(pixels).logits
                out.append(torch.sigmoid(logits.float()).cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    def to_frame(self, scores: np.ndarray) -> pd.DataFrame:
        """Scores ``[N, C]`` -> the answer frame (class score columns + ``intents``)."""
        frame = pd.DataFrame(scores, columns=self.class_names)
        above = scores > self.config.threshold
        frame[INTENTS_COLUMN] = [[self.class_names[j] for j in np.flatnonzero(row)] for row in above]
        return frame

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Score every image of ``model_input`` (column ``image``, base64); see the module docstring."""
        return self.to_frame(self.scores(self._image_tensors(model_input)))


def _chunks(items: Sequence[torch.Tensor], size: int) -> Iterator[Sequence[torch.Tensor]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
